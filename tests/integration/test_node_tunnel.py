"""Tunnel and the routing strategies on the real kernel: a Tunnel alone in a namespace, and
remote nodes added to and removed from a live VXLAN node while its pods keep talking."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from ciliumlite import CiliumliteError, DatapathConfig, Tunnel
from ciliumlite.bpf import inventory
from ciliumlite.bpf.link import FdLink
from ciliumlite.cluster import NodeInfo
from ciliumlite.lab import Lab, LabCluster
from ciliumlite.node import StaticRoutes, TunnelRouting

pytestmark = pytest.mark.integration

GHOST = NodeInfo("ghost", "10.0.0.99", "10.244.50.0/24")


def ip(netns: str, *args: str) -> str:
    res = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, timeout=10, check=True)
    return res.stdout


def test_tunnel_alone_in_a_namespace(netns: str, bpffs_dir: str) -> None:
    cfg = DatapathConfig(node_name="tun", pod_cidr="10.244.1.0/24", routing="vxlan", node_ip="10.0.0.11")
    ip(netns, "addr", "add", f"{cfg.gateway}/32", "dev", "lo")  # what Datapath does: the encap routes' source
    with Tunnel(netns, device="cilium_vxlan", mtu=cfg.pod_mtu, gateway=cfg.gateway) as tun:
        assert "vxlan" in ip(netns, "-d", "link", "show", "cilium_vxlan") and "external" in \
            ip(netns, "-d", "link", "show", "cilium_vxlan")
        tun.load(cfg.node_rodata(tunnel_ifindex=tun.ifindex), bpffs_dir)
        [link] = tun.links
        assert link.program == "cil_from_overlay" and "ingress" in str(link.point)

        tun.add(GHOST)
        assert tun.entries() == {"10.244.50.0": "10.0.0.99"}
        route = ip(netns, "route", "show", "10.244.50.0/24")
        assert "encap ip id 6" in route and "dst 10.0.0.99" in route and "src 10.244.1.1" in route, route
        assert "10.244.50.1" in ip(netns, "neigh", "show", "dev", "cilium_vxlan")
        assert "ghost" in repr(tun) and "10.0.0.99" in tun._repr_html_()

        # A route the kernel refuses (its source address is gone): the map entry is taken back.
        ip(netns, "addr", "del", f"{cfg.gateway}/32", "dev", "lo")
        with pytest.raises(CiliumliteError, match="Invalid prefsrc"):
            tun.add(NodeInfo("other", "10.0.0.98", "10.244.51.0/24"))
        assert tun.entries() == {"10.244.50.0": "10.0.0.99"}, "a rejected node leaves the map as it was"

        tun.remove(GHOST)
        assert tun.entries() == {}
        assert ip(netns, "route", "show", "10.244.50.0/24") == ""
        link_id = link.info.id if isinstance(link, FdLink) else None
    assert "cilium_vxlan" not in ip(netns, "link", "show")
    assert link_id is None or link_id not in inventory.link_ids()


@pytest.fixture(scope="module")
def vxlan() -> Iterator[LabCluster]:
    with Lab("tunnel") as lab:
        cl = lab.cluster(nodes=["a", "b"], routing="vxlan")
        cl.node("a").add_pod("pa")
        cl.node("b").add_pod("pb")
        yield cl


def test_tunnel_add_and_remove_on_a_live_node(vxlan: LabCluster) -> None:
    a, b = vxlan.node("a"), vxlan.node("b")
    dp = a.datapath
    assert dp is not None and dp.tunnel is not None and isinstance(dp.routing, TunnelRouting)
    before = dp.tunnel.entries()
    assert before == {"10.244.1.0": b.ip}
    pa, pb = a.pods["pa"], b.pods["pb"]
    assert pa.ping(pb.ip).received == 3

    dp.add_remote_node(GHOST)
    assert dp.tunnel.entries() == {**before, "10.244.50.0": "10.0.0.99"}
    assert dp.maps is not None and int(IPv4Address("10.0.0.99")) in dict(dp.maps.nodes.items())
    assert "ghost" in dp.remote_nodes and dp.status()["routes"] == "tunnel"
    assert pa.ping(pb.ip).received == 3, "another node's entry must not disturb existing traffic"

    dp.remove_remote_node(GHOST)
    assert dp.tunnel.entries() == before
    assert int(IPv4Address("10.0.0.99")) not in dict(dp.maps.nodes.items())
    assert "10.244.50.0" not in a.run("ip", "route", "show").stdout
    assert pa.ping(pb.ip).received == 3


def test_static_routes_follow_remote_nodes() -> None:
    with Lab("static") as lab:
        cl = lab.cluster(nodes=["a", "b"], routing="native", bgp=False)
        a, b = cl.node("a"), cl.node("b")
        assert a.datapath is not None and isinstance(a.datapath.routing, StaticRoutes) and a.bird is None
        assert a.datapath.tunnel is None
        assert f"10.244.1.0/24 via {b.ip}" in a.run("ip", "route", "show").stdout
        pa, pb = a.add_pod("pa"), b.add_pod("pb")
        assert pa.ping(pb.ip).received == 3
        cl.remove_node("b")
        assert "10.244.1.0/24" not in a.run("ip", "route", "show").stdout
