"""BPF maps with typed, dict-like access, batch operations and pinning."""

from __future__ import annotations

import errno
import os
import struct
import sys
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from ciliumlite.bpf import fs
from ciliumlite.bpf._ffi import ffi, lib, num_possible_cpus
from ciliumlite.bpf.btf import Btf, StructInfo
from ciliumlite.bpf.errors import BpfError, MapFullError, ValidationError, check, error_for
from ciliumlite.bpf.mapinfo import (
    ANY,
    ARRAY_TYPES,
    EXIST,
    NOEXIST,
    PERCPU_TYPES,
    BatchReader,
    MapInfo,
    MapType,
    RawBytes,
    UpdateFlags,
    batch_reader,
)
from ciliumlite.bpf.record import Codec, check_layout, codec_for

if TYPE_CHECKING:
    import numpy as np

    from ciliumlite.bpf.arrays import Array, MapArrays

K = TypeVar("K")
V = TypeVar("V")
_MISSING: Any = object()
#: What the kernel answers a batch call on a map type without batch operations (524: ENOTSUPP).
_NO_BATCH = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524)
Buffer = bytes | bytearray | memoryview


class Map(Generic[K, V]):
    """A BPF map. Typed with record classes or scalar kinds; untyped maps speak ``bytes``.

    Get one from ``BpfObject.map(name, key=..., value=...)`` or ``Map.open_pinned(path, ...)``.
    Per-CPU maps return one value per possible CPU (a list) and take either a list or one value
    (written to every CPU).
    """

    def __init__(
        self,
        fd: int,
        info: MapInfo,
        *,
        key: Any = None,
        value: Any = None,
        key_btf: StructInfo | None = None,
        value_btf: StructInfo | None = None,
        owns_fd: bool = False,
        pin_path: str | None = None,
    ) -> None:
        self._fd = fd
        self.info = info
        self._owns_fd = owns_fd
        self.pin_path = pin_path
        self._views: weakref.WeakSet[Map[Any, Any]] | None = None
        self._key_btf, self._value_btf = key_btf, value_btf
        self.key_codec: Codec = self._codec(key, info.key_size, key_btf, "key")
        self.value_codec: Codec = self._codec(value, info.value_size, value_btf, "value")
        self._percpu = info.type in PERCPU_TYPES
        self._ncpus = num_possible_cpus() if self._percpu else 1
        self._vstride = (info.value_size + 7) // 8 * 8 if self._percpu else info.value_size
        self._kbuf = ffi.new("char[]", max(info.key_size, 8))
        self._kbuf2 = ffi.new("char[]", max(info.key_size, 8))
        self._vbuf = ffi.new("char[]", max(self._vstride * self._ncpus, 8))
        self._np: MapArrays | None = None

    def _codec(self, spec: Any, size: int, btf: StructInfo | None, what: str) -> Codec:
        if spec is None:
            return RawBytes(size)
        codec = codec_for(spec)
        if btf is not None:
            check_layout(spec, btf, what=f"map {self.info.name} {what}")
        elif size != codec.SIZE:
            raise ValidationError(f"map {self.info.name}: {what} type is {codec.SIZE} bytes, map has {size}")
        return codec

    # -- identity --------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The map's name (truncated to 15 characters by the kernel)."""
        return self.info.name

    @property
    def fd(self) -> int:
        """The map's file descriptor; valid until the map or its object is closed."""
        if self._fd < 0:
            raise BpfError("use map", errno.EBADF, target=self.info.name, hint="the map was closed")
        return self._fd

    @property
    def type(self) -> MapType:
        """The kernel map type."""
        return self.info.type

    @property
    def max_entries(self) -> int:
        """Capacity of the map."""
        return self.info.max_entries

    def typed(self, key: Any, value: Any) -> Map[Any, Any]:
        """A view of this map with key and value types, checked against the map's BTF."""
        view: Map[Any, Any] = Map(self._fd, self.info, key=key, value=value, key_btf=self._key_btf,
                                  value_btf=self._value_btf, pin_path=self.pin_path)
        if self._views is not None:
            self._views.add(view)
            view._views = self._views
        return view

    def __repr__(self) -> str:
        k = getattr(self.key_codec, "__name__", type(self.key_codec).__name__)
        v = getattr(self.value_codec, "__name__", type(self.value_codec).__name__)
        return (f"<Map {self.info.name} {self.info.type.name} {k}->{v} "
                f"max_entries={self.info.max_entries} fd={self._fd}>")

    # -- encoding --------------------------------------------------------------------------------------
    def _key_ptr(self, key: K, buf: Any = None) -> Any:
        buf = self._kbuf if buf is None else buf
        raw = self.key_codec.encode(key)
        ffi.memmove(buf, raw, len(raw))
        return buf

    def _value_ptr(self, value: Any) -> Any:
        if self._percpu:
            values = value if isinstance(value, list) else [value] * self._ncpus
            if len(values) != self._ncpus:
                raise ValidationError(f"map {self.name}: per-CPU value needs {self._ncpus} entries, got {len(values)}")
            for i, v in enumerate(values):
                raw = self.value_codec.encode(v)
                ffi.memmove(self._vbuf + i * self._vstride, raw, len(raw))
        else:
            raw = self.value_codec.encode(value)
            ffi.memmove(self._vbuf, raw, len(raw))
        return self._vbuf

    def _decode_value(self, mem: Any) -> Any:
        if self._percpu:
            return [self.value_codec.decode(mem[i * self._vstride:i * self._vstride + self.info.value_size])
                    for i in range(self._ncpus)]
        return self.value_codec.decode(mem[: self.info.value_size])

    # -- single-element operations ---------------------------------------------------------------------
    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: Any) -> Any: ...

    def get(self, key: K, default: Any = None) -> Any:
        """The value for ``key``, or ``default`` when absent."""
        rc = lib.bpf_map_lookup_elem(self.fd, self._key_ptr(key), self._vbuf)
        if rc < 0:
            if -rc == errno.ENOENT:
                return default
            raise error_for("lookup in map", -rc, self.name)
        return self._decode_value(ffi.buffer(self._vbuf, self._vstride * self._ncpus))

    def __getitem__(self, key: K) -> V:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return cast(V, value)

    def __contains__(self, key: object) -> bool:
        return self.get(cast(K, key), _MISSING) is not _MISSING

    def set(self, key: K, value: V | list[V], flags: int = ANY) -> None:
        """Create or replace (``flags``: ANY, NOEXIST, EXIST). A full map raises MapFullError."""
        rc = lib.bpf_map_update_elem(self.fd, self._key_ptr(key), self._value_ptr(value), int(flags))
        if rc < 0:
            err = -rc
            if err == errno.EEXIST:
                raise BpfError("update map (NOEXIST)", err, target=f"{self.name} key {key!r}",
                               hint="the key exists; update with ANY or EXIST to replace it")
            if err == errno.ENOENT and flags & EXIST:
                raise KeyError(key)
            if err == errno.E2BIG and self.info.type in ARRAY_TYPES:
                raise ValidationError(f"map {self.name}: index {key!r} is outside 0..{self.max_entries - 1}")
            if err == errno.E2BIG:
                raise MapFullError("update map", err, target=self.name,
                                   hint=f"all {self.max_entries} entries are used: delete some or raise max_entries")
            raise error_for("update map", err, self.name)

    def __setitem__(self, key: K, value: V) -> None:
        self.set(key, value)

    def delete(self, key: K) -> None:
        """Remove ``key``; KeyError when it is absent."""
        rc = lib.bpf_map_delete_elem(self.fd, self._key_ptr(key))
        if rc < 0:
            if -rc == errno.ENOENT:
                raise KeyError(key)
            raise error_for("delete from map", -rc, self.name)

    def __delitem__(self, key: K) -> None:
        self.delete(key)

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self.delete(key)
        return value

    # -- iteration -------------------------------------------------------------------------------------
    def _raw_keys(self) -> Iterator[bytes]:
        if self.info.type in ARRAY_TYPES:
            for i in range(self.info.max_entries):
                yield struct.pack("<I", i)
            return
        prev = ffi.NULL
        cur, nxt = self._kbuf2, ffi.new("char[]", max(self.info.key_size, 8))
        while True:
            rc = lib.bpf_map_get_next_key(self.fd, prev, nxt)
            if rc < 0:
                if -rc == errno.ENOENT:
                    return
                raise error_for("iterate map", -rc, self.name)
            raw = bytes(ffi.buffer(nxt, self.info.key_size))
            yield raw
            ffi.memmove(cur, raw, len(raw))
            prev = cur

    def _raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        # One lookup per key: the walk of a map (type or kernel) without batch lookups.
        vbuf = ffi.new("char[]", max(self._vstride * self._ncpus, 8))
        for raw in self._raw_keys():
            rc = lib.bpf_map_lookup_elem(self.fd, raw, vbuf)
            if rc < 0 and -rc != errno.ENOENT:   # ENOENT: deleted since the walk saw it
                raise error_for("lookup in map", -rc, self.name)
            if rc == 0:
                yield raw, bytes(ffi.buffer(vbuf, self._vstride * self._ncpus))

    def keys(self) -> Iterator[K]:
        """Every key (a snapshot-free walk: concurrent changes may be seen or missed)."""
        for raw in self._raw_keys():
            yield cast(K, self.key_codec.decode(raw))

    def __iter__(self) -> Iterator[K]:
        return self.keys()

    def items(self) -> Iterator[tuple[K, V]]:
        """Every (key, value) pair; uses batch lookups where the kernel supports them."""
        try:
            raw_keys, raw_values, n = self.lookup_batch_raw()
        except BpfError as exc:
            if exc.errno not in _NO_BATCH:
                raise
            for kb, vb in self._raw_items():
                yield self.key_codec.decode(kb), self._decode_value(vb)
            return
        ks, vs = self.info.key_size, self._vstride * self._ncpus
        kmem, vmem = memoryview(raw_keys), memoryview(raw_values)
        kdec, vdec = self.key_codec.decode, self.value_codec.decode if not self._percpu else self._decode_value
        for i in range(n):   # slices of one memoryview: no copy and no cffi buffer per entry
            yield kdec(kmem[i * ks:(i + 1) * ks]), vdec(vmem[i * vs:(i + 1) * vs])

    def values(self) -> Iterator[V]:
        """Every value."""
        for _, v in self.items():
            yield v

    def __len__(self) -> int:
        if self.info.type in ARRAY_TYPES:
            return self.info.max_entries
        return sum(1 for _ in self._raw_keys())

    def clear(self) -> None:
        """Delete every entry (arrays: zero every slot)."""
        if self.info.type in ARRAY_TYPES:
            zero = ffi.new("char[]", max(self._vstride * self._ncpus, 8))
            for raw in self._raw_keys():
                check(lib.bpf_map_update_elem(self.fd, raw, zero, 0), "clear map", self.name)
            return
        keys = list(self._raw_keys())
        for raw in keys:
            rc = lib.bpf_map_delete_elem(self.fd, raw)
            if rc < 0 and -rc != errno.ENOENT:
                raise error_for("clear map", -rc, self.name)

    # -- batch operations ------------------------------------------------------------------------------
    def _pack_many(self, items: Sequence[Any] | Buffer | Array, codec: Codec, stride: int,
                   what: str) -> tuple[Any, int]:
        numpy = sys.modules.get("numpy")   # an ndarray means numpy is loaded: no import for everyone else
        if numpy is not None and isinstance(items, numpy.ndarray):
            arr, n = self._arrays().batch_input(items, what)
            return ffi.from_buffer(arr), n
        if isinstance(items, (bytes, bytearray, memoryview)):
            buf = memoryview(items).cast("B")
            if len(buf) % stride:
                raise ValidationError(f"map {self.name}: {what} buffer of {len(buf)} bytes is not a multiple of {stride}")
            return ffi.from_buffer(buf), len(buf) // stride
        n = len(items)
        out = bytearray(n * stride)
        encode_into = codec.encode_into
        if self._percpu and what == "values":
            for i, item in enumerate(items):
                for c, v in enumerate(item if isinstance(item, list) else [item] * self._ncpus):
                    encode_into(v, out, i * stride + c * self._vstride)
        else:
            for i, item in enumerate(items):
                encode_into(item, out, i * stride)
        return ffi.from_buffer(out), n

    def update_batch(self, keys: Sequence[K] | Buffer | Array, values: Sequence[V] | Buffer | Array,
                     flags: int = ANY) -> int:
        """Write many entries in one syscall. ``keys``/``values`` are sequences of records, packed
        buffers, or numpy arrays of :attr:`key_dtype`/:attr:`value_dtype` (per-CPU values: shape
        ``(n, ncpus)``, or ``(n,)`` for every CPU), which go to the kernel as they are (copied only to zero
        a dtype's padding). An array of another dtype is a :class:`ValidationError` naming the one expected,
        before anything is written.

        Returns the number written. On failure the error says how many entries were applied first.
        """
        if flags != ANY:
            raise ValidationError(f"map {self.name}: batch updates take no NOEXIST/EXIST flag (the kernel "
                                  "accepts only BPF_F_LOCK there); use set() per entry for those")
        kptr, nk = self._pack_many(keys, self.key_codec, self.info.key_size, "keys")
        vptr, nv = self._pack_many(values, self.value_codec, self._vstride * self._ncpus, "values")
        if nk != nv:
            raise ValidationError(f"map {self.name}: {nk} keys but {nv} values")
        if nk == 0:
            return 0
        count = ffi.new("__u32 *", nk)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts"),
                                                        "elem_flags": int(flags)})
        rc = lib.bpf_map_update_batch(self.fd, kptr, vptr, count, opts)
        if rc < 0:
            err = -rc
            cls = MapFullError if err in (errno.E2BIG, errno.ENOSPC) else BpfError
            applied = f"{count[0]} of {nk} entries applied" if count[0] < nk else "some entries may be applied"
            raise cls("update map (batch)", err, target=f"{self.name}: {applied}")
        return int(count[0])

    def _batch_reader(self) -> BatchReader:
        return batch_reader(self.fd, self.info.key_size, self.name)

    def lookup_batch_raw(self, chunk: int = 4096) -> tuple[bytes, bytes, int]:
        """All entries as packed buffers: (keys, values, count), fetched ``chunk`` entries per syscall."""
        ks, vs = self.info.key_size, self._vstride * self._ncpus
        keys_out, vals_out, total = bytearray(), bytearray(), 0
        kbuf, vbuf = bytearray(ks * chunk), bytearray(vs * chunk)
        read = self._batch_reader()
        while True:
            n, done = read(kbuf, vbuf, chunk)
            keys_out += memoryview(kbuf)[:n * ks]
            vals_out += memoryview(vbuf)[:n * vs]
            total += n
            if done:
                return bytes(keys_out), bytes(vals_out), total

    def lookup_batch(self) -> list[tuple[K, V]]:
        """All entries, decoded to records, fetched with batch syscalls (see :meth:`to_numpy` for arrays)."""
        return list(self.items())

    def delete_batch(self, keys: Sequence[K] | Buffer | Array) -> int:
        """Delete many keys in one syscall (records, a packed buffer or a :attr:`key_dtype` array);
        returns how many were deleted."""
        kptr, nk = self._pack_many(keys, self.key_codec, self.info.key_size, "keys")
        if nk == 0:
            return 0
        count = ffi.new("__u32 *", nk)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        rc = lib.bpf_map_delete_batch(self.fd, kptr, count, opts)
        if rc < 0:
            raise BpfError("delete from map (batch)", -rc, target=f"{self.name}: {count[0]} of {nk} deleted")
        return int(count[0])

    # -- numpy (ciliumlite.bpf.arrays) --------------------------------------------------------------------
    def _arrays(self) -> MapArrays:
        if self._np is None:
            from ciliumlite.bpf.arrays import MapArrays  # here: numpy loads on first use only

            self._np = MapArrays(self.name, self.key_codec, self.value_codec, self._key_btf, self._value_btf,
                                 self.info.key_size, self.info.value_size,
                                 ncpus=self._ncpus if self._percpu else 0, vstride=self._vstride)
        return self._np

    @property
    def key_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of a key: the record's fields by name at their C offsets, a scalar kind's
        dtype, an untyped map's BTF members (C names), else ``V<key_size>``. Network-order fields and
        IPv4 addresses are big-endian in it, so they read as host integers."""
        return self._arrays().key_dtype

    @property
    def value_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of a value, as :attr:`key_dtype` (per-CPU value arrays: shape ``(n, ncpus)``)."""
        return self._arrays().value_dtype

    def lookup_batch_numpy(self, chunk: int = 4096) -> tuple[Array, Array]:
        """All entries as ``(keys, values)`` arrays of :attr:`key_dtype`/:attr:`value_dtype`, the batch
        syscalls writing straight into them (no Python object per entry): the array twin of
        :meth:`lookup_batch_raw`. Without batch lookups (map type or kernel) it raises :class:`BpfError`."""
        return self._arrays().collect(self._batch_reader(), min(self.max_entries, 1 << 20), chunk)

    def iter_batches(self, chunk: int = 4096) -> Iterator[tuple[Array, Array]]:
        """``(keys, values)`` arrays of up to ``chunk`` entries at a time (a snapshot-free walk, as
        :meth:`items`), for maps too big to hold at once; without batch lookups, walked per key."""
        arrays, started = self._arrays(), False
        try:
            for batch in arrays.batches(self._batch_reader(), chunk):
                started = True
                yield batch
        except BpfError as exc:
            if started or exc.errno not in _NO_BATCH:
                raise
            yield from arrays.chunks(self._raw_items(), chunk)

    def to_numpy(self, chunk: int = 4096) -> tuple[Array, Array]:
        """The whole map as ``(keys, values)`` arrays, as :meth:`lookup_batch_numpy`, on every map: one
        without batch lookups is walked per key."""
        try:
            return self.lookup_batch_numpy(chunk)
        except BpfError as exc:
            if exc.errno not in _NO_BATCH:
                raise
            return self._arrays().from_pairs(self._raw_items())

    def to_pandas(self, decode: bool = False, chunk: int = 4096) -> Any:
        """The whole map as a ``pandas.DataFrame``, a column per key field then per value field (a name in
        both gets ``key.``/``value.``; a scalar is ``key``/``value``); per-CPU maps have a row per key and
        CPU and a ``cpu`` column. Integers are host order, ports included; ``decode=True`` makes IPV4 and
        MAC fields text (categoricals in address order). Needs pandas (``pip install
        'ciliumlite[pandas]'``), else :class:`NotSupportedError`."""
        return self._arrays().frame(*self.to_numpy(chunk), decode=decode)

    # -- pinning and lifetime --------------------------------------------------------------------------
    def pin(self, path: str) -> None:
        """Pin the map at ``path`` on bpffs so it outlives this process."""
        self.pin_path = fs.pin(self.fd, path, "map", self.name)

    def unpin(self) -> None:
        """Remove the pin (the map lives on while anything else holds it)."""
        fs.unpin(self.pin_path)
        self.pin_path = None

    @classmethod
    def open_pinned(cls, path: str, key: Any = None, value: Any = None) -> Map[Any, Any]:
        """Open a map pinned at ``path``, checking key/value types against its BTF when it has any."""
        fd = lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise BpfError("open pinned map", -fd, target=path)
        try:
            info = MapInfo.from_fd(fd)
            kb = vb = None
            if info.btf_id and (key is not None or value is not None):
                btf = Btf.from_kernel_id(info.btf_id)
                if btf is not None:
                    try:
                        kb = btf.struct_info(info.btf_key_type_id) if info.btf_key_type_id else None
                        vb = btf.struct_info(info.btf_value_type_id) if info.btf_value_type_id else None
                    finally:
                        btf.close()
            return Map(fd, info, key=key, value=value, key_btf=kb, value_btf=vb, owns_fd=True, pin_path=path)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def create(cls, map_type: MapType, name: str, key: Any, value: Any, max_entries: int, *,
               flags: int = 0) -> Map[Any, Any]:
        """Create a map from user space (no BTF: ``key``/``value`` are checked by size only); the
        handle owns the fd. Used for the inner maps of a map-in-map, which no object declares.

        Raises :class:`ValidationError` for a bad size or name, :class:`BpfError` when the kernel
        refuses (EINVAL for a type/flag combination it does not take, ENOMEM, EPERM).
        """
        if not 0 < max_entries < 1 << 32:
            raise ValidationError(f"map {name}: max_entries {max_entries} is not a positive u32")
        kc, vc = codec_for(key), codec_for(value)
        opts = ffi.new("struct bpf_map_create_opts *", {"sz": ffi.sizeof("struct bpf_map_create_opts"),
                                                         "map_flags": flags})
        fd = lib.bpf_map_create(int(map_type), name[:15].encode(), kc.SIZE, vc.SIZE, max_entries, opts)
        if fd < 0:
            raise BpfError("create map", -fd, target=f"{name} ({map_type.name}, {max_entries} entries)")
        try:
            return Map(fd, MapInfo.from_fd(fd), key=key, value=value, owns_fd=True)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_id(cls, map_id: int, key: Any = None, value: Any = None) -> Map[Any, Any]:
        """Open the map with kernel id ``map_id`` (e.g. an inner map, as its outer map reads back);
        types are checked by size. Raises :class:`BpfError` (ENOENT once the map is gone)."""
        fd = lib.bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            raise BpfError("open map by id", -fd, target=f"map id {map_id}")
        try:
            return Map(fd, MapInfo.from_fd(fd), key=key, value=value, owns_fd=True)
        except BaseException:
            os.close(fd)
            raise

    def _invalidate(self) -> None:
        # The owning object closed its fd: forget it so a reused fd number is never written to.
        self._fd = -1

    def close(self) -> None:
        """Release the fd if this handle owns it (maps of a BpfObject close with the object)."""
        if self._owns_fd and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> Map[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_owns_fd", False) and getattr(self, "_fd", -1) >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass

    def update_many(self, entries: Iterable[tuple[K, V]], flags: int = ANY) -> int:
        """Batch-update from (key, value) pairs."""
        pairs = list(entries)
        return self.update_batch([k for k, _ in pairs], [v for _, v in pairs], flags)


__all__ = ["ANY", "EXIST", "NOEXIST", "Map", "MapInfo", "MapType", "RawBytes", "UpdateFlags"]
