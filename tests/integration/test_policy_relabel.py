"""Relabelling a live pod or namespace (issue 17, "Dynamic"): the pod's identity changes in place
and every node's maps converge; no program is reloaded.

Two VXLAN nodes with policy. Server pod ``s`` (namespace x, n2) admits on port 80 only pods
labelled ``app: trusted`` of x, or any pod of a namespace labelled ``team: blue``. Client ``c``
(x, n1) and ``d`` (namespace y, n1) start out denied; relabelling ``c`` (or y) lets them in, and
relabelling back shuts them out again. Real TCP across the tunnel, so the new identity travels in
the VNI and is judged by n2's policy map; the programs' ids are the same at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ciliumlite.datapath.records import EndpointKey
from ciliumlite.lab import Lab
from ciliumlite.lab.cluster import LabCluster
from ciliumlite.lab.hosts import Pod

pytestmark = [pytest.mark.integration]

POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: trusted-only, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: trusted}}
    - namespaceSelector: {matchLabels: {team: blue}}
    ports: [{protocol: TCP, port: 80}]
"""


@dataclass
class Topo:
    cl: LabCluster
    c: Pod
    d: Pod
    s: Pod


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with Lab("pol-relabel") as lab:
        cl = lab.cluster(["n1", "n2"], routing="vxlan", bgp=False, enable_policy=True)
        c = cl.node("n1").add_pod("c", namespace="x", labels={"app": "client"})
        d = cl.node("n1").add_pod("d", namespace="y", labels={"app": "other"})
        s = cl.node("n2").add_pod("s", namespace="x", labels={"app": "server"})
        s.ensure_echo_server(80)
        cl.apply_policy(POLICY)
        yield Topo(cl, c, d, s)


def reach(src: Pod, dst: Pod) -> bool:
    return src.tcp_echo(dst, 80, timeout=1.5).ok


def prog_ids(topo: Topo) -> set[int]:
    return {lk.info.prog_id for n in topo.cl.nodes() if n.datapath is not None for lk in n.datapath.attachments()}


def lxc_identity(pod: Pod) -> int:
    dp = pod.node.datapath
    assert dp is not None
    return dp.bpf_endpoints()[EndpointKey(ip4=pod.endpoint.ip)].sec_id


def test_relabelling_a_pod_lets_it_in_and_out_again(topo: Topo) -> None:
    c, s = topo.c, topo.s
    progs = prog_ids(topo)
    first = c.endpoint.identity
    assert not reach(c, s)
    topo.cl.relabel_pod(c, {"app": "trusted"})
    assert c.endpoint.identity != first and lxc_identity(c) == c.endpoint.identity
    assert reach(c, s)
    topo.cl.relabel_pod(c, {"app": "client"})
    assert c.endpoint.identity == first  # the same labels, the same identity
    assert not reach(c, s)
    assert prog_ids(topo) == progs  # map writes only


def test_relabelling_a_namespace_relabels_its_pods(topo: Topo) -> None:
    d, s = topo.d, topo.s
    progs = prog_ids(topo)
    first = d.endpoint.identity
    assert not reach(d, s)
    topo.cl.set_namespace("y", {"team": "blue"})
    assert d.endpoint.identity != first and lxc_identity(d) == d.endpoint.identity
    assert reach(d, s)
    assert not reach(topo.c, s)  # x's own pods are unchanged
    topo.cl.set_namespace("y", {})
    assert d.endpoint.identity == first
    assert not reach(d, s)
    assert prog_ids(topo) == progs
