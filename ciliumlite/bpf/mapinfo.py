"""What a BPF map is, as the kernel names it: its type, update flags and info; the raw codec.

Split from :mod:`ciliumlite.bpf.map` (which re-exports every name) so that the typed map there is
about operations only.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

from ciliumlite.bpf._ffi import ffi, lib
from ciliumlite.bpf.errors import BpfError, ValidationError, check


class MapType(IntEnum):
    """Kernel map types (``enum bpf_map_type``) ciliumlite knows by name."""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27


class UpdateFlags(IntFlag):
    """Flags of map updates: ANY (create or replace), NOEXIST (create only), EXIST (replace only)."""

    ANY = 0
    NOEXIST = 1
    EXIST = 2


ANY, NOEXIST, EXIST = UpdateFlags.ANY, UpdateFlags.NOEXIST, UpdateFlags.EXIST
#: Map types whose values are one per possible CPU.
PERCPU_TYPES = {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH, MapType.PERCPU_CGROUP_STORAGE}
#: Map types indexed by a u32 below max_entries.
ARRAY_TYPES = {MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.PROG_ARRAY, MapType.CGROUP_ARRAY}
_BPF_MAP_INFO = struct.Struct("<IIIIII16sIIQQIII")


@dataclass(frozen=True, slots=True)
class MapInfo:
    """What the kernel says about a map."""

    name: str
    type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    id: int
    btf_id: int = 0
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0

    @classmethod
    def from_fd(cls, fd: int) -> MapInfo:
        """Ask the kernel (BPF_OBJ_GET_INFO_BY_FD) about the map behind ``fd``."""
        buf = ffi.new("char[]", 256)
        n = ffi.new("__u32 *", 256)
        check(lib.bpf_obj_get_info_by_fd(fd, buf, n), "get map info", f"fd {fd}")
        (mtype, mid, ks, vs, me, flags, name, _ifi, _vmlinux, _dev, _ino, btf_id, bk,
         bv) = _BPF_MAP_INFO.unpack_from(ffi.buffer(buf, 256))
        try:
            mt = MapType(mtype)
        except ValueError:
            mt = MapType.UNSPEC
        return cls(name.rstrip(b"\0").decode(), mt, ks, vs, me, flags, mid, btf_id, bk, bv)


class RawBytes:
    """The codec of an untyped map: keys and values are ``bytes`` of the map's size."""

    def __init__(self, size: int) -> None:
        self.SIZE = size

    def encode(self, value: Any) -> bytes:
        """Accept bytes of exactly the right size."""
        raw = bytes(value)
        if len(raw) != self.SIZE:
            raise ValidationError(f"expected {self.SIZE} bytes, got {len(raw)}")
        return raw

    def encode_into(self, value: Any, buf: Any, offset: int) -> None:
        """Write the bytes into ``buf`` at ``offset``."""
        buf[offset:offset + self.SIZE] = self.encode(value)

    def decode(self, raw: bytes | memoryview) -> bytes:
        """Return the bytes as they are."""
        return bytes(raw[: self.SIZE])


#: ``read(keys_buf, values_buf, n) -> (count, done)``: see :func:`batch_reader`.
BatchReader = Callable[[Any, Any, int], tuple[int, bool]]


def batch_reader(fd: int, key_size: int, name: str) -> BatchReader:
    """One walk of a map with BPF_MAP_LOOKUP_BATCH: ``read(keys_buf, values_buf, n)`` writes the next
    at most ``n`` entries into two writable buffers and returns ``(count, done)``. A failed call leaves
    the walk where it was (the kernel does not move its cursor), so it can be retried with more room."""
    ks = max(key_size, 8)
    token_in, token_out = ffi.new("char[]", ks), ffi.new("char[]", ks)
    opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
    started = False

    def read(kbuf: Any, vbuf: Any, n: int) -> tuple[int, bool]:
        nonlocal started
        count = ffi.new("__u32 *", n)
        rc = lib.bpf_map_lookup_batch(fd, token_in if started else ffi.NULL, token_out,
                                      ffi.from_buffer(kbuf, require_writable=True),
                                      ffi.from_buffer(vbuf, require_writable=True), count, opts)
        done = rc < 0 and -rc == errno.ENOENT
        if rc < 0 and not done:
            hint = f"a hash bucket holds more than {n} entries: pass a larger chunk" \
                if -rc == errno.ENOSPC else ""
            raise BpfError("lookup map (batch)", -rc, target=name, hint=hint)
        ffi.memmove(token_in, token_out, ks)
        started = True
        return int(count[0]), done
    return read
