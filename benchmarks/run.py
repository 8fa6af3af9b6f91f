"""Run ciliumlite benchmark suites, print tables, write ``benchmarks/results/<suite>.{json,md}``.

    .venv/bin/python benchmarks/run.py                       # every suite
    .venv/bin/python benchmarks/run.py --only sdk_maps       # one suite (repeat --only, or a,b)
    .venv/bin/python benchmarks/run.py run sdk_overhead      # same, as a subcommand
    .venv/bin/python benchmarks/run.py list                  # what exists
    .venv/bin/python benchmarks/run.py --quick               # smaller sizes, 3 repeats (smoke test)
    .venv/bin/python benchmarks/run.py --only xdp --bpf-stats  # plus a labelled pass: where the time goes

Suites are the modules of ``benchmarks/suites/`` that define ``run(ctx) -> list[Measurement]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ciliumlite` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import suites as _suites_pkg
from benchmarks.harness import (
    RESULTS_DIR,
    Contention,
    Context,
    Summary,
    machine_info,
    make_console,
    render,
    write_results,
)


def suite_names() -> list[str]:
    """Every suite module of benchmarks/suites (``_*`` modules are helpers), without importing them."""
    return sorted(i.name for i in pkgutil.iter_modules(_suites_pkg.__path__) if not i.name.startswith("_"))


def load_suite(name: str) -> ModuleType:
    """Import one suite; it must define ``run(ctx)``."""
    mod = importlib.import_module(f"benchmarks.suites.{name}")
    if not callable(getattr(mod, "run", None)):
        raise TypeError(f"benchmarks/suites/{name}.py defines no run(ctx)")
    return mod


def _names(values: list[str]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this suite (repeatable, or comma-separated)")
    common.add_argument("--skip", action="append", default=[], metavar="NAME", help="do not run this suite")
    common.add_argument("--repeats", type=int, default=None, help="timed repeats per arm (default: the suite's DEFAULT_REPEATS, else 5; --quick: 3)")
    common.add_argument("--warmup", type=int, default=1, help="untimed warmup rounds per arm (default 1)")
    common.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats: a smoke test")
    common.add_argument("--cpu", type=int, default=None,
                        help="pin the benchmark process to this CPU (perf.md §7.1 placement); default: not pinned")
    common.add_argument("--out", type=Path, default=None,
                        help=f"result directory (default {RESULTS_DIR}; with --quick nothing is written unless --out)")
    common.add_argument("--no-write", action="store_true", help="print only, do not write result files")
    common.add_argument("--bpf-stats", action="store_true",
                        help="after the timed rounds, one more pass per arm with BPF run-time statistics on "
                             "(suites that support it: ns per run and runs per packet of every program that ran); "
                             "reported separately, never mixed into the timed figures")

    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Options of the default command: benchmarks/run.py run --help")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", parents=[common], help="run suites (the default command)")
    r.add_argument("suites", nargs="*", metavar="SUITE", help="suites to run (default: all)")
    sub.add_parser("list", help="list the suites")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 when a suite failed)."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or (args_in[0] not in ("run", "list") and args_in[0] not in ("-h", "--help")):
        args_in.insert(0, "run")  # `run.py --only x` and `run.py sdk_maps` mean `run.py run ...`
    args = _parser().parse_args(args_in)
    console = make_console()
    available = suite_names()

    if args.cmd == "list":
        for name in available:
            try:
                desc = getattr(load_suite(name), "DESCRIPTION", "")
            except Exception as exc:  # a broken suite must not hide the others
                desc = f"[red]cannot import: {exc!r}[/red]"
            console.print(f"[bold]{name}[/bold]  {desc}")
        return 0

    wanted = _names(args.suites) + _names(args.only) or list(available)
    skip = set(_names(args.skip))
    unknown = [n for n in [*wanted, *skip] if n not in available]
    if unknown:
        console.print(f"[red]unknown suite(s): {', '.join(unknown)}; have: {', '.join(available)}[/red]")
        return 2
    selected = [n for n in dict.fromkeys(wanted) if n not in skip]

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    machine = machine_info()
    console.print(f"[bold]ciliumlite benchmarks[/bold]: kernel {machine['kernel']}, {machine['cpu_count']} CPUs "
                  f"({machine['cpu_model']}), {machine['python']}, libbpf {machine['libbpf']}, "
                  f"jit={machine['bpf_jit_enable']}, bpf_stats={machine['bpf_stats_enabled']}; "
                  f"warmup={args.warmup}{' quick' if args.quick else ''}"
                  f"{f' cpu={args.cpu}' if args.cpu is not None else ''}")
    if machine["busy_cpus_at_start"] > 0.2:
        console.print(f"[yellow]{machine['busy_cpus_at_start']:.2f} CPUs busy with other work: numbers will be noisy "
                      "and slow (§7.1 wants an idle machine)[/yellow]")
    if machine["bpf_stats_enabled"] not in (None, "0"):
        console.print("[yellow]kernel.bpf_stats_enabled is on: it adds two clock reads per program run[/yellow]")

    # --quick results are not comparable with full runs: keep them out of benchmarks/results/.
    write = not args.no_write and (args.out is not None or not args.quick)
    out_dir: Path = args.out or RESULTS_DIR
    failed: list[str] = []
    total0 = time.perf_counter()
    for name in selected:
        try:  # only selected suites are imported: their imports (netns labs, tools) stay out of other runs
            mod = load_suite(name)
        except Exception:
            console.print(f"[red]suite {name} cannot be imported:[/red]")
            console.print(traceback.format_exc(), markup=False, highlight=False)
            failed.append(name)
            continue
        console.rule(f"[bold]{name}[/bold]: {getattr(mod, 'DESCRIPTION', '')}")
        if getattr(mod, "NEEDS_ROOT", True) and os.geteuid() != 0:
            console.print(f"[yellow]skipped {name}: needs root for bpf() (run `sudo make bench`)[/yellow]")
            failed.append(name)
            continue
        if args.repeats is not None:
            repeats = args.repeats
        else:
            repeats = 3 if args.quick else int(getattr(mod, "DEFAULT_REPEATS", 5))
        ctx = Context(repeats=repeats, warmup=args.warmup, quick=args.quick, console=console,
                      bpf_stats=args.bpf_stats)
        ctx.params["cpu_affinity"] = sorted(os.sched_getaffinity(0))
        started = dt.datetime.now(dt.UTC)
        contention = Contention()
        t0 = time.perf_counter()
        try:
            ms = mod.run(ctx)
            summarize = getattr(mod, "summarize", None)
            summaries: list[Summary] = summarize(ms) if callable(summarize) else []
        except Exception:
            console.print(f"[red]suite {name} failed:[/red]")
            console.print(traceback.format_exc(), markup=False, highlight=False)
            failed.append(name)
            continue
        elapsed = time.perf_counter() - t0
        other = contention.other_cpus()
        render(name, ms, summaries, console)
        if other > 0.2:
            console.print(f"[yellow]{name}: other processes kept {other:.2f} CPUs busy during the run[/yellow]")
        if write:
            paths = write_results(name, getattr(mod, "DESCRIPTION", ""), ms, summaries, machine=machine,
                                  params=ctx.params, started=started, duration_s=elapsed, other_busy_cpus=other,
                                  out_dir=out_dir)
            console.print(f"{name}: {elapsed:.1f} s; wrote {', '.join(str(p) for p in paths)}")
        else:
            console.print(f"{name}: {elapsed:.1f} s")
    console.print(f"[bold]done[/bold] in {time.perf_counter() - total0:.1f} s"
                  + (f"; [red]failed or skipped: {', '.join(failed)}[/red]" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
