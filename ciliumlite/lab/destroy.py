"""Finding and removing labs whose owner has gone: ``ciliumlite lab list`` and ``lab destroy``.

Every lab (and every pytest session using the plugin's fixtures) keeps an ownership record
(:mod:`ciliumlite.ownership.record`). A record is *live* while its owner runs (pid and start
time), *kept* after ``Lab.keep()``, *orphaned* when its owner died without keeping it, *corrupt*
when its file cannot be read as a record. Removal (:mod:`ciliumlite.ownership.sweep`) takes only
what the record lists, and of a live lab only when it is asked for by name.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.ownership import sweep
from ciliumlite.ownership.record import RecordInfo, read_all


def records(directory: str | None = None) -> list[RecordInfo]:
    """Every record (labs and test sessions), oldest first. Raises ``PermissionError`` without root."""
    return read_all(directory)


def kept_labs() -> list[str]:
    """Names of the labs left behind: kept, orphaned or corrupt (not those whose owner runs)."""
    return [r.name for r in records() if r.state != "live"]


def is_orphan(info: RecordInfo) -> bool:
    """Its owner died without keeping it (a corrupt record counts when nothing of it looks alive)."""
    if info.state == "corrupt":
        return sweep.corrupt_is_orphaned(info)
    return info.state == "orphaned"


@dataclass
class Selection:
    """The records a destroy command picked, and why others were passed over."""

    chosen: list[RecordInfo] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    everyone: list[RecordInfo] = field(default_factory=list)


def select(names: Sequence[str] = (), *, orphans: bool = False, everything: bool = False,
           directory: str | None = None) -> Selection:
    """Pick records: by name (any state, a live one too), ``orphans`` (owner gone, not kept) or
    ``everything`` (orphaned, kept and corrupt ones; never a live one).

    Raises :class:`ValidationError` for a name no record has.
    """
    everyone = records(directory)
    sel = Selection(everyone=everyone)
    by_name = {r.name: r for r in everyone}
    for n in names:
        if n not in by_name:
            left = ", ".join(r.name for r in everyone if r.state != "live") or "none"
            raise ValidationError(f"no kept lab or orphan named {n!r} (kept, orphaned or corrupt: {left})")
        sel.chosen.append(by_name[n])
    if orphans or everything:
        for r in everyone:
            if r in sel.chosen:
                continue
            if r.state == "live":
                sel.skipped.append(f"{r.name}: its owner (pid {r.owner.pid if r.owner else '?'}) runs; "
                                   f"name it to remove it anyway")
            elif r.state == "corrupt" and not is_orphan(r):
                sel.skipped.append(f"{r.name}: corrupt record, but a datapath of its prefix still runs")
            elif is_orphan(r) or (everything and r.state in ("kept", "corrupt")):
                sel.chosen.append(r)
    return sel


def plan(sel: Selection) -> list[sweep.Plan]:
    """The removal plan of each chosen record, checked against every other record."""
    return [sweep.plan_record(r, sel.everyone) for r in sel.chosen]


def destroy_selected(sel: Selection, *, dry_run: bool = False) -> list[sweep.Outcome]:
    """Remove what each chosen record lists (nothing with ``dry_run``); one outcome per record.

    A failing step does not stop the others; the record then keeps listing what is left.
    Raises ``OSError`` only if a record cannot be rewritten.
    """
    return [sweep.execute(p, dry_run=dry_run) for p in plan(sel)]


def destroy(prefix: str, *, dry_run: bool = False) -> list[str]:
    """Remove everything the record of ``prefix`` lists; returns what was removed.

    Raises :class:`ValidationError` if there is no record of that name.
    """
    out = destroy_selected(select([prefix]), dry_run=dry_run)[0]
    return out.removed


def age(info: RecordInfo, now: float | None = None) -> str:
    """How long ago the record was made, as ``42s``, ``7m``, ``3h`` or ``2d``."""
    if info.created is None:
        return "?"
    secs = max(0.0, (now or time.time()) - info.created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit}"
    return f"{int(secs)}s"


def holds(info: RecordInfo) -> str:
    """What a record lists, in words: ``3 netns, 1 cgroup, 2 processes``."""
    if info.error:
        return f"unreadable: {info.error}"
    names = {"processes": ("process", "processes"), "registry": ("registry entry", "registry entries"),
             "pin_dirs": ("pin dir", "pin dirs"), "netns": ("netns", "netns"), "cgroups": ("cgroup", "cgroups"),
             "workdirs": ("workdir", "workdirs")}
    parts = []
    for kind, n in info.holds().items():
        one, many = names.get(kind, (kind, kind))
        parts.append(f"{n} {one if n == 1 else many}")
    return ", ".join(parts) or "nothing"
