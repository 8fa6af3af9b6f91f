"""``ciliumlite prefilter list|update|delete``: the XDP prefilter of registered nodes, like
``cilium prefilter``.

The commands work on the node's pinned maps (``cilium_cidr_v4_fix`` and ``cilium_cidr_v4_dyn``)
through :class:`ciliumlite.node.prefilter.PinnedPrefilter`, with the validation of
``Datapath.prefilter`` (a bad CIDR, host bits, a full map: refused before anything is written),
and write the node's state item files as its owner does, so a restore keeps the change; the
owning process (a Lab, an agent, a controller) reads the maps first at its next call, so it lists
what the CLI changed. ``update`` and ``delete`` need ``--lab`` or ``--node``: a change never goes to
every datapath on the host by default. They check every selected node before writing to any.

Exit codes: 0 done, 1 refused or failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated

import typer

from ciliumlite import inspect as ins
from ciliumlite.bpf.errors import CiliumliteError
from ciliumlite.cli import format as fmt
from ciliumlite.cli.commands import LabOpt, NodeOpt, Output, OutputOpt, Run, _run, _select
from ciliumlite.inspect import RegisteredDatapath

if TYPE_CHECKING:
    from rich.table import Table

    from ciliumlite.node.prefilter import PinnedPrefilter

prefilter_app = typer.Typer(help="The XDP prefilter: source CIDRs dropped at XDP (like cilium prefilter).",
                            no_args_is_help=True)

CidrOpt = Annotated[list[str], typer.Option("--cidr", metavar="CIDR",
                                            help="an IPv4 CIDR like 198.51.100.0/24 (repeatable)")]


def _open(dp: RegisteredDatapath, *, state: bool) -> PinnedPrefilter:
    # Imported here: the node package is heavy, and the CLI's other commands do not need it.
    from ciliumlite.node import state as state_mod
    from ciliumlite.node.prefilter import PinnedPrefilter

    if not dp.pin_dir:
        raise ins.MapAbsent(dp.node, "cilium_cidr_v4_fix", "no pinned maps: legacy host routing")
    writer = state_mod.StateWriter(state_mod.config_from_json(dp.config)) if state and dp.config else None
    return PinnedPrefilter(dp.node, dp.pin_dir, writer)


def _rows(node: str, cidrs: list[ipaddress.IPv4Network]) -> list[fmt.Row]:
    return [{"node": node, "cidr": str(c), "map": "cilium_cidr_v4_fix" if c.prefixlen == 32 else "cilium_cidr_v4_dyn"}
            for c in cidrs]


def _table(rows: list[fmt.Row]) -> Table:
    return fmt.table(["CIDR", "MAP", "NODE"], [(r["cidr"], r["map"], r["node"]) for r in rows])


def _show(run: Run, rows: list[fmt.Row], empty: str) -> None:
    if run.json:
        print(fmt.to_json(rows))
    elif rows:
        run.out.print(_table(rows))
    else:
        run.err.print(empty)


@prefilter_app.command("list")
def prefilter_list(lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """CIDR, MAP and NODE of every denied source CIDR of the selected nodes (their pinned maps; needs root)."""
    from ciliumlite.bpf.errors import NotSupportedError

    with _run(output) as run:
        rows: list[fmt.Row] = []
        for dp in _select(run, lab, node, pins=True):
            try:
                with _open(dp, state=False) as pf:
                    rows += _rows(dp.node, pf.list())
            except NotSupportedError as exc:
                run.note(str(exc))
            except ins.MapAbsent as exc:
                run.note(str(exc))
        _show(run, rows, "(no denied CIDRs)")


def _change(verb: str, cidrs: list[str], lab: str | None, node: str | None, output: Output) -> None:
    with _run(output) as run:
        if not cidrs:
            run.error(f"prefilter {verb} needs at least one --cidr")
            raise typer.Exit(2)
        if not lab and not node:
            run.error(f"prefilter {verb} needs --lab or --node: a change never goes to every datapath of the host")
            raise typer.Exit(2)
        dps = _select(run, lab, node, pins=True)
        opened: list[tuple[RegisteredDatapath, PinnedPrefilter]] = []
        try:
            for dp in dps:
                opened.append((dp, _open(dp, state=True)))
            # Every node is checked before any is written: a refusal changes nothing anywhere.
            for dp, pf in opened:
                try:
                    (pf.check_add if verb == "update" else pf.check_remove)(cidrs)
                except CiliumliteError as exc:
                    raise CiliumliteError(f"{dp.node}: {exc}") from None
            rows: list[fmt.Row] = []
            for dp, pf in opened:
                (pf.add if verb == "update" else pf.remove)(cidrs)
                rows += _rows(dp.node, pf.list())
        finally:
            for _, pf in opened:
                pf.close()
        _show(run, rows, "(no denied CIDRs)")


@prefilter_app.command("update")
def prefilter_update(cidr: CidrOpt, lab: LabOpt = None, node: NodeOpt = None,
                     output: OutputOpt = Output.table) -> None:
    """Deny the --cidr source CIDRs at XDP on the selected nodes (all or nothing); prints the list after."""
    _change("update", cidr, lab, node, output)


@prefilter_app.command("delete")
def prefilter_delete(cidr: CidrOpt, lab: LabOpt = None, node: NodeOpt = None,
                     output: OutputOpt = Output.table) -> None:
    """Allow the --cidr source CIDRs again on the selected nodes (each must be denied); prints the list after."""
    _change("delete", cidr, lab, node, output)


__all__ = ["prefilter_app"]
