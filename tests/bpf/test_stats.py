"""ciliumlite.bpf.stats: run-time statistics scoped to a block, per-program deltas between snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_run import frame

from ciliumlite.bpf import BpfObject, ProgType
from ciliumlite.bpf.stats import run_time_stats, runs_between, snapshot

pytestmark = pytest.mark.bpf


@pytest.fixture
def xdp(test_objects: Path) -> Iterator[BpfObject]:
    with BpfObject.load_file(test_objects / "test_xdp.o", config={"xdp_drop_port": 5000}) as o:
        yield o


def _sysctl_on() -> bool:
    return Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() != "0"


def test_runs_and_time_are_counted_inside_the_block_only(xdp: BpfObject) -> None:
    if _sysctl_on():
        pytest.skip("kernel.bpf_stats_enabled is on globally: nothing to tell apart")
    prog = xdp.program("xdp_drop_udp_port")
    pid = prog.info().id
    with run_time_stats():
        before = snapshot()
        prog.run(frame(5000), repeat=1000)
        after = snapshot()
    runs = {r.id: r for r in runs_between(before, after)}
    mine = runs[pid]
    assert mine.runs == 1000
    assert mine.type == ProgType.XDP and mine.name == "xdp_drop_udp_po"  # the kernel keeps 15 bytes
    assert mine.run_time_ns > 0 and 0 < mine.ns_per_run < 100_000
    assert mine.per(500) == 2.0
    assert mine.verified_insns and mine.verified_insns > 0
    # Off again once the block is left: more runs are not counted.
    prog.run(frame(5000), repeat=1000)
    assert snapshot()[pid].run_cnt == after[pid].run_cnt


def test_a_program_that_did_not_run_is_left_out(xdp: BpfObject) -> None:
    pid = xdp.program("xdp_drop_udp_port").info().id
    with run_time_stats():
        before = snapshot()
        after = snapshot()
    assert pid not in {r.id for r in runs_between(before, after)}
    assert pid in {r.id for r in runs_between(before, after, min_runs=0)}
