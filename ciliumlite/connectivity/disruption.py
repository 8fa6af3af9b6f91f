"""The ``no-interrupted-connections`` family: steady traffic kept up while the datapath's owner
or its programs change under it, every broken connection, failed connect and lost datagram counted.

Cilium's ``no-interrupted-connections`` opens long-lived connections before an upgrade and fails
on any that broke after it. Here one scenario per disruption, each under the same traffic
(:class:`Traffic`, run by ``_stream.py traffic`` in the client pod and the outside host):

* ``no-interrupted-connections/agent-restart``: each test node's owner is restarted: an etcd
  lab's agent is SIGKILLed and a new one restores the datapath at start
  (:meth:`AgentCluster.restart_node <ciliumlite.lab.agents.AgentCluster.restart_node>`); an
  in-process node's Datapath is detached and restored
  (:meth:`LabCluster.restart_node <ciliumlite.lab.LabCluster.restart_node>`);
* ``no-interrupted-connections/program-replacement``: every program of every node is replaced
  :data:`RELOAD_ROUNDS` times (``Datapath.reload``, or the agent's ``POST /v1/datapath/reload``);
* ``no-interrupted-connections/node-churn``: another node joins and leaves the cluster.

The paths: a long-lived TCP connection, new connections in a loop and UDP datagrams, each to a pod
on the client's node, a pod on another node, a ClusterIP service, and (from the outside host) a
NodePort of the client's node whose backend is on the other node; the service paths only where
the lab programs services. 0 of each is the bar; the counts are the result's ``counts``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ciliumlite.connectivity import policies  # noqa: F401  (the traffic and policy scenarios register first)
from ciliumlite.connectivity.context import ConnectivityContext
from ciliumlite.connectivity.framework import Checks, ScenarioResult, scenario
from ciliumlite.lab import Node, procs
from ciliumlite.service import Backend, Frontend, Protocol, Service

__all__ = ["CHURN_NODE", "RELOAD_ROUNDS", "STREAM", "STREAM_NODE_PORT", "STREAM_PORT", "STREAM_SERVICE", "Traffic", "under_traffic"]

#: The port of the stream servers (on echo-same and echo-other), and the service in front of echo-other's.
STREAM_PORT = 8081
STREAM_SERVICE = ("echo-other-node-stream", "10.96.77.13")
STREAM_NODE_PORT = 31973
#: The node node-churn adds to the cluster and removes again.
CHURN_NODE = "conn-churn"
#: How many times program-replacement replaces every program of every node.
RELOAD_ROUNDS = 3
#: The traffic script (server, and the clients of every path).
STREAM = str(Path(__file__).with_name("_stream.py"))
# Traffic runs this long before the disruption and after it, so both sides of it are exercised.
_BEFORE, _AFTER = 0.5, 1.0
_LIMIT = 300  # the clients give up on their own after this many seconds (a bound, never reached)
_COUNTS = {"long": "broken_connections", "new": "connect_failures", "udp": "lost_datagrams"}


class Traffic:
    """Stream servers on echo-same and echo-other, the service in front of echo-other's, and the
    clients of every path; :meth:`stop` ends the clients and returns what each path saw.

    Use it as a context manager: leaving it stops everything and removes the services, also on
    errors. A part that cannot start is a failed check in ``c`` (``started`` is then False).
    """

    def __init__(self, ctx: ConnectivityContext, c: Checks) -> None:
        self.ctx, self.c = ctx, c
        self.started = False
        self._procs: list[subprocess.Popen[str]] = []
        self._clients: list[tuple[str, subprocess.Popen[str]]] = []
        self._services: list[str] = []
        self.paths: list[dict[str, Any]] = []

    def __enter__(self) -> Traffic:
        try:
            self._start()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._cleanup()

    def _services_up(self) -> bool:
        ctx = self.ctx
        if "services" in ctx.setup_errors or not ctx.config.kube_proxy_replacement:
            self.c.note("no ClusterIP or NodePort paths: this lab programs no services")
            return False
        name, vip = STREAM_SERVICE
        protos: tuple[tuple[Protocol, str], ...] = (("TCP", name), ("UDP", f"{name}-udp"))
        for proto, svc_name in protos:
            self._services.append(svc_name)
            ctx.cluster.upsert_service(Service(svc_name, Frontend(vip, STREAM_PORT, proto),
                                               [Backend(ctx.echo_other.ip, STREAM_PORT)], type="NodePort",
                                               node_port=STREAM_NODE_PORT))
        return True

    def _start(self) -> None:
        ctx = self.ctx
        for pod in (ctx.echo_same, ctx.echo_other):
            server = pod.popen(*procs.python_script(STREAM, "server", pod.name, str(STREAM_PORT)))
            self._procs.append(server)
            line = server.stdout.readline() if server.stdout else ""
            if line.strip() != "ready":
                self.c.expect(False, f"stream server on {pod.name}:{STREAM_PORT} did not start: {line.strip()!r}")
                return
        inside = [("pod-to-pod same-node", ctx.echo_same.ip), ("pod-to-pod cross-node", ctx.echo_other.ip)]
        outside: list[tuple[str, str]] = []
        if self._services_up():
            inside.append((f"ClusterIP {STREAM_SERVICE[1]}", STREAM_SERVICE[1]))
            node = ctx.client.node
            outside.append((f"NodePort {node.name} {node.ip}:{STREAM_NODE_PORT} (from {ctx.outside.name})",
                            node.ip or ""))
        for source, targets, port in ((ctx.client, inside, STREAM_PORT), (ctx.outside, outside, STREAM_NODE_PORT)):
            if not targets:
                continue
            spec: dict[str, Any] = {kind: [[label, ip, port] for label, ip in targets]
                                    for kind in ("long", "new", "udp")}
            spec.update(interval=0.02, limit=_LIMIT)
            proc = source.popen(*procs.python_script(STREAM, "traffic", json.dumps(spec)))
            self._clients.append((source.name, proc))
            line = proc.stdout.readline() if proc.stdout else ""
            if line.strip() != "running":
                self.c.expect(False, f"traffic from {source.name} did not start: {line.strip()!r}")
                return
        self.started = True

    def stop(self) -> list[dict[str, Any]]:
        """Stop the clients (SIGUSR1: each reports and exits) and collect every path's counts."""
        clients, self._clients = self._clients, []
        for _, proc in clients:
            if proc.poll() is None:
                proc.send_signal(signal.SIGUSR1)
        for source, proc in clients:
            try:
                out, _ = proc.communicate(timeout=20)
                self.paths += [{**p, "source": source} for p in json.loads(out.strip().splitlines()[-1])["paths"]]
            except (subprocess.TimeoutExpired, IndexError, ValueError, KeyError):
                self.c.expect(False, f"the traffic from {source} reported nothing")
            finally:
                self.ctx.lab.processes.stop(proc)
        return self.paths

    def _cleanup(self) -> None:
        for proc in self._procs:
            self.ctx.lab.processes.stop(proc)
        self._procs = []
        for name in self._services:
            try:
                self.ctx.cluster.delete_service(name)
            except Exception as exc:  # the scenario's result says so; the rest is still removed
                self.c.expect(False, f"removing service {name}: {type(exc).__name__}: {exc}")
        self._services = []

    def check(self) -> None:
        """One check per path (its counts; 0 broken, failed or lost), and the totals as counts."""
        c = self.c
        for name in _COUNTS.values():
            c.count(name, 0)
        for p in self.paths:
            key = {"long": "broken", "new": "failed", "udp": "lost"}[p["kind"]]
            bad = int(p[key])
            c.count(_COUNTS[p["kind"]], bad)
            c.count({"long": "exchanges", "new": "connections", "udp": "datagrams"}[p["kind"]], int(p["sent"]))
            what = {"long": "long-lived TCP: {a}/{s} lines answered on one connection",
                    "new": "new TCP connections: {a}/{s} answered",
                    "udp": "UDP: {a}/{s} datagrams answered"}[p["kind"]].format(a=p["answered"], s=p["sent"])
            text = (f"{p['label']}: {what} by {p['server'] or '-'}, {key} {bad}, slowest "
                    f"{float(p['max_rtt']) * 1000:.0f} ms")
            c.expect(bad == 0 and int(p["answered"]) > 0, text + ("; " + "; ".join(p["errors"]) if p["errors"] else ""))
        t = c.counts
        c.note(f"broken connections {t['broken_connections']}, connect failures {t['connect_failures']}, "
               f"lost UDP datagrams {t['lost_datagrams']} (of {t.get('exchanges', 0)} exchanges, "
               f"{t.get('connections', 0)} new connections, {t.get('datagrams', 0)} datagrams)")


def under_traffic(ctx: ConnectivityContext, disrupt: Callable[[Checks], None]) -> ScenarioResult:
    """Run ``disrupt`` while :class:`Traffic` flows, then check every path."""
    c = Checks()
    with Traffic(ctx, c) as traffic:
        if not traffic.started:
            return c.result()
        time.sleep(_BEFORE)
        try:
            disrupt(c)
        finally:
            time.sleep(_AFTER)
    traffic.check()
    return c.result()


def _test_nodes(ctx: ConnectivityContext) -> list[Node]:
    """The nodes the paths cross: the client's and echo-other's (in that order, once each)."""
    return list({n.name: n for n in (ctx.client.node, ctx.echo_other.node)}.values())


# -- applicability -----------------------------------------------------------------------------------
def _needs_restore(ctx: ConnectivityContext) -> str | None:
    cfg = ctx.config
    if cfg.host_routing != "bpf":
        return "legacy host routing keeps no pinned programs to adopt (Datapath.restore needs host_routing=bpf)"
    return None


def _needs_reload(ctx: ConnectivityContext) -> str | None:
    if ctx.config.host_routing != "bpf":
        return "legacy host routing has no programs to replace (Datapath.reload needs host_routing=bpf)"
    return None


# -- the scenarios ------------------------------------------------------------------------------------
@scenario("no-interrupted-connections/node-churn", "long-lived TCP, new connections and UDP (pod to pod on one "
          "node and across nodes, ClusterIP, NodePort) answer every time while another node joins and leaves",
          cilium="no-interrupted-connections", acceptance="A11")
def node_churn(ctx: ConnectivityContext) -> ScenarioResult:
    """Connections survive cluster membership changes (another node's routes, tunnel entries, BGP)."""
    def churn(c: Checks) -> None:
        t0 = time.monotonic()
        cfg = ctx.config  # LabCluster.add_node takes the routing from the cluster, the rest from us
        node = ctx.cluster.add_node(CHURN_NODE, load_balancer_mode=cfg.load_balancer_mode,
                                    bpf_masquerade=cfg.bpf_masquerade,
                                    kube_proxy_replacement=cfg.kube_proxy_replacement, socket_lb=cfg.socket_lb)
        try:
            c.note(f"{CHURN_NODE} joined ({node.ip}, {node.view.config.pod_cidr}) in {time.monotonic() - t0:.1f}s")
            time.sleep(0.3)
        finally:
            t0 = time.monotonic()
            ctx.cluster.remove_node(CHURN_NODE)
        c.note(f"{CHURN_NODE} left in {time.monotonic() - t0:.1f}s")
    return under_traffic(ctx, churn)


@scenario("no-interrupted-connections/agent-restart", "the same traffic answers every time while each test "
          "node's owner is restarted: its agent SIGKILLed and a new one restoring the datapath (etcd lab), or "
          "its Datapath detached and restored (in-process lab)", cilium="no-interrupted-connections",
          acceptance="A11", applies=_needs_restore)
def agent_restart(ctx: ConnectivityContext) -> ScenarioResult:
    """Connections survive the owner's crash and restart: the kernel keeps forwarding, the new owner adopts it."""
    def restart(c: Checks) -> None:
        for node in _test_nodes(ctx):
            agent = getattr(node, "agent", None)
            before = agent.pid if agent is not None else None
            took = ctx.cluster.restart_node(node.name)
            agent = getattr(node, "agent", None)
            how = (f"agent pid {before} SIGKILLed, pid {agent.pid} restored the datapath" if agent is not None
                   else "Datapath detached and restored from its pins and state")
            c.note(f"{node.name}: {how}; owner back after {took:.2f}s")
            time.sleep(0.3)
    return under_traffic(ctx, restart)


@scenario("no-interrupted-connections/program-replacement", f"the same traffic answers every time while every "
          f"program of every node is replaced {RELOAD_ROUNDS} times (Datapath.reload: BPF_LINK_UPDATE, tc filter "
          "replace; the agent's POST /v1/datapath/reload)", cilium="no-interrupted-connections",
          acceptance="A11", applies=_needs_reload)
def program_replacement(ctx: ConnectivityContext) -> ScenarioResult:
    """Connections survive hot replacement of every program (the pinned maps stay)."""
    def replace(c: Checks) -> None:
        times: list[float] = []
        for _ in range(RELOAD_ROUNDS):
            for node in ctx.nodes:
                times.append(ctx.cluster.reload_node(node.name))
            time.sleep(0.1)
        c.count("reloads", len(times))
        c.note(f"{len(times)} reloads ({RELOAD_ROUNDS} of each of {', '.join(n.name for n in ctx.nodes)}), "
               f"slowest {max(times):.2f}s")
    return under_traffic(ctx, replace)
