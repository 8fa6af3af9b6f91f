"""The traffic scenarios of ``cilium connectivity test`` (pod to pod, services, NodePort, world, MTU).

Each is a function of a :class:`~ciliumlite.connectivity.context.ConnectivityContext` registered with
:func:`~ciliumlite.connectivity.framework.scenario`; importing this module registers them in
:data:`~ciliumlite.connectivity.framework.SCENARIOS`, in the order a run takes them. The
``no-interrupted-connections`` family follows (:mod:`~ciliumlite.connectivity.disruption`) and
``no-unexpected-packet-drops`` comes last (:mod:`~ciliumlite.connectivity.drops`); the runner
imports the three in that order. A scenario whose setup or feature is missing fails with the
evidence; one the lab's configuration does not cover (``applies``) is skipped with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ciliumlite.connectivity.context import (
    ECHO_PORT,
    SERVICES,
    ConnectivityContext,
    Probe,
    Runner,
    source_label,
)
from ciliumlite.connectivity.framework import Checks, ScenarioResult, scenario
from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Node, Pod
from ciliumlite.service import Protocol

__all__: list[str] = []


# -- evidence helpers --------------------------------------------------------------------------------
def _addr(pair: tuple[str, int] | None) -> str:
    return f"{pair[0]}:{pair[1]}" if pair else "-"


def _node_ips(node: Node) -> set[str]:
    """Addresses that mean "this node": its underlay address and its gateway in the pod CIDR."""
    return {node.ip or "", str(node.view.config.gateway)}


def _attached(node: Node, program: str) -> bool:
    """Whether ``node``'s datapath has ``program`` attached anywhere (node or endpoint programs)."""
    return any(a.program == program for a in node.view.attachments())


def _note_to_netdev(c: Checks, nodes: Iterable[Node], why: str) -> None:
    """Explain a failure that needs cil_to_netdev on nodes that do not attach it."""
    missing = [n.name for n in nodes if not _attached(n, "cil_to_netdev")]
    if missing:
        c.note(f"cil_to_netdev is not attached on {', '.join(missing)}: {why} cannot work there")


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
        node = next(n for n in ctx.nodes if p.source == source_label(n))
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
    gw = ctx.client.node.view.config.gateway
    for target in [n.ip or "" for n in ctx.nodes] + [str(gw)]:
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
