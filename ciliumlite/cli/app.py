"""``ciliumlite``: the demo, the inspection commands (status, endpoint/service/metrics, bpf map
listings, bgp status; see :mod:`ciliumlite.cli.commands` and docs/cli.md), ``lab list|destroy`` for
labs left behind and ``cleanup`` for a crashed datapath's leftovers (:mod:`ciliumlite.ownership`)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

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
         kvstore: str = typer.Option("memory", "--kvstore", help="memory (datapaths in this process) or etcd "
                                     "(etcd in the fabric, an agent process per node, pods through the CNI plugin)"),
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
        if routing not in ("vxlan", "native") or lb_mode not in ("snat", "dsr", "hybrid") \
                or kvstore not in ("memory", "etcd"):
            console.print("[red]--routing is vxlan or native; --lb-mode is snat, dsr or hybrid; --kvstore is memory "
                          "or etcd[/]")
            raise typer.Exit(2)
        if keep and kvstore == "etcd":
            console.print("[red]--keep needs --kvstore memory[/]: an etcd lab's etcd is a child of this command "
                          "and ends with it")
            raise typer.Exit(2)
        results, kept = run_demo(routing=routing, lb_mode=lb_mode, keep=keep,  # type: ignore[arg-type]
                                 only=step or None, kvstore=kvstore, on_step=on_step)
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

# -- ciliumlite prefilter list|update|delete: the XDP prefilter (ciliumlite.cli.prefilter)
from ciliumlite.cli.prefilter import prefilter_app  # noqa: E402

app.add_typer(prefilter_app, name="prefilter")

# -- ciliumlite policy get, bpf policy get, bpf ipcache list: network policy (ciliumlite.cli.policy)
from ciliumlite.cli.commands import bpf_app  # noqa: E402
from ciliumlite.cli.policy import bpf_ipcache_app, bpf_policy_app, policy_app  # noqa: E402

app.add_typer(policy_app, name="policy")
bpf_app.add_typer(bpf_policy_app, name="policy")
bpf_app.add_typer(bpf_ipcache_app, name="ipcache")

# -- ciliumlite agent (the node's long-running agent: ciliumlite.agent, flags in ciliumlite.cli.agent)
from ciliumlite.cli.agent import agent_command  # noqa: E402

app.command("agent")(agent_command)

lab_app = typer.Typer(help="Labs left behind: kept with `demo --keep` / Lab.keep(), or orphaned by a crash.",
                      no_args_is_help=True)
app.add_typer(lab_app, name="lab")


def _needs_root(what: str) -> None:
    if os.geteuid() != 0:
        console.print(f"[red]{what} needs root[/] (namespaces, cgroups, bpffs): run it with sudo")
        raise typer.Exit(2)


@lab_app.command("list")
def lab_list(show_all: bool = typer.Option(False, "--all", help="also the labs whose owner still runs"),
             as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Kept, orphaned (owner gone) and corrupt labs, with age, owner and what they hold; newest last."""
    from ciliumlite.lab.destroy import age, holds, records

    try:
        found = [r for r in records() if show_all or r.state != "live"]
    except PermissionError as exc:
        console.print(f"[red]cannot read the lab records ({exc}): run it with sudo[/]")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps([r.as_json() for r in found], indent=1))
        return
    if not found:
        Console(stderr=True).print("no kept or orphaned labs" + ("" if show_all else " (--all: live ones too)"))
        return
    out = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 400)
    table = Table(box=None, pad_edge=False)
    for col in ("STATE", "AGE", "OWNER", "HOLDS", "NAME"):  # the name last, like `docker ps`
        table.add_column(col, no_wrap=col == "NAME")
    for r in found:
        owner = f"{r.owner.pid} ({'runs' if r.owner_alive else 'gone'})" if r.owner else "?"
        table.add_row(r.state if r.kind == "lab" else f"{r.state} ({r.kind})", age(r), owner, holds(r), r.name)
    with out.capture() as cap:
        out.print(table)
    print("\n".join(line.rstrip() for line in cap.get().splitlines()))  # no padding after the names


def _print_outcomes(outcomes: list[Any], dry_run: bool, as_json: bool) -> bool:
    """Print what was (or would be) removed and left; True if any step failed."""
    if as_json:
        print(json.dumps([{**o.as_json(), "dry_run": dry_run} for o in outcomes], indent=1))
        return any(o.failed for o in outcomes)
    out = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 400)
    verb = "would remove" if dry_run else "removed"
    for o in outcomes:
        out.print(f"{o.name}:")
        for line in o.notes:
            out.print(f"  note: {line}")
        for line in o.removed:
            out.print(f"  {verb} {line}")
        for line in o.left:
            out.print(f"  left {line}")
        for line in o.failed:
            out.print(f"  FAILED {line}")
        out.print(f"  {verb} {len(o.removed)} things of {o.name}" + (f", {len(o.failed)} failed" if o.failed else ""))
    return any(o.failed for o in outcomes)


@lab_app.command("destroy")
def lab_destroy(names: list[str] = typer.Argument(None, metavar="[NAME]...", help="labs by name (prefix)"),
                orphans: bool = typer.Option(False, "--orphans", help="every lab whose owner died without keeping it"),
                everything: bool = typer.Option(False, "--all", help="every kept, orphaned and corrupt lab "
                                                "(never one whose owner runs)"),
                dry_run: bool = typer.Option(False, "--dry-run", help="only say what would be removed"),
                as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Remove labs: their processes (checked by pid and start time), namespaces, pins, cgroups, registry
    entries and work directories, exactly as their records list them, and nothing else."""
    from ciliumlite.bpf.errors import ValidationError
    from ciliumlite.lab.destroy import destroy_selected, select

    if not names and not orphans and not everything:
        console.print("[red]name a lab, or use --orphans or --all[/] (see `ciliumlite lab list`)")
        raise typer.Exit(2)
    _needs_root("ciliumlite lab destroy")
    try:
        sel = select(names or [], orphans=orphans, everything=everything)
    except ValidationError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
    for line in sel.skipped:
        err.print(f"skipped {line}")
    if not sel.chosen and not as_json:
        err.print("no lab to remove")
    failed = _print_outcomes(destroy_selected(sel, dry_run=dry_run), dry_run, as_json)
    raise typer.Exit(1 if failed else 0)


@app.command()
def cleanup(dry_run: bool = typer.Option(False, "--dry-run", help="only list what would be removed"),
            netns: str = typer.Option(None, "--netns", metavar="NAME",
                                      help="the datapaths of this named network namespace (default: the host's)"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Like cilium-dbg cleanup: list, then remove what datapaths whose process has gone left in a network
    namespace: their cil_* programs on its devices, their pins, state files and registry entries. Nothing of a
    running datapath, and no device, address, route or pin that no registry entry names."""
    from ciliumlite.bpf.errors import CiliumliteError
    from ciliumlite.ownership import sweep
    from ciliumlite.ownership.host import plan_cleanup

    _needs_root("ciliumlite cleanup")
    try:
        plans, notes = plan_cleanup(netns)
    except (OSError, ValueError, CiliumliteError) as exc:
        console.print(f"[red]cannot read the datapaths of {netns or 'the host'}: {exc}[/]")
        raise typer.Exit(1) from None
    err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
    for line in notes:
        err.print(f"note: {line}")
    if not plans and not as_json:
        err.print("nothing to clean up")
    failed = _print_outcomes([sweep.execute(p, dry_run=dry_run) for p in plans], dry_run, as_json)
    raise typer.Exit(1 if failed else 0)


app.command("connectivity-test")(connectivity_test)


def main() -> None:
    """Entry point of the console script (and of ``python -m ciliumlite``: the same name in its help)."""
    try:
        app(prog_name="ciliumlite")
    except KeyboardInterrupt:
        sys.exit(130)


# -- ciliumlite apply -f / delete -f: Kubernetes manifests into the kvstore (ciliumlite.cli.manifests)
from ciliumlite.cli.manifests import apply_command, delete_command  # noqa: E402

app.command("apply")(apply_command)
app.command("delete")(delete_command)
