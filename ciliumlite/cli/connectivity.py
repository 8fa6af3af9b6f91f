"""``ciliumlite connectivity-test``: Cilium's connectivity test scenarios against a fresh lab.

The lab is built in this process (namespaces, datapaths, echo servers) and removed at the end,
also on errors and Ctrl-C. There is no ``--lab``: a lab's pods, services and echo servers are
objects of the process that built it, so another process cannot deploy workloads into it (the
datapath registry under /run/ciliumlite describes datapaths for the read-only commands, not pods).
From Python, ``ConnectivityTest(lab)`` runs against a lab you already have.

Exit codes: 0 every selected scenario passed (skipped ones -- not applicable to the lab's
configuration -- do not count), 1 at least one failed, 2 the test could not run (bad options,
not root, the lab could not be built).
"""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from ciliumlite.connectivity import ScenarioResult


class RoutingOpt(enum.StrEnum):
    """--routing."""

    vxlan = "vxlan"
    native = "native"


class KvstoreOpt(enum.StrEnum):
    """--kvstore."""

    memory = "memory"
    etcd = "etcd"


class LbModeOpt(enum.StrEnum):
    """--lb-mode."""

    snat = "snat"
    dsr = "dsr"
    hybrid = "hybrid"


_MARK = {"passed": "[green]✔[/]", "failed": "[red]✘[/]", "skipped": "[yellow]-[/]"}


def _print_result(console: Console, res: ScenarioResult, verbose: bool) -> None:
    console.print(f"{_MARK[res.status]} [bold]{escape(res.name)}[/] ({res.seconds:.1f}s)"
                  + (f" [yellow]skipped:[/] {escape(res.skipped)}" if res.skipped else ""))
    if res.status == "failed" or verbose:
        for line in res.details:
            console.print(f"    {escape(line)}", soft_wrap=True)


def _table(results: list[ScenarioResult], title: str) -> Table:
    table = Table(title=title)
    table.add_column("scenario", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("evidence")
    for r in results:
        if r.status == "failed":
            first = (r.failures or r.details or ["✘ failed"])[0][2:]
            more = len(r.failures) - 1
            evidence = (first if len(first) <= 120 else first[:117] + "...") + (f" (+{more} more)" if more > 0 else "")
        elif r.status == "skipped":
            evidence = r.skipped or ""
        else:
            evidence = f"{sum(d.startswith('✔') for d in r.details)} checks"
        if r.counts and r.status != "skipped":
            evidence += " (" + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r.counts.items()) + ")"
        table.add_row(r.name, _MARK[r.status] + " " + r.status, f"{r.seconds:.1f}s", escape(evidence))
    return table


def connectivity_test(
    routing: Annotated[RoutingOpt, typer.Option("--routing", help="pod-to-pod across nodes: VXLAN overlay or "
                                                 "native routing")] = RoutingOpt.vxlan,
    lb_mode: Annotated[LbModeOpt, typer.Option("--lb-mode", help="NodePort to remote backends: snat, dsr or "
                                               "hybrid (dsr/hybrid need --routing native)")] = LbModeOpt.snat,
    test: Annotated[list[str] | None, typer.Option(
        "--test", "-t", metavar="PATTERN",
        help="run only matching scenarios: a glob (pod-to-*) or a regex; !PATTERN excludes; repeatable, "
             "or comma-separated")] = None,
    nodes: Annotated[int, typer.Option("--nodes", min=2, max=4, help="nodes in the lab")] = 2,
    masquerade: Annotated[bool, typer.Option("--masquerade/--no-masquerade",
                                             help="BPF masquerade of pod traffic leaving the cluster")] = True,
    bgp: Annotated[bool, typer.Option("--bgp/--no-bgp",
                                      help="native routing: pod CIDRs over BGP (bird) or static routes")] = True,
    timeout: Annotated[float, typer.Option("--timeout", min=0.2, max=30.0,
                                           help="seconds to wait for each answer")] = 2.0,
    kvstore: Annotated[KvstoreOpt, typer.Option("--kvstore", help="memory: datapaths in this process; etcd: etcd in "
                                                "the fabric, an agent process per node, pods through the CNI "
                                                "plugin")] = KvstoreOpt.memory,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON (nothing else)")] = False,
    junit: Annotated[Path | None, typer.Option("--junit", metavar="PATH", help="also write a JUnit XML report",
                                               dir_okay=False)] = None,
    list_only: Annotated[bool, typer.Option("--list", help="list the (selected) scenarios and exit")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show the evidence of passing scenarios "
                                          "too")] = False,
) -> None:
    """Run Cilium's connectivity test scenarios (pod-to-pod, services, NodePort, world, MTU, drops)."""
    from ciliumlite.bpf.errors import CiliumliteError
    from ciliumlite.connectivity import ConnectivityTest, results_to_json, select, summary, write_junit

    console = Console(stderr=as_json)
    try:
        chosen = select(test)
    except CiliumliteError as exc:
        console.print(f"[red]Error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if list_only:
        if as_json:
            print(json.dumps([{"name": s.name, "cilium": s.cilium, "acceptance": s.acceptance,
                               "description": s.description} for s in chosen], indent=2))
            return
        table = Table(title="connectivity-test scenarios")
        for col in ("scenario", "Cilium", "acceptance", "what it checks"):
            table.add_column(col)
        for s in chosen:
            table.add_row(s.name, s.cilium, s.acceptance, s.description)
        console.print(table)
        return
    if lb_mode is not LbModeOpt.snat and routing is not RoutingOpt.native:
        console.print(f"[red]Error:[/] --lb-mode {lb_mode.value} needs --routing native (DSR cannot ride VXLAN)")
        raise typer.Exit(2)
    if os.geteuid() != 0:
        console.print("[red]ciliumlite connectivity-test needs root[/] (namespaces, BPF programs): run it with sudo")
        raise typer.Exit(2)

    quiet = as_json
    status = console.status("building the lab") if not quiet else None
    results: list[ScenarioResult] = []

    def on_result(res: ScenarioResult) -> None:
        if quiet:
            return
        if status is not None:
            status.stop()
        _print_result(console, res, verbose)
        if status is not None:
            status.start()

    try:
        ct = ConnectivityTest(routing=routing.value, lb_mode=lb_mode.value, nodes=nodes, masquerade=masquerade,
                              bgp=bgp if routing is RoutingOpt.native else None, timeout=timeout,
                              kvstore=kvstore.value)
    except CiliumliteError as exc:
        console.print(f"[red]Error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    try:
        with ct:
            if status is not None:
                status.start()
            try:
                ct.setup()
            except CiliumliteError as exc:
                if status is not None:
                    status.stop()
                console.print(f"[red]Error:[/] the lab could not be built: {escape(str(exc))}")
                raise typer.Exit(2) from None
            if status is not None:
                status.update("running scenarios")
            results = ct.run(test or None, on_result=on_result)
            config = ct.config()
    finally:
        if status is not None:
            status.stop()
    if junit is not None:
        write_junit(results, str(junit), properties=config)
    if as_json:
        print(json.dumps(results_to_json(results, config), indent=2))
    else:
        counts = summary(results)
        title = (f"connectivity-test: {config['routing']}, lb-mode {config['lb_mode']}, "
                 f"masquerade {'on' if config['masquerade'] else 'off'}, kvstore {config.get('kvstore', 'memory')}")
        console.print(_table(results, title))
        color = "red" if counts["failed"] else "green"
        console.print(f"[{color}]{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped[/] "
                      f"in {counts['seconds']:.1f}s")
    raise typer.Exit(1 if any(r.status == "failed" for r in results) else 0)


def register(app: typer.Typer) -> None:
    """Add ``connectivity-test`` to the ``ciliumlite`` app."""
    app.command("connectivity-test")(connectivity_test)
