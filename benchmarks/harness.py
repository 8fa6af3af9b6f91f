"""Common pieces of the benchmark suites: measurements, timing, machine info, result files, tables.

A suite is a module ``benchmarks/suites/<name>.py`` with::

    DESCRIPTION = "one line"
    NEEDS_ROOT = True                                   # optional, default True
    DEFAULT_REPEATS = 5                                 # optional: timed rounds unless --repeats/--quick
    def run(ctx: Context) -> list[Measurement]: ...
    def summarize(ms: list[Measurement]) -> list[Summary]: ...   # optional side-by-side tables

Method (``/work/shared/reference/performance.md`` §7.1, §7.7): every arm of a comparison runs in
the same process, interleaved A B C A B C…, after untimed warmup rounds; each arm reports the
median and the minimum of its repeats and its coefficient of variation; ratios are computed per
repeat (paired, same round) and reported as their median with a bootstrap 95 % interval. Goals are
ratios; absolute values are for trend lines only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: A coefficient of variation above this marks an arm as noisy (perf.md §7.1: rerun that pair).
CV_NOISY = 0.05


# -- measurements ----------------------------------------------------------------------------------
@dataclass(slots=True)
class Measurement:
    """One reported number. ``value`` is the headline (the median); ``samples`` are the repeats."""

    name: str
    value: float
    unit: str
    repeats: int
    median: float
    min: float
    group: str = ""
    note: str = ""
    samples: list[float] = field(default_factory=list)
    cv: float | None = None
    ci95: tuple[float, float] | None = None
    kind: str = "time"  # "time" (lower is better), "ratio", "difference" or "info"

    @classmethod
    def from_samples(cls, name: str, samples: Sequence[float], unit: str, *, group: str = "", note: str = "",
                     kind: str = "time") -> Measurement:
        """Summarise repeats: median (headline), min, coefficient of variation."""
        xs = [float(s) for s in samples]
        if not xs:
            raise ValueError(f"{name}: no samples")
        med = statistics.median(xs)
        mean = statistics.fmean(xs)
        cv = statistics.stdev(xs) / mean if len(xs) > 1 and mean else None
        return cls(name=name, value=med, unit=unit, repeats=len(xs), median=med, min=min(xs), group=group,
                   note=note, samples=xs, cv=cv, kind=kind)

    @property
    def noisy(self) -> bool:
        """True when the repeats spread more than CV_NOISY (time measurements only)."""
        return self.kind == "time" and self.cv is not None and self.cv > CV_NOISY


def bootstrap_ci(xs: Sequence[float], *, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the median of ``xs`` (deterministic seed)."""
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (float("nan"), float("nan"))
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(rounds))
    return meds[int(0.025 * (rounds - 1))], meds[int(0.975 * (rounds - 1))]


def difference(name: str, a: Sequence[float], b: Sequence[float], unit: str, *, group: str = "",
               note: str = "") -> Measurement:
    """Paired difference a - b per repeat (e.g. Python overhead over the bare syscall)."""
    if len(a) != len(b):
        raise ValueError(f"{name}: {len(a)} vs {len(b)} samples")
    m = Measurement.from_samples(name, [x - y for x, y in zip(a, b, strict=True)], unit, group=group, note=note,
                                 kind="difference")
    m.ci95 = bootstrap_ci(m.samples)
    return m


def ratio(name: str, num: Sequence[float], den: Sequence[float], *, group: str = "", note: str = "") -> Measurement:
    """Paired ratio num/den per repeat (both lists come from the same interleaved rounds)."""
    if len(num) != len(den):
        raise ValueError(f"{name}: {len(num)} numerator samples vs {len(den)} denominator samples")
    rs = [n / d for n, d in zip(num, den, strict=True) if d]
    m = Measurement.from_samples(name, rs, "x", group=group, note=note, kind="ratio")
    m.ci95 = bootstrap_ci(rs)
    return m


# -- timing ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class Arm:
    """One arm of a comparison.

    ``run`` is timed; ``setup`` (before) and ``check`` (after) are not. ``per`` is the number of
    operations one ``run`` performs: samples are reported as ns per operation. With
    ``reported=True`` the sample is the number ``run`` returns (divided by ``per``) instead of the
    wall time: for values the kernel or a tool measures itself (test_run ``duration``, netperf).
    """

    name: str
    run: Callable[[], object]
    per: int = 1
    setup: Callable[[], object] | None = None
    check: Callable[[], object] | None = None
    reported: bool = False


def time_ns(fn: Callable[[], object]) -> tuple[int, object]:
    """(wall ns, return value) of one call of ``fn``; the cyclic GC is collected first and paused during it."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        ret = fn()
        return time.perf_counter_ns() - t0, ret
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Move every live object out of the GC's reach while benchmark data (100k records) is alive.

    ``time_ns`` collects before each timed run; with the fixtures frozen that costs microseconds,
    not tens of milliseconds per arm.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def measure(fn: Callable[[], object], *, repeats: int, warmup: int = 1, per: int = 1,
            setup: Callable[[], object] | None = None, check: Callable[[], object] | None = None) -> list[float]:
    """Median-of-N helper for a single arm: ``warmup`` untimed rounds, then ``repeats`` timed ones.

    Returns ns per operation for each repeat.
    """
    return interleave([Arm("_", fn, per, setup, check)], repeats=repeats, warmup=warmup)["_"]


def interleave(arms: Sequence[Arm], *, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every arm once per round, A B C A B C…; the first ``warmup`` rounds are discarded.

    Returns arm name -> ns per operation, one sample per timed round (so ratios can be paired).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    out: dict[str, list[float]] = {a.name: [] for a in arms}
    for rnd in range(warmup + repeats):
        for a in arms:
            if a.setup is not None:
                a.setup()
            ns, ret = time_ns(a.run)
            if a.check is not None:
                a.check()
            if rnd >= warmup:
                if a.reported:
                    if not isinstance(ret, (int, float)):
                        raise TypeError(f"arm {a.name}: reported=True but run() returned {ret!r}")
                    out[a.name].append(float(ret) / a.per)
                else:
                    out[a.name].append(ns / a.per)
    return out


def make_console() -> Console:
    """A rich console; wide when writing to a pipe or a log file, so tables are not squeezed."""
    return Console(width=None if sys.stdout.isatty() else 170)


# -- the run context -------------------------------------------------------------------------------
@dataclass(slots=True)
class Context:
    """What the runner hands a suite."""

    root: Path = ROOT
    repeats: int = 5
    warmup: int = 1
    quick: bool = False
    console: Console = field(default_factory=make_console)
    bpf_stats: bool = False    # --bpf-stats: suites that support it add a separate statistics pass
    params: dict[str, Any] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        """A progress line (dim, so tables stand out)."""
        self.console.print(f"[dim]  {msg}[/dim]")

    def obj_path(self, name: str) -> Path:
        """A test object built by ``make build``, with a clear error when missing."""
        p = self.root / "tests" / "bpf" / "objects" / name
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: build the BPF objects first (`make build`)")
        return p


@dataclass(slots=True)
class Summary:
    """A side-by-side table a suite derives from its measurements."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


# -- machine info ----------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in (_read("/proc/stat") or "cpu 0 0 0 0").splitlines()[0].split()[1:]]
    idle = sum(fields[3:5])  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cpus(window_s: float = 0.5) -> float:
    """How many CPUs other work keeps busy, sampled from /proc/stat while this process sleeps (want ~0)."""
    b0, t0 = _cpu_times()
    time.sleep(window_s)
    b1, t1 = _cpu_times()
    return (b1 - b0) / (t1 - t0) * (os.cpu_count() or 1) if t1 > t0 else 0.0


class Contention:
    """CPUs kept busy by *other* processes while a suite ran: /proc/stat busy time minus our own CPU time."""

    def __init__(self) -> None:
        self._b0, self._t0 = _cpu_times()
        self._own0 = self._own()
        self._w0 = time.perf_counter()

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def other_cpus(self) -> float:
        """Average number of CPUs busy with other work since construction (0 on an idle machine)."""
        b1, t1 = _cpu_times()
        wall = time.perf_counter() - self._w0
        if t1 <= self._t0 or wall <= 0:
            return 0.0
        all_busy = (b1 - self._b0) / (t1 - self._t0) * (os.cpu_count() or 1)
        return max(0.0, all_busy - (self._own() - self._own0) / wall)


def machine_info() -> dict[str, Any]:
    """Kernel, CPUs, Python, libbpf and the kernel knobs perf.md §7.7 asks to record with every run."""
    from ciliumlite.bpf._ffi import LIBBPF_VERSION

    vdir = Path("/sys/devices/system/cpu/vulnerabilities")
    vulns = {p.name: (_read(str(p)) or "") for p in sorted(vdir.iterdir())} if vdir.is_dir() else {}
    flags = _read("/proc/cpuinfo") or ""
    return {
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "hypervisor": " hypervisor " in f" {flags.replace(chr(10), ' ')} ",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libbpf": ".".join(map(str, LIBBPF_VERSION)),
        "bpf_jit_enable": _read("/proc/sys/net/core/bpf_jit_enable"),
        "bpf_stats_enabled": _read("/proc/sys/kernel/bpf_stats_enabled"),
        "preempt": _read("/sys/kernel/debug/sched/preempt"),
        "vulnerabilities_mitigated": sorted(k for k, v in vulns.items() if v.startswith("Mitigation")),
        "vulnerabilities_vulnerable": sorted(k for k, v in vulns.items() if v.startswith("Vulnerable")),
        "loadavg": (_read("/proc/loadavg") or "").split()[:3],
        "busy_cpus_at_start": round(busy_cpus(), 2),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", "ciliumlite", "csrc")),
    }


# -- formatting ------------------------------------------------------------------------------------
def fmt_value(v: float, unit: str) -> str:
    """A human-sized number: ratios as 12.3x, times with thousands separators."""
    if unit == "x":
        return f"{v:.2f}x" if v < 10 else f"{v:.1f}x"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ci(m: Measurement) -> str:
    """'[lo, hi]' of a ratio, '' otherwise."""
    if m.ci95 is None:
        return ""
    return f"[{fmt_value(m.ci95[0], m.unit)}, {fmt_value(m.ci95[1], m.unit)}]"


def _cv(m: Measurement) -> str:
    if m.cv is None:
        return ""
    return f"{m.cv * 100:.1f}%" + (" !" if m.noisy else "")


_HEAD = ["measurement", "median", "min", "unit", "CV", "95% CI", "n", "note"]


def _rows(ms: Sequence[Measurement]) -> list[list[str]]:
    return [[m.name, fmt_value(m.median, m.unit), fmt_value(m.min, m.unit), m.unit, _cv(m), fmt_ci(m),
             str(m.repeats), m.note] for m in ms]


def render(suite: str, ms: Sequence[Measurement], summaries: Sequence[Summary], console: Console) -> None:
    """Print the suite's summaries, then every measurement."""
    for s in summaries:
        t = Table(title=f"{suite}: {s.title}", caption=s.note or None, title_justify="left")
        for i, c in enumerate(s.columns):
            t.add_column(c, justify="left" if i == 0 else "right")
        for r in s.rows:
            t.add_row(*r)
        console.print(t)
    t = Table(title=f"{suite}: all measurements (median of repeats; '!' = CV > {CV_NOISY:.0%})",
              title_justify="left")
    for c in _HEAD:
        t.add_column(c, justify="right" if c in ("median", "min", "CV", "n") else "left",
                     no_wrap=c != "note", overflow="fold")
    for r in _rows(ms):
        t.add_row(*r)
    console.print(t)


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results(suite: str, description: str, ms: Sequence[Measurement], summaries: Sequence[Summary], *,
                  machine: dict[str, Any], params: dict[str, Any], started: _dt.datetime, duration_s: float,
                  other_busy_cpus: float | None = None, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<suite>.json`` and ``<suite>.md`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "suite": suite,
        "description": description,
        "timestamp": started.isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 2),
        "other_busy_cpus_during_run": None if other_busy_cpus is None else round(other_busy_cpus, 2),
        "argv": sys.argv[1:],
        "machine": machine,
        "params": params,
        "measurements": [asdict(m) for m in ms],
        "summaries": [asdict(s) for s in summaries],
    }
    jpath = out_dir / f"{suite}.json"
    jpath.write_text(json.dumps(doc, indent=2, default=str) + "\n")

    mi = machine
    other = other_busy_cpus
    md = [f"# Benchmark `{suite}`", "", description, "",
          f"- run: {doc['timestamp']} ({duration_s:.1f} s), commit {mi.get('git_commit') or '?'}"
          f"{' + local changes' if mi.get('git_dirty') else ''}",
          f"- kernel {mi['kernel']} ({mi['machine']}), {mi['cpu_count']} CPUs: {mi['cpu_model']}"
          f"{' (VM)' if mi.get('hypervisor') else ''}",
          f"- {mi['python']}, libbpf {mi['libbpf']}, bpf_jit_enable={mi['bpf_jit_enable']}, "
          f"bpf_stats_enabled={mi['bpf_stats_enabled']}",
          f"- CPUs busy with other work: {mi.get('busy_cpus_at_start')} at start, "
          f"{'?' if other is None else f'{other:.2f}'} on average during the run "
          f"(load average {' '.join(mi.get('loadavg') or [])})"
          f"{' -- contended: treat absolute numbers with care' if other is not None and other > 0.2 else ''}",
          f"- parameters: {', '.join(f'{k}={v}' for k, v in params.items()) or 'none'}",
          ""]
    for s in summaries:
        md += [f"## {s.title}", "", _md_table(s.columns, s.rows), ""]
        if s.note:
            md += [s.note, ""]
    md += ["## All measurements", "",
           f"Median of the repeats (headline), min, coefficient of variation ('!' above {CV_NOISY:.0%}); "
           "ratios are paired per interleaved round, with a bootstrap 95 % interval of their median.", "",
           _md_table(_HEAD, _rows(ms)), ""]
    mpath = out_dir / f"{suite}.md"
    mpath.write_text("\n".join(md))
    return jpath, mpath
