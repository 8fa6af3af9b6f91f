"""Identity transport on a live VXLAN cluster with policy on (issue 17): the VNI is the sender's
security identity, so nobody may forge it.

* A VXLAN packet whose VNI claims the host identity (1) is a forgery (a node presents its own
  traffic as REMOTE_NODE, 6): the receiving node's ``cil_from_overlay`` drops it as ``Invalid
  identity`` (171). The same packet with the sending pod's real identity is delivered, so the drop
  is the VNI's and nothing else's.
* A pod sending UDP to the VXLAN port (8472) of another node could inject frames with any VNI it
  likes: ``cil_from_container`` drops it as ``Encapsulation traffic is prohibited`` (170), as
  Cilium does.

Real frames: the forged VXLAN datagram is sent from node n1's namespace with a plain UDP socket to
n2's VXLAN port (what a compromised node, or anything with n1's address, could send).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ciliumlite.datapath.config import VXLAN_PORT
from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Lab
from ciliumlite.lab.cluster import LabCluster
from ciliumlite.lab.hosts import Pod
from ciliumlite.policy.identity import ReservedIdentity
from ciliumlite.testing.packets import (
    ETH_P_IP,
    IPPROTO_UDP,
    collect_bg,
    eth,
    ipv4,
    pod_python,
    pod_python_bg,
    udp,
)

pytestmark = [pytest.mark.integration]

PORT = 7171


@dataclass
class Topo:
    cl: LabCluster
    a: Pod  # on n1
    b: Pod  # on n2


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with Lab("pol-vni") as lab:
        cl = lab.cluster(["n1", "n2"], routing="vxlan", bgp=False, enable_policy=True)
        a = cl.node("n1").add_pod("a", labels={"app": "client"})
        b = cl.node("n2").add_pod("b", labels={"app": "server"})
        assert a.ping(b, count=1).ok
        yield Topo(cl, a, b)


def count(pod: Pod, reason: Reason) -> int:
    dp = pod.node.datapath
    assert dp is not None
    return dp.count(reason)


def vxlan_datagram(vni: int, src: Pod, dst: Pod, text: str) -> bytes:
    """A VXLAN payload (RFC 7348: flags with I set, the 24-bit VNI) carrying UDP src -> dst."""
    inner = eth("02:00:00:00:00:02", "02:00:00:00:00:01", ETH_P_IP) + ipv4(
        src.ip, dst.ip, udp(src.ip, dst.ip, 40000, PORT, text.encode()), proto=IPPROTO_UDP)
    return struct.pack("!II", 0x08 << 24, vni << 8) + inner


def send_udp(sender: object, dst: str, payloads: list[bytes]) -> None:
    """Send ``payloads`` to ``dst``'s VXLAN port from ``sender`` (a node or a pod)."""
    expr = f"packets.send_udp({dst!r}, {VXLAN_PORT}, [bytes.fromhex(h) for h in {[p.hex() for p in payloads]!r}])"
    assert pod_python(sender, expr) == len(payloads)


def node_ip(topo: Topo, name: str) -> str:
    ip = topo.cl.node(name).ip
    assert ip is not None
    return ip


def test_a_forged_host_vni_is_dropped_and_the_real_identity_delivered(topo: Topo) -> None:
    a, b = topo.a, topo.b
    identity = a.endpoint.identity
    assert identity > int(ReservedIdentity.REMOTE_NODE)
    listener = pod_python_bg(b, f"packets.udp_listen({PORT}, 4.0, until='honest')")
    before = count(b, Reason.DROP_INVALID_IDENTITY)
    forged = [vxlan_datagram(int(ReservedIdentity.HOST), a, b, "forged")] * 3
    send_udp(topo.cl.node("n1"), node_ip(topo, "n2"), [*forged, vxlan_datagram(identity, a, b, "honest")])
    got = collect_bg(b, listener)
    assert [g["data"] for g in got] == ["honest"], got
    assert count(b, Reason.DROP_INVALID_IDENTITY) - before == len(forged)


def test_a_pod_sending_to_the_vxlan_port_is_dropped(topo: Topo) -> None:
    a, b = topo.a, topo.b
    before = count(a, Reason.DROP_ENCAP_PROHIBITED)
    invalid_before = count(b, Reason.DROP_INVALID_IDENTITY)
    # What a pod would send to inject a frame as the host: n2's VXLAN port, VNI 1.
    send_udp(a, node_ip(topo, "n2"), [vxlan_datagram(int(ReservedIdentity.HOST), a, b, "from-pod")] * 3)
    assert count(a, Reason.DROP_ENCAP_PROHIBITED) - before == 3
    assert count(b, Reason.DROP_INVALID_IDENTITY) == invalid_before, "nothing of it reached n2"
    assert a.ping(b, count=1).ok  # the pod's other traffic is untouched
