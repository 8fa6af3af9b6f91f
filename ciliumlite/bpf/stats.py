"""Where the per-packet time goes: the kernel's run-time statistics of every loaded program.

With statistics on, the kernel adds the time of every program run to its ``run_time_ns`` and counts
the run in ``run_cnt`` (``bpftool prog show`` prints both). :func:`run_time_stats` turns them on for
one ``with`` block through ``BPF_ENABLE_STATS`` rather than the ``kernel.bpf_stats_enabled`` sysctl:
the kernel keeps them on while the returned fd is open, so they go off when the block ends *or the
process dies*, and never stay on behind a crashed benchmark (each run then pays two clock reads).

::

    with run_time_stats():
        before = snapshot()
        send_traffic()
        runs = runs_between(before, snapshot())
    for r in runs:
        print(r.name, r.runs, f"{r.ns_per_run:.0f} ns")
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ciliumlite.bpf._ffi import lib
from ciliumlite.bpf.errors import BpfError
from ciliumlite.bpf.inventory import prog_ids
from ciliumlite.bpf.program import ProgInfo, ProgType

BPF_STATS_RUN_TIME = 0  # enum bpf_stats_type


@contextlib.contextmanager
def run_time_stats() -> Iterator[None]:
    """Count run time and runs of every BPF program while the block runs (needs CAP_SYS_ADMIN).

    Raises :class:`BpfError` (``EPERM`` without the capability, ``EINVAL`` on kernels before 5.8).
    Nested blocks and a sysctl that is already on are fine: the kernel counts the holders."""
    fd = lib.bpf_enable_stats(BPF_STATS_RUN_TIME)
    if fd < 0:
        raise BpfError("enable BPF run-time statistics (BPF_ENABLE_STATS)", -fd,
                       hint="run as root; needs Linux 5.8+")
    try:
        yield
    finally:
        os.close(fd)


def snapshot() -> dict[int, ProgInfo]:
    """Every loaded program's info, by id (a program unloaded while we look is skipped)."""
    out: dict[int, ProgInfo] = {}
    for pid in prog_ids():
        try:
            out[pid] = ProgInfo.from_id(pid)
        except BpfError as e:
            if e.errno != errno.ENOENT:
                raise
    return out


@dataclass(frozen=True, slots=True)
class ProgRuns:
    """What one program did between two snapshots."""

    id: int
    name: str
    type: ProgType | int
    runs: int
    run_time_ns: int
    verified_insns: int | None

    @property
    def ns_per_run(self) -> float:
        """Mean time of one run (0 when it did not run)."""
        return self.run_time_ns / self.runs if self.runs else 0.0

    def per(self, units: float) -> float:
        """Runs per unit of work (e.g. per packet): ``runs / units`` (0 for no units)."""
        return self.runs / units if units else 0.0


def runs_between(before: Mapping[int, ProgInfo], after: Mapping[int, ProgInfo], *,
                 min_runs: int = 1) -> list[ProgRuns]:
    """Programs that ran at least ``min_runs`` times from ``before`` to ``after``, busiest first
    (by total run time). A program loaded in between counts from zero."""
    out = []
    for pid, a in after.items():
        b = before.get(pid)
        runs = a.run_cnt - (b.run_cnt if b else 0)
        if runs >= min_runs:
            out.append(ProgRuns(pid, a.name, a.type, runs, a.run_time_ns - (b.run_time_ns if b else 0),
                                a.verified_insns))
    return sorted(out, key=lambda r: r.run_time_ns, reverse=True)
