"""The libbpf binding: cffi in ABI mode against the system ``libbpf.so.1`` (floor 1.1).

Only what ciliumlite calls is declared. Option structs are declared up to the last field we set;
their ``sz`` tells libbpf how much of the struct we know, which is how libbpf stays compatible
across versions. Symbols newer than 1.1 may be declared: ABI mode only resolves them on use.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
from typing import Any

import cffi

from ciliumlite.bpf.errors import NotSupportedError

MIN_LIBBPF = (1, 1)

CDEF = r"""
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct btf;

__u32 libbpf_major_version(void);
__u32 libbpf_minor_version(void);

typedef int (*libbpf_print_fn_t)(int level, const char *fmt, void *ap);
libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn);
int vsnprintf(char *str, size_t size, const char *format, void *ap);

struct bpf_object_open_opts {
    size_t sz;
    const char *object_name;
    _Bool relaxed_maps;
    const char *pin_root_path;
    __u32 _removed_attach_prog_fd;
    const char *kconfig;
    const char *btf_custom_path;
    char *kernel_log_buf;
    size_t kernel_log_size;
    __u32 kernel_log_level;
};

struct bpf_object *bpf_object__open_file(const char *path, const struct bpf_object_open_opts *opts);
struct bpf_object *bpf_object__open_mem(const void *obj_buf, size_t obj_buf_sz,
                                        const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
const char *bpf_object__name(const struct bpf_object *obj);
struct btf *bpf_object__btf(const struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);

const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_program__type(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, _Bool autoload);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__type(const struct bpf_map *map);
__u32 bpf_map__key_size(const struct bpf_map *map);
__u32 bpf_map__value_size(const struct bpf_map *map);
__u32 bpf_map__max_entries(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);
_Bool bpf_map__is_internal(const struct bpf_map *map);
__u32 bpf_map__btf_key_type_id(const struct bpf_map *map);
__u32 bpf_map__btf_value_type_id(const struct bpf_map *map);
const char *bpf_map__pin_path(const struct bpf_map *map);
int bpf_map__set_pin_path(struct bpf_map *map, const char *path);
__u32 bpf_map__map_flags(const struct bpf_map *map);

struct btf_type { __u32 name_off; __u32 info; __u32 size_or_type; };
struct btf_member { __u32 name_off; __u32 type; __u32 offset; };
struct btf_var_secinfo { __u32 type; __u32 offset; __u32 size; };
struct btf_array { __u32 type; __u32 index_type; __u32 nelems; };
struct btf_enum { __u32 name_off; __s32 val; };
struct btf *btf__parse(const char *path, struct btf **btf_ext);
struct btf *btf__load_from_kernel_by_id(__u32 id);
void btf__free(struct btf *btf);
__u32 btf__type_cnt(const struct btf *btf);
const struct btf_type *btf__type_by_id(const struct btf *btf, __u32 id);
const char *btf__name_by_offset(const struct btf *btf, __u32 offset);
int btf__find_by_name_kind(const struct btf *btf, const char *type_name, __u32 kind);

int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
struct bpf_map_batch_opts { size_t sz; __u64 elem_flags; __u64 flags; };
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         __u32 *count, const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count, const struct bpf_map_batch_opts *opts);

struct bpf_map_create_opts {
    size_t sz;
    __u32 btf_fd;
    __u32 btf_key_type_id;
    __u32 btf_value_type_id;
    __u32 btf_vmlinux_value_type_id;
    __u32 inner_map_fd;
    __u32 map_flags;
    __u64 map_extra;
    __u32 numa_node;
    __u32 map_ifindex;
};
/* enum bpf_map_type in libbpf's header. */
int bpf_map_create(int map_type, const char *map_name, __u32 key_size, __u32 value_size,
                   __u32 max_entries, const struct bpf_map_create_opts *opts);

int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);
int bpf_prog_get_fd_by_id(__u32 id);
int bpf_map_get_fd_by_id(__u32 id);
int bpf_link_get_fd_by_id(__u32 id);
int bpf_prog_get_next_id(__u32 start_id, __u32 *next_id);
int bpf_map_get_next_id(__u32 start_id, __u32 *next_id);
int bpf_link_get_next_id(__u32 start_id, __u32 *next_id);
/* enum bpf_stats_type: BPF_STATS_RUN_TIME = 0 (libbpf 0.0.8+). */
int bpf_enable_stats(int type);
/* enum bpf_prog_type, struct bpf_insn * and struct bpf_prog_load_opts * (NULL) in libbpf's header. */
int bpf_prog_load(int prog_type, const char *prog_name, const char *license, const void *insns,
                  size_t insn_cnt, const void *opts);

struct bpf_link_create_opts { size_t sz; __u32 flags; };
int bpf_link_create(int prog_fd, int target_fd, int attach_type, const struct bpf_link_create_opts *opts);
int bpf_link_detach(int link_fd);
struct bpf_link_update_opts { size_t sz; __u32 flags; __u32 old_prog_fd; __u32 old_map_fd; };
int bpf_link_update(int link_fd, int new_prog_fd, const struct bpf_link_update_opts *opts);

struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    __u32 data_size_in;
    __u32 data_size_out;
    const void *ctx_in;
    void *ctx_out;
    __u32 ctx_size_in;
    __u32 ctx_size_out;
    __u32 retval;
    int repeat;
    __u32 duration;
    __u32 flags;
    __u32 cpu;
    __u32 batch_size;
};
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);

int libbpf_probe_bpf_prog_type(int prog_type, const void *opts);
int libbpf_probe_bpf_map_type(int map_type, const void *opts);
int libbpf_probe_bpf_helper(int prog_type, int helper_id, const void *opts);
int libbpf_num_possible_cpus(void);

struct ring_buffer;
typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx, const void *opts);
void ring_buffer__free(struct ring_buffer *rb);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__consume(struct ring_buffer *rb);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)

_log = logging.getLogger("ciliumlite.libbpf")


def _find_libbpf() -> str:
    explicit = os.environ.get("CILIUMLITE_LIBBPF")
    if explicit:
        return explicit
    return ctypes.util.find_library("bpf") or "libbpf.so.1"


def _open() -> Any:
    path = _find_libbpf()
    try:
        lib = ffi.dlopen(path)
    except OSError as exc:
        raise NotSupportedError(
            f"cannot load libbpf ({path}): {exc}",
            feature="libbpf.so.1",
            hint="install it (Debian: apt-get install libbpf1) or set CILIUMLITE_LIBBPF to its path",
        ) from exc
    version = (int(lib.libbpf_major_version()), int(lib.libbpf_minor_version()))
    if version < MIN_LIBBPF:
        raise NotSupportedError(
            f"libbpf {version[0]}.{version[1]} at {path} is too old; ciliumlite needs >= 1.1",
            feature="libbpf>=1.1",
            hint="upgrade libbpf1 (Debian 12 ships 1.1.2) or point CILIUMLITE_LIBBPF at a newer libbpf.so.1",
        )
    return lib


lib: Any = _open()
libc: Any = ffi.dlopen(None)
LIBBPF_VERSION: tuple[int, int] = (int(lib.libbpf_major_version()), int(lib.libbpf_minor_version()))

_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


@ffi.callback("int(int, const char *, void *)")  # type: ignore[untyped-decorator]
def _print(level: int, fmt: Any, ap: Any) -> int:
    # va_list decays to a pointer on x86-64 and arm64, so libc's vsnprintf can format it.
    buf = ffi.new("char[]", 4096)
    libc.vsnprintf(buf, 4096, fmt, ap)
    text = ffi.string(buf).decode(errors="replace").rstrip("\n")
    py_level = _LEVELS[level] if 0 <= level < len(_LEVELS) else logging.DEBUG
    if text and _log.isEnabledFor(py_level):
        _log.log(py_level, "%s", text)
    return 0


lib.libbpf_set_print(_print)


def cstr(ptr: Any) -> str:
    """Decode a C string returned by libbpf ('' for NULL)."""
    return "" if ptr == ffi.NULL else ffi.string(ptr).decode()


def num_possible_cpus() -> int:
    """CPUs the kernel sizes per-CPU map values for."""
    n = int(lib.libbpf_num_possible_cpus())
    return n if n > 0 else os.cpu_count() or 1
