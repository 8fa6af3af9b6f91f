"""The demo: the seed's cluster in namespaces on this machine, each chapter proved live.

Every step returns a ``StepResult`` with the evidence it saw; ``run_demo`` shows progress and
always tears the lab down (also on Ctrl-C) unless ``keep=True``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Lab, Pod
from ciliumlite.lab.lab import LabCluster

NODES = ["k8s-master", "worker1", "worker3"]


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


def _tx_packets(pod: Pod) -> int:
    from pyroute2 import IPRoute

    with IPRoute(netns=pod.node.netns) as ipr:
        link = ipr.get_links(pod.endpoint.ifindex)[0]
        return int(link.get_attr("IFLA_STATS64")["tx_packets"])


def step_host_routing(lab: Lab) -> StepResult:
    """Chapter 2: same-node pods, bpf_redirect_peer bypasses the destination's lxc device."""
    node = lab.add_node("worker-same")
    client, test = node.add_pod("client"), node.add_pod("testappds")
    before = _tx_packets(test)
    ping = client.ping(test, count=5, interval=0.05)
    after = _tx_packets(test)
    assert node.datapath is not None
    fwd = node.datapath.count(Reason.FORWARDED)
    ok = ping.ok and after - before < ping.received
    return StepResult("same-node host routing (redirect_peer)", ok, [
        f"client {client.ip} -> testappds {test.ip}: {ping.received}/{ping.transmitted} replies, avg {ping.rtt_avg_ms} ms",
        f"TX packets on testappds' lxc device moved by {after - before} (bypassed by bpf_redirect_peer)",
        f"BPF forwarded {fwd} packets; ARP answered by BPF: {node.datapath.count(Reason.ARP_REPLY)}",
    ])


def _cross(cluster: LabCluster, title: str, extra: Callable[[LabCluster], list[str]]) -> StepResult:
    client = cluster.node("worker3").add_pod("client")
    server = cluster.node("worker1").add_pod("testappds")
    ping = client.ping(server, count=3, interval=0.05)
    tcp = client.tcp_echo(server, 80)
    udp = client.udp_echo(server, 53)
    ok = ping.ok and tcp.ok and udp.ok
    return StepResult(title, ok, [
        f"worker3/client {client.ip} -> worker1/testappds {server.ip}: ping {ping.received}/{ping.transmitted}, "
        f"TCP {'ok' if tcp.ok else tcp.error}, UDP {'ok' if udp.ok else udp.error}",
        f"testappds saw the client as {tcp.seen_client} (no NAT between pods)",
        *extra(cluster),
    ])


def step_vxlan(lab: Lab) -> StepResult:
    """Chapter 3: VXLAN overlay with the security identity in the VNI."""
    cluster = lab.cluster(NODES, routing="vxlan")

    def extra(cl: LabCluster) -> list[str]:
        dp = cl.node("worker3").datapath
        assert dp is not None
        client = cl.node("worker3").pods["client"]
        return [f"tunnel map on worker3: {dp.bpf_tunnels()}",
                f"client's identity (the VNI on the wire): {client.endpoint.identity}",
                f"encapsulated by BPF on worker3: {dp.count(Reason.ENCAPSULATED)} packets"]

    return _cross(cluster, "VXLAN overlay (identity in the VNI)", extra)


def step_native(lab: Lab) -> StepResult:
    """Chapter 4: native routing, pod CIDRs announced over BGP by bird."""
    cluster = lab.cluster(NODES, routing="native")

    def extra(cl: LabCluster) -> list[str]:
        node = cl.node("worker3")
        assert node.datapath is not None
        sessions = ", ".join(f"{s.name} {s.info or s.state}" for s in node.bird.status() if s.is_bgp)
        routes = [line for line in node.run("ip", "route").stdout.splitlines() if "bird" in line]
        return [f"BGP on worker3: {sessions}", *[f"route: {r}" for r in routes],
                f"FIB-redirected by BPF on worker3: {node.datapath.count(Reason.FIB_REDIRECT)} packets"]

    return _cross(cluster, "native routing with BGP (bird)", extra)


STEPS: list[tuple[str, Callable[[Lab], StepResult]]] = [
    ("host-routing", step_host_routing),
    ("vxlan", step_vxlan),
    ("native", step_native),
]


def run_demo(*, keep: bool = False, only: list[str] | None = None,
             on_step: Callable[[str, StepResult | None], None] | None = None) -> tuple[list[StepResult], Lab | None]:
    """Run the chapters (each in its own lab, torn down after it unless ``keep``)."""
    results: list[StepResult] = []
    kept: Lab | None = None
    for name, fn in STEPS:
        if only and name not in only:
            continue
        if on_step:
            on_step(name, None)
        lab = Lab(f"demo-{name[:6]}")
        t0 = time.monotonic()
        try:
            res = fn(lab)
        except Exception as exc:  # a failed chapter is reported, the others still run
            res = StepResult(name, False, [f"{type(exc).__name__}: {exc}"])
        res.seconds = time.monotonic() - t0
        results.append(res)
        if on_step:
            on_step(name, res)
        if keep:
            kept = lab
        else:
            lab.close()
    return results, kept
