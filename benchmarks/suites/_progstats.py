"""The ``--bpf-stats`` pass: where the per-packet time goes, per program and hook.

After its timed rounds, a suite that supports the pass runs each arm once more inside
:func:`ciliumlite.bpf.stats.run_time_stats` and reports, for every program that ran, its runs per
packet, its mean ns per run and their product, the program's ns per packet (plus the verifier's
instruction count). Statistics cost two clock reads per run, so these figures are kept apart from the
timed ones (group ``bpf stats``, their own table) and never enter a ratio or a goal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from benchmarks.harness import Measurement, Summary
from ciliumlite.bpf.stats import ProgRuns, run_time_stats, runs_between, snapshot

GROUP = "bpf stats"
MIN_SHARE = 0.001   # programs with fewer runs than this per packet are left out (ARP, probes)
_FIELDS = ("runs per packet", "ns per run", "ns per packet")


@contextlib.contextmanager
def stats_window() -> Iterator[Callable[[], list[ProgRuns]]]:
    """Statistics on for the block; the yielded function returns what ran since the block began."""
    with run_time_stats():
        before = snapshot()
        yield lambda: runs_between(before, snapshot())


def measurements(arm: str, runs: Sequence[ProgRuns], packets: float) -> list[Measurement]:
    """Three ``bpf stats`` measurements per program of ``runs`` that ran at least MIN_SHARE times a
    packet (of ``packets``, the arm's own count over the window)."""
    out: list[Measurement] = []
    for r in runs:
        per = r.per(packets)
        if per < MIN_SHARE:
            continue
        note = f"id {r.id}, {r.verified_insns:,} verified insns" if r.verified_insns else f"id {r.id}"
        for field, value, unit in zip(_FIELDS, (per, r.ns_per_run, per * r.ns_per_run), ("x", "ns", "ns"),
                                      strict=True):
            out.append(Measurement.from_samples(f"{arm}: {r.name}: {field}", [value], unit, group=GROUP,
                                                note=note, kind="info"))
    return out


def summary(ms: Sequence[Measurement]) -> list[Summary]:
    """The pass's table (none when the pass did not run)."""
    rows: dict[str, dict[str, Measurement]] = {}
    for m in ms:
        if m.group != GROUP:
            continue
        head, field = m.name.rsplit(": ", 1)
        rows.setdefault(head, {})[field] = m
    if not rows:
        return []
    table = []
    for head, cells in rows.items():
        arm, prog = head.split(": ", 1)
        table.append([arm, prog, f"{cells['runs per packet'].median:.2f}", f"{cells['ns per run'].median:,.0f}",
                      f"{cells['ns per packet'].median:,.0f}", cells["ns per run"].note])
    return [Summary("bpf stats pass (separate from the timed rounds): per arm and program",
                    ["arm", "program", "runs / packet", "ns / run", "ns / packet", "verified insns (id)"], table,
                    note="one extra run per arm with BPF run-time statistics on (BPF_ENABLE_STATS; each run then "
                         "pays two clock reads, so these runs are slower and are not part of any figure above). "
                         "ns / packet = runs / packet × ns / run: the time the programs take per packet of the "
                         "arm's own count (network suites: per TCP segment the server sent or received, in one "
                         "sockperf run 'rr' and one CRR run 'crr').")]
