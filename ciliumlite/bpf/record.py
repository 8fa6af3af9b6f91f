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

import functools
import inspect
import ipaddress
import operator
import socket
import struct
import types
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
    #: A value of exactly this type needs no ``coerce`` (the constructor's fast path skips the call).
    py_type: type | None = None


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
#: Building an IPv4Address from its 4 bytes costs about 1 µs (a Python constructor with checks), and
#: in conntrack or LB tables the same addresses recur across many entries: decode through a cache.
#: Addresses are immutable, so handing the same object to several records is safe.
_ipv4_from_packed = functools.lru_cache(maxsize=1 << 16)(ipaddress.IPv4Address)
#: An IPv4 address stored as a ``__be32``.
IPV4 = Kind("ipv4", "4s", 4, 4, operator.attrgetter("packed"), _ipv4_from_packed, _ipv4,
            py_type=ipaddress.IPv4Address)
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
    def encode_into(self, value: Any, buf: Any, offset: int) -> None: ...
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

    def encode_into(self, value: Any, buf: Any, offset: int) -> None:
        """Pack one value into ``buf`` at ``offset``."""
        _check_range(self.kind, value, self.kind.name)
        self._s.pack_into(buf, offset, self.kind.to_wire(self.kind.coerce(value)))

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


def is_padding(name: str) -> bool:
    """Whether a C member of this name is padding, which a record (and its numpy dtype) leaves out."""
    return name.startswith(_PAD_PREFIXES)


class Record:
    """Base of typed map keys and values. Subclasses are ``@dataclass(frozen=True, slots=True)``."""

    __slots__ = ()
    SIZE: ClassVar[int] = 0
    C_NAME: ClassVar[str] = ""
    LAYOUT: ClassVar[tuple[FieldLayout, ...]] = ()
    _struct: ClassVar[struct.Struct]
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
        for name, fn in _compile(cls, fields).items():
            # A method the record class writes itself wins over the generated one.
            if name not in cls.__dict__ or getattr(cls.__dict__[name], "_generated", False):
                setattr(cls, name, fn)

    # The methods below are the documented behaviour; every record class replaces them with
    # equivalents generated for its fields (see _compile), which run 2-4x faster.
    def __post_init__(self) -> None:
        for f in self.LAYOUT:
            if f.kind.coerce is not _ident:
                object.__setattr__(self, f.name, f.kind.coerce(getattr(self, f.name)))
            elif f.kind.lo is not None:
                _check_range(f.kind, getattr(self, f.name), f"{type(self).__name__}.{f.name}")

    # -- codec -----------------------------------------------------------------------------------------
    def pack(self) -> bytes:
        """The C bytes of this record."""
        return self._struct.pack(*[f.kind.to_wire(getattr(self, f.name)) for f in self.LAYOUT])

    def pack_into(self, buf: Any, offset: int = 0) -> None:
        """Write the C bytes of this record into ``buf`` at ``offset``."""
        self._struct.pack_into(buf, offset, *[f.kind.to_wire(getattr(self, f.name)) for f in self.LAYOUT])

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> typing.Self:
        """Decode a record from C bytes (trusted: the kernel's bytes skip the constructor's checks)."""
        obj = object.__new__(cls)
        for f, v in zip(cls.LAYOUT, cls._struct.unpack_from(raw, offset), strict=True):
            object.__setattr__(obj, f.name, f.kind.from_wire(v))
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
    def encode_into(cls, value: Any, buf: Any, offset: int) -> None:
        """Codec protocol: pack a record instance into ``buf`` at ``offset`` (no intermediate bytes)."""
        if not isinstance(value, cls):
            raise ValidationError(f"expected {cls.__name__}, got {type(value).__name__}")
        value.pack_into(buf, offset)

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> typing.Self:
        """Codec protocol: unpack a record."""
        return cls.unpack(raw)


def _compile(cls: type[Record], fields: list[FieldLayout]) -> dict[str, Any]:
    """Straight-line ``__post_init__``, ``pack``, ``pack_into``, ``unpack`` and ``decode`` for one record.

    The generic methods of :class:`Record` loop over ``LAYOUT`` and call a converter per field, which is
    where a record's microseconds went (profiled: the loops, ``object.__setattr__`` and per-field calls,
    not ``struct``). Generating the code per class, as ``dataclasses`` does for ``__init__``, turns that into
    attribute reads, one ``struct`` call and slot stores, and lets the constructor skip a field's
    converter when the value already has the right type and range. Behaviour and errors are unchanged:
    anything off the fast path goes through the same ``coerce``/``_check_range`` calls as before.
    """
    ns: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_setattr": object.__setattr__,
                          "_check": _check_range, "_s": cls._struct}
    post, wire, store = [], [], []
    for i, f in enumerate(fields):
        k, attr = f.kind, f"self.{f.name}"
        ns[f"_k{i}"] = k
        if k.to_wire is _ident:
            wire.append(attr)
        else:
            ns[f"_tw{i}"] = k.to_wire
            wire.append(f"_tw{i}({attr})")
        value = f"v{i}"
        if k.from_wire is not _ident:
            ns[f"_fw{i}"] = k.from_wire
            value = f"_fw{i}(v{i})"
        slot = cls.__dict__.get(f.name)
        if isinstance(slot, types.MemberDescriptorType):   # the slotted class @dataclass(slots=True) makes
            ns[f"_set{i}"] = slot.__set__
            store.append(f"_set{i}(obj, {value})")
        else:
            store.append(f"_setattr(obj, {f.name!r}, {value})")
        if k.coerce is not _ident:
            ns[f"_co{i}"] = k.coerce
            set_it = f"_setattr(self, {f.name!r}, _co{i}({attr}))"
            if k.py_type is None:
                post.append(set_it)
            else:
                ns[f"_pt{i}"] = k.py_type
                post += [f"if type({attr}) is not _pt{i}:", f"    {set_it}"]
        elif k.lo is not None:
            bounds = f"{k.lo} <= v" + (f" <= {k.hi}" if k.hi is not None else "")
            post += [f"v = {attr}", f"if type(v) is not int or not {bounds}:",
                     f"    _check(_k{i}, v, {cls.__name__ + '.' + f.name!r})"]
    values = "".join(f"v{i}, " for i in range(len(fields)))
    body = "\n    ".join(post or ["pass"])
    src = f"""
def __post_init__(self):
    {body}
def pack(self):
    return _s.pack({", ".join(wire)})
def pack_into(self, buf, offset=0):
    _s.pack_into(buf, offset, {", ".join(wire)})
def unpack(raw, offset=0):
    {values + "= " if values else ""}_s.unpack_from(raw, offset)
    obj = _new(_cls)
    {"; ".join(store)}
    return obj
"""
    exec(src, ns)
    out: dict[str, Any] = {}
    for name in ("__post_init__", "pack", "pack_into", "unpack", "decode"):
        fn = ns["unpack" if name == "decode" else name]
        if name in ("unpack", "decode"):
            fn = staticmethod(fn)
        generic = getattr(Record, name)
        fn.__doc__ = generic.__doc__
        fn._generated = True
        out[name] = fn
    return out


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
        if m.name not in covered and m.name and not is_padding(m.name):
            raise LayoutError(f"{what}: struct {info.name} member {m.name!r} (offset {m.offset}) "
                              f"has no field in {label}")
