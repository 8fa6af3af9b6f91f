"""Read just enough BTF to check record layouts and to type ``.rodata`` config values."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ciliumlite.bpf._ffi import cstr, ffi, lib

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_VAR, KIND_DATASEC, KIND_TYPE_TAG, KIND_ENUM64 = 14, 15, 18, 19
_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}
_BE_TYPEDEFS = {"__be16", "__be32", "__be64"}
_KIND_NAMES = {
    KIND_INT: "int", KIND_PTR: "ptr", KIND_ARRAY: "array", KIND_STRUCT: "struct", KIND_UNION: "union",
    KIND_ENUM: "enum", KIND_ENUM64: "enum",
}


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """A resolved BTF type: its kind, C name, byte size and, for integers, signedness and bool-ness.

    ``big_endian`` is set when the type was reached through a ``__be16``/``__be32``/``__be64`` typedef
    (the only place BTF records a byte order); ``elem`` is an array's element type.
    """

    kind: str
    name: str
    size: int
    signed: bool = False
    is_bool: bool = False
    elem_size: int = 0
    big_endian: bool = False
    elem: TypeInfo | None = None


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One struct member: its name, byte offset and resolved type."""

    name: str
    offset: int
    type: TypeInfo
    bit_size: int = 0


@dataclass(frozen=True, slots=True)
class StructInfo:
    """A struct (or scalar) type as BTF describes it; ``scalar`` is a memberless one's type info."""

    name: str
    size: int
    kind: str
    members: tuple[MemberInfo, ...]
    scalar: TypeInfo | None = None


class Btf:
    """A view over a libbpf ``struct btf`` (borrowed from an object, or owned when parsed)."""

    def __init__(self, handle: Any, *, owned: bool = False) -> None:
        self._h = handle
        self._owned = owned

    @classmethod
    def parse(cls, path: str) -> Btf:
        """Parse a BTF blob or ELF file (e.g. ``/sys/kernel/btf/vmlinux``)."""
        h = lib.btf__parse(path.encode(), ffi.NULL)
        if h == ffi.NULL:
            from ciliumlite.bpf.errors import BpfError

            raise BpfError("parse BTF", ffi.errno, target=path)
        return cls(h, owned=True)

    @classmethod
    def from_kernel_id(cls, btf_id: int) -> Btf | None:
        """Load a BTF object the kernel holds (e.g. the BTF of a pinned map); None if absent."""
        h = lib.btf__load_from_kernel_by_id(btf_id)
        return None if h == ffi.NULL else cls(h, owned=True)

    def close(self) -> None:
        """Free the BTF if this view owns it."""
        if self._owned and self._h is not None:
            lib.btf__free(self._h)
        self._h = None

    def _raw(self, type_id: int) -> tuple[Any, int, int, int]:
        t = lib.btf__type_by_id(self._h, type_id)
        info = int(t.info)
        return t, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31

    def resolve(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the underlying type id."""
        while True:
            t, kind, _, _ = self._raw(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = int(t.size_or_type)

    def _is_be_typedef(self, type_id: int) -> bool:
        # Follow the modifiers as resolve() does, watching for the kernel's byte-order typedefs.
        while True:
            t, kind, _, _ = self._raw(type_id)
            if kind not in _MODIFIERS:
                return False
            if kind == KIND_TYPEDEF and cstr(lib.btf__name_by_offset(self._h, t.name_off)) in _BE_TYPEDEFS:
                return True
            type_id = int(t.size_or_type)

    def type_info(self, type_id: int) -> TypeInfo:
        """Describe the type behind ``type_id`` (qualifiers removed)."""
        rid = self.resolve(type_id)
        t, kind, _, _ = self._raw(rid)
        name = cstr(lib.btf__name_by_offset(self._h, t.name_off))
        if kind == KIND_INT:
            enc = int(ffi.cast("__u32 *", t + 1)[0])
            return TypeInfo("int", name, int(t.size_or_type), signed=bool((enc >> 24) & 1),
                            is_bool=bool((enc >> 24) & 4), big_endian=rid != type_id and self._is_be_typedef(type_id))
        if kind == KIND_ARRAY:
            arr = ffi.cast("struct btf_array *", t + 1)
            elem = self.type_info(int(arr.type))
            return TypeInfo("array", name, elem.size * int(arr.nelems), elem_size=elem.size, elem=elem)
        if kind == KIND_PTR:
            return TypeInfo("ptr", name, 8)
        return TypeInfo(_KIND_NAMES.get(kind, str(kind)), name, int(t.size_or_type))

    def struct_info(self, type_id: int) -> StructInfo:
        """The members of a struct or union, or a memberless view of a scalar type."""
        rid = self.resolve(type_id)
        t, kind, vlen, kflag = self._raw(rid)
        info = self.type_info(type_id)
        if kind not in (KIND_STRUCT, KIND_UNION):
            return StructInfo(info.name, info.size, info.kind, (), scalar=info)
        members = []
        mp = ffi.cast("struct btf_member *", t + 1)
        for i in range(vlen):
            m = mp[i]
            bits = int(m.offset)
            bit_off, bit_size = (bits & 0xFFFFFF, bits >> 24) if kflag else (bits, 0)
            members.append(MemberInfo(cstr(lib.btf__name_by_offset(self._h, m.name_off)), bit_off // 8,
                                      self.type_info(int(m.type)), bit_size))
        return StructInfo(info.name, info.size, info.kind, tuple(members))

    def datasec_vars(self, type_id: int) -> dict[str, tuple[int, TypeInfo]]:
        """Variables of a DATASEC (e.g. ``.rodata``): name -> (offset, type)."""
        t, kind, vlen, _ = self._raw(type_id)
        if kind != KIND_DATASEC:
            return {}
        out: dict[str, tuple[int, TypeInfo]] = {}
        vp = ffi.cast("struct btf_var_secinfo *", t + 1)
        for i in range(vlen):
            v = vp[i]
            var_t, var_kind, _, _ = self._raw(int(v.type))
            if var_kind != KIND_VAR:
                continue
            name = cstr(lib.btf__name_by_offset(self._h, var_t.name_off))
            out[name] = (int(v.offset), self.type_info(int(var_t.size_or_type)))
        return out

    def enum_values(self, name: str) -> dict[str, int]:
        """Name -> value of a named enum (empty when the enum is absent)."""
        tid = lib.btf__find_by_name_kind(self._h, name.encode(), KIND_ENUM)
        if tid < 0:
            return {}
        t, _, vlen, _ = self._raw(tid)
        ep = ffi.cast("struct btf_enum *", t + 1)
        return {cstr(lib.btf__name_by_offset(self._h, ep[i].name_off)): int(ep[i].val) for i in range(vlen)}


@functools.cache
def kernel_enum(name: str) -> dict[str, int]:
    """Values of an enum in the running kernel's BTF (``/sys/kernel/btf/vmlinux``); {} without BTF."""
    try:
        btf = Btf.parse("/sys/kernel/btf/vmlinux")
    except Exception:
        return {}
    try:
        return btf.enum_values(name)
    finally:
        btf.close()
