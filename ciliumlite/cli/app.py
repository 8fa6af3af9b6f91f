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
def demo(keep: bool = typer.Option(False, "--keep", help="leave the last lab up to explore"),
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
        results, kept = run_demo(keep=keep, only=step or None, on_step=on_step)
    finally:
        if status is not None:
            status.stop()
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    elif kept is not None:
        console.print(f"\nLab [bold]{kept.prefix}[/] left up: `ip netns list | grep {kept.prefix}`; "
                      f"`ip netns exec {kept.prefix}-<node> ip route`. Remove with `ip netns del` per namespace.")
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
app.command("connectivity-test")(connectivity_test)


def main() -> None:
    """Entry point of the console script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
