"""``ciliumlite policy get``, ``ciliumlite bpf policy get`` and ``ciliumlite bpf ipcache list``:
network policy on registered nodes, like ``cilium policy get``, ``cilium bpf policy get`` and
``cilium bpf ipcache list``.

``policy get`` reads each node's state directory: the policies its last sync enforced. The two
``bpf`` commands read the node's pins (``cilium_policy`` and each endpoint's LPM trie,
``cilium_policystats``, ``cilium_ipcache``) through :class:`ciliumlite.node.policy.PolicyMaps`, so
they show what the kernel enforces, not what a control plane meant to write. Nothing here changes
a map.

Exit codes: 0 shown (absent maps are notes on stderr), 1 nothing to show, an unknown endpoint or a
read failed (the message says which).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from ciliumlite import inspect as ins
from ciliumlite.bpf.errors import BpfError
from ciliumlite.cli import format as fmt
from ciliumlite.cli import policy_format as pfmt
from ciliumlite.cli.commands import LabOpt, NodeOpt, Output, OutputOpt, Run, _each, _run, _select
from ciliumlite.inspect import InspectError, RegisteredDatapath

if TYPE_CHECKING:
    from ciliumlite.node.policy import PolicyMaps

bpf_policy_app = typer.Typer(help="cilium_policy: each endpoint's policy map (like cilium bpf policy get).",
                             no_args_is_help=True)
policy_app = typer.Typer(help="The network policies the nodes enforce (like cilium policy get).",
                         no_args_is_help=True)
bpf_ipcache_app = typer.Typer(help="cilium_ipcache: prefix -> identity (like cilium bpf ipcache list).",
                              no_args_is_help=True)


@contextmanager
def _policy_maps(dp: RegisteredDatapath) -> Iterator[PolicyMaps]:
    """The node's PolicyMaps from its pins, closed after use; absent maps are ``MapAbsent``."""
    # Imported here: the node package is heavy, and the CLI's other commands do not need it.
    from ciliumlite.datapath.config import POLICY_MAP_SIZE
    from ciliumlite.node.policy import PolicyMaps

    if not dp.pin_dir:
        raise ins.MapAbsent(dp.node, "cilium_policy", "no pinned maps: legacy host routing")
    try:
        # The trie size matters only to writers; a reader passes the node's own for honesty.
        pm = PolicyMaps(dp.pin_dir, int(dp.config.get("policy_map_size") or POLICY_MAP_SIZE))
    except BpfError as exc:
        if exc.errno != errno.ENOENT:
            raise
        if not os.path.isdir(dp.pin_dir):
            raise ins.PinsGone(dp.node, dp.pin_dir) from None
        raise ins.MapAbsent(dp.node, "cilium_policy") from None
    try:
        yield pm
    finally:
        pm.close()


def _matches(ep_id: int, row: dict[str, Any] | None, wanted: str) -> bool:
    return str(ep_id) == wanted or (row is not None and row.get("name") == wanted)


def _read_policy(dp: RegisteredDatapath, wanted: str | None, local: list[dict[str, Any]]) -> list[fmt.Row]:
    by_id = {r["id"]: r for r in dp.endpoints if isinstance(r.get("id"), int)}
    with _policy_maps(dp) as pm:
        enforced = pm.enforced()
        if wanted is None:
            ids = enforced
        else:
            # The registry's endpoints and any enforced id it does not know (a map left behind).
            ids = sorted(i for i in {*by_id, *enforced} if _matches(i, by_id.get(i), wanted))
        states = {i: pm.get_by_id(i) for i in ids}
        # CIDR identities are named by their ipcache prefixes.
        prefixes: dict[int, list[str]] = {}
        for e in pm.list() if any(states.values()) else ():
            prefixes.setdefault(e.identity, []).append(str(e.prefix))
        return [pfmt.policy_endpoint(dp.node, i, by_id.get(i), states[i], pm.stats_by_id(i) if states[i] else {},
                                    local, prefixes) for i in ids]


@bpf_policy_app.command("get")
def bpf_policy_get(
    endpoint: Annotated[str | None, typer.Argument(
        metavar="[ENDPOINT]", help="an endpoint id or name (default: every endpoint with a policy map)")] = None,
    lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table,
) -> None:
    """POLICY, DIRECTION, IDENTITY, LABELS, PORT/PROTO, PACKETS, BYTES of an endpoint's policy map (needs root).

    PACKETS and BYTES count what each allow entry let through (cilium_policystats); denied packets are in
    `ciliumlite metrics` (DROP_POLICY_DENY), so deny entries show "-".
    """
    with _run(output) as run:
        dps = _select(run, lab, node, pins=True)
        local = [r for dp in dps for r in dp.endpoints]
        rows = [r for _, got in _each(run, dps, lambda d: _read_policy(d, endpoint, local)) for r in got]
        if endpoint is not None and not rows and not run.failed:
            known = sorted({str(r.get("name")) for r in local if r.get("name")})
            raise InspectError(f"no endpoint {endpoint!r} on {', '.join(d.node for d in dps) or 'any node'}"
                               f" (give an endpoint id or name: {', '.join(known) or 'none registered'}; "
                               "see `ciliumlite endpoint list`)")
        _show(run, rows, local)


def _show(run: Run, rows: list[fmt.Row], local: list[dict[str, Any]]) -> None:
    if run.json:
        print(fmt.to_json(rows))
        return
    node = None
    several = len({r["node"] for r in rows}) > 1
    for i, r in enumerate(rows):
        if i:
            run.out.print()
        if several and r["node"] != node:
            node = r["node"]
            run.out.print(Text(f"# {node}", style="bold"))
        run.lines([pfmt.policy_title(r)])
        if r["enforced"]:
            run.out.print(pfmt.policy_table(r))
    if not rows and not run.failed:
        run.err.print(f"(no endpoint has a policy map: none is enforced; {len(local)} endpoint"
                      f"{'' if len(local) == 1 else 's'} registered)")


@bpf_ipcache_app.command("list")
def bpf_ipcache_list(lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """PREFIX, IDENTITY, TUNNEL ENDPOINT of every cilium_ipcache entry (needs root)."""
    def read(dp: RegisteredDatapath) -> list[fmt.Row]:
        with _policy_maps(dp) as pm:
            return pfmt.ipcache_rows(dp.node, pm.list())

    with _run(output) as run:
        rows = [r for _, got in _each(run, _select(run, lab, node, pins=True), read) for r in got]
        if run.json:
            print(fmt.to_json(rows))
        elif rows:
            run.out.print(pfmt.ipcache_table(rows))
        elif not run.failed:
            run.err.print("(no entries)")


@policy_app.command("get")
def policy_get(
    key: Annotated[str | None, typer.Argument(
        metavar="[POLICY]", help="a policy's Kind/namespace/name or name (default: every policy)")] = None,
    lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table,
) -> None:
    """POLICY, SUBJECT, DIRECTION, VERDICT, PEERS, PORTS, NODES of the policies the nodes enforce.

    Read from each node's state directory (what its last policy sync wrote), so it shows what the
    nodes took in, not what a control plane meant to send; no root needed.
    """
    with _run(output) as run:
        dps = _select(run, lab, node, pins=False)
        rows = pfmt.policy_rows((dp.node, dp.policies) for dp in dps)
        if key is not None:
            rows = [r for r in rows if key in (r["key"], r["name"], f"{r['namespace']}/{r['name']}")]
            if not rows:
                raise InspectError(f"no policy {key!r} is enforced on {', '.join(d.node for d in dps) or 'any node'}"
                                   " (see `ciliumlite policy get` for the ones that are)")
        if run.json:
            print(fmt.to_json(rows))
        elif rows:
            run.out.print(pfmt.policy_rules_table(rows))
        else:
            run.err.print("(no policy is enforced: none applied, or no node has enable_policy)")


__all__ = ["bpf_ipcache_app", "bpf_policy_app", "policy_app"]
