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
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ciliumlite.agent import endpoint_state
from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import NotSupportedError
from ciliumlite.datapath import registry, statedir
from ciliumlite.datapath.config import PIN_BASE
from ciliumlite.ownership import bpfobjs, identity
from ciliumlite.ownership.identity import ProcessId
from ciliumlite.ownership.record import read_all
from ciliumlite.ownership.sweep import Plan, Step, _remove_pin_dir

#: Files a datapath (its bird) writes in its state directory: the only ones cleanup removes there.
STATE_FILES = ("bird/bird.conf", "bird/bird.conf.tmp", "bird/bird.ctl", "bird/bird.pid", "bird/bird.log",
               "bird/bird.out", "state/datapath.json",  # what Datapath.restore reads
               endpoint_state.TABLE_FILE)  # an agent's container ids (kept when it left its datapath running)
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


def _binary(name: str) -> str:
    for cand in (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise NotSupportedError(f"{name} (iproute2) was not found", feature="iproute2", hint="apt-get install iproute2")


def _iproute2(tool: str, netns: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    # iproute2, not pyroute2: pyroute2 creates a namespace it is asked to enter when it is gone, and a
    # namespace can go between the check and the call (another process's lab closing).
    argv = [_binary(tool), *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)


def _json(res: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    try:
        out = json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else []
    except ValueError:
        return []
    return [x for x in out if isinstance(x, dict)] if isinstance(out, list) else []


def _filters(netns: str | None) -> list[dict[str, Any]]:
    """Every BPF tc filter in the namespace: device, parent, handle, prio, name, prog id.

    Read with ``ip -j link`` and ``tc -j filter show``. Raises ``NotSupportedError`` without
    iproute2; a namespace that has gone has no filters.
    """
    out: list[dict[str, Any]] = []
    for link in _json(_iproute2("ip", netns, "-j", "link", "show")):
        dev = str(link.get("ifname", ""))
        if not dev:
            continue
        for direction in ("ingress", "egress"):
            for f in _json(_iproute2("tc", netns, "-j", "filter", "show", "dev", dev, direction)):
                opts = f.get("options") or {}
                if f.get("kind") != "bpf" or "handle" not in opts:
                    continue
                out.append({"device": dev, "direction": direction,
                            "handle": str(opts["handle"]), "prio": int(f.get("pref", 0)),
                            "name": str(opts.get("bpf_name", "")), "prog_id": (opts.get("prog") or {}).get("id")})
    return out


def _delete_filter(netns: str | None, f: dict[str, Any]) -> None:
    """Remove exactly one filter (device, direction, priority and handle). Raises ``OSError`` if tc
    refuses for another reason than the filter or its device being gone."""
    res = _iproute2("tc", netns, "filter", "del", "dev", f["device"], f["direction"], "pref", str(f["prio"]),
                    "handle", f["handle"], "bpf")
    if res.returncode != 0 and not any(w in res.stderr for w in ("Cannot find", "No such file", "not find")):
        raise OSError(f"tc filter del on {f['device']} {f['direction']}: {res.stderr.strip()}")


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
            steps.append(Step("program", f"{name} (id {f['prog_id']}) tc {f['direction']} on {f['device']}", why,
                              functools.partial(_delete_filter, netns, f)))
    return steps


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
    items_root = os.path.join(state_dir, "state")  # the node's item files: ciliumlite.node.state's layout
    for rel in STATE_FILES:
        path = os.path.join(state_dir, rel)
        if os.path.lexists(path):
            steps.append(Step("state", path, "", functools.partial(_unlink, path)))
    items = statedir.files(items_root)
    if items:  # one step for them all: a node may have 10,000 services
        steps.append(Step("state", items_root + "/*/", f"{len(items)} endpoint, service and remote node files",
                          functools.partial(statedir.clear, items_root)))

    def rmdirs() -> None:
        kinds = [statedir.item_dir(items_root, k) for k in statedir.ITEM_KINDS]
        for d in (os.path.join(state_dir, "bird"), *kinds, items_root, state_dir):
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
    dead = [(p, st) for p, st in mine if str(st.get("node") or p.stem) not in held and not _owner_state(st)[0]]
    filters = _filters(netns) if exists and dead else []  # only a dead datapath's namespace is read
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
