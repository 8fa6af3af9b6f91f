"""Maps at numpy speed: structured dtypes from records or BTF, batch transfers with arrays, DataFrames.

A map's key and value each get a numpy dtype with the C layout (:func:`record_dtype` for a record,
:func:`btf_dtype` for a BTF struct, :func:`kind_dtype` for a scalar kind). Arrays of that dtype go to
and come from the kernel's batch calls as they are, without a Python object per entry;
:class:`~ciliumlite.bpf.map.Map` exposes this as ``key_dtype``/``value_dtype``, array arguments of
``update_batch``/``delete_batch``, ``lookup_batch_numpy``, ``iter_batches``, ``to_numpy`` and
``to_pandas``. This module holds the numpy side; the map keeps the syscalls.

Byte order is part of the dtype: ``BE16``/``BE32`` fields are ``>u2``/``>u4`` and an ``IPV4`` field is
``>u4`` (the address as ``int(IPv4Address)``), so numpy reads ports and addresses as host integers and
writes them in network order, with no ``htons`` anywhere. A ``MAC`` is the ``<u8`` of C's ``mac_t``.
"""

from __future__ import annotations

import errno
import importlib
import itertools
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from ciliumlite.bpf.btf import StructInfo, TypeInfo
from ciliumlite.bpf.errors import BpfError, NotSupportedError, ValidationError
from ciliumlite.bpf.mapinfo import BatchReader
from ciliumlite.bpf.record import Codec, Kind, Record, Scalar, is_padding

#: An array of map keys or values (a structured array for records and structs).
Array = npt.NDArray[Any]

_FMT = {"B": "u1", "H": "<u2", "I": "<u4", "Q": "<u8", "b": "i1", "h": "<i2", "i": "<i4", "q": "<i8"}
#: Kinds whose struct format does not say what they are: the wire order of the network-order kinds
#: (an address is its __be32) and Cilium's mac_t, a __u64 holding the 6 bytes in wire order.
_BY_NAME = {"be16": ">u2", "be32": ">u4", "ipv4": ">u4", "mac": "<u8"}
_OCTETS = np.array([str(i) for i in range(256)])
_HEX = np.array([f"{i:02x}" for i in range(256)])


# -- dtypes ------------------------------------------------------------------------------------------------
def kind_dtype(kind: Kind) -> np.dtype[Any]:
    """The numpy dtype of one field of ``kind`` (``U32`` -> ``<u4``, ``BE16`` -> ``>u2``, ``Bytes(6)`` ->
    six ``u1``); ``V<size>`` raw bytes for a kind numpy has no number for."""
    if kind.name in _BY_NAME:
        return np.dtype(_BY_NAME[kind.name])
    if kind.fmt in _FMT:
        code = _FMT[kind.fmt]
        return np.dtype(">" + code[1:] if kind.to_wire in (socket.htons, socket.htonl) else code)
    if kind.fmt == f"{kind.size}s":
        return np.dtype(("u1", (kind.size,)))
    return np.dtype(f"V{kind.size}")


def _struct_dtype(fields: Iterable[tuple[str, np.dtype[Any], int]], size: int) -> np.dtype[Any]:
    names, formats, offsets = [], [], []
    for name, dt, off in fields:
        names.append(name)
        formats.append(dt)
        offsets.append(off)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": size})


def record_dtype(record: type[Record]) -> np.dtype[Any]:
    """The structured dtype of a record class: its fields by their Python names at their offsets,
    ``itemsize`` = ``record.SIZE`` (padding stays as gaps between the fields)."""
    return _struct_dtype(((f.name, kind_dtype(f.kind), f.offset) for f in record.LAYOUT), record.SIZE)


def _btf_type_dtype(t: TypeInfo) -> np.dtype[Any]:
    if t.kind == "int" and t.size in (1, 2, 4, 8):
        if t.is_bool and t.size == 1:
            return np.dtype("?")
        return np.dtype(("|" if t.size == 1 else ">" if t.big_endian else "<") + ("i" if t.signed else "u")
                        + str(t.size))
    if t.kind in ("enum", "ptr") and t.size in (1, 2, 4, 8):
        return np.dtype(f"<u{t.size}")
    if t.kind == "array" and t.elem is not None and t.elem.size and t.size % t.elem.size == 0:
        elem = _btf_type_dtype(t.elem)
        if elem.base.kind != "V":   # an array of arrays is one sub-array of the joined shape
            return np.dtype((elem.base, (t.size // t.elem.size, *elem.shape)))
    return np.dtype(f"V{t.size}")   # nested structs and unions, floats, odd sizes: their bytes


def btf_dtype(info: StructInfo) -> np.dtype[Any]:
    """The dtype of a BTF type: a struct's members by their C names at their BTF offsets (integers,
    ``__be*`` typedefs as big-endian, integer arrays as sub-arrays, nested structs and unions as
    ``V<n>`` bytes); a scalar type as its integer. Padding members, bitfields and
    anonymous members get no field; their bytes stay inside ``itemsize``."""
    if not info.members:
        return _btf_type_dtype(info.scalar or TypeInfo(info.kind, info.name, info.size))
    return _struct_dtype(((m.name, _btf_type_dtype(m.type), m.offset) for m in info.members
                          if m.name and not is_padding(m.name) and not m.bit_size and m.type.size), info.size)


def codec_dtype(codec: Codec, btf: StructInfo | None, size: int) -> np.dtype[Any]:
    """The dtype a map uses for its key or value: the record's, the scalar kind's, the BTF type's for an
    untyped map that has BTF, else ``V<size>`` raw bytes."""
    if isinstance(codec, type) and issubclass(codec, Record):
        return record_dtype(codec)
    if isinstance(codec, Scalar):
        return kind_dtype(codec.kind)
    if btf is not None and btf.size == size:
        return btf_dtype(btf)
    return np.dtype(f"V{size}")


def _has_holes(dt: np.dtype[Any]) -> bool:
    """Whether some bytes of a structured dtype belong to no field (padding)."""
    if dt.names is None:
        return False
    covered = np.zeros(dt.itemsize, bool)
    for name in dt.names:
        sub, off = dt.fields[name][:2]  # type: ignore[index]
        covered[off:off + sub.itemsize] = True
    return not covered.all()


def _kinds(codec: Codec) -> dict[str, Kind]:
    if isinstance(codec, type) and issubclass(codec, Record):
        return {f.name: f.kind for f in codec.LAYOUT}
    return {"": codec.kind} if isinstance(codec, Scalar) else {}


# -- readable text ---------------------------------------------------------------------------------------
def format_ipv4(values: npt.ArrayLike) -> Array:
    """Dotted-quad strings (a 1-D array) of IPv4 addresses held as integers (an ``IPV4`` field)."""
    v = np.asarray(values).astype("=u4").ravel()
    out: Array = _OCTETS[v >> 24]
    for shift in (16, 8, 0):
        out = np.char.add(np.char.add(out, "."), _OCTETS[(v >> shift) & 0xFF])
    return out


def format_mac(values: npt.ArrayLike) -> Array:
    """``aa:bb:cc:dd:ee:ff`` strings (a 1-D array) of ``MAC`` fields (C's ``mac_t``: the 6 wire bytes in
    a ``<u8``)."""
    octets = np.asarray(values).astype("<u8").ravel().view(np.uint8).reshape(-1, 8)
    out: Array = _HEX[octets[:, 0]]
    for i in range(1, 6):
        out = np.char.add(np.char.add(out, ":"), _HEX[octets[:, i]])
    return out


_DECODERS: dict[str, Callable[[Array], Array]] = {"ipv4": format_ipv4, "mac": format_mac}


def _pandas() -> Any:
    try:
        return importlib.import_module("pandas")
    except ImportError as exc:
        raise NotSupportedError("Map.to_pandas needs pandas", feature="pandas",
                                hint="pip install 'ciliumlite[pandas]'") from exc


# -- one map's arrays ------------------------------------------------------------------------------------
class MapArrays:
    """The numpy side of one map: its dtypes, and the buffers its batch calls read and write.

    ``ncpus`` is 0 for a map with one value per key; for a per-CPU map the kernel's values are
    ``vstride`` (``value_size`` rounded up to 8) bytes apart, ``ncpus`` of them per key.
    """

    def __init__(self, name: str, key: Codec, value: Codec, key_btf: StructInfo | None,
                 value_btf: StructInfo | None, key_size: int, value_size: int, *, ncpus: int = 0,
                 vstride: int = 0) -> None:
        self.name = name
        self.key_dtype = codec_dtype(key, key_btf, key_size)
        self.value_dtype = codec_dtype(value, value_btf, value_size)
        self._kinds = {"key": _kinds(key), "value": _kinds(value)}
        self.ncpus = ncpus
        self.vstride = vstride or value_size
        self.key_stride = key_size
        self.value_stride = self.vstride * max(ncpus, 1)
        self._holes = {"keys": _has_holes(self.key_dtype), "values": _has_holes(self.value_dtype)}

    # -- into the kernel ----------------------------------------------------------------------------------
    def batch_input(self, items: Array, what: str) -> tuple[Array, int]:
        """``items`` (``what``: "keys" or "values") as the C-contiguous buffer a batch call takes, and its
        entry count. Takes arrays of the map's dtype (per-CPU values: shape ``(n, ncpus)``, or ``(n,)``
        for the same value on every CPU), raw ``V<itemsize>`` arrays, and ``uint8`` buffers of whole
        entries; anything else is a ValidationError saying what was expected. Nothing reaches the map.
        An array whose dtype has padding is copied with the padding zeroed; one without goes as it is."""
        want = self.key_dtype if what == "keys" else self.value_dtype
        stride = self.key_stride if what == "keys" else self.value_stride
        if items.dtype != want and items.dtype in (np.uint8, np.int8):   # packed bytes, like bytes
            if items.nbytes % stride:
                raise ValidationError(f"map {self.name}: {what} buffer of {items.nbytes} bytes is not a "
                                      f"multiple of {stride}")
            return np.ascontiguousarray(items), items.nbytes // stride
        if items.dtype.kind == "V" and items.dtype.names is None and items.dtype.itemsize == want.itemsize:
            items = items.view(want)   # raw entries of the right size
        self._check_dtype(items.dtype, want, what)
        if what == "values" and self.ncpus:
            return self._percpu_input(items)
        if items.ndim != 1:
            raise ValidationError(f"map {self.name}: {what} must be a 1-D array, got shape {items.shape}")
        if self._holes[what]:
            # numpy leaves the padding between fields undefined in arrays it makes (copies, fancy
            # indexing, concatenations), and the kernel hashes whole keys: send a copy with zero padding,
            # as records write it (assignment copies fields only).
            clean = np.zeros(len(items), want)
            clean[...] = items
            return clean, len(items)
        return np.ascontiguousarray(items), len(items)

    def _check_dtype(self, got: np.dtype[Any], want: np.dtype[Any], what: str) -> None:
        if got == want:
            return
        why = ""
        if got.names is not None and want.names is not None and got.itemsize == want.itemsize:
            if got.names != want.names:
                why = f": fields {', '.join(got.names)}, expected {', '.join(want.names)}"
            else:
                name = next(n for n in want.names if got.fields[n] != want.fields[n])  # type: ignore[index]
                (gt, go), (wt, wo) = got.fields[name][:2], want.fields[name][:2]  # type: ignore[index]
                why = f": field {name!r} is {gt.str} at offset {go}, expected {wt.str} at offset {wo}"
        elif got.itemsize != want.itemsize:
            why = f": {got.itemsize}-byte entries, expected {want.itemsize}"
        raise ValidationError(f"map {self.name}: {what} array has dtype {got}, expected {want}{why} "
                              f"(make one with np.zeros(n, m.{what[:-1]}_dtype))")

    def _percpu_input(self, values: Array) -> tuple[Array, int]:
        if values.ndim == 1:
            values = values[:, None]   # one value per key: every CPU gets it, as Map.set does
        elif values.ndim != 2 or values.shape[1] != self.ncpus:
            raise ValidationError(f"map {self.name}: per-CPU values need shape (n, {self.ncpus}) or (n,), "
                                  f"got {values.shape}")
        n = len(values)
        if self.vstride == values.dtype.itemsize and values.shape[1] == self.ncpus:
            return np.ascontiguousarray(values), n
        # The kernel wants each CPU's value at an 8-byte stride: lay them out with zeroed padding.
        out = np.zeros(n * self.value_stride, np.uint8)
        self._percpu_view(out, n)[...] = values
        return out, n

    # -- out of the kernel --------------------------------------------------------------------------------
    def _percpu_view(self, raw: Array, n: int) -> Array:
        strides = (self.value_stride, self.vstride)
        return np.ndarray((n, self.ncpus), self.value_dtype, buffer=raw, strides=strides)

    def views(self, kraw: Array, vraw: Array, n: int) -> tuple[Array, Array]:
        """The first ``n`` entries of two byte buffers filled by the kernel, as (keys, values) arrays."""
        keys = kraw[:n * self.key_stride].view(self.key_dtype)
        if not self.ncpus:
            return keys, vraw[:n * self.value_stride].view(self.value_dtype)
        return keys, self._percpu_view(vraw, n)

    def _buffers(self, n: int) -> tuple[Array, Array]:
        return np.empty(n * self.key_stride, np.uint8), np.empty(n * self.value_stride, np.uint8)

    def collect(self, read: BatchReader, capacity: int, chunk: int) -> tuple[Array, Array]:
        """Every entry of one batch walk, the kernel writing each batch straight into the result.

        ``capacity`` is what to expect (``max_entries``); the buffers grow if the walk returns more (a
        map changing under it), and when the kernel needs room for a whole hash bucket (ENOSPC).
        """
        if chunk < 1:
            raise ValidationError(f"map {self.name}: chunk must be at least 1, not {chunk}")
        cap, n = max(capacity, 1), 0
        kraw, vraw = self._buffers(cap)
        while True:
            if n == cap:
                kraw, vraw, cap = self._grow(kraw, vraw, n, cap * 2)
            want = min(chunk, cap - n)
            try:
                got, done = read(kraw[n * self.key_stride:], vraw[n * self.value_stride:], want)
            except BpfError as exc:
                if exc.errno != errno.ENOSPC or want >= chunk:   # a bucket did not fit a short request: retry
                    raise
                kraw, vraw, cap = self._grow(kraw, vraw, n, cap + chunk)
                continue
            n += got
            if done:
                break
        keys, values = self.views(kraw, vraw, n)
        # An almost empty map must not keep a max_entries-sized buffer alive through its views.
        return (keys.copy(), values.copy()) if 2 * n < cap else (keys, values)

    def _grow(self, kraw: Array, vraw: Array, n: int, cap: int) -> tuple[Array, Array, int]:
        k2, v2 = self._buffers(cap)
        k2[:n * self.key_stride] = kraw[:n * self.key_stride]
        v2[:n * self.value_stride] = vraw[:n * self.value_stride]
        return k2, v2, cap

    def batches(self, read: BatchReader, chunk: int) -> Iterator[tuple[Array, Array]]:
        """(keys, values) arrays of up to ``chunk`` entries each, one per kernel batch, until the map ends."""
        if chunk < 1:
            raise ValidationError(f"map {self.name}: chunk must be at least 1, not {chunk}")
        while True:
            kraw, vraw = self._buffers(chunk)
            got, done = read(kraw, vraw, chunk)
            if got:
                yield self.views(kraw, vraw, got)
            if done:
                return

    def from_pairs(self, pairs: Iterable[tuple[bytes, bytes]]) -> tuple[Array, Array]:
        """(keys, values) arrays of raw (key, value) byte pairs (the walk of a map without batch calls)."""
        ks, vs = [], []
        for k, v in pairs:
            ks.append(k)
            vs.append(v)
        kraw = np.frombuffer(bytearray(b"".join(ks)), np.uint8)
        return self.views(kraw, np.frombuffer(bytearray(b"".join(vs)), np.uint8), len(ks))

    def chunks(self, pairs: Iterator[tuple[bytes, bytes]], chunk: int) -> Iterator[tuple[Array, Array]]:
        """:meth:`from_pairs` ``chunk`` pairs at a time."""
        while len((batch := self.from_pairs(itertools.islice(pairs, chunk)))[0]):
            yield batch

    # -- pandas -------------------------------------------------------------------------------------------
    def frame(self, keys: Array, values: Array, *, decode: bool = False) -> Any:
        """A DataFrame with a column per key field and per value field (see ``Map.to_pandas``)."""
        pd = _pandas()
        if self.ncpus:   # long form: a row per (key, CPU), with the CPU's number
            keys = np.repeat(keys, self.ncpus)
            values = values.reshape(-1)
        kcols, vcols = self._columns(keys, "key", decode), self._columns(values, "value", decode)
        clash = {n for n, _ in kcols} & {n for n, _ in vcols}
        cols = {f"key.{n}" if n in clash else n: c for n, c in kcols}
        if self.ncpus:
            cols["cpu"] = np.tile(np.arange(self.ncpus), len(values) // self.ncpus)
        cols.update((f"value.{n}" if n in clash else n, c) for n, c in vcols)
        return pd.DataFrame(cols)

    def _columns(self, arr: Array, side: str, decode: bool) -> list[tuple[str, Any]]:
        kinds = self._kinds[side]
        if arr.dtype.names is None:
            return [(side, self._column(arr, kinds.get(""), decode))]
        return [(name, self._column(arr[name], kinds.get(name), decode)) for name in arr.dtype.names]

    @staticmethod
    def _column(a: Array, kind: Kind | None, decode: bool) -> Any:
        if decode and kind is not None and kind.name in _DECODERS:
            # Addresses recur over many entries: format each distinct one once, as a categorical whose
            # order is the addresses' numeric order (so sorting and < follow the addresses, not the text).
            pd = _pandas()
            codes, uniques = pd.factorize(a.astype(a.dtype.newbyteorder("=")), sort=True)
            return pd.Categorical.from_codes(codes, categories=_DECODERS[kind.name](uniques), ordered=True)
        if a.dtype.kind == "V" or a.ndim > 1:   # raw bytes and sub-arrays: a bytes object per row
            return np.array([a[i].tobytes() for i in range(len(a))], dtype=object)
        return a.astype(a.dtype.newbyteorder("="))   # pandas wants host byte order


__all__ = ["Array", "MapArrays", "btf_dtype", "codec_dtype", "format_ipv4", "format_mac", "kind_dtype",
           "record_dtype"]
