"""Network policy through the in-process control plane (issue 17): policies applied to a lab
cluster reach every node's maps, and real TCP between pods obeys them, over VXLAN and native
routing, same node and across nodes. No program is reloaded by a policy change.

Pods: ``a`` and ``b`` (namespace x) on n1, ``c`` (namespace y) on n2; echo servers on 80 and 81.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ciliumlite.bpf import inventory
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Lab
from ciliumlite.lab.cluster import LabCluster
from ciliumlite.lab.hosts import Pod
from ciliumlite.policy import ReservedIdentity

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DENY_X_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""

ALLOW_Y_TO_A_80 = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-to-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    ports:
    - {protocol: TCP, port: 80}
"""

DENY_B_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-no-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
"""


@dataclass
class Topo:
    lab: Lab
    cl: LabCluster
    a: Pod
    b: Pod
    c: Pod


@pytest.fixture(scope="module", params=["vxlan", "native"])
def topo(request: pytest.FixtureRequest) -> Iterator[Topo]:
    with Lab(f"pol-{request.param[:3]}") as lab:
        cl = lab.cluster(["n1", "n2"], routing=request.param, bgp=False, enable_policy=True)
        cl.set_namespace("x", {"ns": "x"})
        cl.set_namespace("y", {"ns": "y"})
        a = cl.node("n1").add_pod("a", namespace="x", labels={"pod": "a"})
        b = cl.node("n1").add_pod("b", namespace="x", labels={"pod": "b"})
        c = cl.node("n2").add_pod("c", namespace="y", labels={"pod": "c"})
        for pod in (a, b, c):
            for port in (80, 81):
                pod.ensure_echo_server(port)
        yield Topo(lab, cl, a, b, c)


def reach(src: Pod, dst: Pod, port: int = 80) -> bool:
    return src.tcp_echo(dst, port, timeout=1.5).ok


def table(t: Topo, port: int = 80) -> dict[str, bool]:
    pods = {"a": t.a, "b": t.b, "c": t.c}
    return {f"{s}>{d}": reach(pods[s], pods[d], port) for s in pods for d in pods if s != d}


def prog_ids(t: Topo) -> set[int]:
    return {lk.info.prog_id for n in t.cl.nodes() for lk in (n.datapath.attachments() if n.datapath else [])}


@pytest.fixture(autouse=True)
def no_policies(topo: Topo) -> Iterator[None]:
    yield
    for pol in topo.cl.policies():
        topo.cl.delete_policy(pol)


def test_identities_are_allocated_by_the_cluster_and_in_every_ipcache(topo: Topo) -> None:
    ids = {p.name: p.endpoint.identity for p in (topo.a, topo.b, topo.c)}
    assert len(set(ids.values())) == 3 and min(ids.values()) >= 256, ids
    n1, n2 = topo.cl.node("n1").datapath, topo.cl.node("n2").datapath
    assert n1 is not None and n2 is not None
    assert n1.policy.lookup(topo.c.ip) == ids["c"]  # c lives on n2: learned from the store
    assert n2.policy.lookup(topo.a.ip) == ids["a"] and n2.policy.lookup(topo.b.ip) == ids["b"]
    assert n1.policy.lookup(topo.cl.node("n1").ip or "") == ReservedIdentity.HOST
    entry = next(e for e in n1.policy.list() if str(e.prefix) == f"{topo.c.ip}/32")
    assert str(entry.tunnel_endpoint) == topo.cl.node("n2").ip
    assert n1.policy.lookup("203.0.113.9") == ReservedIdentity.WORLD


def test_no_policy_allows_everything(topo: Topo) -> None:
    assert all(table(topo).values()), table(topo)


def test_default_deny_then_allow_then_revoke(topo: Topo) -> None:
    n1 = topo.cl.node("n1").datapath
    assert n1 is not None
    before_ids = prog_ids(topo)
    drops0 = n1.count(Reason.DROP_POLICY)
    topo.cl.apply_policy(DENY_X_INGRESS)
    got = table(topo)
    assert got == {"a>b": False, "a>c": True, "b>a": False, "b>c": True, "c>a": False, "c>b": False}, got
    assert n1.count(Reason.DROP_POLICY) > drops0
    topo.cl.apply_policy(ALLOW_Y_TO_A_80)
    assert reach(topo.c, topo.a, 80) and not reach(topo.c, topo.a, 81)
    assert not reach(topo.b, topo.a, 80) and not reach(topo.c, topo.b, 80)
    topo.cl.delete_policy("NetworkPolicy/x/y-to-a")
    assert not reach(topo.c, topo.a, 80)
    topo.cl.delete_policy("NetworkPolicy/x/deny-ingress")
    assert all(table(topo).values())
    assert prog_ids(topo) == before_ids  # map updates only: no program was replaced


def test_egress_default_deny_keeps_replies(topo: Topo) -> None:
    topo.cl.apply_policy(DENY_B_EGRESS)
    assert not reach(topo.b, topo.a) and not reach(topo.b, topo.c)
    # b's replies to connections it accepted are not egress of a new connection: they pass.
    assert reach(topo.a, topo.b) and reach(topo.c, topo.b)


def test_revoked_allow_cuts_an_established_flow(topo: Topo) -> None:
    topo.cl.apply_policy(DENY_X_INGRESS)
    topo.cl.apply_policy(ALLOW_Y_TO_A_80.replace("port: 80", "port: 82"))
    # a: echoes every message of one connection on port 82 (the lab's echo server wants a half-close).
    server = topo.a.popen("python3", "-c", (
        "import socket\n"
        "l=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('0.0.0.0',82))\n"
        "l.listen(1); print('ready', flush=True); c,_=l.accept()\n"
        "while (d := c.recv(16)): c.sendall(d)\n"))
    # c: connects, one echo, then waits 2 s (the allow goes meanwhile) and sends again.
    client = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = topo.c.popen("python3", "-c", (
            "import socket,time\n"
            f"s=socket.create_connection(('{topo.a.ip}',82),timeout=2)\n"
            "s.sendall(b'x'); s.recv(16); print('up', flush=True)\n"
            "time.sleep(2)\n"
            "try:\n s.sendall(b'y'); s.settimeout(2); print('after', s.recv(16) or b'closed', flush=True)\n"
            "except Exception as e: print('after', type(e).__name__, flush=True)\n"))
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "up"
        topo.cl.delete_policy("NetworkPolicy/x/y-to-a")
        after = client.stdout.readline().strip()
        assert after == "after TimeoutError", after  # its next packet is dropped at a's ingress
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.kill()
                proc.communicate(timeout=10)  # reaps it and closes its pipes


def test_a_bad_policy_applies_nothing(topo: Topo) -> None:
    bad = DENY_X_INGRESS + "---\n" + ALLOW_Y_TO_A_80.replace("port: 80", "port: 99999")
    with pytest.raises(ValidationError, match="port"):
        topo.cl.apply_policy(bad)
    assert topo.cl.policies() == []
    assert all(table(topo).values())
    with pytest.raises(ValidationError, match="no policy"):
        topo.cl.delete_policy("NetworkPolicy/x/none")


def test_removed_pod_leaves_every_ipcache(topo: Topo) -> None:
    n1 = topo.cl.node("n1").datapath
    assert n1 is not None
    d = topo.cl.node("n2").add_pod("d", namespace="y", labels={"pod": "d"})
    ip = d.ip
    assert n1.policy.lookup(ip) == d.endpoint.identity
    topo.cl.node("n2").remove_pod("d")
    assert n1.policy.lookup(ip) == ReservedIdentity.WORLD
    assert inventory.prog_ids()  # the kernel still answers (sanity for the leak check)


def test_lab_apply_takes_policy_manifests(topo: Topo) -> None:
    res = topo.lab.apply(DENY_X_INGRESS)
    assert res.lines() == ["networkpolicy.networking.k8s.io/deny-ingress created"]
    assert not reach(topo.c, topo.a) and reach(topo.a, topo.c)
    topo.cl.delete_policy("NetworkPolicy/x/deny-ingress")
    assert reach(topo.c, topo.a)
