"""``ciliumlite cleanup``: what datapaths whose process has gone left in one network namespace.

Like ``cilium-dbg cleanup``, for a node run on a real host (``Datapath(netns=None)``, the default)
or in a named namespace (``netns=``). A datapath's registry entry is its record (written before
its pin directory exists, kept until everything is gone). For each entry of that namespace whose
process is gone (pid and start time) the plan removes:

* its programs on the namespace's devices: classic tc (clsact) filters, which outlive their
  process, and only those named ``cil_*`` that use a map pinned in the entry's pin directory or
  that the entry lists as its attachment on that device (tcx and XDP attachments are BPF links:
  they went with the process, or go with their pins);
* the processes it started that still match pid and start time, and the bird whose pidfile is
  in its state directory and whose command line names that directory's control socket;
* its pin directory (maps and pinned links), the files ciliumlite writes in its state directory
  (and the directory once empty), and the registry entry.

Nothing else: no device, address, route, qdisc or sysctl, no pin directory that no entry names (it
is listed as unclaimed), nothing of a datapath whose process runs or that a live or kept lab's
record lists (``ciliumlite lab destroy`` removes those).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import NotSupportedError
from ciliumlite.datapath import registry
from ciliumlite.datapath.config import PIN_BASE
from ciliumlite.ownership import bpfobjs, identity
from ciliumlite.ownership.identity import ProcessId
from ciliumlite.ownership.record import read_all
from ciliumlite.ownership.sweep import Plan, Step, _remove_pin_dir

TC_INGRESS_PARENT, TC_EGRESS_PARENT = 0xFFFFFFF2, 0xFFFFFFF3
#: Files a datapath (its bird) writes in its state directory: the only ones cleanup removes there.
STATE_FILES = ("bird/bird.conf", "bird/bird.conf.tmp", "bird/bird.ctl", "bird/bird.pid", "bird/bird.log",
               "bird/bird.out")
PROGRAM_PREFIX = "cil_"


def _owner_state(state: dict[str, Any]) -> tuple[bool, str]:
    """(alive, words) for the process that wrote a registry entry."""
    try:
        owner = ProcessId.from_dict(state.get("owner"))
    except ValueError:
        pid = state.get("pid")
        if isinstance(pid, int) and identity.state(pid) not in (None, "Z", "X"):
            return True, f"pid {pid} runs (no start time recorded: taken as alive)"
        return False, f"pid {pid} has gone"
    if owner.alive():
        return True, f"its process {owner.pid} runs"
    return False, f"its process {owner.pid} has gone"


def _claims(state: dict[str, Any]) -> dict[str, Any]:
    claims = state.get("claims")
    return claims if isinstance(claims, dict) else {}


def _iproute(netns: str | None) -> Any:
    from pyroute2 import IPRoute

    return IPRoute(netns=netns) if netns else IPRoute()


def _tc() -> str:
    for cand in (shutil.which("tc"), "/usr/sbin/tc", "/sbin/tc"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise NotSupportedError("tc (iproute2) was not found", feature="iproute2", hint="apt-get install iproute2")


def _filters(netns: str | None) -> list[dict[str, Any]]:
    """Every BPF tc filter in the namespace: device, parent, handle, prio, name, prog id.

    Read with ``tc -j`` (pyroute2 does not decode the filter's program id). Raises
    ``NotSupportedError`` without iproute2, ``OSError`` if the namespace cannot be read.
    """
    tc = _tc()
    with _iproute(netns) as ipr:
        devices = [(link["index"], link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]
    out: list[dict[str, Any]] = []
    for idx, dev in devices:
        for parent, direction in ((TC_INGRESS_PARENT, "ingress"), (TC_EGRESS_PARENT, "egress")):
            argv = [tc, "-j", *(["-n", netns] if netns else []), "filter", "show", "dev", dev, direction]
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
            try:
                found = json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else []
            except ValueError:
                found = []
            for f in found:
                opts = f.get("options") or {}
                if f.get("kind") != "bpf" or "handle" not in opts:
                    continue
                out.append({"ifindex": idx, "device": dev, "parent": parent, "handle": int(str(opts["handle"]), 0),
                            "prio": int(f.get("pref", 0)), "name": str(opts.get("bpf_name", "")),
                            "prog_id": (opts.get("prog") or {}).get("id")})
    return out


def _delete_filter(netns: str | None, f: dict[str, Any]) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    with _iproute(netns) as ipr:
        try:
            ipr.tc("del-filter", "bpf", f["ifindex"], f["handle"], parent=f["parent"], prio=f["prio"])
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ENODEV):
                raise


def _listed(state: dict[str, Any], name: str, device: str) -> bool:
    return any(a.get("program") == name and f" on {device}" in str(a.get("where", ""))
               for a in state.get("attachments") or [] if isinstance(a, dict))


def _program_steps(netns: str | None, state: dict[str, Any], pin_dir: str | None,
                   filters: list[dict[str, Any]]) -> list[Step]:
    maps, _ = bpfobjs.pinned_ids(pin_dir) if pin_dir else (set(), set())
    steps = []
    for f in filters:
        name = str(f["name"])
        # The kernel keeps 15 characters of a program's name; tc keeps the one ciliumlite gave.
        if not name.startswith(PROGRAM_PREFIX):
            continue
        info = bpfobjs.prog_info(f["prog_id"]) if f["prog_id"] else None
        uses_pins = info is not None and bool(info[1] & maps)
        if uses_pins or _listed(state, name, f["device"]):
            why = "uses its pinned maps" if uses_pins else "listed as its attachment"
            steps.append(Step("program", f"{name} (id {f['prog_id']}) tc {_direction(f)} on {f['device']}", why,
                              functools.partial(_delete_filter, netns, f)))
    return steps


def _direction(f: dict[str, Any]) -> str:
    return "ingress" if f["parent"] == TC_INGRESS_PARENT else "egress"


def _netns_inode(netns: str | None) -> int | None:
    try:
        return nsmod.netns_inode(netns)
    except OSError:
        return None


def _process_steps(state: dict[str, Any], state_dir: str | None, netns: str | None) -> list[Step]:
    steps: list[Step] = []
    seen: set[int] = set()
    for p in state.get("processes") or []:
        try:
            ident = ProcessId.from_dict(p)
        except ValueError:
            continue
        if ident.alive():
            seen.add(ident.pid)
            steps.append(Step("process", f"{ident.pid} {p.get('name', '')}", "pid and start time match",
                              ident.kill))
    if state_dir:
        sock = os.path.join(state_dir, "bird", "bird.ctl")
        try:
            pid = int(Path(state_dir, "bird", "bird.pid").read_text().strip())
        except (OSError, ValueError):
            pid = 0
        bird = ProcessId.of(pid) if pid > 0 and pid not in seen else None
        cmd = identity.cmdline(pid) if bird else []
        if (bird is not None and cmd and os.path.basename(cmd[0]).startswith("bird") and sock in cmd
                and identity.netns_inode_of(pid) == _netns_inode(netns)):
            steps.append(Step("process", f"{pid} bird", "its pidfile and control socket are the datapath's",
                              bird.kill))
    return steps


def _state_steps(state_dir: str) -> list[Step]:
    steps = []
    for rel in STATE_FILES:
        path = os.path.join(state_dir, rel)
        if os.path.lexists(path):
            steps.append(Step("state", path, "", functools.partial(_unlink, path)))

    def rmdirs() -> None:
        for d in (os.path.join(state_dir, "bird"), state_dir):
            with contextlib.suppress(OSError):
                os.rmdir(d)  # only once empty: anything else in it is not ours to remove

    if os.path.isdir(state_dir):
        steps.append(Step("state", state_dir + "/", "removed if nothing else is in it", rmdirs))
    return steps


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def plan_cleanup(netns: str | None = None) -> tuple[list[Plan], list[str]]:
    """Plans for the datapaths of ``netns`` (None: this process's own namespace, the host's) whose
    process has gone, and notes (live datapaths skipped, unreadable entries, unclaimed pins).

    Raises ``PermissionError`` if the registry or a namespace needs root, and pyroute2's
    ``NetlinkError`` or ``OSError`` if the namespace's devices cannot be listed.
    """
    notes: list[str] = []
    plans: list[Plan] = []
    entries = registry.read_records()
    claimed_pins: set[str] = set()
    live_pins: set[str] = set()
    mine: list[tuple[Path, dict[str, Any]]] = []
    for path, state in entries:
        if state is None:
            notes.append(f"registry entry {path} is unreadable: left alone (remove it by hand if no datapath uses it)")
            continue
        claims = _claims(state)
        pin = state.get("pin_dir") or claims.get("pin_dir")
        if isinstance(pin, str):
            claimed_pins.add(pin)
            if _owner_state(state)[0]:
                live_pins.add(pin)
        if state.get("netns") == netns:
            mine.append((path, state))
    held: dict[str, str] = {}  # registry entries of labs that are live or kept: theirs, not cleanup's
    for r in read_all():
        claimed_pins |= {e["name"] for e in r.owns.get("pin_dirs", [])}
        if r.state in ("live", "kept"):
            held.update({e["name"]: f"{r.state} lab {r.name}" for e in r.owns.get("registry", [])})
    exists = netns is None or os.path.exists(os.path.join(nsmod.NETNS_RUN_DIR, netns))
    filters = _filters(netns) if exists and mine else []
    where = f"network namespace {netns}" if netns else "the host's network namespace"
    for path, state in mine:
        node = str(state.get("node") or path.stem)
        alive, words = _owner_state(state)
        if node in held:
            notes.append(f"{node}: belongs to the {held[node]}: not touched (ciliumlite lab destroy removes it)")
            continue
        if alive:
            notes.append(f"{node}: {words}: not touched (stop it first)")
            continue
        plan = Plan(node)
        plan.notes.append(f"{node} in {where}: {words}")
        claims = _claims(state)
        pin = state.get("pin_dir") or claims.get("pin_dir")
        pin_dir = pin if isinstance(pin, str) and pin.startswith(fs.BPFFS + "/") else None
        config = state.get("config")
        state_dir = claims.get("state_dir") or (config.get("state_dir") if isinstance(config, dict) else None)
        if not isinstance(state_dir, str) or not os.path.isabs(state_dir):
            state_dir = None
        plan.steps += _process_steps(state, state_dir, netns)
        plan.steps += _program_steps(netns, state, pin_dir if pin_dir and os.path.isdir(pin_dir) else None, filters)
        if pin_dir and os.path.isdir(pin_dir):
            if pin_dir in live_pins:
                plan.steps.append(Step("pins", pin_dir, "a live datapath uses it too: left alone"))
            else:
                plan.steps.append(Step("pins", pin_dir, "maps and pinned links", functools.partial(_remove_pin_dir, pin_dir)))
        if state_dir:
            plan.steps += _state_steps(state_dir)
        plan.steps.append(Step("registry", str(path), "", functools.partial(_unlink, str(path))))
        plans.append(plan)
    for d in sorted(os.listdir(PIN_BASE)) if os.path.isdir(PIN_BASE) else []:
        p = os.path.join(PIN_BASE, d)
        if p not in claimed_pins:
            notes.append(f"{p}: no registry entry or record names it: not removed")
    return plans, notes
