"""Path MTU discovery through a NodePort, with real traffic (issue 13: ICMP errors of translated flows).

The lab's leaf router (the fabric namespace) sits between the outside client (203.0.113.10) and the
nodes. The test lowers the MTU of the leaf's link to the client to 1200 while the client keeps 1500,
so the client advertises MSS 1460 and every full-sized reply segment is too big for the leaf. The
leaf answers each with ICMP fragmentation needed (mtu 1200) addressed to the reply's source: the
NodePort address, which is not where the connection lives. ``tail_icmp_err_from_netdev`` finds the
connection through the CT service entry and hands the error, quoting backend -> client, to the
backend pod: delivered on the node (local backend) or tunnelled to the backend's node with the
quoted destination restored to the SNAT address (remote backend, NodePort SNAT). The backend's TCP
lowers its MSS and the transfer completes. Without the translation the node's stack drops the error
(no socket has that tuple) and the transfer stalls until the client's timeout.

A 2-node VXLAN cluster (SNAT NodePort). Only lab namespaces and documentation addresses; every
process is the lab's and goes with it; the leaf's MTU is put back after the test.
"""

from __future__ import annotations

import json
import select
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from ciliumlite.lab import Host, Lab, LabCluster, Node, Pod
from ciliumlite.service import Backend, Frontend, Service

pytestmark = pytest.mark.integration

BULK = 9300
LEAF_TO_WORLD_MTU = 1200
SIZE = 400_000

# Per connection: read a byte count line, send that many bytes with DF (IP_PMTUDISC_DO), close.
BULK_SERVER = r"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(16)
print("ready", flush=True)
def serve(conn):
    with conn:
        conn.setsockopt(socket.IPPROTO_IP, 10, 2)   # IP_MTU_DISCOVER = IP_PMTUDISC_DO: DF always
        n = int(conn.makefile("rb").readline())
        conn.sendall(b"x" * n)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""

# Ask for N bytes and read them; {"got": bytes, "seconds": s} or {"got": ..., "error": ...}. argv: ip port n
BULK_CLIENT = r"""
import json, socket, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic()
got = 0
try:
    s = socket.create_connection((ip, port), timeout=5)
    s.settimeout(8)
    s.sendall(b"%d\n" % n)
    while got < n:
        b = s.recv(65536)
        if not b:
            break
        got += len(b)
    print(json.dumps({"got": got, "seconds": time.monotonic() - t0}))
except OSError as e:
    print(json.dumps({"got": got, "error": str(e)}))
"""


def py(*args: str, script: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", script, *args]


@dataclass
class PmtuLab:
    lab: Lab
    cl: LabCluster
    w1: Node
    be1: Pod           # backend on w1 (the node the client addresses)
    be2: Pod           # backend on w2 (NodePort SNAT over the tunnel)
    outside: Host


def _start(pod: Pod, script: str, *args: str) -> None:
    proc = pod.popen(*py(*args, script=script))
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    line = proc.stdout.readline() if ready and proc.stdout else ""
    assert line.strip() == "ready", f"{pod.name}: {line!r}"


def _leaf_world_mtu(lab: Lab, mtu: int) -> None:
    """MTU of the leaf's link towards the outside host (the fabric namespace's ``world`` veth)."""
    with IPRoute(netns=lab.fabric_or_create().netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="world")[0], mtu=mtu)


@pytest.fixture(scope="module")
def pmtu() -> Iterator[PmtuLab]:
    with Lab("icmp-pmtu") as lab:
        cl = lab.cluster(["w1", "w2"], routing="vxlan")
        w1, w2 = cl.node("w1"), cl.node("w2")
        be1, be2 = w1.add_pod("be1"), w2.add_pod("be2")
        for pod in (be1, be2):
            _start(pod, BULK_SERVER, str(BULK))
        # The first upsert loads socket LB and opens the LB maps on every node: now, so that the
        # per-test leak check does not count the lab's own objects against the first test.
        cl.upsert_service(Service("warm-up", Frontend("10.96.91.99", 80), [Backend(be1.ip, BULK)]))
        cl.delete_service("warm-up")
        outside = lab.outside()
        _leaf_world_mtu(lab, LEAF_TO_WORLD_MTU)
        try:
            yield PmtuLab(lab, cl, w1, be1, be2, outside)
        finally:
            _leaf_world_mtu(lab, 1500)


def transfer(src: Host, ip: str, port: int, n: int = SIZE) -> dict[str, object]:
    res = src.run(*py(ip, str(port), str(n), script=BULK_CLIENT), timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("where", ["local-backend", "remote-backend-snat"])
def test_tcp_transfer_through_a_nodeport_completes_past_a_smaller_mtu(pmtu: PmtuLab, where: str) -> None:
    backend = pmtu.be1 if where == "local-backend" else pmtu.be2
    node_port = 30910 if where == "local-backend" else 30911
    name = f"bulk-{where}"
    pmtu.cl.upsert_service(Service(name, Frontend("10.96.91.1" if where == "local-backend" else "10.96.91.2", 80),
                                   [Backend(backend.ip, BULK)], type="NodePort", node_port=node_port))
    try:
        got = transfer(pmtu.outside, pmtu.w1.ip, node_port)
        assert got.get("got") == SIZE, f"transfer through {where} stalled: {got}"
    finally:
        pmtu.cl.delete_service(name)
