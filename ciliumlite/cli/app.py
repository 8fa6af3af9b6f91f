"""``ciliumlite``: the demo, and the inspection commands (status, endpoint/service/metrics, bpf map
listings, bgp status; see :mod:`ciliumlite.cli.commands` and docs/cli.md)."""

from __future__ import annotations

import json
import os
import sys

import typer
from rich.console import Console
from rich.table import Table

from ciliumlite.cli.commands import Output, OutputOpt, register
from ciliumlite.cli.connectivity import connectivity_test

app = typer.Typer(help="Build and drive a Cilium-style eBPF datapath.", no_args_is_help=True,
                  add_completion=False)
console = Console()


@app.command()
def demo(keep: bool = typer.Option(False, "--keep", help="leave the cluster up to explore"),
         routing: str = typer.Option("native", "--routing", help="vxlan or native (the main cluster)"),
         lb_mode: str = typer.Option("snat", "--lb-mode", help="snat, dsr or hybrid (native routing only)"),
         step: list[str] = typer.Option(None, "--step", help="run only these chapters"),
         as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Build the seed's cluster in network namespaces and prove every path works."""
    from ciliumlite.demo import StepResult, run_demo

    if os.geteuid() != 0:
        console.print("[red]ciliumlite demo needs root[/] (namespaces, BPF programs): run it with sudo")
        raise typer.Exit(2)
    status = console.status("starting") if not as_json else None

    def on_step(name: str, res: StepResult | None) -> None:
        if as_json:
            return
        if res is None:
            if status is not None:
                status.update(f"[bold]{name}[/] …")
            return
        mark = "[green]✔[/]" if res.ok else "[red]✘[/]"
        console.print(f"{mark} [bold]{res.title}[/] ({res.seconds:.1f}s)")
        for line in res.evidence:
            console.print(f"    {line}")

    try:
        if status is not None:
            status.start()
        if routing not in ("vxlan", "native") or lb_mode not in ("snat", "dsr", "hybrid"):
            console.print("[red]--routing is vxlan or native; --lb-mode is snat, dsr or hybrid[/]")
            raise typer.Exit(2)
        results, kept = run_demo(routing=routing, lb_mode=lb_mode, keep=keep,  # type: ignore[arg-type]
                                 only=step or None, on_step=on_step)
    finally:
        if status is not None:
            status.stop()
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    if kept is not None:
        kept.keep()
    if kept is not None and not as_json:
        p = kept.prefix
        console.print(f"\nThe cluster [bold]{p}[/] is left up. Explore it:\n"
                      f"  ciliumlite status --lab {p}\n  ciliumlite endpoint list --lab {p}\n"
                      f"  ciliumlite bpf lb list --lab {p}\n  ciliumlite monitor --lab {p}\n"
                      f"  ip netns list | grep {p}\n  ip netns exec {p}-worker3 ip route\n"
                      f"  ip netns exec {p}-fabric tcpdump -nni n1\n"
                      f"Remove it with: ciliumlite lab destroy {p}")
    failed = [r for r in results if not r.ok]
    if not as_json:
        table = Table(title="ciliumlite demo")
        table.add_column("chapter")
        table.add_column("result")
        for r in results:
            table.add_row(r.title, "✔" if r.ok else "✘")
        console.print(table)
    raise typer.Exit(1 if failed else 0)


@app.command()
def version(output: OutputOpt = Output.table) -> None:
    """Print the version."""
    from ciliumlite import __version__

    print(json.dumps({"version": __version__}) if output is Output.json else __version__)


register(app)
lab_app = typer.Typer(help="Labs left running with `demo --keep`.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")


@lab_app.command("list")
def lab_list() -> None:
    """Labs left running."""
    from ciliumlite.lab.destroy import kept_labs

    for prefix in kept_labs():
        print(prefix)


@lab_app.command("destroy")
def lab_destroy(prefix: str) -> None:
    """Remove a kept lab: its processes, namespaces, pins, cgroups and files."""
    from ciliumlite.bpf.errors import ValidationError
    from ciliumlite.lab.destroy import destroy

    try:
        removed = destroy(prefix)
    except ValidationError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(f"removed {len(removed)} things of {prefix}")
app.command("connectivity-test")(connectivity_test)


def main() -> None:
    """Entry point of the console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
