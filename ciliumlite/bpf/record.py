"""Records: frozen dataclasses that mirror C structs, with precompiled ``struct`` codecs.

A record class declares its fields with ``Annotated`` kinds, in C order::

    @dataclass(frozen=True, slots=True)
    class Lb4Key(Record, c_name="lb4_key"):
        address: Annotated[IPv4Address, IPV4]
        dport: Annotated[int, BE16]
        backend_slot: Annotated[int, U16]

Offsets follow C's natural alignment (or none with ``packed=True``; ``At(n)`` pins one); padding members of the C
struct (``pad*``, ``reserved*``, ``unused*``) need no Python field. ``check_layout`` compares a record
with the BTF of the map it will be used on, so a drift between C and Python is caught at load.
"""

from __future__ import annotations

import inspect
import ipaddress
import operator
import socket
import struct
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ciliumlite.bpf.btf import StructInfo
from ciliumlite.bpf.errors import LayoutError, ValidationError


def _ident(v: Any) -> Any:
    return v


@dataclass(frozen=True, slots=True)
class Kind:
    """How one field is stored: struct format, size, alignment and Python<->wire converters."""

    name: str
    fmt: str
    size: int
    align: int
    to_wire: Callable[[Any], Any] = _ident
    from_wire: Callable[[Any], Any] = _ident
    coerce: Callable[[Any], Any] = _ident
    lo: int | None = None
    hi: int | None = None


def _int_kind(name: str, fmt: str, size: int, signed: bool = False) -> Kind:
    lo, hi = (-(1 << (size * 8 - 1)), (1 << (size * 8 - 1)) - 1) if signed else (0, (1 << (size * 8)) - 1)
    return Kind(name, fmt, size, size, lo=lo, hi=hi)


def _ipv4(v: Any) -> ipaddress.IPv4Address:
    if isinstance(v, ipaddress.IPv4Address):
        return v
    try:
        return ipaddress.IPv4Address(v)
    except ValueError as exc:
        raise ValidationError(f"not an IPv4 address: {v!r}") from exc


def mac_to_bytes(mac: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' -> 6 bytes, with a clear error for anything else."""
    try:
        raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    except (ValueError, AttributeError) as exc:
        raise ValidationError(f"not a MAC address: {mac!r}") from exc
    if len(raw) != 6:
        raise ValidationError(f"not a MAC address: {mac!r}")
    return raw


def mac_from_bytes(raw: bytes) -> str:
    """6 (or more) bytes -> 'aa:bb:cc:dd:ee:ff'."""
    return ":".join(f"{b:02x}" for b in raw[:6])


def _mac(v: Any) -> str:
    return mac_from_bytes(mac_to_bytes(v))


U8 = _int_kind("u8", "B", 1)
U16 = _int_kind("u16", "H", 2)
U32 = _int_kind("u32", "I", 4)
U64 = _int_kind("u64", "Q", 8)
S32 = _int_kind("s32", "i", 4, signed=True)
S64 = _int_kind("s64", "q", 8, signed=True)
#: A 16-bit value stored in network byte order (ports), seen from Python as a host int.
BE16 = Kind("be16", "H", 2, 2, socket.htons, socket.ntohs, lo=0, hi=0xFFFF)
#: A 32-bit value stored in network byte order, seen from Python as a host int.
BE32 = Kind("be32", "I", 4, 4, socket.htonl, socket.ntohl, lo=0, hi=0xFFFFFFFF)
#: An IPv4 address stored as a ``__be32``.
IPV4 = Kind("ipv4", "4s", 4, 4, lambda a: a.packed, ipaddress.IPv4Address, _ipv4)
#: A MAC address stored as Cilium's ``mac_t``: 6 bytes in wire order in a zero-padded u64.
MAC = Kind("mac", "8s", 8, 8, lambda m: mac_to_bytes(m) + b"\0\0", mac_from_bytes, _mac)


def Bytes(n: int) -> Kind:
    """A fixed-size byte string (a ``char[n]`` or ``__u8[n]`` member)."""
    return Kind(f"u8[{n}]", f"{n}s", n, 1)


@dataclass(frozen=True, slots=True)
class At:
    """Place a field at an explicit byte offset (after unnamed or padding members of the C struct)."""

    offset: int


class Codec(Protocol):
    """What a map needs to turn Python values into bytes and back."""

    SIZE: int

    def encode(self, value: Any) -> bytes: ...
    def decode(self, raw: bytes | memoryview) -> Any: ...


class Scalar:
    """A codec for a single scalar (a map keyed or valued by a plain integer)."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.SIZE = kind.size
        self._s = struct.Struct("<" + kind.fmt)

    def encode(self, value: Any) -> bytes:
        """Pack one value."""
        _check_range(self.kind, value, self.kind.name)
        return self._s.pack(self.kind.to_wire(self.kind.coerce(value)))

    def decode(self, raw: bytes | memoryview) -> Any:
        """Unpack one value."""
        return self.kind.from_wire(self._s.unpack_from(raw)[0])

    def __repr__(self) -> str:
        return f"Scalar({self.kind.name})"


def _check_range(kind: Kind, value: Any, field: str) -> None:
    if kind.lo is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field}: expected an integer, got {value!r}")
    if not kind.lo <= value <= (kind.hi if kind.hi is not None else value):
        raise ValidationError(f"{field}: {value} does not fit in {kind.name} ({kind.lo}..{kind.hi})")


@dataclass(frozen=True, slots=True)
class FieldLayout:
    """Where a record field lives in its C struct."""

    name: str
    kind: Kind
    offset: int


_PAD_PREFIXES = ("pad", "_pad", "reserved", "unused", "__pad")


class Record:
    """Base of typed map keys and values. Subclasses are ``@dataclass(frozen=True, slots=True)``."""

    __slots__ = ()
    SIZE: ClassVar[int] = 0
    C_NAME: ClassVar[str] = ""
    LAYOUT: ClassVar[tuple[FieldLayout, ...]] = ()
    _struct: ClassVar[struct.Struct]
    _names: ClassVar[tuple[str, ...]]
    _getter: ClassVar[Callable[[Any], Any]]
    _to_wire: ClassVar[tuple[tuple[int, Callable[[Any], Any]], ...]]
    _from_wire: ClassVar[tuple[tuple[int, Callable[[Any], Any]], ...]]
    _coercers: ClassVar[tuple[tuple[str, Kind], ...]]
    _record_opts: ClassVar[tuple[str, bool, int]]

    def __init_subclass__(cls, *, c_name: str = "", packed: bool = False, size: int = 0, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        # @dataclass(slots=True) re-creates the class without our keywords: keep them on the class.
        if not (c_name or packed or size) and "_record_opts" in cls.__dict__:
            c_name, packed, size = cls.__dict__["_record_opts"]
        cls._record_opts = (c_name, packed, size)
        hints = typing.get_type_hints(cls, include_extras=True)
        own = inspect.get_annotations(cls)
        fields: list[FieldLayout] = []
        offset = 0
        max_align = 1
        for name in own:
            hint = hints[name]
            kinds = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Kind)]
            if typing.get_origin(hint) is ClassVar or not kinds:
                continue
            k = kinds[0]
            at = [m for m in hint.__metadata__ if isinstance(m, At)]
            if at:
                if at[0].offset < offset:
                    raise LayoutError(f"{cls.__name__}.{name}: At({at[0].offset}) overlaps the previous field")
                offset = at[0].offset
            elif not packed:
                offset = (offset + k.align - 1) // k.align * k.align
            if not packed:
                max_align = max(max_align, k.align)
            fields.append(FieldLayout(name, k, offset))
            offset += k.size
        if not packed:
            offset = (offset + max_align - 1) // max_align * max_align
        total = size or offset
        if total < offset:
            raise LayoutError(f"{cls.__name__}: size={size} is smaller than its fields ({offset} bytes)")
        fmt, pos = "<", 0
        for f in fields:
            fmt += f"{f.offset - pos}x" if f.offset > pos else ""
            fmt += f.kind.fmt
            pos = f.offset + f.kind.size
        fmt += f"{total - pos}x" if total > pos else ""
        cls.SIZE = total
        cls.C_NAME = c_name or cls.__name__
        cls.LAYOUT = tuple(fields)
        cls._struct = struct.Struct(fmt)
        names = tuple(f.name for f in fields)
        cls._names = names
        getter = operator.attrgetter(*names) if len(names) > 1 else \
            (lambda o: (getattr(o, names[0]),)) if names else (lambda o: ())
        cls._getter = staticmethod(getter)
        cls._to_wire = tuple((i, f.kind.to_wire) for i, f in enumerate(fields) if f.kind.to_wire is not _ident)
        cls._from_wire = tuple((i, f.kind.from_wire) for i, f in enumerate(fields)
                               if f.kind.from_wire is not _ident)
        cls._coercers = tuple((f.name, f.kind) for f in fields if f.kind.coerce is not _ident or f.kind.lo is not None)

    def __post_init__(self) -> None:
        for name, kind in self._coercers:
            value = getattr(self, name)
            if kind.coerce is not _ident:
                object.__setattr__(self, name, kind.coerce(value))
            else:
                _check_range(kind, value, f"{type(self).__name__}.{name}")

    # -- codec -----------------------------------------------------------------------------------------
    def _wire_values(self) -> Any:
        vals = type(self)._getter(self)
        if self._to_wire:
            vals = list(vals)
            for i, fn in self._to_wire:
                vals[i] = fn(vals[i])
        return vals

    def pack(self) -> bytes:
        """The C bytes of this record."""
        return self._struct.pack(*self._wire_values())

    def pack_into(self, buf: Any, offset: int = 0) -> None:
        """Write the C bytes of this record into ``buf`` at ``offset``."""
        self._struct.pack_into(buf, offset, *self._wire_values())

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> typing.Self:
        """Decode a record from C bytes (trusted: the kernel's bytes skip the constructor's checks)."""
        vals = list(cls._struct.unpack_from(raw, offset))
        for i, fn in cls._from_wire:
            vals[i] = fn(vals[i])
        obj = object.__new__(cls)
        for name, value in zip(cls._names, vals, strict=True):
            object.__setattr__(obj, name, value)
        return obj

    @classmethod
    def iter_unpack(cls, raw: bytes | memoryview) -> Iterator[typing.Self]:
        """Decode a packed array of records."""
        for off in range(0, len(raw) - cls.SIZE + 1, cls.SIZE):
            yield cls.unpack(raw, off)

    @classmethod
    def encode(cls, value: Any) -> bytes:
        """Codec protocol: pack a record instance."""
        if not isinstance(value, cls):
            raise ValidationError(f"expected {cls.__name__}, got {type(value).__name__}")
        return value.pack()

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> typing.Self:
        """Codec protocol: unpack a record."""
        return cls.unpack(raw)


def codec_for(spec: Any) -> Codec:
    """Turn a map key/value spec (a Record class, a Kind, or a Scalar) into a codec."""
    if isinstance(spec, type) and issubclass(spec, Record):
        return typing.cast(Codec, spec)
    if isinstance(spec, Kind):
        return Scalar(spec)
    if isinstance(spec, Scalar):
        return spec
    raise ValidationError(f"not a record class or scalar kind: {spec!r}")


def check_layout(spec: Any, info: StructInfo, *, what: str) -> None:
    """Fail with a LayoutError unless ``spec`` matches the BTF type ``info`` (sizes, names, offsets)."""
    codec = codec_for(spec)
    label = getattr(spec, "__name__", repr(spec))
    if info.size != codec.SIZE:
        raise LayoutError(f"{what}: {label} is {codec.SIZE} bytes but the C type {info.name or info.kind} "
                          f"is {info.size} bytes")
    if not (isinstance(spec, type) and issubclass(spec, Record)):
        return
    if not info.members:
        raise LayoutError(f"{what}: {label} is a record but the C type is a {info.kind}")
    c_members = {m.name: m for m in info.members}
    for f in spec.LAYOUT:
        m = c_members.get(f.name)
        if m is None:
            raise LayoutError(f"{what}: {label}.{f.name} has no member of that name in struct {info.name} "
                              f"(C members: {', '.join(c_members)})")
        if m.offset != f.offset or (m.type.size != f.kind.size and m.type.kind != "union"):
            raise LayoutError(f"{what}: {label}.{f.name} is at offset {f.offset}, size {f.kind.size}; "
                              f"C has offset {m.offset}, size {m.type.size}")
    covered = {f.name for f in spec.LAYOUT}
    for m in info.members:
        if m.name not in covered and m.name and not m.name.startswith(_PAD_PREFIXES):
            raise LayoutError(f"{what}: struct {info.name} member {m.name!r} (offset {m.offset}) "
                              f"has no field in {label}")
