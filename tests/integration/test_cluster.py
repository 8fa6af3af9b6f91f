"""LabCluster life cycle: a cluster comes up quickly and goes without a trace, static native routes
(``bgp=False``), node removal and re-addition, and what a failed or busy change leaves behind."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath.config import PIN_BASE
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.lab import Lab, Node

pytestmark = pytest.mark.integration

NODES = ["k8s-master", "worker1", "worker3"]


def ip_netns_list() -> str:
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, res.stderr
    return res.stdout


def traces_of(prefix: str) -> list[str]:
    """Anything on the host still named after a lab prefix."""
    found = [line for line in ip_netns_list().splitlines() if line.startswith(prefix)]
    found += [n for n in nsmod.list_all() if n.startswith(prefix)]
    for base in (fs.cgroup2_root(), PIN_BASE, fs.BPFFS):
        if os.path.isdir(base):
            found += [os.path.join(base, n) for n in os.listdir(base) if n.startswith(prefix)]
    return found


def routes(node: Node) -> list[str]:
    res = node.run("ip", "-4", "route", "show")
    assert res.returncode == 0, res.stderr
    return list(res.stdout.splitlines())


def test_three_nodes_two_pods_each_up_quickly_and_gone_without_trace() -> None:
    t0 = time.monotonic()
    with Lab("up") as lab:
        prefix = lab.prefix
        workdir = lab.workdir
        cl = lab.cluster(nodes=NODES, routing="vxlan")
        pods = [n.add_pod(f"{n.name[0]}{n.index}{w}") for n in cl.nodes() for w in "ab"]
        elapsed = time.monotonic() - t0
        assert len(pods) == 6 and len({p.ip for p in pods}) == 6
        assert elapsed < 20, f"3 nodes x 2 pods took {elapsed:.1f}s"
        # It works, not only exists: the first pod reaches a pod on every other node.
        for dst in pods[2::2]:
            res = pods[0].ping(dst, count=1)
            assert res.ok, res.output
        assert traces_of(prefix), "sanity: the lab's namespaces are visible while it runs"
    assert not traces_of(prefix), f"the lab left {traces_of(prefix)}"
    assert prefix not in ip_netns_list()
    assert not os.path.exists(workdir)


def test_native_routing_with_static_routes_instead_of_bgp() -> None:
    with Lab("static") as lab:
        cl = lab.cluster(nodes=NODES, routing="native", bgp=False)
        assert lab.leaf_bird is None and all(n.bird is None for n in cl.nodes())
        for node in cl.nodes():
            table = routes(node)
            for other in cl.nodes():
                if other is node:
                    continue
                assert other.datapath is not None
                cidr = other.datapath.config.pod_cidr
                hit = [r for r in table if r.startswith(f"{cidr} via {other.ip} dev eth0")]
                assert hit and "proto bird" not in hit[0], table
        a = cl.node("k8s-master").add_pod("sa")
        b = cl.node("worker3").add_pod("sb")
        assert a.node.datapath is not None
        fib = a.node.datapath.count(Reason.FIB_REDIRECT, Direction.EGRESS)
        res = a.ping(b, count=2, interval=0.05)
        assert res.ok, res.output
        assert a.node.datapath.count(Reason.FIB_REDIRECT, Direction.EGRESS) - fib >= 2
        assert a.tcp_echo(b, 8080, "static").reply == "static"
        # Removing a node deletes its static route on the others, and only that one.
        cl.remove_node("worker1")
        for node in cl.nodes():
            table = routes(node)
            assert not [r for r in table if r.startswith("10.244.1.0/24")], table
        assert [r for r in routes(a.node) if r.startswith("10.244.2.0/24 via 10.0.0.13")]
        assert a.ping(b, count=1).ok


def test_remove_a_middle_node_then_add_another() -> None:
    # Node addresses, pod CIDRs and fabric ports come from a node index; removing worker1 (index 1)
    # and adding worker4 must not hand out an index that worker3 still uses.
    with Lab("readd") as lab:
        cl = lab.cluster(nodes=NODES, routing="vxlan")
        m, w3 = cl.node("k8s-master"), cl.node("worker3")
        pm, p3 = m.add_pod("pm"), w3.add_pod("p3")
        cl.remove_node("worker1")
        w4 = cl.add_node("worker4")
        assert w4.datapath is not None and w3.datapath is not None
        assert w4.ip not in (m.ip, w3.ip)
        assert w4.datapath.config.pod_cidr != w3.datapath.config.pod_cidr
        p4 = w4.add_pod("p4")
        for node in (m, w3):
            assert node.datapath is not None
            assert node.datapath.tunnel.entries()[w4.datapath.config.network.network_address.exploded] == w4.ip
            assert "10.244.1.0" not in node.datapath.tunnel.entries()
        for src, dst in ((pm, p4), (p4, p3), (p3, pm)):
            res = src.ping(dst, count=1)
            assert res.ok, f"{src} -> {dst}: {res.output}"


def test_bad_cluster_requests_are_refused() -> None:
    with Lab("bad") as lab:
        with pytest.raises(ValidationError, match="routing"):
            lab.cluster(nodes=["a"], routing="geneve")  # type: ignore[arg-type]
        assert lab.nodes == {} and lab.fabric is None
        cl = lab.cluster(nodes=["k8s-master"], routing="vxlan")
        with pytest.raises(ValidationError, match="no node 'worker7'"):
            cl.node("worker7")
        with pytest.raises(ValidationError, match="exists already"):
            cl.add_node("k8s-master")
        assert list(cl.members) == ["k8s-master"]


def test_rejected_node_leaves_nothing() -> None:
    with Lab("reject") as lab:
        cl = lab.cluster(nodes=["k8s-master", "worker1"], routing="vxlan")
        with pytest.raises(ValidationError, match="clashes"):
            cl.add_node("worker9", pod_cidr="10.244.1.0/24")   # worker1's CIDR
        assert "worker9" not in cl.members
        assert "worker9" not in lab.nodes, "the rejected node is still part of the lab"
        assert not [n for n in nsmod.list_all() if n.startswith(f"{lab.prefix}-worker9")]


def test_remove_node_with_servers_running_in_its_pods() -> None:
    with Lab("busy") as lab:
        cl = lab.cluster(nodes=["k8s-master", "worker1"], routing="vxlan")
        a = cl.node("k8s-master").add_pod("a")
        b = cl.node("worker1").add_pod("b")
        assert a.tcp_echo(b, 8080).ok           # starts the echo server in b, on worker1
        cgroup = cl.node("worker1").cgroup
        try:
            cl.remove_node("worker1")
        finally:
            # Undo what the bug leaves (our own processes and the removed node's cgroup).
            lab.processes.stop_all()
            if cgroup and os.path.isdir(cgroup):
                fs.remove_cgroup(cgroup)
        assert cgroup and not os.path.exists(cgroup)
        assert not re.search(r"\bworker1\b", " ".join(lab.nodes))
        assert a.ping(cl.node("k8s-master").add_pod("c"), count=1).ok
