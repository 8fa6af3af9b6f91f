"""The demo: the seed's cluster in namespaces on this machine, each chapter proved live.

One cluster is built like the seed's (``k8s-master``, ``worker1``, ``worker3`` behind a leaf router at
10.0.0.254, pod CIDR 10.244.0.0/16, a ``client`` and a ``testappds`` pod on every node, a ClusterIP
and a NodePort service, an outside client at 203.0.113.10). Chapters that need another routing or
LB mode than the cluster's build a small lab of their own; the XDP and socket-acceleration chapters
share one (``demo-accel``), built once. Every chapter returns a ``StepResult``
with the evidence it saw; labs are always torn down (also on Ctrl-C) unless ``keep=True``.

``kvstore="etcd"`` builds every lab with ``Lab(store="etcd")``: etcd in the fabric, an agent
process per node, pods through the CNI plugin, the seed's services applied as Kubernetes manifests.
The chapters read each node through ``node.view``, which answers from the datapath in this process
or from the agent's pins and API alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath.config import LbMode, Routing
from ciliumlite.datapath.dsr import DsrOption
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.lab import Lab, Pod
from ciliumlite.lab.agents import AgentNode
from ciliumlite.lab.capture import Frame
from ciliumlite.lab.lab import LabCluster
from ciliumlite.node import Datapath
from ciliumlite.service import Backend, Frontend, Service

NODES = ["k8s-master", "worker1", "worker3"]
CLUSTER_IP = "10.96.0.10"
NODE_PORT = 31000
KVSTORES = ("memory", "etcd")


@dataclass
class StepResult:
    """One chapter of the demo: did it work, and what showed it."""

    title: str
    ok: bool
    evidence: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """For --json."""
        return {"title": self.title, "ok": self.ok, "evidence": self.evidence, "seconds": round(self.seconds, 3)}


@dataclass
class Demo:
    """The main cluster and what the chapters share."""

    lab: Lab
    cluster: LabCluster
    routing: Routing
    lb_mode: LbMode
    extra_labs: list[Lab] = field(default_factory=list)
    kvstore: str = "memory"
    accelerated: LabCluster | None = None

    def new_lab(self, name: str) -> Lab:
        """A lab of the demo's kind (closed with the demo)."""
        lab = Lab(name, store="etcd" if self.kvstore == "etcd" else None)
        self.extra_labs.append(lab)
        return lab

    def pods(self, role: str) -> list[Pod]:
        """The pods named ``role`` on every node."""
        return [n.pods[role] for n in self.cluster.nodes() if role in n.pods]

    def small_cluster(self, name: str, routing: Routing, **config: Any) -> LabCluster:
        """A 2-node lab for a chapter that needs another mode (closed with the demo)."""
        return self.new_lab(name).cluster(["k8s-master", "worker1"], routing=routing, bgp=False, **config)


def seed_manifests(backend_ips: list[str]) -> str:
    """The seed's two Services (``testapp``, ClusterIP; ``testapp-np``, NodePort) and their
    EndpointSlices, as a user writes them for ``ciliumlite apply -f`` (namespace ``default``)."""
    docs = []
    for name, ip, node_port in (("testapp", CLUSTER_IP, None), ("testapp-np", "10.96.0.11", NODE_PORT)):
        port = "{port: 80, targetPort: 80, protocol: TCP" + (f", nodePort: {node_port}" if node_port else "") + "}"
        docs.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
                    f"spec:\n  type: {'NodePort' if node_port else 'ClusterIP'}\n  clusterIP: {ip}\n"
                    f"  ports: [{port}]\n")
        endpoints = "".join(f"  - addresses: [{a}]\n" for a in backend_ips)
        docs.append(f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n"
                    f"  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n"
                    f"addressType: IPv4\nports: [{{port: 80, protocol: TCP}}]\nendpoints:\n{endpoints}")
    return "---\n".join(docs)


def build(routing: Routing = "native", lb_mode: LbMode = "snat", kvstore: str = "memory") -> Demo:
    """The seed's cluster, services and outside client (``kvstore="etcd"``: agents over etcd, the
    services applied as manifests). Raises :class:`ValidationError` for another ``kvstore``, and what
    building the lab raises (it is removed again then)."""
    if kvstore not in KVSTORES:
        raise ValidationError(f"kvstore must be one of {', '.join(KVSTORES)}, not {kvstore!r}")
    lab = Lab("demo", store="etcd" if kvstore == "etcd" else None)
    try:
        cluster = lab.cluster(NODES, routing=routing, load_balancer_mode=lb_mode if routing == "native" else "snat",
                              bpf_masquerade=True)
        for node in cluster.nodes():
            node.add_pod("client")
            node.add_pod("testappds").ensure_echo_server(80)
        ips = [p.ip for p in (n.pods["testappds"] for n in cluster.nodes())]
        if kvstore == "etcd":
            lab.apply(seed_manifests(ips))  # returns once every agent has programmed them
        else:
            backends = [Backend(ip, 80) for ip in ips]
            cluster.upsert_service(Service(name="testapp", frontend=Frontend(CLUSTER_IP, 80), backends=backends))
            cluster.upsert_service(Service(name="testapp-np", frontend=Frontend("10.96.0.11", 80), type="NodePort",
                                           node_port=NODE_PORT, backends=backends))
        lab.outside()
    except BaseException:
        lab.close()
        raise
    return Demo(lab, cluster, routing, lb_mode, kvstore=kvstore)


def _tx_packets(pod: Pod) -> int:
    from pyroute2 import IPRoute

    with IPRoute(netns=pod.node.netns) as ipr:
        return int(ipr.get_links(pod.endpoint.ifindex)[0].get_attr("IFLA_STATS64")["tx_packets"])


def step_status(demo: Demo) -> StepResult:
    """Chapter 1: kube-proxy replacement status, like ``cilium status``."""
    lines, ok = [], True
    for node in demo.cluster.nodes():
        view = node.view
        cfg = view.config
        attached = len(view.attachments())
        ok = ok and cfg.kube_proxy_replacement and cfg.host_routing == "bpf" and attached > 0
        lines.append(f"{node.name}: KubeProxyReplacement: {cfg.kube_proxy_replacement} · Host Routing: "
                     f"{cfg.host_routing.upper()} · Routing: {cfg.routing} · Masquerading: "
                     f"{'BPF' if cfg.bpf_masquerade else 'Disabled'} · LB: {cfg.load_balancer_mode} · "
                     f"{attached} programs attached · {len(view.endpoints())} endpoints"
                     + (f" · agent pid {node.agent.pid}, kvstore etcd" if isinstance(node, AgentNode) and node.agent
                        else ""))
    return StepResult("kube-proxy replacement status", ok, lines)


def step_host_routing(demo: Demo) -> StepResult:
    """Chapter 2: same-node pods; bpf_redirect_peer bypasses the destination's lxc device."""
    node = demo.cluster.node("worker3")
    client, test = node.pods["client"], node.pods["testappds"]
    view = node.view
    fwd0 = view.count(Reason.FORWARDED)
    before = _tx_packets(test)
    ping = client.ping(test, count=5, interval=0.05)
    moved = _tx_packets(test) - before
    fwd = view.count(Reason.FORWARDED) - fwd0
    return StepResult("same-node host routing (redirect_peer)", ping.ok and moved < ping.received and fwd > 0, [
        f"worker3: client {client.ip} -> testappds {test.ip}: {ping.received}/{ping.transmitted} replies, "
        f"avg {ping.rtt_avg_ms} ms",
        f"TX packets on testappds' lxc device moved by {moved} for {ping.received} echo requests "
        "(bypassed by bpf_redirect_peer: tcpdump on that lxc sees nothing)",
        f"BPF forwarded {fwd} packets; gateway ARP answered by BPF ({view.count(Reason.ARP_REPLY)} replies)",
    ])


def _cross(cluster: LabCluster) -> tuple[Pod, Pod, list[str], bool]:
    a, b = cluster.nodes()[-1], cluster.nodes()[-2]
    client = a.pods.get("client") or a.add_pod("client")
    server = b.pods.get("testappds") or b.add_pod("testappds")
    ping = client.ping(server, count=3, interval=0.05)
    tcp, udp = client.tcp_echo(server, 80), client.udp_echo(server, 53)
    ok = ping.ok and tcp.ok and udp.ok
    return client, server, [
        f"{a.name}/client {client.ip} -> {b.name}/testappds {server.ip}: ping {ping.received}/{ping.transmitted}, "
        f"TCP {'ok' if tcp.ok else tcp.error}, UDP {'ok' if udp.ok else udp.error}; "
        f"testappds saw {tcp.seen_client} (no NAT between pods)"], ok


def step_vxlan(demo: Demo) -> StepResult:
    """Chapter 3: VXLAN overlay with the security identity in the VNI."""
    cluster = demo.cluster if demo.routing == "vxlan" else demo.small_cluster("demo-vx", "vxlan")
    lab = cluster.lab
    assert lab.fabric is not None
    sender = cluster.nodes()[-1]
    with lab.capture(lab.fabric.netns, f"n{sender.index}", seconds=3) as cap:
        client, _, lines, ok = _cross(cluster)
    vnis = {int.from_bytes(f.raw[46:49], "big") for f in cap.frames
            if f.proto == 17 and f.ports[1] == 8472 and f.src == sender.ip}
    view = sender.view
    ok = ok and client.endpoint.identity in vnis
    return StepResult("VXLAN overlay (identity in the VNI)", ok, [
        *lines, f"tunnel map on {sender.name}: {view.tunnel_entries()}",
        f"on the wire from {sender.ip}: UDP 8472, VNIs {sorted(vnis)}; client's security identity "
        f"{client.endpoint.identity}", f"encapsulated by BPF: {view.count(Reason.ENCAPSULATED)} packets; "
        "MACs rewritten only at the end, by from-overlay on the receiving node"])


def step_native(demo: Demo) -> StepResult:
    """Chapter 4: native routing, pod CIDRs announced over BGP by bird."""
    if demo.routing == "native":
        cluster = demo.cluster
    else:
        cluster = demo.new_lab("demo-bgp").cluster(["k8s-master", "worker1"], routing="native")
    _, _, lines, ok = _cross(cluster)
    node = cluster.nodes()[-1]
    assert node.bird is not None
    sessions = [s for s in node.bird.status() if s.is_bgp]
    routes = [r.strip() for r in node.run("ip", "route").stdout.splitlines() if "proto bird" in r]
    ok = ok and all(s.established for s in sessions) and len(routes) == len(cluster.nodes()) - 1
    return StepResult("native routing with BGP (bird)", ok, [
        *lines, f"BGP on {node.name}: " + ", ".join(f"{s.name} {s.info or s.state}" for s in sessions),
        *[f"route: {r}" for r in routes],
        f"FIB-redirected by BPF (pod veth -> NIC): {node.view.count(Reason.FIB_REDIRECT)} packets"])


def step_socket_lb(demo: Demo) -> StepResult:
    """Chapter 5: socket LB: connect() to the ClusterIP is rewritten to a backend."""
    node = demo.cluster.node("worker3")
    client = node.pods["client"]
    with demo.lab.capture(client.netns, "eth0", seconds=3) as cap:
        answers = [client.tcp_echo(CLUSTER_IP, 80) for _ in range(6)]
    servers = sorted({a.server for a in answers if a.ok})
    peers = {a.peer for a in answers if a.peer is not None}
    on_wire = {f.dst for f in cap.frames if f.outgoing}
    ok = all(a.ok for a in answers) and peers == {(CLUSTER_IP, 80)} and CLUSTER_IP not in on_wire \
        and len(answers) == 6
    return StepResult("socket LB (connect-time translation)", ok, [
        f"6 connections to {CLUSTER_IP}:80 from worker3/client answered by {servers}",
        f"getpeername() in the client: {sorted(peers)} (the service, restored by getpeername4)",
        f"destinations on the client's eth0: {sorted(on_wire)} — the ClusterIP never appears on the wire"])


def _nodeport(demo: Demo, mode: LbMode) -> tuple[bool, list[str]]:
    cluster = demo.small_cluster(f"demo-{mode}", "native", load_balancer_mode=mode)
    lab = cluster.lab
    entry, far = cluster.node("k8s-master"), cluster.node("worker1")
    backend = far.add_pod("testappds")
    backend.ensure_echo_server(80)
    cluster.upsert_service(Service(name="np", frontend=Frontend("10.96.0.20", 80), type="NodePort",
                                   node_port=NODE_PORT, backends=[Backend(backend.ip, 80)]))
    world = lab.outside()
    assert lab.fabric is not None and entry.ip is not None
    with lab.capture(lab.fabric.netns, f"n{far.index}", seconds=3) as cap:
        res = world.tcp_echo(entry.ip, NODE_PORT)
    replies_direct = [f for f in cap.frames if f.src == entry.ip and f.dst == world.ip and f.ports[0] == NODE_PORT]
    options = [DsrOption.from_ipv4_header(f.ip_header) for f in cap.frames if len(f.ip_header) > 20]
    lines = [f"outside {world.ip} -> NodePort {entry.ip}:{NODE_PORT} (backend on {far.name}): "
             f"{'ok' if res.ok else res.error}; the backend saw the client as {res.seen_client}"]
    if mode == "snat":
        ok = res.ok and res.seen_client.startswith(entry.ip + ":") and not replies_direct
        lines.append(f"replies go back through {entry.name} (the backend answered {entry.ip}); "
                     f"{len(replies_direct)} replies left {far.name} for the client directly")
    else:
        opt = next((o for o in options if o is not None), None)
        ok = res.ok and res.seen_client.startswith(world.ip + ":") and bool(replies_direct) and \
            opt == DsrOption(entry.ip, NODE_PORT)
        raw = opt.encode().hex(" ") if opt else "none"
        lines += [f"SYN arriving at {far.name} carries the DSR option {raw} = {opt}",
                  f"{len(replies_direct)} replies left {far.name} straight to {world.ip} with source "
                  f"{entry.ip}:{NODE_PORT} (never through {entry.name})"]
    return ok, lines


def step_nodeport(demo: Demo) -> StepResult:
    """Chapter 6: NodePort in SNAT and DSR mode: who relays the reply."""
    ok, lines = True, []
    for mode in ("snat", "dsr"):
        m_ok, m_lines = _nodeport(demo, mode)
        ok = ok and m_ok
        lines += [f"[{mode.upper()}] {line}" for line in m_lines]
    return StepResult("NodePort SNAT vs DSR", ok, lines)


ACCEL_NODE_PORT = 31080
WORLD_NET = "203.0.113.0/24"


def _accelerated(demo: Demo) -> LabCluster:
    """The small lab the XDP and sockops chapters share, built once: two nodes on native routing,
    NodePort (SNAT) accelerated at XDP in driver mode, socket acceleration on, a NodePort service to
    a backend on worker1. Always in-process datapaths (also with ``kvstore="etcd"``): the prefilter
    and the sockops counters are :class:`~ciliumlite.node.Datapath` APIs the agent does not serve."""
    if demo.accelerated is None:
        lab = Lab("demo-accel")
        demo.extra_labs.append(lab)
        cluster = lab.cluster(["k8s-master", "worker1"], routing="native", bgp=False, load_balancer_mode="snat",
                              acceleration="native", sockops_enable=True)
        backend = cluster.node("worker1").add_pod("testappds")
        backend.ensure_echo_server(80)
        cluster.upsert_service(Service(name="np", frontend=Frontend("10.96.0.30", 80), type="NodePort",
                                       node_port=ACCEL_NODE_PORT, backends=[Backend(backend.ip, 80)]))
        world = lab.outside()
        entry, far = cluster.node("k8s-master"), cluster.node("worker1")
        assert entry.ip is not None and far.ip is not None
        # Neighbours resolved first: XDP cannot resolve one, so a first packet would go through tc.
        world.ping(entry.ip, count=1)
        entry.run("ping", "-c1", "-W1", far.ip)
        demo.accelerated = cluster
    return demo.accelerated


def _dp(node: Any) -> Datapath:
    assert node.datapath is not None, f"{node.name} has no in-process datapath"
    dp: Datapath = node.datapath
    return dp


def step_xdp_prefilter(demo: Demo) -> StepResult:
    """Chapter 7: a denied CIDR dropped at XDP, before tc or the stack see it."""
    cluster = _accelerated(demo)
    lab, entry = cluster.lab, cluster.node("k8s-master")
    world, dp = lab.outside(), _dp(entry)
    assert entry.ip is not None
    base = world.ping(entry.ip, count=3, interval=0.05)
    drops0 = dp.count(Reason.DROP_PREFILTER)
    dp.prefilter.add(WORLD_NET)
    try:
        listed = [str(n) for n in dp.prefilter.list()]
        # A packet socket on eth0 sees each frame the stack receives just before tc's ingress hook
        # (and after XDP): a frame dropped at XDP never appears in it, one tc sees always does.
        with lab.capture(entry.netns, "eth0", seconds=10) as cap:
            blocked = world.ping(entry.ip, count=5, interval=0.05, timeout=0.5)
        drops = dp.count(Reason.DROP_PREFILTER) - drops0
    finally:
        dp.prefilter.remove(WORLD_NET)
    reached = [f for f in cap.frames if f.src == world.ip]
    again = world.ping(entry.ip, count=3, interval=0.05)
    ok = base.ok and blocked.received == 0 and drops >= blocked.transmitted and not reached and again.ok \
        and listed == [WORLD_NET]
    return StepResult("XDP prefilter (a denied CIDR dropped at XDP)", ok, [
        f"outside {world.ip} -> {entry.name} {entry.ip}: ping {base.received}/{base.transmitted} before",
        f"prefilter {listed}: ping {blocked.received}/{blocked.transmitted}; DROP_PREFILTER +{drops} at XDP; "
        f"{len(reached)} frames from {world.ip} reached eth0's stack and its tc ingress hook",
        f"prefilter removed: ping {again.received}/{again.transmitted}"])


def step_xdp_nodeport(demo: Demo) -> StepResult:
    """Chapter 8: a NodePort connection from outside forwarded to the other node by XDP."""
    cluster = _accelerated(demo)
    lab, entry, far = cluster.lab, cluster.node("k8s-master"), cluster.node("worker1")
    world, dp = lab.outside(), _dp(entry)
    assert entry.ip is not None
    mode = dp.status()["xdp"]["mode"]
    xdp0, tc0 = dp.count(Reason.XDP_FORWARDED), dp.count(Reason.FIB_REDIRECT, Direction.INGRESS)
    res = world.tcp_echo(entry.ip, ACCEL_NODE_PORT, payload="x" * 20_000, timeout=5.0)
    by_xdp = dp.count(Reason.XDP_FORWARDED) - xdp0
    by_tc = dp.count(Reason.FIB_REDIRECT, Direction.INGRESS) - tc0
    ok = res.ok and len(res.reply) == 20_000 and by_xdp > 0 and by_tc == 0 and mode == "native"
    return StepResult("NodePort accelerated at XDP", ok, [
        f"outside {world.ip} -> NodePort {entry.ip}:{ACCEL_NODE_PORT} (backend on {far.name}): "
        f"{'ok' if res.ok else res.error}, 20000 bytes echoed back {'intact' if res.ok else ''}; "
        f"backend saw {res.seen_client}",
        f"XDP ({mode} mode) on {entry.name} forwarded {by_xdp} packets (XDP_FORWARDED); "
        f"tc's FIB_REDIRECT at ingress +{by_tc}"])


def _tcp_payload(frame: Frame) -> int:
    """TCP payload bytes of a captured frame (0 for other protocols)."""
    if frame.proto != 6:
        return 0
    raw, ihl = frame.raw, (frame.raw[14] & 0x0F) * 4
    return int.from_bytes(raw[16:18], "big") - ihl - (raw[14 + ihl + 12] >> 4) * 4


def step_sockops(demo: Demo) -> StepResult:
    """Chapter 9: same-node TCP through sk_msg: the data never crosses either veth."""
    cluster = _accelerated(demo)
    node = cluster.node("worker1")
    lab, dp = cluster.lab, _dp(node)
    client = node.pods.get("client") or node.add_pod("client")
    server = node.pods["testappds"]
    before = {k: (v.count, v.bytes) for k, v in dp.sockops.counters().items()}
    caps = [lab.capture(node.netns, p.endpoint.ifname, seconds=20, max_frames=2000) for p in (client, server)]
    try:
        res = client.tcp_echo(server, 80, payload="y" * 50_000, timeout=10.0)
    finally:
        for cap in caps:
            cap.__exit__(None, None, None)
    after = {k: (v.count, v.bytes) for k, v in dp.sockops.counters().items()}
    d = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after if after[k] != before[k]}
    payload = sum(1 for cap in caps for f in cap.frames if _tcp_payload(f) > 0)
    frames = sum(len(cap.frames) for cap in caps)
    redirected = d.get("msg_redirect", (0, 0))
    ok = res.ok and res.reply == "y" * 50_000 and redirected[1] >= 100_000 and payload == 0
    return StepResult("socket acceleration (sockops + sk_msg)", ok, [
        f"{node.name}: client {client.ip} -> testappds {server.ip}:80: 50000 bytes sent, "
        f"{'the same 50000 echoed back' if res.ok and res.reply == 'y' * 50_000 else res.error or 'reply differs'}",
        "sockops counters: " + ", ".join(f"{k} +{c} ({b} B)" for k, (c, b) in sorted(d.items())),
        f"captures on both veths: {frames} frames, {payload} with TCP payload "
        "(the data went socket to socket via bpf_msg_redirect_hash)"])


STEPS: list[tuple[str, Callable[[Demo], StepResult]]] = [
    ("status", step_status),
    ("host-routing", step_host_routing),
    ("vxlan", step_vxlan),
    ("native", step_native),
    ("socket-lb", step_socket_lb),
    ("nodeport", step_nodeport),
    ("xdp-prefilter", step_xdp_prefilter),
    ("xdp-nodeport", step_xdp_nodeport),
    ("sockops", step_sockops),
]


def run_demo(*, routing: Routing = "native", lb_mode: LbMode = "snat", keep: bool = False,
             only: list[str] | None = None, kvstore: str = "memory",
             on_step: Callable[[str, StepResult | None], None] | None = None) -> tuple[list[StepResult], Lab | None]:
    """Build the cluster, run the chapters, tear everything down (unless ``keep``: the main lab stays).

    ``kvstore="etcd"``: every lab runs etcd and an agent per node (see the module). Raises
    :class:`ValidationError` for another ``kvstore``, or ``keep`` with etcd (an etcd lab ends with
    this process), and what building the main cluster raises.
    """
    if kvstore not in KVSTORES:
        raise ValidationError(f"kvstore must be one of {', '.join(KVSTORES)}, not {kvstore!r}")
    if keep and kvstore == "etcd":
        raise ValidationError("keep=True needs kvstore='memory': an etcd lab's etcd ends with this process")
    if on_step:
        on_step("building the cluster", None)
    t0 = time.monotonic()
    demo = build(routing, lb_mode, kvstore)
    control = (f"etcd at {demo.lab.etcd.url} in {demo.lab.prefix}-fabric, an agent process per node, pods "
               "through the CNI plugin, services applied as manifests" if demo.lab.etcd is not None
               else "in-process datapaths, in-memory store")
    results = [StepResult("cluster built", True, [
        f"{len(NODES)} nodes ({', '.join(NODES)}), {routing} routing, leaf 10.0.0.254, "
        f"{sum(len(n.pods) for n in demo.cluster.nodes())} pods, services testapp ({CLUSTER_IP}:80) and "
        f"testapp-np (NodePort {NODE_PORT}), outside client 203.0.113.10", control], time.monotonic() - t0)]
    try:
        for name, fn in STEPS:
            if only and name not in only:
                continue
            if on_step:
                on_step(name, None)
            t0 = time.monotonic()
            try:
                res = fn(demo)
            except Exception as exc:  # a failed chapter is reported; the others still run
                res = StepResult(name, False, [f"{type(exc).__name__}: {exc}"])
            res.seconds = time.monotonic() - t0
            results.append(res)
            if on_step:
                on_step(name, res)
    finally:
        for lab in demo.extra_labs:
            lab.close()
        if not keep:
            demo.lab.close()
    return results, demo.lab if keep else None
