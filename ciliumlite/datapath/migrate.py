"""Map layout migration when a node is upgraded to a build whose maps differ from the pinned ones.

``Datapath.reload`` with another build (``DatapathConfig.objects_dir``) loads the new objects
against the node's pins. Where a pinned map no longer fits the new build (type, key or value size
or BTF layout, ``max_entries``, flags: what libbpf compares before reusing a pin, and the BTF),
libbpf would refuse the pin; instead :class:`Migration` points that map at a new pin
(``<name>:next``), so the new objects create a new map there, and then:

1. :meth:`Migration.prepare` (each object, opened, before it loads) decides per map, by the rules
   below, and refuses the whole upgrade (:class:`MigrationError`) before anything swaps;
2. :meth:`Migration.fill` copies every entry old -> new (converted), before any program swap;
3. the caller swaps the programs (``BPF_LINK_UPDATE`` / ``tc filter replace``);
4. :meth:`Migration.commit` copies what the old programs added since step 2 (``NOEXIST``: the new
   programs' own entries win), then renames each ``<name>:next`` over ``<name>``. The old map is
   freed when the old objects close: no program uses it any more.

On any failure before the swap, :meth:`Migration.abort` removes the new pins (the new maps go with
the new objects) and the running datapath is as it was: the same programs on the same maps.

Rules, per map (``docs/design.md``, "Upgrades: map layout migration"):

* a value that grew by appended fields (the old struct's members are the new one's first ones, by
  name, offset and size): copied, the new fields zero;
* ``max_entries`` grew: copy all; shrank: copied if the entries fit, else refused;
* flags changed (``BPF_F_NO_PREALLOC``...): copied, they do not change what an entry means;
* a key change, a value that shrank or changed layout, or a map type change: refused unless a
  converter is declared for the map (``converters={name: fn}``), except for soft state;
* soft state (:data:`SOFT_STATE`: conntrack, NAT, affinity, socket LB reverse NAT, metrics, event
  rate limits), which only BPF writes and which can be rebuilt from traffic: migrated when
  compatible, else started empty with a :class:`MigrationWarning` (``strict=True``: refused);
* a program array is never copied (as Cilium, a new build gets a fresh one, filled by its loader);
  an event ring starts empty (readers reopen it); any other map user space cannot copy
  (sockmaps, maps of maps) is refused.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ciliumlite.bpf import BpfObject, Map
from ciliumlite.bpf.btf import Btf, StructInfo
from ciliumlite.bpf.errors import BpfError, LayoutError
from ciliumlite.bpf.map import NOEXIST, MapType
from ciliumlite.bpf.object import MapLayout
from ciliumlite.datapath import maps
from ciliumlite.datapath.migrate_recovery import STAGING_SUFFIX, maps_in_use, recover, stale_staging_pins

log = logging.getLogger(__name__)

Action = Literal["migrate", "reset", "fresh", "refuse"]
#: ``(old key, old value) -> (new key, new value)`` (None drops the entry), in the maps' bytes;
#: a per-CPU map's value is converted one CPU at a time.
Converter = Callable[[bytes, bytes], "tuple[bytes, bytes] | None"]
#: Maps only BPF writes and traffic rebuilds: started empty (with a warning) when they cannot migrate.
SOFT_STATE: frozenset[str] = frozenset({
    maps.CT_TCP.name, maps.CT_ANY.name, maps.SNAT.name, maps.LB_AFFINITY.name, "cilium_lb4_reverse_sk",
    maps.METRICS.name, maps.EVENTS_RATELIMIT_NAME})
_EVENT_RINGS = {MapType.RINGBUF, MapType.PERF_EVENT_ARRAY}
_NO_COPY = {MapType.PROG_ARRAY, MapType.SOCKMAP, MapType.SOCKHASH, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS,
            MapType.CGROUP_ARRAY, MapType.XSKMAP, MapType.DEVMAP, MapType.DEVMAP_HASH, MapType.CPUMAP,
            MapType.QUEUE, MapType.STACK, MapType.SK_STORAGE, MapType.CGROUP_STORAGE,
            MapType.PERCPU_CGROUP_STORAGE, MapType.REUSEPORT_SOCKARRAY, MapType.STRUCT_OPS} | _EVENT_RINGS
_ARRAYS = {MapType.ARRAY, MapType.PERCPU_ARRAY}
_BATCH = 8192
_NO_BATCH = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524)  # 524: the kernel's ENOTSUPP


class MigrationError(LayoutError):
    """An upgrade was refused: a map of the new build cannot take the running map's contents.

    ``changes`` are the refused maps (each says what changed and why it cannot migrate). Nothing
    was swapped, and the new maps were removed: the node runs the old build as before.
    """

    def __init__(self, message: str, changes: tuple[MapChange, ...] = ()) -> None:
        super().__init__(message)
        self.changes = changes


class MigrationWarning(UserWarning):
    """An upgrade started a soft-state map (conntrack, NAT, ...) empty: its layout changed
    incompatibly. Connections whose state was there may be reset."""


@dataclass(frozen=True)
class MapChange:
    """One pinned map whose layout differs in the new build, and what the upgrade does with it."""

    name: str
    old: MapLayout
    new: MapLayout
    differences: tuple[str, ...]
    action: Action
    reason: str
    entries: int = 0
    copied: int = 0
    caught_up: int = 0

    def describe(self) -> str:
        """``name: what changed (old -> new); action: why`` in one line."""
        return f"{self.name}: {'; '.join(self.differences)}; {self.action}: {self.reason}"


@dataclass(frozen=True)
class MigrationReport:
    """What an upgrade did: every changed map (:class:`MapChange`), and how long the copies took."""

    changes: tuple[MapChange, ...] = ()
    fill_s: float = 0.0
    catch_up_s: float = 0.0

    @property
    def migrated(self) -> list[str]:
        """Maps whose entries were copied into the new map."""
        return [c.name for c in self.changes if c.action == "migrate"]

    @property
    def reset(self) -> list[str]:
        """Maps the new build started empty (soft state, event rings, program arrays)."""
        return [c.name for c in self.changes if c.action in ("reset", "fresh")]


def _members(s: StructInfo | None) -> tuple[tuple[str, int, int, int], ...] | None:
    if s is None or not s.members:
        return None
    return tuple((m.name, m.offset, m.type.size, m.bit_size) for m in s.members)


def _show(s: StructInfo | None, size: int) -> str:
    if s is None:
        return f"{size} bytes"
    if not s.members:
        return f"{s.name or s.kind} ({size} bytes)"
    return f"{s.kind} {s.name or '?'} ({size} bytes: {', '.join(m.name for m in s.members)})"


def _appended(old: StructInfo | None, new: StructInfo | None) -> list[str] | None:
    """The members ``new`` adds at the end of ``old``, or None if ``new`` is no such extension."""
    om, nm = _members(old), _members(new)
    if om is None or nm is None or old is None or new is None or len(nm) <= len(om) or nm[:len(om)] != om:
        return None
    extra = new.members[len(om):]
    return [m.name for m in extra] if all(m.offset >= old.size for m in extra) else None


def differences(old: MapLayout, new: MapLayout) -> list[str]:
    """What differs between a running map and a build's, in words (empty: the pin can be reused)."""
    out = []
    if old.type != new.type:
        out.append(f"map type {old.type.name} -> {new.type.name}")
    if old.key_size != new.key_size:
        out.append(f"key {_show(old.key, old.key_size)} -> {_show(new.key, new.key_size)}")
    elif _members(old.key) is not None and _members(new.key) is not None and _members(old.key) != _members(new.key):
        out.append(f"key layout {_show(old.key, old.key_size)} -> {_show(new.key, new.key_size)}")
    if old.value_size != new.value_size:
        added = _appended(old.value, new.value) if new.value_size > old.value_size else None
        out.append(f"value {old.value_size} -> {new.value_size} bytes (appended: {', '.join(added)})" if added
                   else f"value {_show(old.value, old.value_size)} -> {_show(new.value, new.value_size)}")
    elif _members(old.value) is not None and _members(new.value) is not None and \
            _members(old.value) != _members(new.value):
        out.append(f"value layout {_show(old.value, old.value_size)} -> {_show(new.value, new.value_size)}")
    if old.max_entries != new.max_entries:
        out.append(f"max_entries {old.max_entries} -> {new.max_entries}")
    if old.flags != new.flags:
        out.append(f"flags {old.flags:#x} -> {new.flags:#x}")
    return out


def decide(old: MapLayout, new: MapLayout, entries: int | Callable[[], int], *, converter: bool = False,
           strict: bool = False) -> tuple[Action, str]:
    """The rule for one changed map (see the module's docstring): its action and why.

    ``entries`` is the number of entries the running map holds (or how to count them: only asked
    when ``max_entries`` shrank); ``converter`` says one is declared for the map.
    """
    soft = new.name in SOFT_STATE
    if old.type in _NO_COPY or new.type in _NO_COPY:
        if old.type == new.type == MapType.PROG_ARRAY:
            return "fresh", "a program array is never reused: the new build's loader fills a new one"
        if old.type in _EVENT_RINGS and new.type in _EVENT_RINGS:
            return "reset", "an event ring holds only events in flight: it starts empty (readers reopen it)"
        return "refuse", f"user space cannot copy the entries of a {old.type.name} map"
    if converter:
        return "migrate", "converted by the converter declared for this map"
    problems = []
    if old.type != new.type:
        problems.append("a map type change needs a declared converter")
    if old.key_size != new.key_size or (_members(old.key) is not None and _members(new.key) is not None
                                        and _members(old.key) != _members(new.key)):
        problems.append("a key change needs a declared converter (no entry could be found by its old key)")
    if new.value_size < old.value_size:
        problems.append("the value shrank: fields would be lost")
    elif new.value_size > old.value_size and _appended(old.value, new.value) is None:
        problems.append("the value changed other than by fields appended at its end (BTF shows no prefix)")
    elif new.value_size == old.value_size and _members(old.value) is not None and \
            _members(new.value) is not None and _members(old.value) != _members(new.value):
        problems.append("the value's fields moved or changed type")
    if new.max_entries < old.max_entries:
        n = entries() if callable(entries) else entries
        if n > new.max_entries:
            problems.append(f"it holds {n} entries, more than the new max_entries {new.max_entries}")
    if not problems:
        return "migrate", "entries copied" + (" with the appended fields zero" if new.value_size > old.value_size
                                              else "")
    if soft and not strict:
        return "reset", "; ".join(problems) + " -> soft state (rebuilt by traffic): the new map starts empty"
    return "refuse", "; ".join(problems)


def _fits_array(m: Map[Any, Any], new_max: int) -> int:
    # An array's "entries" are its non-zero slots: the highest one + 1 must fit the new size.
    last = 0
    for k, v in m.items():
        vals = v if isinstance(v, list) else [v]
        if any(any(b) for b in vals):
            last = max(last, int.from_bytes(k, "little") + 1)
    return last


@dataclass
class Migration:
    """The upgrade of one node's pinned maps to the build being loaded (see the module docstring).

    Give :meth:`prepare` to ``loader.set_prepare`` for the loads, then :meth:`fill`, swap, and
    :meth:`commit`; :meth:`abort` on any failure before the swap.
    """

    pin_dir: str
    converters: Mapping[str, Converter] = field(default_factory=dict)
    strict: bool = False
    changes: dict[str, MapChange] = field(default_factory=dict)
    _checked: set[str] = field(default_factory=set)
    _created: list[str] = field(default_factory=list)
    _btf: dict[int, Btf | None] = field(default_factory=dict)
    _fill_s: float = 0.0

    def staging(self, name: str) -> str:
        """Where the new map of ``name`` is pinned until :meth:`commit`."""
        return os.path.join(self.pin_dir, name) + STAGING_SUFFIX

    # -- 1: decide, per object, before it loads --------------------------------------------------------
    def prepare(self, obj: BpfObject) -> None:
        """Point every map of ``obj`` whose pin no longer fits at its staging pin. Raises
        :class:`MigrationError` (naming each refused map of ``obj``) before ``obj`` loads."""
        refused = []
        for name in obj.map_names:
            final = os.path.join(self.pin_dir, name)
            if obj.map_pin_path(name) != final:
                continue  # not pinned by name under this node: the object's own map
            if name not in self._checked:
                self._checked.add(name)
                if not os.path.exists(final):
                    self._created.append(name)  # new in this build: libbpf creates it at its pin
                else:
                    change = self._change(name, final, obj.map_layout(name))
                    if change is not None:
                        self.changes[name] = change
                        if change.action != "refuse":
                            self._remove_staging(name)  # a crashed upgrade's leftover is never reused
            change = self.changes.get(name)
            if change is None:
                continue
            if change.action == "refuse":
                refused.append(change)
            else:
                obj.set_pin_path(name, self.staging(name))
        if refused:
            lines = "\n  ".join(c.describe() for c in refused)
            raise MigrationError(f"upgrade of the node pinned at {self.pin_dir} refused ({obj.name}.o):\n  {lines}\n"
                                 "The running datapath is unchanged (same programs, same maps). Declare a "
                                 "converter for the map, or rebuild the node.", tuple(refused))

    def _change(self, name: str, pin: str, new: MapLayout) -> MapChange | None:
        old = self._pinned_layout(pin)
        diff = differences(old, new)
        if not diff:
            return None

        def count() -> int:
            with Map.open_pinned(pin) as m:
                return _fits_array(m, new.max_entries) if m.type in _ARRAYS else len(m)

        action, reason = decide(old, new, count, converter=name in self.converters, strict=self.strict)
        entries = count() if action == "migrate" and new.max_entries < old.max_entries else 0
        return MapChange(name, old, new, tuple(diff), action, reason, entries)

    def _pinned_layout(self, pin: str) -> MapLayout:
        with Map.open_pinned(pin) as m:
            info = m.info
        if info.btf_id not in self._btf:  # every map a build made shares its BTF: read it once
            self._btf[info.btf_id] = Btf.from_kernel_id(info.btf_id) if info.btf_id else None
        btf = self._btf[info.btf_id]
        kb = btf.struct_info(info.btf_key_type_id) if btf is not None and info.btf_key_type_id else None
        vb = btf.struct_info(info.btf_value_type_id) if btf is not None and info.btf_value_type_id else None
        return MapLayout(info.name, info.type, info.key_size, info.value_size, info.max_entries, info.flags, kb, vb)

    def _remove_staging(self, name: str) -> None:
        try:
            os.unlink(self.staging(name))
        except FileNotFoundError:
            pass

    # -- 2: copy, after the loads and before the swap ----------------------------------------------------
    def fill(self) -> None:
        """Copy every entry of each migrating map into its new map. Raises :class:`MigrationError`
        (an entry that does not fit, a converter's bad output) or :class:`BpfError`."""
        started = time.monotonic()
        for name, change in list(self.changes.items()):
            if change.action != "migrate":
                continue
            with Map.open_pinned(os.path.join(self.pin_dir, name)) as old, Map.open_pinned(self.staging(name)) as new:
                n = self._copy(change, old, new)
            self.changes[name] = _with(change, copied=n)
        self._fill_s = time.monotonic() - started

    def _convert(self, change: MapChange, key: bytes, value: Any) -> tuple[bytes, Any] | None:
        conv = self.converters.get(change.name)
        vals = value if isinstance(value, list) else [value]
        out_key, out = key, []
        for v in vals:
            if conv is None:
                out.append(bytes(v) + bytes(change.new.value_size - len(v)))
                continue
            res = conv(bytes(key), bytes(v))
            if res is None:
                return None
            out_key, nv = res
            if len(out_key) != change.new.key_size or len(nv) != change.new.value_size:
                raise MigrationError(f"{change.name}: the converter returned a {len(out_key)}-byte key and a "
                                     f"{len(nv)}-byte value; the new map takes {change.new.key_size} and "
                                     f"{change.new.value_size}", (change,))
            out.append(nv)
        return out_key, out if isinstance(value, list) else out[0]

    def _copy(self, change: MapChange, old: Map[Any, Any], new: Map[Any, Any]) -> int:
        keys: list[bytes] = []
        values: list[Any] = []
        n = 0
        for k, v in old.items():
            if old.type in _ARRAYS and int.from_bytes(k, "little") >= change.new.max_entries:
                continue  # a zero slot past the new end (_fits_array checked the others)
            conv = self._convert(change, k, v)
            if conv is None:
                continue
            keys.append(conv[0])
            values.append(conv[1])
            if len(keys) >= _BATCH:
                n += self._write(change, new, keys, values)
                keys, values = [], []
        return n + self._write(change, new, keys, values)

    @staticmethod
    def _write(change: MapChange, new: Map[Any, Any], keys: list[bytes], values: list[Any]) -> int:
        try:
            try:
                return new.update_batch(keys, values) if keys else 0
            except BpfError as exc:
                if exc.errno not in _NO_BATCH:
                    raise
            for k, v in zip(keys, values, strict=True):  # a map without batch updates (LPM trie)
                new.set(k, v)
            return len(keys)
        except BpfError as exc:
            if exc.errno in (errno.E2BIG, errno.ENOSPC):
                raise MigrationError(f"{change.name}: the new map (max_entries {change.new.max_entries}) is full "
                                     f"before every entry was copied: {exc}", (change,)) from exc
            raise

    # -- 4: catch up and repin, after the swap -----------------------------------------------------------
    def commit(self) -> MigrationReport:
        """After the swap: copy the entries the old programs added since :meth:`fill` (the new
        programs' entries win), put each new map under its pin name (the old map goes with the old
        objects), and warn for the maps started empty. Returns what was done."""
        started = time.monotonic()
        for name, change in list(self.changes.items()):
            final = os.path.join(self.pin_dir, name)
            if change.action == "migrate":
                try:
                    with Map.open_pinned(final) as old, Map.open_pinned(self.staging(name)) as new:
                        caught = self._catch_up(change, old, new)
                    self.changes[name] = _with(change, caught_up=caught)
                except (BpfError, MigrationError) as exc:  # the swap is done: the new map is the node's now
                    log.warning("%s: entries added during the upgrade not copied: %s", name, exc)
            os.rename(self.staging(name), final)  # atomic on bpffs: <name> names the new map from here on
            if change.action == "reset":
                warnings.warn(MigrationWarning(f"upgrade of {self.pin_dir}: {change.describe()}"), stacklevel=3)
        report = MigrationReport(tuple(self.changes.values()), self._fill_s, time.monotonic() - started)
        self._release()
        for c in report.changes:
            log.info("upgrade of %s: %s", self.pin_dir, c.describe())
        return report

    def _catch_up(self, change: MapChange, old: Map[Any, Any], new: Map[Any, Any]) -> int:
        n = 0
        for k, v in old.items():
            if old.type in _ARRAYS:
                break  # an array has every slot already: nothing can be new
            conv = self._convert(change, k, v)
            if conv is None or conv[0] in new:
                continue
            try:
                new.set(conv[0], conv[1], NOEXIST)
                n += 1
            except BpfError as exc:
                if exc.errno != errno.EEXIST:  # a new program made it meanwhile: it wins
                    raise
        return n

    def abort(self) -> None:
        """Remove the new maps' pins (before the swap): the node keeps its maps as they were, and
        the maps only the new build has are gone too (they go with the new objects)."""
        for name, change in self.changes.items():
            if change.action != "refuse":
                self._remove_staging(name)
        for name in self._created:
            try:
                os.unlink(os.path.join(self.pin_dir, name))
            except FileNotFoundError:
                pass
        self._release()

    def _release(self) -> None:
        for btf in self._btf.values():
            if btf is not None:
                btf.close()
        self._btf.clear()


def _with(change: MapChange, **kw: Any) -> MapChange:
    return dataclasses.replace(change, **kw)


__all__ = ["SOFT_STATE", "STAGING_SUFFIX", "Action", "Converter", "MapChange", "Migration", "MigrationError",
           "MigrationReport", "MigrationWarning", "decide", "differences", "maps_in_use", "recover",
           "stale_staging_pins"]
