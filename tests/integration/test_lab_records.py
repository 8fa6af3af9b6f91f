"""Nothing left behind: a lab whose owner is SIGKILLed is found and removed, and nothing else is touched.

A child process (``lab_child.py``) builds a lab and SIGKILLs itself; the CLI (``python -m
ciliumlite``, as a user runs it) then lists it and removes it. Each child gets private record and
registry directories (``CILIUMLITE_LAB_DIR``, ``CILIUMLITE_RUN_DIR``) so that test runs of other
suites on the machine, whose plugin sweeps orphans at session start, never remove ours first.

What is left is counted per kind (:func:`leftovers`): namespaces, pins, cgroups, registry files,
record files, work files, processes (the record's and those found in the lab's namespaces before
the removal, bird and echo servers among them), and the BPF programs, links and maps that used the
lab's pinned maps. Every count must be 0.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ciliumlite.bpf import BpfObject, fs, inventory
from ciliumlite.bpf import netns as nsmod
from ciliumlite.datapath.config import PIN_BASE, DatapathConfig
from ciliumlite.lab import Lab
from ciliumlite.lab.naming import RUN_ID
from ciliumlite.node import Datapath
from ciliumlite.ownership import bpfobjs, identity, record
from ciliumlite.ownership.host import _filters
from ciliumlite.ownership.identity import ProcessId
from ciliumlite.testing.resources import unique_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHILD = str(Path(__file__).with_name("lab_child.py"))
SEED = 15  # the number: the kill points are the same on every run
KILL_POINTS = 10
COUNTS: dict[str, dict[str, int]] = {}  # what each kill test left, printed at the end of the module


@dataclass
class Dirs:
    """Private record and registry directories for one child."""

    labs: Path
    registry: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CILIUMLITE_LAB_DIR": str(self.labs), "CILIUMLITE_RUN_DIR": str(self.registry),
                "COLUMNS": "250"}


@dataclass
class Before:
    """What the killed lab held, read before it is removed (to count what is left of it after)."""

    prefix: str
    pids: set[ProcessId] = field(default_factory=set)
    prog_ids: set[int] = field(default_factory=set)
    link_ids: set[int] = field(default_factory=set)
    map_ids: set[int] = field(default_factory=set)


def make_dirs(tmp: Path) -> Dirs:
    d = Dirs(tmp / "labs", tmp / "datapaths")
    d.labs.mkdir(parents=True, exist_ok=True)
    d.registry.mkdir(parents=True, exist_ok=True)
    return d


def cli(dirs: Dirs, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ciliumlite", *args], capture_output=True, text=True,
                          timeout=timeout, env=dirs.env, stdin=subprocess.DEVNULL)


def run_child(dirs: Dirs, *args: str, kill_at: int = 0) -> tuple[str, str]:
    """Run lab_child.py to its SIGKILL; returns (the lab's prefix, the child's stdout)."""
    env = {**dirs.env, "LAB_CHILD_KILL_AT": str(kill_at)}
    before = set(os.listdir(dirs.labs))
    res = subprocess.run([sys.executable, CHILD, *args], capture_output=True, text=True, timeout=240, env=env,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == -9, f"the child should die by SIGKILL: {res.returncode}\n{res.stdout}\n{res.stderr}"
    new = sorted(set(os.listdir(dirs.labs)) - before)
    assert len(new) == 1, f"one record per child: {new}"
    return new[0].removesuffix(".json"), res.stdout


def before_destroy(dirs: Dirs, prefix: str) -> Before:
    b = Before(prefix)
    info = record.read(str(dirs.labs / f"{prefix}.json"))
    for e in info.owns.get("processes", []):
        if "pid" in e and "start" in e:
            pid = ProcessId(e["pid"], e["start"], info.owner.boot if info.owner else "")
            if pid.alive():
                b.pids.add(pid)
    for ns in nsmod.list_all():
        if ns.startswith(prefix + "-"):
            ino = os.stat(os.path.join(nsmod.NETNS_RUN_DIR, ns)).st_ino
            for p in identity.all_pids():
                if identity.netns_inode_of(p) == ino and (pid := ProcessId.of(p)) is not None:
                    b.pids.add(pid)
    for d in os.listdir(PIN_BASE) if os.path.isdir(PIN_BASE) else []:
        if d.startswith(prefix + "-"):
            maps, link_progs = bpfobjs.pinned_ids(os.path.join(PIN_BASE, d))
            b.map_ids |= maps
            b.prog_ids |= link_progs
    b.prog_ids |= bpfobjs.programs_using(b.map_ids)
    b.link_ids = bpfobjs.links_of(b.prog_ids)
    return b


def _named(paths: list[str], prefix: str) -> list[str]:
    return [p for p in paths if prefix in os.path.basename(p)]


def leftovers(dirs: Dirs, b: Before, *, settle: float = 15.0, spare: frozenset[str] = frozenset()) -> dict[str, int]:
    """What is left of the lab, per kind (namespaces in ``spare`` aside); waits up to ``settle`` s for
    the kernel's deferred frees."""
    deadline = time.monotonic() + settle
    while True:
        p = b.prefix
        try:
            root = fs.cgroup2_root()
            cgroups = _named([os.path.join(d, n) for d, ns, _ in os.walk(root) for n in ns], p)
        except Exception:
            cgroups = []
        pins = _named([os.path.join(d, n) for d, dn, fn in os.walk(fs.BPFFS) for n in dn + fn], p)
        tmp = "/tmp"
        counts = {
            "netns": len([n for n in nsmod.list_all() if p in n and n not in spare]),
            "pins": len(pins),
            "cgroups": len(cgroups),
            "registry files": len([n for n in os.listdir(dirs.registry) if p in n]),
            "record files": len([n for n in os.listdir(dirs.labs) if n.startswith(f"{p}.")]),
            "work files": len([n for n in os.listdir(tmp) if p in n]),
            "processes": len([x for x in b.pids if x.alive()])
            + len([q for q in identity.all_pids() if any(p in a for a in identity.cmdline(q))]),
            "programs": len(b.prog_ids & inventory.prog_ids()),
            "links": len(b.link_ids & inventory.link_ids()),
            "maps": len(b.map_ids & inventory.map_ids()),
        }
        if not any(counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def destroy_orphans(dirs: Dirs, prefix: str) -> dict[str, int]:
    """``ciliumlite lab destroy --orphans`` on the killed lab; returns what is left of it."""
    b = before_destroy(dirs, prefix)
    done = cli(dirs, "lab", "destroy", "--orphans")
    assert done.returncode == 0, done.stdout + done.stderr
    assert prefix in done.stdout, done.stdout
    return leftovers(dirs, b)


def expect_nothing_left(case: str, counts: dict[str, int]) -> None:
    """Keep the counts for the module's summary, and fail on anything left."""
    COUNTS[case] = counts
    left = {k: v for k, v in counts.items() if v}
    assert not left, f"{case}: left {left}"


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    for name, counts in COUNTS.items():
        print(f"\n{name}: left {counts}")


def _force_cleanup(dirs: Dirs, prefix: str) -> None:
    """If a test failed before its own removal: remove the child's lab all the same."""
    if os.path.exists(dirs.labs / f"{prefix}.json"):
        cli(dirs, "lab", "destroy", prefix)


# -- one full lab, killed: listed as an orphan, then removed to the last thing ---------------------------


@dataclass
class Killed:
    dirs: Dirs
    prefix: str
    steps: int  # the record writes of the whole full setup: where the kill-point tests kill


@pytest.fixture(scope="module")
def killed_full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Killed]:
    dirs = make_dirs(tmp_path_factory.mktemp("full"))
    prefix, out = run_child(dirs, "full")
    assert out.startswith("steps "), out
    try:
        yield Killed(dirs, prefix, int(out.split()[1]))
    finally:
        _force_cleanup(dirs, prefix)


def test_lab_list_shows_the_killed_lab_as_orphaned(killed_full: Killed) -> None:
    k = killed_full
    table = cli(k.dirs, "lab", "list")
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if k.prefix in ln)
    assert line.split()[0] == "orphaned" and line.split()[-1] == k.prefix and "(gone)" in line, table.stdout
    rows = json.loads(cli(k.dirs, "lab", "list", "--json").stdout)
    row = next(r for r in rows if r["name"] == k.prefix)
    assert row["state"] == "orphaned" and not row["owner_alive"] and row["owner_pid"]
    holds = row["holds"]
    # solo + 2 pods, fabric, vx1/vx2 + 2 pods, bg1/bg2 + 2 pods: 12 namespaces; 5 datapaths; birds and echoes.
    assert holds["netns"] == 12 and holds["cgroups"] == 5 and holds["pin_dirs"] == 5 and holds["registry"] == 5
    assert holds["workdirs"] == 1 and holds["processes"] >= 6, holds
    names = [p["name"] for p in row["owns"]["processes"]]
    assert sum("bird" in n for n in names) == 3 and sum("_echo.py" in n for n in names) == 3, names


def test_dry_run_lists_and_removes_nothing(killed_full: Killed) -> None:
    k = killed_full
    ns_before = [n for n in nsmod.list_all() if n.startswith(k.prefix + "-")]
    dry = cli(k.dirs, "lab", "destroy", "--orphans", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove netns" in dry.stdout and "would remove process" in dry.stdout, dry.stdout
    assert [n for n in nsmod.list_all() if n.startswith(k.prefix + "-")] == ns_before
    assert os.path.exists(k.dirs.labs / f"{k.prefix}.json")


def test_destroy_orphans_leaves_nothing_of_the_full_lab(killed_full: Killed) -> None:
    k = killed_full
    b = before_destroy(k.dirs, k.prefix)
    assert len(b.pids) >= 6 and b.prog_ids and b.map_ids, "the classic-tc node's programs outlive its owner"
    done = cli(k.dirs, "lab", "destroy", "--orphans")
    assert done.returncode == 0, done.stdout + done.stderr
    counts = leftovers(k.dirs, b)
    expect_nothing_left("full lab (single node, VXLAN cluster, native cluster with bird, pods, service)", counts)
    again = cli(k.dirs, "lab", "destroy", "--orphans")
    assert again.returncode == 0 and "no lab to remove" in again.stderr


# -- the kill at 10 points of setup -------------------------------------------------------------------------


@pytest.mark.parametrize("which", range(KILL_POINTS))
def test_kill_at_a_point_of_setup_leaves_nothing(which: int, killed_full: Killed, tmp_path: Path) -> None:
    """The full lab (single node, VXLAN cluster, native cluster with bird, pods, a service) killed
    just before record write N, N one of 10 seeded points over its whole setup."""
    steps = killed_full.steps
    points = sorted(random.Random(SEED).sample(range(1, steps + 1), KILL_POINTS))
    kill_at = points[which]
    dirs = make_dirs(tmp_path)
    prefix, out = run_child(dirs, "full", kill_at=kill_at)
    assert "steps" not in out, "killed during setup, not after"
    try:
        rows = json.loads(cli(dirs, "lab", "list", "--json").stdout)
        assert [r["state"] for r in rows if r["name"] == prefix] == ["orphaned"]
        counts = destroy_orphans(dirs, prefix)
    finally:
        _force_cleanup(dirs, prefix)
    expect_nothing_left(f"full lab killed at step {kill_at} of {steps}", counts)


# -- two labs at once ---------------------------------------------------------------------------------------


def test_destroying_the_orphan_leaves_the_live_lab_forwarding(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = make_dirs(tmp_path)
    monkeypatch.setenv("CILIUMLITE_LAB_DIR", str(dirs.labs))
    monkeypatch.setenv("CILIUMLITE_RUN_DIR", str(dirs.registry))
    with Lab("live") as live:
        node = live.add_node("n")
        a, b = node.add_pod("a"), node.add_pod("b")
        assert a.tcp_echo(b.ip, 80).ok
        prefix, _ = run_child(dirs, "small")
        try:
            listed = cli(dirs, "lab", "list")
            assert prefix in listed.stdout and live.prefix not in listed.stdout, listed.stdout
            assert live.prefix in cli(dirs, "lab", "list", "--all").stdout
            ours = [n for n in nsmod.list_all() if n.startswith(live.prefix + "-")]
            before = before_destroy(dirs, prefix)
            done = cli(dirs, "lab", "destroy", "--all")
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"skipped {live.prefix}: its owner" in done.stderr, done.stderr
            counts = leftovers(dirs, before)
        finally:
            _force_cleanup(dirs, prefix)
        expect_nothing_left("orphan beside a live lab", counts)
        assert [n for n in nsmod.list_all() if n.startswith(live.prefix + "-")] == ours
        assert os.path.exists(live.record.path) and (dirs.registry / f"{live.prefix}-n.json").exists()
        assert a.tcp_echo(b.ip, 80).ok and b.ping(a.ip, count=2).ok, "the live lab still forwards"
    assert not os.path.exists(live.record.path)


# -- pid reuse ----------------------------------------------------------------------------------------------


def test_a_reused_pid_is_never_killed(tmp_path: Path) -> None:
    dirs = make_dirs(tmp_path)
    stranger = subprocess.Popen(["sleep", "60"])
    ours = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        name = f"cl{RUN_ID}r{os.getpid()}-reuse"
        s_start, o_start = identity.start_time(stranger.pid), identity.start_time(ours.pid)
        assert s_start is not None and o_start is not None
        data = {"format": record.FORMAT, "kind": "lab", "name": name, "prefix": name,
                "owner": {"pid": gone.pid, "start": 1, "boot": identity.boot_id()}, "created": time.time(),
                "kept": False, "owns": {"processes": [
                    {"name": "stranger (the pid, another start time)", "pid": stranger.pid, "start": s_start + 1},
                    {"name": "ours", "pid": ours.pid, "start": o_start}]}}
        (dirs.labs / f"{name}.json").write_text(json.dumps(data))
        listed = json.loads(cli(dirs, "lab", "list", "--json").stdout)
        assert [r["state"] for r in listed if r["name"] == name] == ["orphaned"]
        done = cli(dirs, "lab", "destroy", "--orphans")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "pid reused" in done.stdout, done.stdout
        assert stranger.poll() is None, "a process whose start time differs is not ours: never killed"
        assert ours.wait(timeout=10) == -9, "the one matching pid and start time is"
        assert not (dirs.labs / f"{name}.json").exists()
    finally:
        for p in (stranger, ours):
            p.kill()
            p.wait()


# -- a corrupt record ---------------------------------------------------------------------------------------


def test_a_truncated_record_is_shown_corrupt_and_removed_by_prefix(tmp_path: Path) -> None:
    dirs = make_dirs(tmp_path)
    prefix, _ = run_child(dirs, "small")
    path = dirs.labs / f"{prefix}.json"
    decoys = [f"{prefix}x-decoy", f"{prefix}-keep-ns"]  # not its prefix; another (live) record's
    other = None
    try:
        before = before_destroy(dirs, prefix)
        text = path.read_text()
        path.write_text(text[: len(text) // 2])  # as a full disk or a torn copy would leave it
        nsmod.create(decoys[0])
        os.environ["CILIUMLITE_LAB_DIR"] = str(dirs.labs)
        try:
            from ciliumlite.lab import owned

            other = record.Record(f"{prefix}-keep", prefix=f"{prefix}-keep")
            owned.make_netns(other, decoys[1])
        finally:
            del os.environ["CILIUMLITE_LAB_DIR"]
        rows = json.loads(cli(dirs, "lab", "list", "--json").stdout)
        row = next(r for r in rows if r["name"] == prefix)
        assert row["state"] == "corrupt" and row["error"], row
        assert "corrupt" in cli(dirs, "lab", "list").stdout
        done = cli(dirs, "lab", "destroy", prefix)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "is corrupt" in done.stdout and "removing only what its prefix" in done.stdout, done.stdout
        counts = leftovers(dirs, before, spare=frozenset(decoys))
        assert all(d in nsmod.list_all() for d in decoys), "a namespace outside the prefix is never touched"
        expect_nothing_left("corrupt record, removed by prefix", counts)
    finally:
        for d in decoys:
            nsmod.remove(d)
        if other is not None:
            other.drop_name("netns", decoys[1])
            other.close()
        _force_cleanup(dirs, prefix)


# -- cleanup: a datapath alone in a namespace, its process killed -----------------------------------------------


def test_cleanup_removes_a_killed_datapath_and_nothing_else(netns: str, tmp_path: Path,
                                                           test_objects: Path) -> None:
    dirs = make_dirs(tmp_path)
    pod = nsmod.create(unique_name("pod"))
    live_ns = nsmod.create(unique_name("lns"))
    node = unique_name("cdp")
    decoy_obj = BpfObject.load_file(str(test_objects / "test_tc.o"))
    decoy = decoy_obj.program("tc_count").attach_tc("lo", "ingress", netns=netns, mode="clsact")
    os.environ["CILIUMLITE_RUN_DIR"] = str(dirs.registry)
    live = None
    try:
        live = Datapath(DatapathConfig(node_name=unique_name("live"), pod_cidr="10.244.8.0/24"), netns=live_ns)
        res = subprocess.run([sys.executable, CHILD, "datapath", netns, pod, node], capture_output=True, text=True,
                             timeout=120, env=dirs.env)
        assert res.returncode == -9 and "ready" in res.stdout, res.stderr
        ours = [f for f in _filters(netns) if f["name"].startswith("cil_")]
        assert ours, "classic tc programs outlive their process"
        maps, _ = bpfobjs.pinned_ids(f"{PIN_BASE}/{node}")
        progs = bpfobjs.programs_using(maps)
        assert progs

        untouched = cli(dirs, "cleanup", "--netns", live_ns)
        assert untouched.returncode == 0 and "not touched" in untouched.stderr, untouched.stderr
        assert os.path.isdir(live.config.pin_dir)

        dry = cli(dirs, "cleanup", "--netns", netns, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would remove program cil_from_container" in dry.stdout and "would remove pins" in dry.stdout
        assert "uses its pinned maps" in dry.stdout, "proved by the maps it uses, not by its name alone"
        assert len(_filters(netns)) == len(ours) + 1

        done = cli(dirs, "cleanup", "--netns", netns)
        assert done.returncode == 0, done.stdout + done.stderr
        left = _filters(netns)
        assert [f["name"] for f in left] == ["tc_count"], "only the datapath's programs go, not the decoy"
        assert not os.path.exists(f"{PIN_BASE}/{node}")
        assert not (dirs.registry / f"{node}.json").exists() and not (dirs.registry / f"{node}.closing").exists()
        deadline = time.monotonic() + 10
        while progs & inventory.prog_ids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not progs & inventory.prog_ids()
        assert os.path.isdir(live.config.pin_dir) and (dirs.registry / f"{live.config.node_name}.json").exists()
        assert nsmod.list_all().count(netns) == 1, "cleanup never removes a namespace"
    finally:
        del os.environ["CILIUMLITE_RUN_DIR"]
        if live is not None:
            live.close(remove=True)
        decoy.close()
        decoy_obj.close()
        for ns in (pod, live_ns):
            nsmod.remove(ns)
        fs.remove_pin_dir(f"{PIN_BASE}/{node}") if os.path.exists(f"{PIN_BASE}/{node}") else None


# -- the pytest plugin: a killed run's orphans are gone when the next run starts ----------------------------


INNER = """
def test_nothing():
    pass
"""


def test_the_plugin_removes_an_earlier_runs_orphans(tmp_path: Path) -> None:
    dirs = make_dirs(tmp_path / "dirs")
    prefix, _ = run_child(dirs, "small")
    try:
        (tmp_path / "test_inner.py").write_text(INNER)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "test_inner.py"]
        before = before_destroy(dirs, prefix)
        warn = subprocess.run([*argv, "--ciliumlite-orphans=warn"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env=dirs.env)
        assert warn.returncode == 0, warn.stdout + warn.stderr
        assert f"orphan {prefix} of an earlier run: found (not removed)" in warn.stdout, warn.stdout
        assert (dirs.labs / f"{prefix}.json").exists()
        sweep = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=dirs.env)
        assert sweep.returncode == 0, sweep.stdout + sweep.stderr
        assert f"orphan {prefix} of an earlier run: removed" in sweep.stdout, sweep.stdout
        counts = leftovers(dirs, before)
    finally:
        _force_cleanup(dirs, prefix)
    expect_nothing_left("swept by the plugin at session start", counts)


def test_a_lab_that_fails_half_way_through_setup_leaves_nothing(lab: Lab) -> None:
    node = lab.add_node("ok")
    # Only this lab's namespaces: other runs on the machine make and remove their own meanwhile.
    netns_before = {n for n in nsmod.list_all() if n.startswith(lab.prefix)}
    with pytest.raises(ValueError):
        lab.add_node("bad", pod_cidr="not-a-cidr")  # fails after its namespace, sysctl and cgroup exist
    assert {n for n in nsmod.list_all() if n.startswith(lab.prefix)} == netns_before
    assert not os.path.exists(os.path.join(fs.cgroup2_root(), f"{lab.prefix}-bad"))
    owns = json.loads(Path(lab.record.path).read_text())["owns"]
    assert not [e for items in owns.values() for e in items if "-bad" in e["name"]], owns
    assert node.add_pod("p").ping(node.datapath.config.gateway if node.datapath else "", count=1).transmitted == 1
