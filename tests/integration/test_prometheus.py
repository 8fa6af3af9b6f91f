"""Cilium's Prometheus metrics over HTTP from a live lab: real traffic, a real scrape, a real parser.

A one-node cluster with policy on (namespace ``x`` isolated for ingress) and two pods. Pings from
``b`` to ``a`` are dropped as ``Policy denied``; pings from ``a`` to ``c`` (namespace ``y``,
not isolated) are forwarded. Each test scrapes ``/metrics`` with ``requests`` from a server bound to
127.0.0.1 and parses the answer with ``prometheus_client.parser``, so names, labels and values are
checked as Prometheus would read them. The CLI's ``metrics --serve`` runs as its own process.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ciliumlite import prometheus as prom
from ciliumlite.bpf import Map
from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Lab
from ciliumlite.lab.cluster import LabCluster
from ciliumlite.lab.hosts import Pod
from ciliumlite.node import Datapath

pytestmark = pytest.mark.integration

DENY_X_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Topo:
    lab: Lab
    cl: LabCluster
    dp: Datapath
    a: Pod
    b: Pod
    c: Pod
    server: prom.MetricsServer
    gc: prom.GcStats

    @property
    def node(self) -> str:
        return self.dp.config.node_name


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with Lab("prom") as lab:
        cl = lab.cluster(["n1"], routing="vxlan", bgp=False, enable_policy=True)
        cl.set_namespace("x", {"ns": "x"})
        cl.set_namespace("y", {"ns": "y"})
        a = cl.node("n1").add_pod("a", namespace="x", labels={"pod": "a"})
        b = cl.node("n1").add_pod("b", namespace="x", labels={"pod": "b"})
        c = cl.node("n1").add_pod("c", namespace="y", labels={"pod": "c"})
        dp = cl.node("n1").datapath
        assert dp is not None
        assert a.ping(c, count=1).ok and b.ping(a, count=1).ok  # neighbours resolved before the policy
        c.ensure_echo_server(8080)
        cl.apply_policy(DENY_X_INGRESS)
        gc = prom.GcStats()
        registry = prom.CollectorRegistry()
        registry.register(prom.DatapathCollector(lab=lab.prefix, gc=gc))
        server = prom.serve("127.0.0.1:0", registry)
        try:
            yield Topo(lab, cl, dp, a, b, c, server, gc)
        finally:
            server.close()


def scrape(url: str) -> Samples:
    """Every sample of one scrape, by (name, labels)."""
    res = requests.get(url, timeout=10)
    assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/plain")
    out: Samples = {}
    for fam in text_string_to_metric_families(res.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_policy_drops_are_counted_by_reason(topo: Topo) -> None:
    n = 5
    before = scrape(topo.server.url)
    assert not topo.b.ping(topo.a, count=n, interval=0.05, timeout=0.5).received
    after = scrape(topo.server.url)
    for metric in ("cilium_drop_count_total", "cilium_drop_bytes_total"):
        assert any(name == metric for name, _ in after), sorted({k[0] for k in after})
    got = value(after, "cilium_drop_count_total", reason="Policy denied", node=topo.node) - value(
        before, "cilium_drop_count_total", reason="Policy denied", node=topo.node)
    assert got == n
    # 98-byte frames: 84 bytes of IPv4 + ICMP, 14 of Ethernet.
    got_bytes = value(after, "cilium_drop_bytes_total", reason="Policy denied", node=topo.node) - value(
        before, "cilium_drop_bytes_total", reason="Policy denied", node=topo.node)
    assert got_bytes == n * 98
    # The same figures as the datapath's own counter.
    assert value(after, "cilium_drop_count_total", reason="Policy denied") == topo.dp.count(Reason.DROP_POLICY)
    labels = {dict(ls)["direction"] for name, ls in after if name == "cilium_drop_count_total"}
    assert labels <= {"INGRESS", "EGRESS", "SERVICE"}


def test_forwarded_pings_are_counted(topo: Topo) -> None:
    n = 10
    before = scrape(topo.server.url)
    assert topo.a.ping(topo.c, count=n, interval=0.05).received == n
    after = scrape(topo.server.url)
    # Each echo request and reply is delivered into a pod: at least 2n forwarded, 98 bytes each.
    fwd = value(after, "cilium_forward_count_total", node=topo.node) - value(
        before, "cilium_forward_count_total", node=topo.node)
    fwd_bytes = value(after, "cilium_forward_bytes_total", node=topo.node) - value(
        before, "cilium_forward_bytes_total", node=topo.node)
    assert fwd >= 2 * n and fwd_bytes >= 2 * n * 98
    # No drop for traffic the policy allows.
    assert value(after, "cilium_drop_count_total", reason="Policy denied") == value(
        before, "cilium_drop_count_total", reason="Policy denied")
    # Events not sent are not packets: never in the forward totals, exported apart.
    assert {dict(ls)["source"] for name, ls in after if name == "hubble_lost_events_total"} == {
        "perf_event_ring_buffer", "bpf_events_rate_limit"}


def test_map_pressure_endpoints_services_policies(topo: Topo) -> None:
    s = scrape(topo.server.url)
    assert value(s, "cilium_endpoint", node=topo.node) == 3
    assert value(s, "cilium_endpoint_state", endpoint_state="ready", node=topo.node) == 3
    assert value(s, "cilium_policy", node=topo.node) == 1
    assert value(s, "cilium_services", node=topo.node) == len(topo.dp.services())
    lxc = value(s, "cilium_bpf_map_pressure", map_name="cilium_lxc", node=topo.node)
    with Map.open_pinned(os.path.join(topo.dp.config.pin_dir, "cilium_lxc")) as m:
        assert lxc == pytest.approx(len(m) / m.max_entries) and len(m) >= 3
    assert all(0.0 <= v <= 1.0 for (n, _), v in s.items() if n == "cilium_bpf_map_pressure")


def test_conntrack_gc_runs_and_entries(topo: Topo) -> None:
    assert topo.a.tcp_echo(topo.c, 8080).ok
    s = scrape(topo.server.url)
    ct = topo.dp.conntrack()
    alive = value(s, "cilium_datapath_conntrack_gc_entries", status="alive", node=topo.node)
    assert alive == len(ct) > 0
    topo.gc.run(topo.node, topo.dp.gc_conntrack)
    topo.gc.run(topo.node, topo.dp.gc_conntrack)
    s = scrape(topo.server.url)
    assert value(s, "cilium_datapath_conntrack_gc_runs_total", status="completed", node=topo.node) == 2
    assert value(s, "cilium_datapath_conntrack_gc_deleted_total", kind="ct", node=topo.node) >= 0
    assert value(s, "cilium_datapath_conntrack_gc_duration_seconds", node=topo.node) > 0


def test_cli_serves_the_same_metrics(topo: Topo) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ciliumlite.cli", "metrics", "--serve", "127.0.0.1:0",
                             "--lab", topo.lab.prefix, "--duration", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 30)
        line = proc.stderr.readline() if ready else ""
        m = re.search(r"on (http://127\.0\.0\.1:\d+/metrics)", line)
        assert m, line
        n = 3
        before = scrape(m[1])
        assert not topo.b.ping(topo.a, count=n, interval=0.05, timeout=0.5).received
        after = scrape(m[1])
        assert value(after, "cilium_drop_count_total", reason="Policy denied") - value(
            before, "cilium_drop_count_total", reason="Policy denied") == n
        assert value(after, "cilium_endpoint", node=topo.node) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    res = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "metrics", "--prometheus", "--lab", topo.lab.prefix],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    fams = {f.name for f in text_string_to_metric_families(res.stdout)}
    assert {"cilium_drop_count", "cilium_forward_count", "cilium_bpf_map_pressure", "cilium_endpoint"} <= fams
