"""BpfObject: open a CO-RE object, configure ``.rodata``, load it, and hand out programs and maps."""

from __future__ import annotations

import errno
import os
import struct
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ciliumlite.bpf._ffi import cstr, ffi, lib
from ciliumlite.bpf.btf import Btf, StructInfo, TypeInfo
from ciliumlite.bpf.errors import BpfError, ValidationError, VerifierError, check
from ciliumlite.bpf.map import Map, MapInfo, MapType
from ciliumlite.bpf.program import Program

_LOG_SIZE = 16 << 20
_INT_FMT = {1: "B", 2: "H", 4: "I", 8: "Q"}


@dataclass(frozen=True)
class MapLayout:
    """What decides whether a pinned map can serve a build: what libbpf compares before it reuses
    a pin (type, key and value size, max_entries, flags) plus the key and value types' BTF layout
    (None for a map without BTF). :meth:`BpfObject.map_layout` gives a build's;
    :class:`ciliumlite.datapath.migrate.Migration` reads a pinned one's from the kernel."""

    name: str
    type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    key: StructInfo | None = None
    value: StructInfo | None = None


class Rodata(Mapping[str, Any]):
    """The object's ``const volatile`` globals: set before load, frozen after.

    Values are type-checked against BTF: integers must fit the C type, booleans go to ``bool``
    variables, ``bytes`` of the exact size go to arrays.
    """

    def __init__(self, obj: BpfObject, handle: Any, btf: Btf | None) -> None:
        self._obj = obj
        self._vars: dict[str, tuple[int, TypeInfo]] = {}
        self._mem: Any = ffi.NULL
        if handle is not None:
            size = ffi.new("size_t *")
            self._mem = lib.bpf_map__initial_value(handle, size)
            self._size = int(size[0])
            tid = int(lib.bpf_map__btf_value_type_id(handle))
            if btf is not None and tid:
                self._vars = btf.datasec_vars(tid)

    def __iter__(self) -> Iterator[str]:
        return iter(self._vars)

    def __len__(self) -> int:
        return len(self._vars)

    def __contains__(self, name: object) -> bool:
        return name in self._vars  # Mapping's default calls __getitem__, which raises ValidationError

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self._vars else default  # same reason as __contains__

    def _var(self, name: str) -> tuple[int, TypeInfo]:
        try:
            return self._vars[name]
        except KeyError:
            known = ", ".join(sorted(self._vars)) or "none"
            raise ValidationError(f"{self._obj.name}: no config variable {name!r} in .rodata (known: {known})") \
                from None

    def __getitem__(self, name: str) -> Any:
        off, t = self._var(name)
        raw = bytes(ffi.buffer(self._mem + off, t.size))
        if t.kind == "array":
            return raw
        if t.size not in _INT_FMT:
            return raw
        fmt = "<" + (_INT_FMT[t.size].lower() if t.signed else _INT_FMT[t.size])
        value = struct.unpack(fmt, raw)[0]
        return bool(value) if t.is_bool else value

    def __setitem__(self, name: str, value: Any) -> None:
        if self._obj.loaded:
            raise ValidationError(f"{self._obj.name}: .rodata is frozen once loaded; set {name!r} before load()")
        off, t = self._var(name)
        if t.kind == "array" or t.size not in _INT_FMT:
            if not isinstance(value, (bytes, bytearray)) or len(value) != t.size:
                raise ValidationError(f"{self._obj.name}: {name} is {t.size} bytes of {t.name or t.kind}; "
                                      f"give bytes of that length, not {value!r}")
            raw = bytes(value)
        else:
            if t.is_bool:
                if not isinstance(value, bool):
                    raise ValidationError(f"{self._obj.name}: {name} is a bool, not {value!r}")
                value = int(value)
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(f"{self._obj.name}: {name} is a {t.size * 8}-bit "
                                      f"{'signed' if t.signed else 'unsigned'} integer, not {value!r}")
            bits = t.size * 8
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if t.signed else (0, (1 << bits) - 1)
            if not lo <= value <= hi:
                raise ValidationError(f"{self._obj.name}: {name}={value} does not fit its C type "
                                      f"({'s' if t.signed else 'u'}{bits}: {lo}..{hi})")
            raw = struct.pack("<" + (_INT_FMT[t.size].lower() if t.signed else _INT_FMT[t.size]), value)
        ffi.memmove(self._mem + off, raw, len(raw))

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several variables."""
        for k, v in values.items():
            self[k] = v

    def types(self) -> dict[str, str]:
        """Variable name -> C type name, for people reading a notebook."""
        return {n: (t.name or t.kind) for n, (_, t) in self._vars.items()}

    def __repr__(self) -> str:
        return f"Rodata({dict(self)})"


class BpfObject:
    """A libbpf object: ``open -> configure .rodata -> load -> programs/maps -> close``.

    ``source`` is a path or the ELF bytes. ``pin_root`` is where maps declared with
    ``LIBBPF_PIN_BY_NAME`` are pinned and reused, so several objects can share them.
    """

    def __init__(self, source: str | os.PathLike[str] | bytes, *, name: str | None = None,
                 pin_root: str | None = None) -> None:
        self.loaded = False
        self._h: Any = ffi.NULL
        self._keep: list[Any] = []
        self.pin_root = pin_root
        self._log = ffi.new("char[]", _LOG_SIZE)
        opts = ffi.new("struct bpf_object_open_opts *")
        opts.sz = ffi.sizeof("struct bpf_object_open_opts")
        if name:
            self._keep.append(ffi.new("char[]", name.encode()))
            opts.object_name = self._keep[-1]
        if pin_root:
            self._keep.append(ffi.new("char[]", pin_root.encode()))
            opts.pin_root_path = self._keep[-1]
        opts.kernel_log_buf = self._log
        opts.kernel_log_size = _LOG_SIZE
        if isinstance(source, bytes):
            self._keep.append(source)
            self.path = ""
            h = lib.bpf_object__open_mem(source, len(source), opts)
            label = name or f"<{len(source)} bytes>"
        else:
            self.path = str(source)
            if not Path(self.path).is_file():
                raise ValidationError(f"no BPF object file at {self.path} (was the build run? `make build`)")
            h = lib.bpf_object__open_file(self.path.encode(), opts)
            label = self.path
        if h == ffi.NULL:
            raise BpfError("open BPF object", ffi.errno or errno.EINVAL, target=label,
                           hint="is it a BPF ELF built with clang -target bpf -g?")
        self._h = h
        self._opts = opts
        self.name = cstr(lib.bpf_object__name(h))
        btf_h = lib.bpf_object__btf(h)
        self._btf = None if btf_h == ffi.NULL else Btf(btf_h)
        self.programs: dict[str, Program] = {}
        prog = lib.bpf_object__next_program(h, ffi.NULL)
        while prog != ffi.NULL:
            p = Program(prog, self.name)
            self.programs[p.name] = p
            prog = lib.bpf_object__next_program(h, prog)
        self._map_handles: dict[str, Any] = {}
        self._map_btf_ids: dict[str, tuple[int, int]] = {}
        rodata_handle = None
        m = lib.bpf_object__next_map(h, ffi.NULL)
        while m != ffi.NULL:
            mname = cstr(lib.bpf_map__name(m))
            if lib.bpf_map__is_internal(m):
                if mname.endswith(".rodata"):
                    rodata_handle = m
            else:
                self._map_handles[mname] = m
                # Read now: for a map reused from a pin, load() replaces these with the type ids of
                # the BTF of the object that created the map, which this object's BTF does not share.
                self._map_btf_ids[mname] = (int(lib.bpf_map__btf_key_type_id(m)),
                                            int(lib.bpf_map__btf_value_type_id(m)))
            m = lib.bpf_object__next_map(h, m)
        self.rodata = Rodata(self, rodata_handle, self._btf)
        self._map_views: weakref.WeakSet[Map[Any, Any]] = weakref.WeakSet()

    @classmethod
    def open(cls, source: str | os.PathLike[str] | bytes, **kw: Any) -> BpfObject:
        """Open without loading (same as the constructor)."""
        return cls(source, **kw)

    @classmethod
    def load_file(cls, source: str | os.PathLike[str] | bytes, *, config: Mapping[str, Any] | None = None,
                  **kw: Any) -> BpfObject:
        """Open, set ``.rodata`` from ``config``, and load, closing everything again on failure."""
        obj = cls(source, **kw)
        try:
            obj.rodata.update(config or {})
            return obj.load()
        except BaseException:
            obj.close()
            raise

    def load(self) -> BpfObject:
        """Load every program and create (or reuse pinned) maps. Failures carry the verifier log."""
        if self.loaded:
            return self
        self._log[0] = b"\0"
        rc = lib.bpf_object__load(self._h)
        if rc < 0:
            log = ffi.string(self._log).decode(errors="replace")
            cls = VerifierError if log else BpfError
            raise cls("load BPF object", -rc, target=self.path or self.name, verifier_log=log)
        self.loaded = True
        return self

    def resize(self, map_name: str, max_entries: int) -> None:
        """Set ``max_entries`` of a map before ``load()`` (e.g. size a hash for 100k entries).

        A map reused from a pin keeps the size it was created with (load fails on a mismatch).
        """
        if self.loaded:
            raise ValidationError(f"{self.name}: resize {map_name!r} before load(); a created map keeps its size")
        h = self._map_handles.get(map_name)
        if h is None:
            raise ValidationError(f"{self.name}: no map {map_name!r} (has: {', '.join(self._map_handles)})")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or not 1 <= max_entries <= 0xFFFFFFFF:
            raise ValidationError(f"{self.name}: max_entries of {map_name} must be an int in 1..4294967295, "
                                  f"not {max_entries!r}")
        check(lib.bpf_map__set_max_entries(h, max_entries), "resize map", f"{map_name} to {max_entries}")

    def map_layout(self, map_name: str) -> MapLayout:
        """The layout this object gives map ``map_name`` (read before or after load)."""
        h = self._handle(map_name)
        try:
            mtype = MapType(int(lib.bpf_map__type(h)))
        except ValueError:
            mtype = MapType.UNSPEC
        return MapLayout(map_name, mtype, int(lib.bpf_map__key_size(h)), int(lib.bpf_map__value_size(h)),
                         int(lib.bpf_map__max_entries(h)), int(lib.bpf_map__map_flags(h)),
                         self._btf_of(lib.bpf_map__btf_key_type_id(h)), self._btf_of(lib.bpf_map__btf_value_type_id(h)))

    def map_pin_path(self, map_name: str) -> str | None:
        """Where map ``map_name`` is pinned (or its pin reused) at load; None for an unpinned map."""
        return cstr(lib.bpf_map__pin_path(self._handle(map_name))) or None

    def set_pin_path(self, map_name: str, path: str) -> None:
        """Pin (or reuse the pin of) map ``map_name`` at ``path`` instead of ``pin_root/<name>``,
        before ``load()``: how an upgrade builds a new map beside the one the running datapath uses."""
        if self.loaded:
            raise ValidationError(f"{self.name}: set the pin path of {map_name!r} before load()")
        h = self._handle(map_name)
        check(lib.bpf_map__set_pin_path(h, path.encode()), "set map pin path", f"{map_name} to {path}")

    def _handle(self, map_name: str) -> Any:
        h = self._map_handles.get(map_name)
        if h is None:
            raise ValidationError(f"{self.name}: no map {map_name!r} (has: {', '.join(self._map_handles)})")
        return h

    # -- access ----------------------------------------------------------------------------------------
    def program(self, name: str) -> Program:
        """A program by its C function name."""
        try:
            return self.programs[name]
        except KeyError:
            raise ValidationError(f"{self.name}: no program {name!r} (has: {', '.join(self.programs)})") from None

    @property
    def map_names(self) -> list[str]:
        """The object's maps (without internal .rodata/.data/.bss)."""
        return list(self._map_handles)

    def map(self, name: str, key: Any = None, value: Any = None) -> Map[Any, Any]:
        """A map by name, typed by record classes/kinds checked against its BTF."""
        if not self.loaded:
            raise ValidationError(f"{self.name}: load() the object before using map {name!r}")
        h = self._map_handles.get(name)
        if h is None:
            raise ValidationError(f"{self.name}: no map {name!r} (has: {', '.join(self._map_handles)})")
        fd = int(lib.bpf_map__fd(h))
        info = MapInfo.from_fd(fd)
        key_id, value_id = self._map_btf_ids[name]
        kb, vb = self._btf_of(key_id), self._btf_of(value_id)
        m: Map[Any, Any] = Map(fd, info, key=key, value=value, key_btf=kb, value_btf=vb,
                               pin_path=cstr(lib.bpf_map__pin_path(h)) or None)
        m._views = self._map_views
        self._map_views.add(m)
        return m

    @property
    def maps(self) -> dict[str, Map[Any, Any]]:
        """Every map, untyped (bytes in, bytes out)."""
        return {n: self.map(n) for n in self._map_handles}

    def _btf_of(self, type_id: int) -> StructInfo | None:
        return self._btf.struct_info(int(type_id)) if self._btf is not None and type_id else None

    def pinned_map_paths(self) -> list[str]:
        """Pin paths of maps this object pins by name."""
        return [p for h in self._map_handles.values() if (p := cstr(lib.bpf_map__pin_path(h)))]

    # -- lifetime --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release every fd of the object. Pinned maps stay pinned (they are shared state)."""
        if self._h != ffi.NULL:
            for m in list(self._map_views):
                m._invalidate()
            for p in self.programs.values():
                p._invalidate()
            lib.bpf_object__close(self._h)
            self._h = ffi.NULL
            self.loaded = False
            self._btf = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_h", ffi.NULL) != ffi.NULL:
            self.close()

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else ("closed" if self._h == ffi.NULL else "opened")
        return f"<BpfObject {self.name} {state} programs={list(self.programs)} maps={self.map_names}>"
