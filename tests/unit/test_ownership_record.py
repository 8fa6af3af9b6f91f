"""The ownership record's format and the removal plan's refusals, without root or a kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ciliumlite.lab.destroy import age, holds
from ciliumlite.ownership import identity, sweep
from ciliumlite.ownership.identity import ProcessId
from ciliumlite.ownership.record import FORMAT, Record, RecordInfo, name_in_scope, parse, read, read_all

pytestmark = pytest.mark.unit


def test_a_record_is_written_before_and_after_every_change(tmp_path: Path) -> None:
    r = Record("cl0abc1-x", prefix="cl0abc1-x", directory=str(tmp_path))
    assert read(r.path).state == "live" and read(r.path).owner == ProcessId.me()
    entry = r.add("netns", "cl0abc1-x-node")
    assert read(r.path).owns["netns"] == [{"name": "cl0abc1-x-node"}], "recorded before it is made"
    r.update(entry, ino=42)
    proc = r.add("processes", "echo", netns="cl0abc1-x-node", argv=["python", "_echo.py"])
    r.update(proc, pid=1234, start=99)
    info = read(r.path)
    assert info.owns["netns"] == [{"name": "cl0abc1-x-node", "ino": 42}]
    assert info.owns["processes"][0]["pid"] == 1234 and info.holds() == {"netns": 1, "processes": 1}
    r.drop("netns", entry)
    assert read(r.path).owns["netns"] == []
    assert [p.name for p in tmp_path.iterdir()] == ["cl0abc1-x.json"], "no temporary file is left"
    r.set_kept()
    assert read(r.path).kept
    r.close()
    assert os.path.exists(r.path), "a record that still lists something stays"


def test_closing_an_empty_record_removes_it_and_names_are_claimed_once(tmp_path: Path) -> None:
    r = Record("cl0abc2-y", prefix="cl0abc2-y", directory=str(tmp_path))
    with pytest.raises(FileExistsError):
        Record("cl0abc2-y", prefix="cl0abc2-y", directory=str(tmp_path))
    r.close()
    assert not os.path.exists(r.path)


def test_a_record_refuses_names_outside_its_prefix(tmp_path: Path) -> None:
    r = Record("cl0abc3-z", prefix="cl0abc3-z", directory=str(tmp_path))
    for kind, name in (("netns", "eth0-ns"), ("workdirs", "/tmp"), ("cgroups", "/sys/fs/cgroup"),
                       ("pin_dirs", "/sys/fs/bpf/cl0abc3-zz")):
        with pytest.raises(ValueError):
            r.add(kind, name)
    with pytest.raises(ValueError):
        r.add("devices", "cl0abc3-z-x")
    r.close()


@pytest.mark.parametrize(("name", "prefix", "ours"), [
    ("cl1-a", "cl1-a", True), ("cl1-a-node", "cl1-a", True), ("/sys/fs/cgroup/cl1-a-node", "cl1-a", True),
    ("/tmp/cl1-a", "cl1-a", True), ("cl1-ab", "cl1-a", False), ("/cl1-a/x", "cl1-a", False),
    ("x-cl1-a", "cl1-a", False), ("cl1-a", "", False)])
def test_name_in_scope(name: str, prefix: str, ours: bool) -> None:
    assert name_in_scope(name, prefix) is ours


def _valid(tmp_path: Path) -> tuple[str, str]:
    r = Record("cl0abc4-w", prefix="cl0abc4-w", directory=str(tmp_path))
    r.add("netns", "cl0abc4-w-a")
    return r.path, Path(r.path).read_text()


@pytest.mark.parametrize("damage", ["truncated", "not json", "list", "other format", "bad owner",
                                    "bad entry", "unknown kind", "renamed"])
def test_a_damaged_record_reads_as_corrupt_and_never_raises(tmp_path: Path, damage: str) -> None:
    path, text = _valid(tmp_path)
    data = json.loads(text)
    assert data["format"] == FORMAT
    bad = {"truncated": text[: len(text) // 2], "not json": "\0\0garbage", "list": "[]",
           "other format": json.dumps({**data, "format": "ciliumlite-ownership/9"}),
           "bad owner": json.dumps({**data, "owner": {"pid": "1"}}),
           "bad entry": json.dumps({**data, "owns": {"netns": [{"name": "x", "ino": "12"}]}}),
           "unknown kind": json.dumps({**data, "owns": {"routes": []}}),
           "renamed": json.dumps({**data, "name": "cl0other-w"})}[damage]
    info = parse(path, bad)
    assert info.state == "corrupt" and info.error and info.owns == {}
    assert info.prefix == "cl0abc4-w", "the file's name still gives the prefix"
    Path(path).write_text(bad)
    assert [r.state for r in read_all(str(tmp_path))] == ["corrupt"]
    assert holds(read(path)).startswith("unreadable")


def test_a_manifest_from_before_records_reads_as_kept_and_its_pids_are_never_trusted(tmp_path: Path) -> None:
    path = tmp_path / "cl0abc5-old.json"
    path.write_text(json.dumps({"prefix": "cl0abc5-old", "netns": ["cl0abc5-old-a"], "cgroups": [],
                                "pin_dirs": [], "nodes": ["cl0abc5-old-a"], "pids": [os.getpid()],
                                "workdir": "/tmp/cl0abc5-old-x1"}))
    info = read(str(path))
    assert info.legacy and info.kept and info.state == "kept" and info.owner is None
    assert info.owns["processes"] == [{"name": f"pid {os.getpid()}", "pid": os.getpid()}]
    plan = sweep.plan_record(info)
    step = next(s for s in plan.steps if s.kind == "process")
    assert step.run is None and "no start time" in step.why, "a bare pid is never signalled"


def test_process_identity_is_pid_and_start_time_and_boot() -> None:
    me = ProcessId.me()
    assert me.pid == os.getpid() and me.alive() and me.start == identity.start_time(os.getpid())
    assert not ProcessId(me.pid, me.start + 1, me.boot).alive(), "same pid, another start: another process"
    assert not ProcessId(me.pid, me.start, "another-boot").alive()
    assert ProcessId.from_dict(me.as_dict()) == me
    for bad in (None, [], {"pid": 0, "start": 1}, {"pid": True, "start": 1}, {"pid": 5}, {"pid": 5, "start": -1},
                {"pid": 5, "start": 1, "boot": 3}):
        with pytest.raises(ValueError):
            ProcessId.from_dict(bad)
    done = subprocess.Popen(["true"])
    done.wait()
    assert ProcessId.of(done.pid) is None, "a reaped process has no identity"


def test_the_plan_never_signals_a_reused_pid_nor_touches_what_it_cannot_prove(tmp_path: Path) -> None:
    me = ProcessId.me()
    info = RecordInfo(str(tmp_path / "cl0abc6-v.json"), "cl0abc6-v", prefix="cl0abc6-v",
                      owner=ProcessId(999999, 1, me.boot), created=time.time(), owns={
                          "processes": [{"name": "reused", "pid": me.pid, "start": me.start + 7}],
                          "netns": [{"name": "not-ours"}, {"name": "cl0abc6-v-claimed"}],
                          "workdirs": [{"name": "/"}, {"name": str(tmp_path)}],
                          "pin_dirs": [{"name": "/etc/cl0abc6-v"}],
                          "cgroups": [{"name": "/etc/cl0abc6-v-c"}],
                          "registry": []})
    other = RecordInfo(str(tmp_path / "cl0abc7-u.json"), "cl0abc7-u", prefix="cl0abc7-u",
                       owns={"netns": [{"name": "cl0abc6-v-claimed"}]})
    plan = sweep.plan_record(info, [info, other])
    assert not plan.removals, [str(s) for s in plan.removals]
    why = {s.target: s.why for s in plan.kept}
    assert "pid reused" in why[f"{me.pid} reused"]
    assert "never touched" in why["not-ours"] and "another record" in why["cl0abc6-v-claimed"]
    assert "never touched" in why["/"] and "never touched" in why[str(tmp_path)]
    assert "never touched" in why["/etc/cl0abc6-v"] and "never touched" in why["/etc/cl0abc6-v-c"]
    assert info.state == "orphaned"


def test_a_recorded_inode_guards_against_a_name_reused_since(tmp_path: Path) -> None:
    work = tmp_path / "cl0abc8-t"
    work.mkdir()
    info = RecordInfo(str(tmp_path / "cl0abc8-t.json"), "cl0abc8-t", prefix="cl0abc8-t",
                      owns={"workdirs": [{"name": str(work), "ino": work.stat().st_ino + 1}]})
    plan = sweep.plan_record(info)
    assert not plan.removals and "made by someone else" in plan.kept[0].why
    info.owns["workdirs"][0]["ino"] = work.stat().st_ino
    out = sweep.execute(sweep.plan_record(info))
    assert out.removed == [f"workdir {work}"] and not work.exists()


def test_age_and_holds_read_like_a_person_writes() -> None:
    now = time.time()
    info = RecordInfo("/x/cl1-a.json", "cl1-a", created=now - 3 * 3600 - 5, owns={
        "netns": [{"name": "a"}, {"name": "b"}], "processes": [{"name": "p"}], "registry": [{"name": "r"}]})
    assert age(info, now) == "3h" and age(RecordInfo("/x", "x", created=now - 42), now) == "42s"
    assert holds(info) == "2 netns, 1 process, 1 registry entry"


def test_python_m_ciliumlite_is_the_ciliumlite_command() -> None:
    script = Path(sys.executable).with_name("ciliumlite")
    via_m = subprocess.run([sys.executable, "-m", "ciliumlite", "--help"], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "COLUMNS": "120"})
    via_cmd = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "COLUMNS": "120"})
    assert via_m.returncode == via_cmd.returncode == 0, via_m.stderr + via_cmd.stderr
    assert via_m.stdout == via_cmd.stdout and "Usage: ciliumlite" in via_m.stdout
    assert "lab" in via_m.stdout and "cleanup" in via_m.stdout


def _entry(directory: Path, node: str, netns: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{node}.json").write_text(json.dumps({
        "node": node, "netns": netns, "pid": 999999, "owner": {"pid": 999999, "start": 1, "boot": ""},
        "claims": {"pin_dir": None, "state_dir": None}}))


def test_cleanup_leaves_the_datapaths_of_a_kept_lab_to_lab_destroy(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ciliumlite.ownership.host import plan_cleanup

    monkeypatch.setenv("CILIUMLITE_LAB_DIR", str(tmp_path / "labs"))
    monkeypatch.setenv("CILIUMLITE_RUN_DIR", str(tmp_path / "dps"))
    kept = Record("cl0abc9-kept", prefix="cl0abc9-kept")
    kept.add("registry", "cl0abc9-kept-a", dir=str(tmp_path / "dps"))
    kept.set_kept()
    _entry(tmp_path / "dps", "cl0abc9-kept-a", "cl0abc9-kept-a")
    _entry(tmp_path / "dps", "cl0abc9-gone-a", "cl0abc9-kept-a")  # a datapath no record lists, process gone
    data = json.loads(Path(kept.path).read_text())
    data["owner"]["start"] += 1  # its owner has gone (the process that kept it exited)
    Path(kept.path).write_text(json.dumps(data))
    plans, notes = plan_cleanup("cl0abc9-kept-a")
    assert [p.name for p in plans] == ["cl0abc9-gone-a"]
    assert any("belongs to the kept lab cl0abc9-kept" in n for n in notes), notes
    assert [s.kind for s in plans[0].removals] == ["registry"]


def test_reading_a_namespace_that_has_gone_never_creates_it() -> None:
    from ciliumlite.ownership.host import _filters

    name = f"cl0gone{os.getpid()}-x"
    assert _filters(name) == []
    assert not os.path.exists(f"/var/run/netns/{name}"), "pyroute2 would have made it; iproute2 does not"
