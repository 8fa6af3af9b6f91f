"""Removing what a record lists, and only that: first a plan (what will go and what is left alone,
with why), then its execution.

Every step checks again that the thing is the owner's: a process by pid **and** start time (or,
for one recorded before its pid was known, by its exact command line inside one of the owner's
namespaces), a namespace, cgroup or directory by name within the owner's prefix and, once
recorded, by inode; a registry entry only if the datapath that wrote it has no live process other
than the owner. A name another record lists is never touched. Nothing is removed that the record
does not list, except for a corrupt record: then only what the owner's prefix identifies (names
``<prefix>-…``, processes in those namespaces running the lab's own scripts or naming its work
directory), and names that another record lists or another, longer prefix covers are skipped.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.datapath import registry
from ciliumlite.datapath.config import PIN_BASE
from ciliumlite.ownership import identity
from ciliumlite.ownership.identity import ProcessId
from ciliumlite.ownership.record import KINDS, Entry, RecordInfo, name_in_scope, rewrite

#: The lab's own scripts (ciliumlite/lab/_*.py): a process running one inside a lab namespace is the lab's.
LAB_SCRIPTS = ("_echo.py", "_probe.py", "_capture.py")


@dataclass
class Step:
    """One thing to remove (``run`` set) or to leave, with the reason (``run`` None)."""

    kind: str
    target: str
    why: str = ""
    run: Callable[[], object] | None = None
    entry: Entry | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.target}" + (f" ({self.why})" if self.why else "")


@dataclass
class Plan:
    """What removing one record (or one datapath) does: ``steps`` in order, ``notes`` to tell the user."""

    name: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    record: RecordInfo | None = None

    @property
    def removals(self) -> list[Step]:
        """The steps that remove something."""
        return [s for s in self.steps if s.run is not None]

    @property
    def kept(self) -> list[Step]:
        """The steps that leave something alone (and say why)."""
        return [s for s in self.steps if s.run is None]


@dataclass
class Outcome:
    """What executing a plan did."""

    name: str
    removed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """For ``--json`` output."""
        return {"name": self.name, "removed": self.removed, "left": self.left, "failed": self.failed,
                "notes": self.notes}


# -- the host as it is now --------------------------------------------------------------------------------


def _ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _netns_file(name: str) -> str:
    return os.path.join(nsmod.NETNS_RUN_DIR, name)


class _Processes:
    """``/proc`` read once: the network namespace and command line of every process."""

    def __init__(self) -> None:
        self._by_netns: dict[int, list[int]] | None = None

    def in_netns(self, ino: int) -> list[int]:
        if self._by_netns is None:
            self._by_netns = {}
            for pid in identity.all_pids():
                ns = identity.netns_inode_of(pid)
                if ns is not None:
                    self._by_netns.setdefault(ns, []).append(pid)
        return list(self._by_netns.get(ino, []))


def _kill_step(pid: ProcessId, what: str, why: str, entry: Entry | None = None) -> Step:
    return Step("process", f"{pid.pid} {what}".strip(), why, pid.kill, entry)


# -- a valid record ---------------------------------------------------------------------------------------


def _claimed_elsewhere(others: Sequence[RecordInfo], me: RecordInfo) -> set[tuple[str, str]]:
    return {(k, e["name"]) for o in others if o.path != me.path and not o.error
            for k, items in o.owns.items() for e in items}


def _verified(path: str, entry: Entry) -> tuple[bool, str]:
    """Does ``path`` exist and, when an inode was recorded, is it still that one?"""
    ino = _ino(path)
    if ino is None:
        return False, "gone"
    if entry.get("ino") is not None and entry["ino"] != ino:
        return False, f"inode {ino} is not the recorded {entry['ino']}: made by someone else since"
    return True, ""


def _remove_pin_dir(path: str) -> None:
    fs.remove_pin_dir(path)
    parent = os.path.dirname(path)
    # The shared parent (/sys/fs/bpf/ciliumlite) goes once its last datapath has: never bpffs itself.
    with contextlib.suppress(OSError):
        if parent.rstrip("/") != fs.BPFFS and not os.listdir(parent):
            os.rmdir(parent)


def _remove_cgroup(path: str) -> None:
    """Kill what is in a cgroup of ours (only our processes can be in it), wait, remove it."""
    deadline = time.monotonic() + 5.0
    while True:
        pids = [p for d, _, _ in os.walk(path) for p in fs.cgroup_pids(d)]
        if not pids:
            break
        for p in pids:
            pid = ProcessId.of(p)
            if pid is not None:
                pid.kill(timeout=1.0)
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    fs.remove_cgroup(path, kill_pids=[])


def _registry_files(entry: Entry) -> list[Path]:
    d = Path(entry.get("dir") or registry.run_dir())
    return [d / f"{entry['name']}.json", d / f"{entry['name']}{registry.CLOSING_SUFFIX}"]


def registry_owner(path: Path) -> tuple[ProcessId | None, int | None]:
    """The (identity, bare pid) of the process that wrote a registry entry; (None, None) if unreadable."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(state, dict):
        return None, None
    owner = None
    with contextlib.suppress(ValueError):
        owner = ProcessId.from_dict(state.get("owner"))
    pid = state.get("pid")
    return owner, pid if isinstance(pid, int) else None


def _pid_running(pid: int) -> bool:
    state = identity.state(pid)
    return state is not None and state not in ("Z", "X")


def _registry_steps(info: RecordInfo, entry: Entry) -> list[Step]:
    steps = []
    for path in _registry_files(entry):
        if not path.exists():
            continue
        owner, pid = registry_owner(path)
        ours = info.owner is not None and owner is not None and owner == info.owner
        if owner is not None and owner.alive() and not ours:
            steps.append(Step("registry", str(path), f"written by live process {owner.pid}, not this owner"))
            continue
        if owner is None and pid is not None and _pid_running(pid) and not (info.owner and info.owner.pid == pid):
            steps.append(Step("registry", str(path), f"written by pid {pid}, which runs"))
            continue

        def run(p: Path = path) -> None:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

        steps.append(Step("registry", str(path), "", run, entry))
    return steps


def _process_steps(info: RecordInfo, procs: _Processes, netns_ino: dict[str, int]) -> list[Step]:
    steps: list[Step] = []
    seen: set[int] = set()
    boot = info.owner.boot if info.owner else ""
    for entry in info.owns.get("processes", []):
        what = str(entry.get("name", ""))
        pid, start = entry.get("pid"), entry.get("start")
        if pid is not None and start is not None:
            pid_id = ProcessId(pid, start, boot)
            if pid_id.alive():
                seen.add(pid)
                steps.append(_kill_step(pid_id, what, "pid and start time match", entry))
            elif identity.start_time(pid) is not None:
                steps.append(Step("process", f"{pid} {what}", "pid reused by another process: not ours, left alone"))
        elif pid is not None:
            steps.append(Step("process", f"{pid} {what}", "no start time recorded: cannot prove it is ours"))
        # Recorded before its pid was known (or restarted since): find it by command line in our namespace.
        argv, match, ns = entry.get("argv"), entry.get("match"), entry.get("netns")
        if ns is None or ns not in netns_ino or not (argv or match):
            continue
        for p in procs.in_netns(netns_ino[ns]):
            if p in seen:
                continue
            cmd = identity.cmdline(p)
            if (argv and cmd == argv) or (match and any(match in a for a in cmd)):
                pid_id2 = ProcessId.of(p)
                if pid_id2 is not None:
                    seen.add(p)
                    steps.append(_kill_step(pid_id2, what, f"its command line, in our namespace {ns}", entry))
    return steps


def plan_record(info: RecordInfo, others: Sequence[RecordInfo] = ()) -> Plan:
    """What removing everything ``info`` lists does. A corrupt record is planned by its prefix
    (:func:`plan_prefix`). Never raises for what it finds on the host."""
    if info.error:
        return plan_prefix(info, others)
    plan = Plan(info.name, record=info)
    claimed = _claimed_elsewhere(others, info)
    procs = _Processes()
    netns_ino: dict[str, int] = {}
    ns_ok: dict[str, bool] = {}
    for entry in info.owns.get("netns", []):
        name = entry["name"]
        ok, _ = _verified(_netns_file(name), entry)
        ok = ok and name_in_scope(name, info.prefix) and ("netns", name) not in claimed
        ns_ok[name] = ok
        if ok:
            netns_ino[name] = _ino(_netns_file(name)) or 0
    plan.steps += _process_steps(info, procs, netns_ino)
    for kind in KINDS[1:]:
        for entry in info.owns.get(kind, []):
            plan.steps += _entry_steps(info, kind, entry, claimed, ns_ok)
    if not plan.removals:
        plan.notes.append("nothing of it is left on the host")
    return plan


def _entry_steps(info: RecordInfo, kind: str, entry: Entry, claimed: set[tuple[str, str]],
                 ns_ok: dict[str, bool]) -> list[Step]:
    name = entry["name"]
    label = {"pin_dirs": "pins", "cgroups": "cgroup", "workdirs": "workdir"}.get(kind, kind)
    if kind == "registry":
        return _registry_steps(info, entry)
    if not name_in_scope(name, info.prefix):
        return [Step(label, name, f"not named after {info.prefix}: never touched")]
    if (kind, name) in claimed:
        return [Step(label, name, "another record lists it: left alone")]
    if kind == "netns":
        ok, why = _verified(_netns_file(name), entry)
        if not ok:
            return [] if why == "gone" else [Step(label, name, why)]
        return [Step(label, name, "", functools.partial(nsmod.remove, name), entry)] if ns_ok.get(name) else []
    if kind == "pin_dirs":
        if not name.startswith(fs.BPFFS + "/"):
            return [Step(label, name, f"not below {fs.BPFFS}: never touched")]
        ok, why = _verified(name, entry)
        return ([Step(label, name, "", functools.partial(_remove_pin_dir, name), entry)] if ok
                else [] if why == "gone" else [Step(label, name, why)])
    if kind == "cgroups":
        try:
            root = fs.cgroup2_root()
        except Exception:
            return [Step(label, name, "no cgroup v2 mount")]
        if not name.startswith(root + "/"):
            return [Step(label, name, f"not below {root}: never touched")]
        ok, why = _verified(name, entry)
        return ([Step(label, name, "", functools.partial(_remove_cgroup, name), entry)] if ok
                else [] if why == "gone" else [Step(label, name, why)])
    if kind == "workdirs":
        if not os.path.isabs(name) or os.path.islink(name):
            return [Step(label, name, "not an absolute directory path: never touched")]
        ok, why = _verified(name, entry)
        return ([Step(label, name, "", functools.partial(shutil.rmtree, name, True), entry)] if ok
                else [] if why == "gone" else [Step(label, name, why)])
    return [Step(label, name, f"unknown kind {kind}")]


# -- a corrupt record: only what the prefix identifies --------------------------------------------------


def _covered_by_other(name: str, prefix: str, others: Sequence[RecordInfo], me: RecordInfo) -> bool:
    """Another record claims ``name``, or another, longer prefix (``<prefix>-x``) names it."""
    for o in others:
        if o.path == me.path:
            continue
        if len(o.prefix) > len(prefix) and name_in_scope(name, o.prefix):
            return True
        if not o.error and any(e["name"] == name for items in o.owns.values() for e in items):
            return True
    return False


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def plan_prefix(info: RecordInfo, others: Sequence[RecordInfo] = (), *, reason: str = "") -> Plan:
    """For a record whose file is corrupt: what its prefix alone safely identifies."""
    prefix = info.prefix or info.name
    plan = Plan(info.name, record=info)
    plan.notes.append(f"record {info.path} is corrupt ({reason or info.error}): removing only what its "
                      f"prefix {prefix} identifies")

    def mine(name: str) -> bool:
        return name_in_scope(name, prefix) and not _covered_by_other(name, prefix, others, info)

    namespaces = [n for n in nsmod.list_all() if mine(n)]
    tmp = tempfile.gettempdir()
    workdirs = [os.path.join(tmp, n) for n in _listdir(tmp) if mine(n) and os.path.isdir(os.path.join(tmp, n))
                and not os.path.islink(os.path.join(tmp, n))]
    procs = _Processes()
    for ns in namespaces:
        ino = _ino(_netns_file(ns))
        for p in procs.in_netns(ino) if ino else []:
            cmd = identity.cmdline(p)
            lab_script = any(os.path.basename(a) in LAB_SCRIPTS and "/ciliumlite/lab/" in a for a in cmd)
            in_workdir = any(w + "/" in a for w in workdirs for a in cmd)
            pid = ProcessId.of(p)
            if pid is None:
                continue
            if lab_script or in_workdir:
                plan.steps.append(_kill_step(pid, " ".join(cmd)[:60], f"runs the lab's code in its namespace {ns}"))
            else:
                plan.steps.append(Step("process", f"{p} {' '.join(cmd)[:60]}",
                                       f"in namespace {ns} but not identifiable as the lab's: left alone"))
    reg = registry.run_dir()
    for path in sorted(reg.glob("*")) if reg.is_dir() else []:
        node = path.name.removesuffix(".json").removesuffix(registry.CLOSING_SUFFIX)
        if path.name.startswith(".") or node == path.name or not mine(node):
            continue
        plan.steps += _orphan_registry(path)
    for d in _listdir(PIN_BASE):
        if mine(d):
            pins = os.path.join(PIN_BASE, d)
            plan.steps.append(Step("pins", pins, "", functools.partial(_remove_pin_dir, pins)))
    for n in namespaces:
        plan.steps.append(Step("netns", n, "", functools.partial(nsmod.remove, n)))
    try:
        root = fs.cgroup2_root()
    except Exception:
        root = ""
    for c in _listdir(root) if root else []:
        cg = os.path.join(root, c)
        if mine(c) and os.path.isdir(cg):
            plan.steps.append(Step("cgroup", cg, "", functools.partial(_remove_cgroup, cg)))
    for w in workdirs:
        plan.steps.append(Step("workdir", w, "", functools.partial(shutil.rmtree, w, True)))
    return plan


def _orphan_registry(path: Path) -> list[Step]:
    owner, pid = registry_owner(path)
    if (owner is not None and owner.alive()) or (owner is None and pid is not None and _pid_running(pid)):
        return [Step("registry", str(path), "its datapath's process runs: left alone")]

    def run() -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    return [Step("registry", str(path), "", run)]


def corrupt_is_orphaned(info: RecordInfo) -> bool:
    """A corrupt record shows no sign of a live owner: no registry entry of its prefix was written
    by a running process."""
    reg = registry.run_dir()
    for path in sorted(reg.glob("*")) if reg.is_dir() else []:
        node = path.name.removesuffix(".json").removesuffix(registry.CLOSING_SUFFIX)
        if node != path.name and name_in_scope(node, info.prefix) and _orphan_registry(path)[0].run is None:
            return False
    return True


# -- running a plan ---------------------------------------------------------------------------------------


def execute(plan: Plan, *, dry_run: bool = False) -> Outcome:
    """Run the plan's removals in order (none with ``dry_run``); a failing step does not stop the others.

    Afterwards the record lists only what could not be removed, and its file is removed once
    nothing is left. Never raises for a failed step (see :attr:`Outcome.failed`); raises
    ``OSError`` only if the record itself cannot be rewritten.
    """
    out = Outcome(plan.name, notes=list(plan.notes))
    out.left = [str(s) for s in plan.kept]
    done: set[int] = set()
    for step in plan.removals:
        if dry_run:
            out.removed.append(str(step))
            continue
        try:
            assert step.run is not None
            step.run()
            out.removed.append(str(step))
            if step.entry is not None:
                done.add(id(step.entry))
        except Exception as exc:
            out.failed.append(f"{step}: {exc}")
    info = plan.record
    if dry_run or info is None:
        return out
    if info.error:
        if not out.failed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(info.path)
        return out
    # What is gone now (removed, or gone already, or never ours: reused, claimed by another) leaves
    # the record; only what failed to go stays listed, for the next attempt.
    failed = {id(s.entry) for s in plan.removals if s.entry is not None and id(s.entry) not in done}
    remaining = {kind: [e for e in items if id(e) in failed] for kind, items in info.owns.items()}
    rewrite(info, remaining)
    return out


def plan_all(infos: Iterable[RecordInfo], select: Callable[[RecordInfo], bool],
             everyone: Sequence[RecordInfo]) -> list[Plan]:
    """Plans for the records ``select`` picks, each checked against ``everyone`` else."""
    return [plan_record(i, everyone) for i in infos if select(i)]
