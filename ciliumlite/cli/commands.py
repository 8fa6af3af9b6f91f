"""The inspection commands: ``status``, ``endpoint list``, ``service list``, ``metrics``, ``bpf … list``,
``bgp status``, ``monitor``. They read the datapath registry and the pinned maps
(:mod:`ciliumlite.inspect`; ``monitor`` the ``cilium_events`` ring buffer, :mod:`ciliumlite.datapath.events`)
and print through :mod:`ciliumlite.cli.format`; nothing here changes a datapath.

Exit codes: 0 shown (notes about skipped datapaths or absent maps go to stderr), 1 nothing to show
or a read failed (the message says what is missing).
"""

from __future__ import annotations

import enum
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.text import Text

from ciliumlite import inspect as ins
from ciliumlite.agent.client import AgentError, AgentUnavailable
from ciliumlite.bpf.errors import BpfError, CiliumliteError, ValidationError
from ciliumlite.cli import agent as agent_cli
from ciliumlite.cli import format as fmt
from ciliumlite.datapath import events as ev
from ciliumlite.datapath import sockops
from ciliumlite.datapath.reasons import Reason
from ciliumlite.inspect import InspectError, MapAbsent, PinsGone, RegisteredDatapath

if TYPE_CHECKING:
    from ciliumlite.prometheus import MetricsServer

T = TypeVar("T")


class Output(enum.StrEnum):
    """How to print: a table for people, JSON for programs."""

    table = "table"
    json = "json"


LabOpt = Annotated[str | None, typer.Option(
    "--lab", metavar="PREFIX", help="only the datapaths of this lab (its prefix: node names are PREFIX-<node>)")]
NodeOpt = Annotated[str | None, typer.Option(
    "--node", metavar="NAME", help="only this node (full name, or the name inside --lab)")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]


class Run:
    """One command's output streams and outcome."""

    def __init__(self, output: Output) -> None:
        self.output = output
        # Not a terminal (a pipe, a test): no wrapping or cropping of wide tables.
        # Map contents are never markup or emoji codes ("[ClusterIP]", a MAC's ":ab:").
        self.out = Console(highlight=False, markup=False, emoji=False,
                           width=None if sys.stdout.isatty() else 400)
        self.err = Console(stderr=True, highlight=False, markup=False, emoji=False)
        self.failed = False

    @property
    def json(self) -> bool:
        """``--output json``."""
        return self.output is Output.json

    def note(self, message: str) -> None:
        """Something skipped or absent; the command still succeeds."""
        self.err.print(Text.assemble(("note: ", "yellow"), message), soft_wrap=True)

    def error(self, message: str) -> None:
        """A failure; the command exits 1 at the end."""
        self.err.print(Text.assemble(("Error: ", "bold red"), message), soft_wrap=True)
        self.failed = True

    def emit(self, rows: list[fmt.Row], render: Callable[[list[fmt.Row]], RenderableType]) -> None:
        """Print rows as JSON or through ``render``."""
        if self.json:
            print(fmt.to_json(rows))
        else:
            self.out.print(render(rows))

    def lines(self, lines: list[str]) -> None:
        """Plain text lines (no markup)."""
        for line in lines:
            self.out.print(line, markup=False, soft_wrap=True)


@contextmanager
def _run(output: Output) -> Iterator[Run]:
    run = Run(output)
    try:
        yield run
    except CiliumliteError as exc:
        run.error(str(exc))
        raise typer.Exit(1) from None
    if run.failed:
        raise typer.Exit(1)


def _select(run: Run, lab: str | None, node: str | None, *, pins: bool) -> list[RegisteredDatapath]:
    if pins:
        ins.require_root()
        ins.require_bpffs()
    reg = ins.load()
    for n in reg.notes:
        run.note(n)
    chosen = ins.select(reg.entries, lab=lab, node=node, directory=reg.directory)
    for dp in chosen:
        if dp.pid is not None and not dp.process_alive:
            run.note(f"{dp.node}: its process {dp.pid} is not running; showing what it left behind")
    return chosen


def _each(run: Run, dps: list[RegisteredDatapath], read: Callable[[RegisteredDatapath], T]) -> list[tuple[RegisteredDatapath, T]]:
    """``read`` every datapath: absent maps and vanished pins are notes, other failures errors."""
    out = []
    gone = 0
    for dp in dps:
        try:
            out.append((dp, read(dp)))
        except PinsGone as exc:
            run.note(str(exc))
            gone += 1
        except MapAbsent as exc:
            run.note(str(exc))
        except CiliumliteError as exc:
            run.error(f"{dp.node}: {exc}")
    if dps and gone == len(dps):
        raise InspectError("every selected datapath stopped while it was being read")
    return out


# -- status ----------------------------------------------------------------------------------------------


def status(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="add the config and every attachment")] = False,
           lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """Per node: kube-proxy replacement, routing, masquerading, LB mode, programs, map pressure (like cilium status).

    Reads the registry and every map pinned in each node's pin directory (needs root).
    """
    with _run(output) as run:
        dps = _select(run, lab, node, pins=True)
        rows = [agent_cli.with_agent(run, fmt.status_row(dp, maps, alive=dp.process_alive, verbose=verbose,
                                                         sockops=sock), dp)
                for dp, (maps, sock) in _each(run, dps, lambda d: (ins.map_pressure(d), sockops.read_status(d.pin_dir)))]
        if run.json:
            print(fmt.to_json(rows))
            return
        for i, row in enumerate(rows):
            if i:
                run.out.print()
            run.lines(agent_cli.status_lines(row, fmt.status_lines(row, verbose=verbose)))


# -- endpoints, services, tunnels ------------------------------------------------------------------------

endpoint_app = typer.Typer(help="Endpoints (pods) as the datapaths registered them.", no_args_is_help=True)
service_app = typer.Typer(help="Services as the datapaths registered them.", no_args_is_help=True)
bpf_app = typer.Typer(help="The pinned BPF maps, as the kernel has them.", no_args_is_help=True)
bpf_endpoint_app = typer.Typer(help="cilium_lxc: local endpoints.", no_args_is_help=True)
bpf_lb_app = typer.Typer(help="cilium_lb4_services_v2 and cilium_lb4_backends_v3.", no_args_is_help=True)
bpf_ct_app = typer.Typer(help="cilium_ct4_global and cilium_ct_any4_global: connection tracking.",
                         no_args_is_help=True)
bpf_nat_app = typer.Typer(help="cilium_snat_v4_external: source NAT mappings.", no_args_is_help=True)
bpf_tunnel_app = typer.Typer(help="cilium_tunnel_map: remote pod CIDRs and their nodes.", no_args_is_help=True)
bgp_app = typer.Typer(help="BGP (bird) of native-routing nodes.", no_args_is_help=True)


@endpoint_app.command("list")
def endpoint_list(lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """ID, IDENTITY, IPv4, IFNAME, MAC, NODE of every endpoint (from the registry)."""
    with _run(output) as run:
        rows = fmt.endpoint_rows(agent_cli.live(run, _select(run, lab, node, pins=False)))
        run.emit(rows, fmt.endpoint_table)


@endpoint_app.command("labels")
def endpoint_labels(
    endpoint: Annotated[str, typer.Argument(help="the endpoint: its id, container id or name")],
    add: Annotated[list[str] | None, typer.Option("--add", "-a", metavar="KEY=VALUE",
                                                 help="set a label (repeatable)")] = None,
    delete: Annotated[list[str] | None, typer.Option("--delete", "-d", metavar="KEY",
                                                    help="remove a label (repeatable)")] = None,
    lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table,
) -> None:
    """Change an endpoint's labels through its node's agent, like cilium endpoint labels: the
    identity of the new security labels is written in place (no program reloaded) and every
    node's policy follows. Without --add/--delete its labels are re-evaluated (its namespace's
    labels changed)."""
    with _run(output) as run:
        pairs = {}
        for item in add or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValidationError(f"--add {item!r}: use KEY=VALUE")
            pairs[key] = value
        try:
            row = agent_cli.relabel(_select(run, lab, node, pins=False), endpoint, pairs, list(delete or []))
        except (AgentError, AgentUnavailable) as exc:
            raise ValidationError(f"endpoint labels {endpoint}: {exc}") from None
        if run.json:
            print(fmt.to_json(row))
            return
        run.lines([f"endpoint {row['id']} on {row['node']} (container {row['container_id']}): identity "
                   f"{row['identity']}, labels " + ", ".join(f"{k}={v}" for k, v in sorted(row["labels"].items()))])


@bpf_endpoint_app.command("list")
def bpf_endpoint_list(lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """IP ADDRESS and LOCAL ENDPOINT INFO of every cilium_lxc entry."""
    with _run(output) as run:
        got = _each(run, _select(run, lab, node, pins=True), ins.bpf_endpoints)
        run.emit([r for dp, entries in got for r in fmt.bpf_endpoint_rows(dp.node, entries)], fmt.bpf_endpoint_table)


@bpf_tunnel_app.command("list")
def bpf_tunnel_list(lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """TUNNEL (a remote pod CIDR) and VALUE (its node's underlay address) of every cilium_tunnel_map entry."""
    with _run(output) as run:
        got = _each(run, _select(run, lab, node, pins=True), ins.tunnels)
        run.emit([r for dp, entries in got for r in fmt.tunnel_rows(dp, entries)], fmt.tunnel_table)


@bpf_lb_app.command("list")
def bpf_lb_list(lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """SERVICE ADDRESS and BACKEND ADDRESS (REVNAT_ID) (SLOT) of every service-map row."""
    with _run(output) as run:
        got = _each(run, _select(run, lab, node, pins=True), ins.lb_entries)
        run.emit([r for dp, entries in got for r in fmt.lb_rows(dp.node, entries)], fmt.lb_table)


@service_app.command("list")
def service_list(lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """ID, Frontend, Service Type, Backend of every service (from the registry; the ID is the
    reverse-NAT index, read from the pinned map when that is possible)."""
    with _run(output) as run:
        rows = []
        for dp in agent_cli.live(run, _select(run, lab, node, pins=False)):
            ids: dict[tuple[str, int], int] = {}
            if dp.services and os.geteuid() == 0:
                try:
                    ids = ins.revnat_ids(dp)
                except CiliumliteError as exc:
                    run.note(f"{dp.node}: service IDs unknown ({exc})")
            rows += fmt.service_rows(dp, ids)
        run.emit(rows, fmt.service_table)


# -- conntrack and NAT -----------------------------------------------------------------------------------


@bpf_ct_app.command("list")
def bpf_ct_list(lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """Every conntrack entry (TCP: cilium_ct4_global, others: cilium_ct_any4_global), one line each."""
    with _run(output) as run:
        dps = _select(run, lab, node, pins=True)
        now = ins.monotonic_seconds()
        rows: list[fmt.Row] = []
        for map_name in (ins.CT_TCP_MAP, ins.CT_ANY_MAP):
            got = _each(run, dps, functools.partial(ins.ct_entries, map_name=map_name))
            rows += [fmt.ct_row(dp.node, c.map, c.key, c.entry, now) for dp, entries in got for c in entries]
        _flows(run, fmt.sort_flows(rows), fmt.ct_line)


@bpf_nat_app.command("list")
def bpf_nat_list(lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """Every source-NAT entry of cilium_snat_v4_external (both halves of each mapping), one line each."""
    with _run(output) as run:
        got = _each(run, _select(run, lab, node, pins=True), ins.nat_entries)
        now = ins.monotonic_seconds()
        _flows(run, fmt.sort_flows([fmt.nat_row(dp.node, k, v, now) for dp, entries in got for k, v in entries]),
               fmt.nat_line)


def _flows(run: Run, rows: list[fmt.Row], line: Callable[[fmt.Row], str]) -> None:
    if run.json:
        print(fmt.to_json(rows))
        return
    node = None
    for r in rows:
        if r["node"] != node:
            node = r["node"]
            run.out.print(Text(f"# {node}", style="bold"))
        run.lines([line(r)])
    if not rows and not run.failed:
        run.err.print("(no entries)")


# -- metrics ---------------------------------------------------------------------------------------------


def metrics(prometheus: Annotated[bool, typer.Option(
                "--prometheus", help="Prometheus text exposition (Cilium's metric names), as --serve serves it")] = False,
            serve: Annotated[str | None, typer.Option(
                "--serve", metavar="HOST:PORT",
                help="serve the Prometheus metrics on HTTP at HOST:PORT/metrics until Ctrl-C (e.g. 127.0.0.1:9962)")] = None,
            duration: Annotated[float | None, typer.Option(
                "--duration", metavar="SECONDS", min=0.0, help="with --serve: stop after SECONDS")] = None,
            lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table) -> None:
    """Packets and bytes forwarded and dropped, by reason and direction, summed over CPUs (cilium_metrics).

    --prometheus prints, and --serve serves over HTTP, Cilium's metrics (cilium_drop_count_total, …) read
    from the maps at each scrape (docs/observability.md).
    """
    with _run(output) as run:
        dps = _select(run, lab, node, pins=True)
        if prometheus or serve is not None:
            from prometheus_client import generate_latest

            from ciliumlite import prometheus as prom

            registry = prom.CollectorRegistry()
            registry.register(prom.DatapathCollector(lab=lab, node=node))
            if serve is None:
                sys.stdout.write(generate_latest(registry).decode())
                return
            _serve_metrics(run, prom.serve(serve, registry), dps, duration)
            return
        got = _each(run, dps, ins.metrics)
        rows = [r for dp, ms in got for r in fmt.metric_rows(dp.node, ms)]
        run.emit(rows, fmt.metric_table)


def _serve_metrics(run: Run, server: MetricsServer, dps: list[RegisteredDatapath], duration: float | None) -> None:
    stopped = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        # On stderr: a script can wait for it before it scrapes.
        run.err.print(f"Serving metrics of {len(dps)} datapath{'s' if len(dps) > 1 else ''} on {server.url}"
                      + ("" if duration is not None else "; press Ctrl-C to quit"), soft_wrap=True)
        try:
            stopped.wait(duration)
        except KeyboardInterrupt:
            pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        server.close()


# -- monitor ---------------------------------------------------------------------------------------------


class EventKind(enum.StrEnum):
    """Which datapath events ``monitor`` shows."""

    drop = "drop"
    trace = "trace"
    policy_verdict = "policy-verdict"


def _lost_events(run: Run, dps: list[RegisteredDatapath]) -> dict[str, dict[int, int]]:
    """Per node: events the datapath did not send so far (cilium_metrics), by reason."""
    out: dict[str, dict[int, int]] = {}
    for dp, rows in _each(run, dps, ins.metrics):
        out[dp.node] = {r: sum(m.packets for m in rows if m.reason == r)
                        for r in (Reason.EVENT_LOST_RATE_LIMIT, Reason.EVENT_LOST_RING_FULL)}
    return out


def _open_monitors(run: Run, dps: list[RegisteredDatapath], types: set[str]) -> list[ev.Monitor]:
    monitors: list[ev.Monitor] = []
    try:
        for dp in dps:
            if not dp.pin_dir:
                run.note(f"{dp.node}: no pinned maps (legacy host routing): no datapath events")
                continue
            try:
                monitors.append(ev.Monitor(dp.pin_dir, types, node=dp.node))
            except ev.EventsUnavailable as exc:
                run.note(str(exc))
                continue
            except BpfError:
                if not os.path.isdir(dp.pin_dir):
                    run.note(str(PinsGone(dp.node, dp.pin_dir)))
                    continue
                raise
            extra = dp.config.get("extra_rodata") or {}
            if "trace" in types and not (dp.config.get("monitor_trace") or extra.get("trace_events")):
                run.note(f"{dp.node}: trace events are off in this datapath (they are chosen at load time: "
                         "DatapathConfig(monitor_trace=True)); only drops will show")
    except BaseException:
        for m in monitors:
            m.close()
        raise
    return monitors


#: How often ``monitor`` reads the lost-event counters (and the endpoints) while it runs, in seconds.
LOST_CHECK_SECONDS = 1.0
_LOST_SOURCES = {Reason.EVENT_LOST_RATE_LIMIT: "BPF_EVENTS_RATE_LIMIT",
                 Reason.EVENT_LOST_RING_FULL: "PERF_EVENT_RING_BUFFER"}


class _Peers:
    """The endpoints and identities of the watched datapaths, for Hubble's flow fields (refreshed)."""

    def __init__(self, run: Run, dps: list[RegisteredDatapath]) -> None:
        from ciliumlite.datapath.flow import Peers

        self._run = run
        self._nodes = [dp.node for dp in dps]
        self._lookups = {dp.node: ins.IdentityLookup(dp) for dp in dps}
        self.by_node: dict[str, Peers] = {}
        self.names: dict[str, dict[int, fmt.Row]] = {}
        self._fill(dps)

    def _fill(self, dps: list[RegisteredDatapath]) -> None:
        from ciliumlite.datapath.flow import Peers

        for dp in dps:
            eps = {str(e.get("ipv4") or e.get("ip")): e for e in dp.endpoints if e.get("ipv4") or e.get("ip")}
            ifnames = {int(e["ifindex"]): str(e.get("ifname")) for e in dp.endpoints
                       if isinstance(e.get("ifindex"), int) and e.get("ifname")}
            self.by_node[dp.node] = Peers(endpoints=eps, identity=self._lookups.get(dp.node), ifnames=ifnames)
            self.names[dp.node] = fmt.endpoint_names(dp)

    def refresh(self) -> None:
        """Re-read the registry entries (pods come and go while monitor runs)."""
        try:
            reg = ins.load()
        except InspectError:
            return
        self._fill([e for e in reg.entries if e.node in self._lookups])

    def close(self) -> None:
        """Close the ipcache maps."""
        for lk in self._lookups.values():
            lk.close()


def monitor(
    event_type: Annotated[list[EventKind] | None, typer.Option(
        "--type", "-t", help="drop, trace or policy-verdict (repeatable; default: all)")] = None,
    lab: LabOpt = None, node: NodeOpt = None, output: OutputOpt = Output.table,
    duration: Annotated[float | None, typer.Option(
        "--duration", metavar="SECONDS", min=0.0, help="stop after SECONDS (default: run until Ctrl-C)")] = None,
    flows: Annotated[bool, typer.Option(
        "--flows", help="Hubble flows: hubble observe's compact lines, or with -o json its flow objects")] = False,
) -> None:
    """Live datapath events, one line each like cilium monitor (drops by default; traces when the datapath was
    loaded with monitor_trace). Reads the cilium_events ring buffer of every selected datapath (needs root).

    --output json prints one JSON object per event and line (JSON Lines), as they arrive, with the Hubble
    flow under "hubble". --flows prints Hubble flows instead. Events the datapath could not send (rate
    limit, ring buffer full) are counted in cilium_metrics and shown as they happen.
    """
    from ciliumlite.datapath import flow as flow_mod

    with _run(output) as run:
        dps = _select(run, lab, node, pins=True)
        types = {t.value for t in event_type} if event_type else set(ev.EVENT_TYPES)
        monitors = _open_monitors(run, dps, types)
        stopped = threading.Event()
        previous = None
        peers: _Peers | None = None
        try:
            if not monitors:
                raise InspectError("no selected datapath has an event ring buffer to read")
            watched = [dp for dp in dps if any(m.node == dp.node for m in monitors)]
            lost_before = _lost_events(run, watched)
            lost_seen = {n: dict(c) for n, c in lost_before.items()}
            peers = _Peers(run, watched)
            if threading.current_thread() is threading.main_thread():
                previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())
            # On stderr in both modes: a script can wait for it before it makes traffic.
            run.err.print(f"Listening for {fmt.english_list(sorted(types))} events on {len(monitors)} datapath"
                          f"{'s' if len(monitors) > 1 else ''} ({', '.join(m.node for m in monitors)})"
                          + ("" if duration is not None else "; press Ctrl-C to quit"), soft_wrap=True)
            several = len(monitors) > 1

            def show(event: ev.DropEvent | ev.TraceEvent | ev.PolicyVerdictEvent) -> None:
                assert peers is not None
                hubble = flow_mod.to_flow(event, peers.by_node.get(event.node))
                if flows:
                    line = json.dumps({"flow": hubble, "node_name": event.node, "time": hubble["time"]}) \
                        if run.json else (f"[{event.node}] " if several else "") + flow_mod.compact(hubble)
                else:
                    row = fmt.monitor_row(event, peers.names.get(event.node))
                    row["hubble"] = hubble
                    line = json.dumps(row) if run.json else fmt.monitor_line(row, with_node=several)
                print(line, flush=True)

            def show_lost() -> None:
                now = _lost_events(run, watched)
                for n, counts in now.items():
                    for r, c in counts.items():
                        new = c - lost_seen.get(n, {}).get(r, 0)
                        if new <= 0:
                            continue
                        lost_seen.setdefault(n, {})[r] = c
                        source = _LOST_SOURCES[Reason(r)]
                        if run.json:
                            rec = flow_mod.lost_events(source, new, n, time.time())
                            if not flows:
                                rec = {"node": n, "type": "lost", "reason": int(r), "reason_text": Reason(r).text,
                                       "source": source, "count": new, "time": time.time(), "hubble": rec}
                            print(json.dumps(rec), flush=True)
                        else:
                            print((f"[{n}] " if several else "") + f"EVENTS LOST: {source} {new} "
                                  f"({Reason(r).text})", flush=True)

            deadline = None if duration is None else time.monotonic() + duration
            try:
                while not stopped.is_set():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    chunk = LOST_CHECK_SECONDS if left is None else min(LOST_CHECK_SECONDS, left)
                    for event in ev.watch(monitors, max_seconds=chunk, stop=stopped.is_set):
                        show(event)
                    show_lost()
                    peers.refresh()
            except KeyboardInterrupt:
                pass
            except BrokenPipeError:  # `ciliumlite monitor | head`
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return
            after = _lost_events(run, watched)
            for n, counts in after.items():
                gone = {r: c - lost_before.get(n, {}).get(r, 0) for r, c in counts.items()}
                if any(gone.values()):
                    run.note(f"{n}: {sum(gone.values())} events were not sent while monitoring "
                             f"(rate limit: {gone[Reason.EVENT_LOST_RATE_LIMIT]}, ring buffer full: "
                             f"{gone[Reason.EVENT_LOST_RING_FULL]}); see DatapathConfig.events_per_sec")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if peers is not None:
                peers.close()
            for m in monitors:
                m.close()


# -- BGP -------------------------------------------------------------------------------------------------


@bgp_app.command("status")
def bgp_status(
    socket: Annotated[list[str] | None, typer.Option(
        "--socket", metavar="PATH",
        help="bird's control socket (repeatable); a Lab keeps it at <lab.workdir>/<node>/bird.ctl")] = None,
    all_protocols: Annotated[bool, typer.Option("--all", help="every protocol, not only BGP sessions")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """BGP sessions and their state, from 'birdc show protocols' of one or more bird daemons."""
    from ciliumlite import bgp

    with _run(output) as run:
        if not socket:
            raise InspectError("bgp status needs --socket PATH (bird's control socket): the datapath registry "
                               "does not record it (Bird.socket_path; in a Lab <lab.workdir>/<node>/bird.ctl)")
        rows: list[fmt.Row] = []
        for sock in socket:
            if not os.path.exists(sock):
                run.error(f"no bird control socket at {sock}")
                continue
            birdc = bgp._binaries()[1]
            try:
                r = subprocess.run([birdc, "-s", sock, "show", "protocols"], capture_output=True, text=True,
                                   timeout=10, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError) as exc:
                run.error(f"birdc -s {sock}: {exc}")
                continue
            if r.returncode != 0:
                run.error(f"birdc -s {sock} show protocols failed: {(r.stdout + r.stderr).strip()}")
                continue
            rows += fmt.bgp_rows(sock, bgp.parse_protocols(r.stdout), all_protocols=all_protocols)
        run.emit(rows, fmt.bgp_table)


def register(app: typer.Typer) -> None:
    """Add the inspection commands to the ``ciliumlite`` app."""
    app.command()(status)
    app.command()(metrics)
    app.command()(monitor)
    app.add_typer(endpoint_app, name="endpoint")
    app.add_typer(service_app, name="service")
    bpf_app.add_typer(bpf_endpoint_app, name="endpoint")
    bpf_app.add_typer(bpf_lb_app, name="lb")
    bpf_app.add_typer(bpf_ct_app, name="ct")
    bpf_app.add_typer(bpf_nat_app, name="nat")
    bpf_app.add_typer(bpf_tunnel_app, name="tunnel")
    app.add_typer(bpf_app, name="bpf")
    app.add_typer(bgp_app, name="bgp")
