"""Connectivity test: ``cilium connectivity test``'s datapath scenarios, run against a lab.

A :class:`ConnectivityTest` deploys Cilium's test workloads into a lab cluster (a fresh one, or a
lab you pass in) and runs the registered :class:`Scenario` s against them:

* ``client`` and ``client2`` on the first node, ``echo-same`` next to them and ``echo-other`` on the
  second node, each echo pod serving TCP and UDP on port 8080;
* services ``echo-same-node`` / ``echo-other-node`` (type NodePort, TCP and UDP, one backend each)
  and ``echo-other-node-local`` (NodePort, externalTrafficPolicy=Local);
* the lab's outside host (203.0.113.10, "the world") behind the leaf router, running an echo
  server too.

Every scenario returns a :class:`ScenarioResult` with the evidence it saw (who answered, which
address the server saw as the client, datapath counters). A scenario the lab's configuration does
not cover (DSR in SNAT mode) is *skipped* with the reason; a scenario whose feature the datapath
lacks or breaks *fails* -- nothing is skipped silently.

>>> with ConnectivityTest(routing="vxlan") as ct:            # doctest: +SKIP
...     results = ct.run("pod-to-pod*")
...     print(all(r.ok for r in results))
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.bpf.netns import preexec
from ciliumlite.datapath.config import LB_MODE, DatapathConfig
from ciliumlite.datapath.reasons import Reason, describe
from ciliumlite.lab import procs
from ciliumlite.lab.lab import Host, Lab, LabCluster, Node, Pod
from ciliumlite.service import Backend, Frontend, Protocol, Service

__all__ = [
    "SCENARIOS",
    "ConnectivityContext",
    "ConnectivityTest",
    "Probe",
    "Scenario",
    "ScenarioResult",
    "datapath_features",
    "results_to_json",
    "select",
    "write_junit",
]

ECHO_PORT = 8080
STREAM_PORT = 8081
NODE_NAMES = ("worker1", "worker2", "worker3", "worker4")
#: Service name -> (ClusterIP, node port, externalTrafficPolicy). Addresses from 10.96.0.0/12.
SERVICES: dict[str, tuple[str, int, Literal["Cluster", "Local"]]] = {
    "echo-same-node": ("10.96.77.10", 31970, "Cluster"),
    "echo-other-node": ("10.96.77.11", 31971, "Cluster"),
    "echo-other-node-local": ("10.96.77.12", 31972, "Local"),
}
STREAM_SERVICE = ("echo-other-node-stream", "10.96.77.13")
CHURN_NODE = "conn-churn"
Status = Literal["passed", "failed", "skipped"]


# -- results ---------------------------------------------------------------------------------------
@dataclass
class ScenarioResult:
    """What one scenario saw: ``ok``, the evidence (``details``) and how long it took.

    ``skipped`` holds the reason when the scenario does not apply to the lab's configuration
    (e.g. DSR in SNAT mode); a skipped result is ``ok`` and never hides a datapath failure.
    """

    name: str
    ok: bool
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None
    description: str = ""
    cilium: str = ""
    acceptance: str = ""

    @property
    def status(self) -> Status:
        """``passed``, ``failed`` or ``skipped``."""
        if self.skipped is not None:
            return "skipped"
        return "passed" if self.ok else "failed"

    @property
    def failures(self) -> list[str]:
        """The detail lines of the checks that failed."""
        return [d for d in self.details if d.startswith("✘")]

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {"name": self.name, "status": self.status, "ok": self.ok, "seconds": round(self.seconds, 3),
                "details": list(self.details), "skipped": self.skipped, "description": self.description,
                "cilium": self.cilium, "acceptance": self.acceptance}


class Checks:
    """Collects the checks of one scenario: ``expect`` records pass/fail lines, ``note`` evidence."""

    def __init__(self) -> None:
        self.ok = True
        self.details: list[str] = []

    def expect(self, cond: bool, text: str) -> bool:
        """Record a check; the scenario fails if any check fails."""
        self.details.append(("✔ " if cond else "✘ ") + text)
        self.ok = self.ok and cond
        return cond

    def note(self, text: str) -> None:
        """Record evidence that is not a check."""
        self.details.append("· " + text)

    def result(self) -> ScenarioResult:
        """The scenario's result (the runner fills in name and timing)."""
        if not any(d[0] in "✔✘" for d in self.details):
            self.expect(False, "the scenario checked nothing")
        return ScenarioResult("", self.ok, self.details)


@dataclass(frozen=True)
class Probe:
    """One TCP/UDP request from a pod, a node or the outside host to an echo server."""

    source: str
    proto: str
    ip: str
    port: int
    ok: bool
    server: str = ""
    seen: str = ""
    peer: tuple[str, int] | None = None
    reply_from: tuple[str, int] | None = None
    error: str = ""
    seconds: float = 0.0

    @property
    def seen_ip(self) -> str:
        """The client address the echo server saw."""
        return self.seen.rsplit(":", 1)[0]

    @property
    def target(self) -> str:
        """``ip:port/proto``."""
        return f"{self.ip}:{self.port}/{self.proto.upper()}"

    def __str__(self) -> str:
        if not self.ok:
            return f"{self.source} -> {self.target}: {self.error or 'no answer'}"
        return f"{self.source} -> {self.target}: answered by {self.server}, seen as {self.seen_ip}"


# -- scenarios -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """A named check: ``function(ctx)`` runs it and returns a :class:`ScenarioResult`.

    ``applies(ctx)`` returns why the scenario does not apply to this lab (it is then skipped), or
    None. ``needs`` names setup parts (``"services"``) whose failure fails the scenario up front.
    """

    name: str
    description: str
    function: Callable[[ConnectivityContext], ScenarioResult]
    cilium: str = ""
    acceptance: str = ""
    applies: Callable[[ConnectivityContext], str | None] | None = None
    needs: frozenset[str] = frozenset()

    def run(self, ctx: ConnectivityContext) -> ScenarioResult:
        """Run it, never raising: an exception is a failed result carrying the error."""
        t0 = time.monotonic()
        why_not = self.applies(ctx) if self.applies else None
        if why_not is not None:
            res = ScenarioResult(self.name, True, [f"· skipped: {why_not}"], skipped=why_not)
        elif broken := [f"{part}: {ctx.setup_errors[part]}" for part in sorted(self.needs) if part in ctx.setup_errors]:
            res = ScenarioResult(self.name, False, [f"✘ setup failed, {b}" for b in broken])
        else:
            try:
                res = self.function(ctx)
            except Exception as exc:  # the scenario failed; the others still run
                res = ScenarioResult(self.name, False, [f"✘ {type(exc).__name__}: {exc}"])
        res.name = self.name
        res.description, res.cilium, res.acceptance = self.description, self.cilium, self.acceptance
        res.seconds = time.monotonic() - t0
        return res


SCENARIOS: dict[str, Scenario] = {}
_REGEX_HINT = re.compile(r"[\^$()|+\\]|\.[*+]")


def scenario(name: str, description: str, *, cilium: str, acceptance: str,
             applies: Callable[[ConnectivityContext], str | None] | None = None,
             needs: Iterable[str] = ()) -> Callable[[Callable[[ConnectivityContext], ScenarioResult]],
                                                   Callable[[ConnectivityContext], ScenarioResult]]:
    """Register ``function`` as a scenario (order of registration is the order of a run)."""
    def deco(fn: Callable[[ConnectivityContext], ScenarioResult]) -> Callable[[ConnectivityContext], ScenarioResult]:
        if name in SCENARIOS:
            raise ValidationError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(name, description, fn, cilium, acceptance, applies, frozenset(needs))
        return fn
    return deco


def select(pattern: str | Sequence[str] | None, scenarios: Iterable[Scenario] | None = None) -> list[Scenario]:
    """The scenarios matching ``pattern`` (like ``cilium connectivity test --test``).

    ``pattern`` is one string or several (a string may hold several separated by commas); a leading
    ``!`` excludes. A pattern with ``*``, ``?`` or ``[`` and none of the regex signs ``^ $ ( ) | + \\``
    / ``.*`` / ``.+`` is a shell glob matched against the whole name (``pod-to-*``); anything else is
    a regular expression searched in the name, as in Cilium (``pod-to-pod`` also selects
    ``pod-to-pod-no-frag``; ``^pod-to-pod/`` does not). No include pattern means every scenario;
    nothing selected is an error.
    """
    pool = list(SCENARIOS.values() if scenarios is None else scenarios)
    if pattern is None:
        return pool
    items = [pattern] if isinstance(pattern, str) else list(pattern)
    parts = [p.strip() for item in items for p in item.split(",") if p.strip()]
    include = [p for p in parts if not p.startswith("!")]
    exclude = [p[1:] for p in parts if p.startswith("!")]

    def matches(name: str, pat: str) -> bool:
        if not _REGEX_HINT.search(pat) and any(ch in pat for ch in "*?["):
            return fnmatch.fnmatchcase(name, pat)
        try:
            return re.search(pat, name) is not None
        except re.error as exc:
            raise ValidationError(f"--test {pat!r} is not a valid regular expression: {exc}") from None

    chosen = [s for s in pool if (not include or any(matches(s.name, p) for p in include))
              and not any(matches(s.name, p) for p in exclude)]
    if not chosen:
        raise ValidationError(f"no scenario matches {pattern!r} (scenarios: {', '.join(s.name for s in pool)})")
    return chosen


# -- the context scenarios run in ------------------------------------------------------------------
Runner = Host | Node


@dataclass
class ConnectivityContext:
    """The deployed workloads and the lab's configuration, as scenarios see them."""

    lab: Lab
    cluster: LabCluster
    nodes: list[Node]
    client: Pod
    client2: Pod
    echo_same: Pod
    echo_other: Pod
    outside: Host
    services: dict[str, Service] = field(default_factory=dict)
    setup_errors: dict[str, str] = field(default_factory=dict)
    timeout: float = 2.0
    expected_drops: dict[int, str] = field(default_factory=dict)
    drops_before: dict[str, dict[tuple[int, int], int]] = field(default_factory=dict)

    @property
    def config(self) -> DatapathConfig:
        """The datapath configuration (of the first node; a lab's nodes share it)."""
        dp = self.nodes[0].datapath
        assert dp is not None
        return dp.config

    @property
    def lb_mode(self) -> str:
        """snat, dsr or hybrid."""
        return self.config.load_balancer_mode

    def proto_mode(self, proto: str) -> str:
        """How NodePort traffic of ``proto`` reaches a remote backend: ``snat`` or ``dsr``."""
        if self.lb_mode == "hybrid":
            return "dsr" if proto.lower() == "tcp" else "snat"
        return self.lb_mode

    def protos_in(self, mode: str) -> list[str]:
        """The protocols whose NodePort traffic uses ``mode`` here."""
        return [p for p in ("tcp", "udp") if self.proto_mode(p) == mode]

    def backend_pod(self, svc: str) -> Pod:
        """The echo pod behind one of our services."""
        return self.echo_same if svc.startswith("echo-same") else self.echo_other

    def counter(self, node: Node, reason: Reason) -> int:
        """A datapath counter of ``node`` (0 without a datapath)."""
        return node.datapath.count(reason) if node.datapath is not None else 0

    def expect_drop(self, reason: Reason, why: str) -> None:
        """Declare that a scenario provokes drops for ``reason`` on purpose."""
        self.expected_drops[int(reason)] = why

    # -- probes ------------------------------------------------------------------------------------
    def probe(self, source: Runner, proto: str, ip: str, port: int, timeout: float | None = None) -> Probe:
        """One request (see :meth:`probes`)."""
        return self.probes([(source, proto, ip, port)], timeout)[0]

    def probes(self, wanted: Sequence[tuple[Runner, str, str, int]], timeout: float | None = None) -> list[Probe]:
        """Run several requests at once (one short process each, started from this thread).

        Each is a TCP connect + send + read-to-EOF, or one UDP datagram and its echo, through the
        lab's probe script; it reports the reply, ``getpeername()`` and (UDP) ``recvfrom()``'s source.
        """
        limit = self.timeout if timeout is None else timeout
        started: list[tuple[Runner, str, str, int, subprocess.Popen[str] | None, str]] = []
        out: list[Probe] = []
        try:
            for source, proto, ip, port in wanted:
                argv = procs.python_script(procs.PROBE, proto, ip, str(port), f"conn-{proto}", str(limit))
                try:
                    p: subprocess.Popen[str] | None = subprocess.Popen(
                        argv, preexec_fn=preexec(source.netns, source.cgroup), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
                    err = ""
                except OSError as exc:
                    p, err = None, f"could not start the probe: {exc}"
                started.append((source, proto, ip, port, p, err))
            for source, proto, ip, port, p, err in started:
                label = _label(source)
                if p is None:
                    out.append(Probe(label, proto, ip, port, False, error=err))
                    continue
                try:
                    stdout, stderr = p.communicate(timeout=limit + 10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    stdout, stderr = p.communicate()
                out.append(_parse_probe(label, proto, ip, port, stdout, stderr))
        finally:  # interrupted: end the probes we started, by pid
            for *_, p, _err in started:
                if p is not None and p.poll() is None:
                    p.kill()
                    p.communicate()
        return out

    def ping(self, source: Host, target: str, *, size: int | None = None, dont_fragment: bool = False,
             count: int = 2) -> tuple[bool, str]:
        """ICMP echo from a pod or host: (all answered, a one-line summary)."""
        res = source.ping(target, count=count, size=size, dont_fragment=dont_fragment, interval=0.05,
                          timeout=self.timeout)
        what = f"{source.name} -> {target} ICMP" + (f" {size}+28 bytes DF" if dont_fragment and size else "")
        if res.too_big:
            return False, f"{what}: refused, larger than the path MTU"
        return res.ok, f"{what}: {res.received}/{res.transmitted} answered"


def _label(source: Runner) -> str:
    return f"node {source.name}" if isinstance(source, Node) else source.name


def _pair(value: Any) -> tuple[str, int] | None:
    if isinstance(value, list) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def _parse_probe(label: str, proto: str, ip: str, port: int, stdout: str, stderr: str) -> Probe:
    try:
        raw = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Probe(label, proto, ip, port, False, error=f"probe failed: {stderr.strip()[-300:]}")
    reply = str(raw.get("reply", ""))
    parts = reply.rsplit("|", 2)
    server, seen = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
    return Probe(label, proto, ip, port, bool(raw.get("ok")), server, seen, _pair(raw.get("peer")),
                 _pair(raw.get("reply_from")), str(raw.get("error", "")), float(raw.get("seconds", 0.0)))


def _addr(pair: tuple[str, int] | None) -> str:
    return f"{pair[0]}:{pair[1]}" if pair else "-"


def _node_ips(node: Node) -> set[str]:
    """Addresses that mean "this node": its underlay address and its gateway in the pod CIDR."""
    ips = {node.ip or ""}
    if node.datapath is not None:
        ips.add(str(node.datapath.config.gateway))
    return ips


def _attached(node: Node, program: str) -> bool:
    """Whether ``node``'s datapath has ``program`` attached somewhere."""
    return node.datapath is not None and any(lk.program == program and not lk.closed for lk in node.datapath.links)


def _note_to_netdev(c: Checks, nodes: Iterable[Node], why: str) -> None:
    missing = [n.name for n in nodes if not _attached(n, "cil_to_netdev")]
    if missing:
        c.note(f"cil_to_netdev is not attached on {', '.join(missing)}: {why} cannot work there")


def _drop_counts(node: Node) -> dict[tuple[int, int], int]:
    if node.datapath is None:
        return {}
    return {(m.reason, m.direction): m.packets for m in node.datapath.metrics() if m.is_drop}


# -- applicability -----------------------------------------------------------------------------------
def _needs_kpr(ctx: ConnectivityContext) -> str | None:
    if not ctx.config.kube_proxy_replacement:
        return "kube-proxy replacement is off in this lab (services are not programmed)"
    return None


def _needs_snat(ctx: ConnectivityContext) -> str | None:
    if (why := _needs_kpr(ctx)) is not None:
        return why
    return None if ctx.protos_in("snat") else f"load_balancer_mode={ctx.lb_mode} SNATs no NodePort protocol"


def _needs_dsr(ctx: ConnectivityContext) -> str | None:
    if (why := _needs_kpr(ctx)) is not None:
        return why
    if ctx.config.routing != "native":
        return "DSR needs native routing (this lab uses VXLAN)"
    return None if ctx.protos_in("dsr") else "load_balancer_mode=snat (run with --routing native --lb-mode dsr)"


# -- the scenarios ------------------------------------------------------------------------------------
def _expect_echo(c: Checks, p: Probe, server: str, *, seen: str | Iterable[str] | None = None,
                 what: str = "") -> None:
    ok = p.ok and p.server == server
    if seen is not None:
        allowed = {seen} if isinstance(seen, str) else set(seen)
        ok = ok and p.seen_ip in allowed
        want = f", seen as {' or '.join(sorted(allowed))}"
    else:
        want = ""
    c.expect(ok, f"{p} (want {server}{want}){what}")


def _pod_to_pod(ctx: ConnectivityContext, target: Pod) -> ScenarioResult:
    c = Checks()
    clients = [ctx.client, ctx.client2]
    for p in ctx.probes([(cl, "tcp", target.ip, ECHO_PORT) for cl in clients]):
        src = next(cl for cl in clients if cl.name == p.source)
        _expect_echo(c, p, target.name, seen=src.ip, what=" [no NAT between pods]")
    return c.result()


@scenario("pod-to-pod/same-node", "TCP from client and client2 to echo-same on their node",
          cilium="pod-to-pod", acceptance="A1")
def pod_to_pod_same_node(ctx: ConnectivityContext) -> ScenarioResult:
    """Same-node pod to pod (bpf_redirect_peer)."""
    return _pod_to_pod(ctx, ctx.echo_same)


@scenario("pod-to-pod/cross-node", "TCP from client and client2 to echo-other on another node",
          cilium="pod-to-pod", acceptance="A1")
def pod_to_pod_cross_node(ctx: ConnectivityContext) -> ScenarioResult:
    """Cross-node pod to pod (VXLAN or native routing)."""
    return _pod_to_pod(ctx, ctx.echo_other)


@scenario("client-to-client", "ICMP echo between client and client2 (both ways)",
          cilium="client-to-client", acceptance="A2")
def client_to_client(ctx: ConnectivityContext) -> ScenarioResult:
    """ICMP between the client pods."""
    c = Checks()
    for a, b in ((ctx.client, ctx.client2), (ctx.client2, ctx.client)):
        ok, text = ctx.ping(a, b.ip)
        c.expect(ok, text)
    return c.result()


def _pod_to_service(ctx: ConnectivityContext, proto: Protocol) -> ScenarioResult:
    c = Checks()
    before = ctx.counter(ctx.client.node, Reason.LB_SOCK_XLATE)
    wanted: list[tuple[Runner, str, str, int]] = []
    for name in ("echo-same-node", "echo-other-node"):
        vip = SERVICES[name][0]
        wanted += [(cl, proto.lower(), vip, ECHO_PORT) for cl in (ctx.client, ctx.client2)]
    for p in ctx.probes(wanted):
        name = next(n for n in ("echo-same-node", "echo-other-node") if SERVICES[n][0] == p.ip)
        src = ctx.client if p.source == ctx.client.name else ctx.client2
        backend = ctx.backend_pod(name)
        _expect_echo(c, p, backend.name, seen=src.ip, what=f" [{name}]")
        if p.ok:
            c.expect(p.peer == (p.ip, p.port), f"getpeername() on {p.source}: {_addr(p.peer)} "
                     f"(want the service {p.ip}:{p.port}, not the backend)")
            if proto == "UDP":
                c.expect(p.reply_from == (p.ip, p.port), f"recvfrom() on {p.source}: the reply came from "
                         f"{_addr(p.reply_from)} (want the service {p.ip}:{p.port})")
    xlate = ctx.counter(ctx.client.node, Reason.LB_SOCK_XLATE) - before
    c.note(f"socket LB translations on {ctx.client.node.name}: +{xlate} "
           f"(socket_lb={'on' if ctx.config.socket_lb else 'off'})")
    return c.result()


@scenario("pod-to-service/tcp", "TCP from client and client2 to the echo-same-node and echo-other-node ClusterIPs",
          cilium="pod-to-service", acceptance="A3", applies=_needs_kpr, needs=["services"])
def pod_to_service_tcp(ctx: ConnectivityContext) -> ScenarioResult:
    """ClusterIP over TCP (socket LB, else per-packet LB)."""
    return _pod_to_service(ctx, "TCP")


@scenario("pod-to-service/udp", "UDP (DNS-like) from client and client2 to both ClusterIPs; reply source checked",
          cilium="pod-to-service", acceptance="A3", applies=_needs_kpr, needs=["services"])
def pod_to_service_udp(ctx: ConnectivityContext) -> ScenarioResult:
    """ClusterIP over UDP, reverse translation seen by recvfrom()/getpeername()."""
    return _pod_to_service(ctx, "UDP")


@scenario("pod-to-itself-via-service", "each echo pod reaches its own ClusterIP and is its own backend",
          cilium="pod-to-itself-via-service", acceptance="A4", applies=_needs_kpr, needs=["services"])
def pod_to_itself_via_service(ctx: ConnectivityContext) -> ScenarioResult:
    """Hairpin: the client is the backend."""
    c = Checks()
    pairs = [(ctx.echo_same, "echo-same-node"), (ctx.echo_other, "echo-other-node")]
    for (pod, name), p in zip(pairs, ctx.probes([(pod, "tcp", SERVICES[name][0], ECHO_PORT) for pod, name in pairs]),
                              strict=True):
        _expect_echo(c, p, pod.name, what=f" [{name}]")
        if p.ok:
            c.note(f"{pod.name} saw itself as {p.seen_ip}")
    return c.result()


@scenario("host-to-pod", "TCP from every node's network namespace to echo-same and echo-other",
          cilium="host-to-pod", acceptance="A5")
def host_to_pod(ctx: ConnectivityContext) -> ScenarioResult:
    """Node namespace to pods, local and remote."""
    c = Checks()
    wanted: list[tuple[Runner, str, str, int]] = [(n, "tcp", pod.ip, ECHO_PORT) for n in ctx.nodes
                                                  for pod in (ctx.echo_same, ctx.echo_other)]
    for p in ctx.probes(wanted):
        node = next(n for n in ctx.nodes if p.source == _label(n))
        pod = ctx.echo_same if p.ip == ctx.echo_same.ip else ctx.echo_other
        _expect_echo(c, p, pod.name, seen=_node_ips(node), what=" [source is the node]")
        if not p.ok:
            route = node.run("ip", "-o", "route", "get", p.ip, timeout=5)
            c.note(f"{node.name}: ip route get {p.ip}: {(route.stdout or route.stderr).strip() or '-'}")
    return c.result()


@scenario("pod-to-host", "ICMP from client to every node's address and to its own gateway",
          cilium="pod-to-host", acceptance="A5")
def pod_to_host(ctx: ConnectivityContext) -> ScenarioResult:
    """Pod to node addresses (local and remote)."""
    c = Checks()
    gw = ctx.client.node.datapath.config.gateway if ctx.client.node.datapath else None
    for target in [n.ip or "" for n in ctx.nodes] + ([str(gw)] if gw else []):
        ok, text = ctx.ping(ctx.client, target)
        c.expect(ok, text)
    return c.result()


def _nodeport_targets(ctx: ConnectivityContext, nodes: Iterable[Node], protos: Iterable[str]) \
        -> list[tuple[Node, str, str]]:
    return [(n, name, proto) for n in nodes for name in ("echo-same-node", "echo-other-node") for proto in protos]


def _pod_to_nodeport(ctx: ConnectivityContext, nodes: list[Node]) -> ScenarioResult:
    c = Checks()
    targets = _nodeport_targets(ctx, nodes, ("tcp", "udp"))
    results = ctx.probes([(ctx.client, proto, n.ip or "", SERVICES[name][1]) for n, name, proto in targets])
    for (n, name, proto), p in zip(targets, results, strict=True):
        backend = ctx.backend_pod(name)
        _expect_echo(c, p, backend.name, what=f" [{name} on {n.name}]")
        if not p.ok and n is not ctx.client.node and backend.node is ctx.client.node \
                and ctx.proto_mode(proto) == "dsr":
            c.note(f"{n.name} sent the request back to {backend.node.name} by DSR, and the reply from {backend.name} "
                   f"to {ctx.client.name} stays on that node, where no cil_to_netdev can restore its source; "
                   f"Cilium's socket LB translates NodePorts of remote node addresses at connect() instead")
    return c.result()


@scenario("pod-to-local-nodeport", "TCP and UDP from client to both NodePorts on its own node's address",
          cilium="pod-to-local-nodeport", acceptance="A7", applies=_needs_kpr, needs=["services"])
def pod_to_local_nodeport(ctx: ConnectivityContext) -> ScenarioResult:
    """NodePort via the local node IP (socket-LB node-IP/wildcard frontend)."""
    return _pod_to_nodeport(ctx, [ctx.client.node])


@scenario("pod-to-remote-nodeport", "TCP and UDP from client to both NodePorts on every other node",
          cilium="pod-to-remote-nodeport", acceptance="A7", applies=_needs_kpr, needs=["services"])
def pod_to_remote_nodeport(ctx: ConnectivityContext) -> ScenarioResult:
    """NodePort of another node: local or remote backend there."""
    return _pod_to_nodeport(ctx, [n for n in ctx.nodes if n is not ctx.client.node])


@scenario("outside-to-nodeport/snat", "the outside host reaches both NodePorts on every node; a remote backend "
          "sees the node (SNAT), a local one the client", cilium="outside-to-nodeport", acceptance="A8",
          applies=_needs_snat, needs=["services"])
def outside_to_nodeport_snat(ctx: ConnectivityContext) -> ScenarioResult:
    """North-south NodePort, SNAT mode."""
    c = Checks()
    targets = _nodeport_targets(ctx, ctx.nodes, ctx.protos_in("snat"))
    results = ctx.probes([(ctx.outside, proto, n.ip or "", SERVICES[name][1]) for n, name, proto in targets])
    for (n, name, _proto), p in zip(targets, results, strict=True):
        backend = ctx.backend_pod(name)
        local = backend.node is n
        seen = {ctx.outside.ip} if local else _node_ips(n)
        _expect_echo(c, p, backend.name, seen=seen,
                     what=f" [{name} on {n.name}, {'local backend' if local else 'remote backend: SNAT'}]")
    return c.result()


@scenario("outside-to-nodeport/dsr", "the outside host reaches both NodePorts on every node; every backend "
          "sees the real client and replies directly (DSR)", cilium="outside-to-nodeport", acceptance="A8",
          applies=_needs_dsr, needs=["services"])
def outside_to_nodeport_dsr(ctx: ConnectivityContext) -> ScenarioResult:
    """North-south NodePort, DSR mode (IP option dispatch, reply rewritten on the backend node)."""
    c = Checks()
    backend_nodes = {ctx.echo_same.node.name: ctx.echo_same.node, ctx.echo_other.node.name: ctx.echo_other.node}
    nat_before = {name: ctx.counter(n, Reason.NAT_EGRESS) for name, n in backend_nodes.items()}
    targets = _nodeport_targets(ctx, ctx.nodes, ctx.protos_in("dsr"))
    results = ctx.probes([(ctx.outside, proto, n.ip or "", SERVICES[name][1]) for n, name, proto in targets])
    for (n, name, _proto), p in zip(targets, results, strict=True):
        backend = ctx.backend_pod(name)
        local = backend.node is n
        _expect_echo(c, p, backend.name, seen=ctx.outside.ip,
                     what=f" [{name} on {n.name}, {'local backend' if local else 'remote backend: DSR'}]")
    for node_name, node in backend_nodes.items():
        # Each DSR connection's replies leave the backend node with the frontend as source,
        # rewritten by cil_to_netdev there (never by the node that received the request).
        want = sum(1 for n, name, _ in targets if ctx.backend_pod(name).node is node and n is not node)
        got = ctx.counter(node, Reason.NAT_EGRESS) - nat_before[node_name]
        c.expect(got >= want, f"{node_name} rewrote the source of DSR replies on their way out: +{got} packets "
                 f"(NAT_EGRESS, want at least one per DSR connection: {want})")
    if not c.ok:
        _note_to_netdev(c, backend_nodes.values(), "the DSR reply rewrite")
    return c.result()


@scenario("outside-to-nodeport/local", "externalTrafficPolicy=Local: the node with the backend answers and keeps "
          "the client address; nodes without one refuse; in-cluster clients still reach it",
          cilium="outside-to-nodeport", acceptance="A8", applies=_needs_kpr, needs=["services"])
def outside_to_nodeport_local(ctx: ConnectivityContext) -> ScenarioResult:
    """eTP=Local with a local and a non-local node."""
    c = Checks()
    port = SERVICES["echo-other-node-local"][1]
    backend = ctx.echo_other
    ctx.expect_drop(Reason.DROP_NO_SERVICE, "externalTrafficPolicy=Local on a node without a local backend")
    probes = ctx.probes([(ctx.outside, "tcp", n.ip or "", port) for n in ctx.nodes], timeout=1.0)
    for n, p in zip(ctx.nodes, probes, strict=True):
        if backend.node is n:
            _expect_echo(c, p, backend.name, seen=ctx.outside.ip, what=f" [{n.name} has the backend: client IP kept]")
        else:
            c.expect(not p.ok, f"{p} [{n.name} has no local backend: must not answer]")
    inside = ctx.probe(ctx.client, "tcp", ctx.client.node.ip or "", port)
    _expect_echo(c, inside, backend.name, what=f" [in-cluster client on {ctx.client.node.name}: internal scope]")
    return c.result()


@scenario("pod-to-world", "TCP, UDP and ICMP from client to the outside host 203.0.113.10; with BPF masquerade "
          "the outside sees the node's address", cilium="pod-to-world", acceptance="-")
def pod_to_world(ctx: ConnectivityContext) -> ScenarioResult:
    """Egress to the world, masqueraded to the node IP."""
    c = Checks()
    node = ctx.client.node
    masq = ctx.config.bpf_masquerade
    want = node.ip or "" if masq else ctx.client.ip
    why = "masqueraded to the node" if masq else "bpf_masquerade off: the pod's own address"
    for p in ctx.probes([(ctx.client, proto, ctx.outside.ip, ECHO_PORT) for proto in ("tcp", "udp")]):
        _expect_echo(c, p, ctx.outside.name, seen=want, what=f" [{why}]")
    ok, text = ctx.ping(ctx.client, ctx.outside.ip)
    c.expect(ok, text)
    if masq and not c.ok:
        _note_to_netdev(c, [node], "BPF masquerade")
    return c.result()


@scenario("pod-to-pod-no-frag", "the pod MTU is right: a DF ping of exactly the pod MTU crosses nodes, one byte "
          "more is refused", cilium="pod-to-pod-no-frag", acceptance="A9")
def pod_to_pod_no_frag(ctx: ConnectivityContext) -> ScenarioResult:
    """MTU accounts for the tunnel overhead."""
    c = Checks()
    out = ctx.client.run("ip", "-o", "link", "show", "eth0").stdout
    m = re.search(r"\bmtu (\d+)", out)
    mtu = int(m.group(1)) if m else 0
    want = ctx.config.pod_mtu
    c.expect(mtu == want, f"client's eth0 MTU is {mtu} (want {want}: underlay {ctx.config.mtu}"
             f"{' - 50 VXLAN' if ctx.config.routing == 'vxlan' else ''})")
    if mtu:
        ok, text = ctx.ping(ctx.client, ctx.echo_other.ip, size=mtu - 28, dont_fragment=True)
        c.expect(ok, text)
        res = ctx.client.ping(ctx.echo_other.ip, count=1, size=mtu - 27, dont_fragment=True, timeout=1.0)
        c.expect(not res.ok, f"{ctx.client.name} -> {ctx.echo_other.ip} ICMP {mtu - 27}+28 bytes DF: "
                 f"{'refused' if not res.ok else 'answered (the pod MTU is smaller than the path allows?)'}")
    return c.result()


# The long-lived connections: a line-echo server and a client that keeps one connection busy.
_STREAM_SCRIPT = r"""
import json, signal, socket, sys, threading, time
mode = sys.argv[1]
if mode == "server":
    name, port = sys.argv[2], int(sys.argv[3])
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port)); srv.listen(16)
    print("ready", flush=True)
    def serve(conn):
        with conn:
            f = conn.makefile("rb")
            for line in f:
                conn.sendall(line.rstrip(b"\n") + b"|" + name.encode() + b"\n")
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
else:
    ip, port, interval, limit = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    stop = []
    signal.signal(signal.SIGUSR1, lambda *a: stop.append(1))
    out = {"sent": 0, "answered": 0, "error": "", "max_rtt": 0.0, "server": ""}
    try:
        s = socket.create_connection((ip, port), timeout=3)
        out["peer"] = list(s.getpeername())
    except OSError as exc:
        out["error"] = "connect: %s" % exc
        print(json.dumps(out), flush=True)
        sys.exit(0)
    print("connected", flush=True)
    f = s.makefile("rb")
    end = time.monotonic() + limit
    while not stop and time.monotonic() < end:
        n = out["sent"]
        t0 = time.monotonic()
        try:
            s.sendall(b"%d\n" % n)
            out["sent"] += 1
            line = f.readline()
            if not line.startswith(b"%d|" % n):
                raise OSError("bad or no reply %r" % line[:60])
        except OSError as exc:
            out["error"] = str(exc)
            break
        out["answered"] += 1
        out["server"] = line.split(b"|", 1)[1].strip().decode()
        out["max_rtt"] = max(out["max_rtt"], time.monotonic() - t0)
        time.sleep(interval)
    print(json.dumps(out), flush=True)
"""


def _stream_argv(*args: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", _STREAM_SCRIPT, *args]


@scenario("no-interrupted-connections/node-churn", "long-lived TCP connections (pod to pod, and through a "
          "ClusterIP) keep answering while another node joins and leaves the cluster",
          cilium="no-interrupted-connections", acceptance="A11 (partial: no datapath reload API yet)")
def no_interrupted_connections(ctx: ConnectivityContext) -> ScenarioResult:
    """Connections survive cluster membership changes (Datapath has no program reload to test yet)."""
    c = Checks()
    pg = ctx.lab.processes
    server = ctx.echo_other.popen(*_stream_argv("server", ctx.echo_other.name, str(STREAM_PORT)))
    clients: list[tuple[str, subprocess.Popen[str]]] = []
    svc_up = False
    try:
        line = server.stdout.readline() if server.stdout else ""
        if line.strip() != "ready":
            c.expect(False, f"stream server on {ctx.echo_other.name}:{STREAM_PORT} did not start: {line!r}")
            return c.result()
        targets = [("pod-to-pod", ctx.echo_other.ip)]
        if "services" not in ctx.setup_errors and ctx.config.kube_proxy_replacement:
            name, vip = STREAM_SERVICE
            ctx.cluster.upsert_service(Service(name, Frontend(vip, STREAM_PORT),
                                               [Backend(ctx.echo_other.ip, STREAM_PORT)]))
            svc_up = True
            targets.append((f"ClusterIP {name}", vip))
        for label, ip in targets:
            proc = ctx.client.popen(*_stream_argv("client", ip, str(STREAM_PORT), "0.05", "60"))
            clients.append((label, proc))
            first = proc.stdout.readline() if proc.stdout else ""
            if first.strip() != "connected":
                c.expect(False, f"{label}: could not open the connection: {first.strip()}")
        time.sleep(0.3)
        t0 = time.monotonic()
        cfg = ctx.config  # LabCluster.add_node takes the routing from the cluster, the rest from us
        node = ctx.cluster.add_node(CHURN_NODE, load_balancer_mode=cfg.load_balancer_mode,
                                    bpf_masquerade=cfg.bpf_masquerade, kube_proxy_replacement=cfg.kube_proxy_replacement,
                                    socket_lb=cfg.socket_lb)
        added = time.monotonic() - t0
        c.note(f"{CHURN_NODE} joined ({node.ip}, {node.datapath.config.pod_cidr if node.datapath else '?'}) "
               f"in {added:.1f}s")
        time.sleep(0.3)
        t0 = time.monotonic()
        ctx.cluster.remove_node(CHURN_NODE)
        c.note(f"{CHURN_NODE} left in {time.monotonic() - t0:.1f}s")
        time.sleep(0.3)
    finally:
        for label, proc in clients:
            if proc.poll() is None:
                proc.send_signal(signal.SIGUSR1)
            try:
                proc.wait(timeout=5)
                text = proc.stdout.read() if proc.stdout else ""
            except subprocess.TimeoutExpired:
                text = ""
            pg.stop(proc)
            try:
                st = json.loads(text.strip().splitlines()[-1])
            except (IndexError, ValueError):
                c.expect(False, f"{label}: the client reported nothing")
                continue
            c.expect(not st["error"] and st["answered"] == st["sent"] > 0,
                     f"{label}: {st['answered']}/{st['sent']} requests answered by {st['server'] or '-'} on one "
                     f"connection, slowest {st['max_rtt'] * 1000:.0f} ms" + (f", error: {st['error']}" if st["error"]
                                                                             else ""))
        pg.stop(server)
        if svc_up:
            ctx.cluster.delete_service(STREAM_SERVICE[0])
        if CHURN_NODE in ctx.cluster.members:
            ctx.cluster.remove_node(CHURN_NODE)
    return c.result()


@scenario("no-unexpected-packet-drops", "the datapath's drop counters did not move during the run, except for "
          "reasons a scenario provokes on purpose", cilium="no-unexpected-packet-drops", acceptance="A10")
def no_unexpected_packet_drops(ctx: ConnectivityContext) -> ScenarioResult:
    """Drop counters per node, before and after (run it last)."""
    c = Checks()
    for node in ctx.nodes:
        before = ctx.drops_before.get(node.name, {})
        now = _drop_counts(node)
        moved = {k: v - before.get(k, 0) for k, v in now.items() if v > before.get(k, 0)}
        unexpected = {k: v for k, v in moved.items() if k[0] not in ctx.expected_drops}
        for (reason, direction), n in sorted(moved.items()):
            if reason in ctx.expected_drops:
                c.note(f"{node.name}: {n} x {describe(reason)} (dir {direction}), expected: "
                       f"{ctx.expected_drops[reason]}")
        text = ", ".join(f"{n} x {describe(r)} (reason {r}, dir {d})" for (r, d), n in sorted(unexpected.items()))
        c.expect(not unexpected, f"{node.name}: " + (text or "no unexpected drops"))
    return c.result()


# -- feature probes ----------------------------------------------------------------------------------
def datapath_features() -> dict[str, bool]:
    """Which service features the compiled datapath objects carry (no kernel needed, nothing loaded).

    ``socket-lb``: bpf_sock.o has the connect/sendmsg/recvmsg/getpeername programs;
    ``per-packet-lb``: bpf_lxc.o has ``enable_per_packet_lb``; ``nodeport``: bpf_host.o uses the
    service and SNAT maps; ``masquerade``: bpf_host.o has ``cil_to_netdev`` and
    ``enable_masquerade``; ``dsr``: bpf_host.o has ``lb_mode`` and ``cil_to_netdev`` (the reply
    rewrite). The Python side must also attach what it loads; scenarios say so when it does not.
    """
    from ciliumlite.bpf import BpfObject
    from ciliumlite.datapath import loader

    def inventory(name: str) -> tuple[set[str], set[str], set[str]]:
        try:
            obj = BpfObject(loader.object_path(name))
        except CiliumliteError:
            return set(), set(), set()
        try:
            return set(obj.programs), set(obj.map_names), set(obj.rodata)
        finally:
            obj.close()

    sock_p, _, _ = inventory("bpf_sock")
    _, _, lxc_r = inventory("bpf_lxc")
    host_p, host_m, host_r = inventory("bpf_host")
    return {
        "socket-lb": {"cil_sock4_connect", "cil_sock4_sendmsg", "cil_sock4_recvmsg",
                      "cil_sock4_getpeername"} <= sock_p,
        "per-packet-lb": "enable_per_packet_lb" in lxc_r,
        "nodeport": {"cilium_lb4_services_v2", "cilium_snat_v4_external"} <= host_m,
        "masquerade": "cil_to_netdev" in host_p and "enable_masquerade" in host_r,
        "dsr": "cil_to_netdev" in host_p and "lb_mode" in host_r,
    }


# -- output ------------------------------------------------------------------------------------------
def summary(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """Counts and total time."""
    return {"total": len(results), "passed": sum(r.status == "passed" for r in results),
            "failed": sum(r.status == "failed" for r in results),
            "skipped": sum(r.status == "skipped" for r in results),
            "seconds": round(sum(r.seconds for r in results), 3)}


def results_to_json(results: Sequence[ScenarioResult], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"config": ..., "summary": ..., "results": [...]}`` (what ``--json`` prints)."""
    return {"config": dict(config or {}), "summary": summary(results), "results": [r.as_dict() for r in results]}


def write_junit(results: Sequence[ScenarioResult], path: str, *, suite: str = "connectivity-test",
                properties: dict[str, Any] | None = None) -> None:
    """A JUnit XML report: one ``testsuite``, one ``testcase`` per scenario (failure/skipped inside)."""
    s = summary(results)
    root = ET.Element("testsuites", name="ciliumlite", tests=str(s["total"]), failures=str(s["failed"]),
                      skipped=str(s["skipped"]), errors="0", time=f"{s['seconds']:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(s["total"]), failures=str(s["failed"]),
                       skipped=str(s["skipped"]), errors="0", time=f"{s['seconds']:.3f}")
    if properties:
        props = ET.SubElement(ts, "properties")
        for k, v in properties.items():
            ET.SubElement(props, "property", name=str(k), value=str(v))
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname=f"ciliumlite.{suite}", name=r.name, time=f"{r.seconds:.3f}")
        if r.status == "failed":
            fail = ET.SubElement(tc, "failure", message="; ".join(d[2:] for d in r.failures)[:500] or "failed",
                                 type="ScenarioFailed")
            fail.text = "\n".join(r.details)
        elif r.status == "skipped":
            ET.SubElement(tc, "skipped", message=r.skipped or "")
        out = ET.SubElement(tc, "system-out")
        out.text = "\n".join(r.details)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


# -- the test ----------------------------------------------------------------------------------------
class ConnectivityTest:
    """Deploy the test workloads and run scenarios.

    ``target`` None builds a fresh lab (``Lab(name)``, ``nodes`` nodes in ``routing`` mode with
    ``load_balancer_mode=lb_mode`` and ``bpf_masquerade=masquerade``); ``close()`` removes it. A
    :class:`Lab` (with one cluster, or none: one is built in it) or a :class:`LabCluster` is used as
    it is: the workloads go onto its first two nodes and ``close()`` removes only what was added.
    """

    def __init__(self, target: Lab | LabCluster | None = None, *, routing: str = "vxlan", lb_mode: str = "snat",
                 nodes: int = 2, masquerade: bool = True, bgp: bool | None = None, name: str = "conn",
                 timeout: float = 2.0, extra_config: dict[str, Any] | None = None) -> None:
        if routing not in ("vxlan", "native"):
            raise ValidationError(f"routing must be vxlan or native, not {routing!r}")
        if lb_mode not in LB_MODE:
            raise ValidationError(f"lb_mode must be one of {', '.join(LB_MODE)}, not {lb_mode!r}")
        if lb_mode != "snat" and routing != "native":
            raise ValidationError(f"lb_mode={lb_mode} needs routing=native (DSR cannot ride VXLAN)")
        if not 2 <= nodes <= len(NODE_NAMES):
            raise ValidationError(f"nodes must be 2..{len(NODE_NAMES)}, not {nodes}")
        if not 0.2 <= timeout <= 30:
            raise ValidationError(f"timeout must be 0.2..30 seconds, not {timeout}")
        self.target = target
        self.routing, self.lb_mode, self.n_nodes, self.masquerade, self.bgp = routing, lb_mode, nodes, masquerade, bgp
        self.name, self.timeout = name, timeout
        self.extra_config = dict(extra_config or {})
        self.ctx: ConnectivityContext | None = None
        self._cl: LabCluster | None = None
        self._own_lab: Lab | None = None
        self._pods: list[Pod] = []
        self._services: list[str] = []

    # -- setup / teardown ---------------------------------------------------------------------------
    def _cluster(self) -> LabCluster:
        if isinstance(self.target, LabCluster):
            return self.target
        config = {"load_balancer_mode": self.lb_mode, "bpf_masquerade": self.masquerade, **self.extra_config}
        if isinstance(self.target, Lab):
            lab = self.target
            if not lab.nodes:
                return lab.cluster(list(NODE_NAMES[:self.n_nodes]), routing=self.routing,  # type: ignore[arg-type]
                                   bgp=self.bgp, **config)
            if len(lab.clusters) != 1:
                raise ValidationError(f"{lab!r} has {len(lab.clusters)} clusters: pass the LabCluster to test")
            members = [lab.nodes[n.name] for n in lab.clusters[0].nodes() if n.name in lab.nodes]
            return LabCluster(lab, lab.clusters[0], members)
        self._own_lab = Lab(self.name)
        try:
            return self._own_lab.cluster(list(NODE_NAMES[:self.n_nodes]), routing=self.routing,  # type: ignore[arg-type]
                                         bgp=self.bgp, **config)
        except BaseException:
            self._own_lab.close()
            self._own_lab = None
            raise

    def setup(self) -> ConnectivityContext:
        """Deploy (once) and return the context scenarios run in."""
        if self.ctx is not None:
            return self.ctx
        try:
            self._cl = self._cluster()
            self.ctx = self._deploy(self._cl)
        except BaseException:
            self.close()
            raise
        return self.ctx

    def _add_pod(self, node: Node, name: str) -> Pod:
        if name in node.pods:
            raise ValidationError(f"{node.name} has a pod {name!r} already: the connectivity test deploys its own")
        pod = node.add_pod(name)
        self._pods.append(pod)
        return pod

    def _deploy(self, cl: LabCluster) -> ConnectivityContext:
        nodes = sorted((n for n in cl.nodes() if n.datapath is not None and n.ip), key=lambda n: n.index)
        if len(nodes) < 2:
            raise ValidationError("the connectivity test needs a cluster of at least 2 nodes on the underlay")
        first, second = nodes[0], nodes[1]
        client, client2 = self._add_pod(first, "client"), self._add_pod(first, "client2")
        echo_same, echo_other = self._add_pod(first, "echo-same"), self._add_pod(second, "echo-other")
        for pod in (echo_same, echo_other):
            pod.ensure_echo_server(ECHO_PORT)
        outside = cl.lab.outside()
        outside.ensure_echo_server(ECHO_PORT)
        ctx = ConnectivityContext(cl.lab, cl, nodes, client, client2, echo_same, echo_other, outside,
                                  timeout=self.timeout)
        if ctx.config.kube_proxy_replacement:
            try:
                for name, (vip, node_port, policy) in SERVICES.items():
                    backend = echo_same if name.startswith("echo-same") else echo_other
                    for proto in ("TCP", "UDP") if policy == "Cluster" else ("TCP",):
                        svc_name = name if proto == "TCP" else f"{name}-udp"
                        svc = Service(svc_name, Frontend(vip, ECHO_PORT, proto), [Backend(backend.ip, ECHO_PORT)],
                                      type="NodePort", node_port=node_port, external_traffic_policy=policy)
                        self._services.append(svc_name)
                        cl.upsert_service(svc)
                        ctx.services[svc_name] = svc
            except CiliumliteError as exc:
                ctx.setup_errors["services"] = f"{type(exc).__name__}: {exc}"
        return ctx

    def close(self) -> None:
        """Remove what the test deployed (its whole lab, if it built one)."""
        cl, self._cl, self.ctx = self._cl, None, None
        if self._own_lab is not None:
            lab, self._own_lab = self._own_lab, None
            self._pods.clear()
            self._services.clear()
            lab.close()
            return
        errors = []
        if cl is not None:
            for svc in self._services:
                try:
                    cl.delete_service(svc)
                except CiliumliteError as exc:
                    errors.append(f"service {svc}: {exc}")
        for pod in self._pods:
            if pod.name in pod.node.pods:
                try:
                    pod.node.remove_pod(pod.name)
                except CiliumliteError as exc:
                    errors.append(f"pod {pod.name}: {exc}")
        self._services.clear()
        self._pods.clear()
        if errors:
            raise CiliumliteError("connectivity test cleanup: " + "; ".join(errors))

    def __enter__(self) -> ConnectivityTest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running -----------------------------------------------------------------------------------
    def scenarios(self, pattern: str | Sequence[str] | None = None) -> list[Scenario]:
        """The scenarios ``run(pattern)`` would run, in order."""
        return select(pattern)

    def config(self) -> dict[str, Any]:
        """What was tested (for reports)."""
        if self.ctx is None:
            return {"routing": self.routing, "lb_mode": self.lb_mode, "masquerade": self.masquerade,
                    "nodes": self.n_nodes}
        cfg = self.ctx.config
        return {"lab": self.ctx.lab.prefix, "routing": cfg.routing, "lb_mode": cfg.load_balancer_mode,
                "masquerade": cfg.bpf_masquerade, "socket_lb": cfg.socket_lb,
                "kube_proxy_replacement": cfg.kube_proxy_replacement, "nodes": [n.name for n in self.ctx.nodes],
                "pod_mtu": cfg.pod_mtu}

    def run(self, pattern: str | Sequence[str] | None = None,
            on_result: Callable[[ScenarioResult], None] | None = None) -> list[ScenarioResult]:
        """Run the selected scenarios (all by default) and return their results, in order."""
        chosen = self.scenarios(pattern)
        ctx = self.setup()
        ctx.drops_before = {n.name: _drop_counts(n) for n in ctx.nodes}
        ctx.expected_drops = {}
        results = []
        for sc in chosen:
            res = sc.run(ctx)
            results.append(res)
            if on_result is not None:
                on_result(res)
        return results


def with_context(ctx: ConnectivityContext, **changes: Any) -> ConnectivityContext:
    """A copy of ``ctx`` with some workloads swapped (e.g. ``echo_other=`` a broken pod)."""
    return dataclasses.replace(ctx, **changes)

