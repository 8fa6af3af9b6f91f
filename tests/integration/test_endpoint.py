"""Endpoint lifecycle on a Datapath driven directly (no Lab): validation, adopt, removal, teardown."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute

from ciliumlite.bpf import inventory
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.bpf.link import FdLink
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.records import EndpointKey
from ciliumlite.lab import procs
from ciliumlite.lab.lab import Lab
from ciliumlite.node import Datapath
from ciliumlite.testing.resources import unique_name

pytestmark = pytest.mark.integration

POD_CIDR = "10.244.5.0/24"


# -- helpers -------------------------------------------------------------------------------------------
def links(ns: str) -> dict[str, int]:
    """ifname -> ifindex of every device in ``ns``."""
    with IPRoute(netns=ns) as ipr:
        return {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}


def addresses(ns: str) -> set[str]:
    with IPRoute(netns=ns) as ipr:
        return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}


def routes(ns: str) -> set[str]:
    with IPRoute(netns=ns) as ipr:
        return {f"{r.get_attr('RTA_DST') or 'default'}/{r['dst_len']}" for r in ipr.get_routes(family=2, table=254)}


def qdiscs(ns: str, ifname: str) -> set[str]:
    with IPRoute(netns=ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        return {q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=idx)}


def ping(ns: str, ip: str, count: int = 2) -> bool:
    res = procs.run(ns, ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", ip], timeout=15)
    return res.returncode == 0 and f"{count} received" in res.stdout


def state(dp: Datapath, node_ns: str) -> tuple[Any, ...]:
    """Everything a failed add_endpoint must leave as it was."""
    return ([ep.as_row() for ep in dp.endpoints()], dp.bpf_endpoints(), links(node_ns), routes(node_ns))


def make_veth(ns: str, host_if: str, peer_ns: str, peer_if: str = "eth0") -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": peer_if, "net_ns_fd": peer_ns})


@pytest.fixture
def pod_ns() -> Iterator[Callable[[], str]]:
    """A factory of pod namespaces, all removed afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(nsmod.create(unique_name("pod")))
        return made[-1]

    try:
        yield make
    finally:
        for ns in made:
            nsmod.remove(ns)


def _datapath(netns: str, **config: Any) -> Iterator[Datapath]:
    dp = Datapath(DatapathConfig(node_name=unique_name("epnode"), pod_cidr=POD_CIDR, **config), netns=netns)
    try:
        yield dp
    finally:
        dp.close(remove=True)


@pytest.fixture
def dp(netns: str) -> Iterator[Datapath]:
    yield from _datapath(netns)


# -- validation ----------------------------------------------------------------------------------------
BAD_ADDS: list[Any] = [
    pytest.param({"ip": "10.244.5.10"}, id="duplicate-ip"),
    pytest.param({"ip": "10.244.6.10"}, id="outside-pod-cidr"),
    pytest.param({"ip": "10.244.5.1"}, id="gateway"),
    pytest.param({"ip": "10.244.5.0"}, id="network-address"),
    pytest.param({"ip": "10.244.5.255"}, id="broadcast"),
    pytest.param({"ip": "10.244.5.300"}, id="malformed-octet"),
    pytest.param({"ip": "not-an-ip"}, id="malformed-text"),
    pytest.param({"ip": "fd00::5"}, id="ipv6"),
    pytest.param({"ip": "10.244.5.11", "identity": 0}, id="identity-0"),
    pytest.param({"ip": "10.244.5.11", "identity": 1 << 24}, id="identity-too-big"),
    pytest.param({"ip": "10.244.5.11", "adopt": True}, id="adopt-without-ifname"),
    pytest.param({"ip": "10.244.5.11", "pod_netns": "cl-no-such-pod-namespace"}, id="missing-pod-netns"),
    pytest.param({"ip": "10.244.5.11", "adopt": True, "ifname": "lxcnothere0"}, id="adopt-missing-device"),
]


@pytest.mark.parametrize("kw", BAD_ADDS)
def test_invalid_add_endpoint_changes_nothing(dp: Datapath, netns: str, pod_ns: Callable[[], str],
                                              kw: dict[str, Any]) -> None:
    first = dp.add_endpoint(pod_ns(), name="first", ip="10.244.5.10")
    before = state(dp, netns)
    target = kw.pop("pod_netns", None) or pod_ns()
    pod_before = (links(target), addresses(target)) if os.path.exists(f"/var/run/netns/{target}") else None
    with pytest.raises(ValidationError):
        dp.add_endpoint(target, name="second", **kw)
    assert state(dp, netns) == before
    if pod_before is not None:
        assert (links(target), addresses(target)) == pod_before
    # ... and the datapath still works for the next, valid endpoint.
    ok = dp.add_endpoint(pod_ns(), name="third", ip="10.244.5.12")
    assert [e.ip for e in dp.endpoints()] == [first.ip, ok.ip]
    assert ok.id == first.id + 1, "a failed add must not use up an endpoint id"


def test_adopt_of_missing_device_leaves_pod_side_untouched(dp: Datapath, netns: str,
                                                           pod_ns: Callable[[], str]) -> None:
    # The pod has an eth0 (a veth whose peer is elsewhere), but the named host-side device does not
    # exist: add_endpoint must fail with ValidationError *before* it configures the pod.
    pod, elsewhere = pod_ns(), pod_ns()
    make_veth(pod, "eth0", elsewhere, "stray0")
    before = state(dp, netns)
    pod_before = (links(pod), addresses(pod), routes(pod))
    with pytest.raises(ValidationError):
        dp.add_endpoint(pod, ip="10.244.5.21", ifname="lxcnothere0", adopt=True)
    assert state(dp, netns) == before
    assert (links(pod), addresses(pod), routes(pod)) == pod_before, "the failed adopt configured the pod"


def test_existing_device_name_is_not_taken_over(dp: Datapath, netns: str, pod_ns: Callable[[], str]) -> None:
    other = pod_ns()
    make_veth(netns, "lxcbusy0", other, "peer0")
    before = state(dp, netns)
    with pytest.raises(CiliumliteError):
        dp.add_endpoint(pod_ns(), ip="10.244.5.22", ifname="lxcbusy0")
    assert state(dp, netns) == before  # lxcbusy0 is still there: it was not ours to delete


def test_remove_unknown_endpoint(dp: Datapath, pod_ns: Callable[[], str]) -> None:
    ep = dp.add_endpoint(pod_ns(), ip="10.244.5.30")
    with pytest.raises(ValidationError):
        dp.remove_endpoint("10.244.5.31")
    with pytest.raises(ValidationError):
        dp.remove_endpoint("not-an-ip")
    dp.remove_endpoint(ep)
    with pytest.raises(ValidationError):
        dp.remove_endpoint(ep)  # twice
    assert dp.endpoints() == [] and dp.bpf_endpoints() == {}


# -- lifecycle -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tc_mode", ["clsact", "tcx"])
def test_endpoints_forward_and_remove_cleanly(netns: str, pod_ns: Callable[[], str], tc_mode: str) -> None:
    for dp in _datapath(netns, tc_mode=tc_mode):
        a_ns, b_ns = pod_ns(), pod_ns()
        a = dp.add_endpoint(a_ns, name="a", ip="10.244.5.2")
        b = dp.add_endpoint(b_ns, name="b", ip="10.244.5.3")
        for ep in (a, b):
            assert ep.link is not None and ep.link.point.kind == tc_mode
            assert dp.bpf_endpoints()[EndpointKey(ip4=ep.ip)] == ep.info
            assert ep.ifname in links(netns) and len(ep.ifname) <= 15
            assert "eth0" in links(ep.pod_netns)
        if tc_mode == "clsact":
            assert "clsact" in qdiscs(netns, a.ifname)
        else:
            assert isinstance(a.link, FdLink) and a.link.info.id in inventory.link_ids()
        # pod <-> pod (BPF redirect) and node -> pod (stack, then the pod's ARP/reply through BPF)
        assert ping(a_ns, str(b.ip)) and ping(b_ns, str(a.ip))
        assert ping(netns, str(a.ip))

        link_id = a.link.info.id if isinstance(a.link, FdLink) else None
        dp.remove_endpoint(a)
        assert a.ifname not in links(netns)
        assert "eth0" not in links(a_ns), "the veth peer must go with the host side"
        assert EndpointKey(ip4=a.ip) not in dp.bpf_endpoints()
        assert f"{a.ip}/32" not in routes(netns)
        assert link_id is None or link_id not in inventory.link_ids()
        assert [e.name for e in dp.endpoints()] == ["b"]
        assert ping(netns, str(b.ip)), "removing a must not disturb b"
        assert not ping(b_ns, str(a.ip), count=1)

        dp.remove_endpoint(b)
        assert not [n for n in links(netns) if n.startswith("lxc")]
        assert dp.bpf_endpoints() == {} and dp.maps is not None and len(dp.maps.endpoints) == 0
        pin_dir = dp.config.pin_dir
        assert os.path.isdir(pin_dir)
    assert not os.path.exists(pin_dir), "close() must remove the pin directory"


@pytest.mark.parametrize("tc_mode", ["clsact", "tcx"])
def test_adopt_existing_veth(netns: str, pod_ns: Callable[[], str], tc_mode: str) -> None:
    for dp in _datapath(netns, tc_mode=tc_mode):
        pod = pod_ns()
        make_veth(netns, "lxcadopt0", pod)
        ifindex = links(netns)["lxcadopt0"]
        ep = dp.add_endpoint(pod, name="adopted", ifname="lxcadopt0", adopt=True, ip="10.244.5.20")
        assert (ep.adopted, ep.ifname, ep.ifindex) == (True, "lxcadopt0", ifindex)
        assert dp.bpf_endpoints() == {EndpointKey(ip4="10.244.5.20"): ep.info}
        assert "10.244.5.20" in addresses(pod)
        assert ping(netns, "10.244.5.20")
        other = dp.add_endpoint(pod_ns(), name="other", ip="10.244.5.21")
        assert ping(other.pod_netns, "10.244.5.20")
        link_id = ep.link.info.id if isinstance(ep.link, FdLink) else None

        dp.remove_endpoint(ep)
        assert links(netns).get("lxcadopt0") == ifindex, "an adopted veth stays"
        assert "eth0" in links(pod)
        assert EndpointKey(ip4="10.244.5.20") not in dp.bpf_endpoints()
        assert "10.244.5.20/32" not in routes(netns)
        assert ep.link is None
        if tc_mode == "clsact":
            assert "clsact" not in qdiscs(netns, "lxcadopt0"), "the qdisc ciliumlite created must go"
        else:
            assert link_id not in inventory.link_ids()
        assert not ping(netns, "10.244.5.20", count=1)
        dp.remove_endpoint(other)
        assert links(netns).keys() - {"lo"} == {"lxcadopt0"}


def test_close_with_endpoints_leaves_nothing(netns: str, pod_ns: Callable[[], str]) -> None:
    dp = Datapath(DatapathConfig(node_name=unique_name("epnode"), pod_cidr=POD_CIDR), netns=netns)
    pods = [pod_ns() for _ in range(3)]
    eps = [dp.add_endpoint(p) for p in pods]
    assert [str(e.ip) for e in eps] == ["10.244.5.2", "10.244.5.3", "10.244.5.4"]
    assert len(dp.bpf_endpoints()) == 3
    pin_dir = dp.config.pin_dir
    dp.close(remove=True)
    assert not [n for n in links(netns) if n.startswith("lxc")]
    assert all("eth0" not in links(p) for p in pods)
    assert not {f"{e.ip}/32" for e in eps} & routes(netns)
    assert dp.endpoints() == [] and dp.bpf_endpoints() == {}
    assert not os.path.exists(pin_dir)
    dp.close(remove=True)  # idempotent


@pytest.mark.parametrize("host_routing", ["bpf", "legacy"])
def test_lab_close_leaves_nothing(host_routing: str) -> None:
    with Lab("eplife", host_routing=host_routing) as lab:  # type: ignore[arg-type]
        node = lab.add_node("worker3")
        a, b = node.add_pod("client"), node.add_pod("testappds")
        assert a.ping(b.ip, count=1).ok
        assert a.tcp_echo(b.ip, 80).ok  # starts a server process the lab must stop
        dp = node.datapath
        assert dp is not None
        pin_dir = dp.config.pin_dir
        assert os.path.isdir(pin_dir) == (host_routing == "bpf")
        node.remove_pod("client")
        assert a.netns not in nsmod.list_all()
        assert a.endpoint.ifname not in links(node.netns)
        assert EndpointKey(ip4=a.ip) not in dp.bpf_endpoints()
        prefix = lab.prefix
    assert not [n for n in nsmod.list_all() if n.startswith(prefix)]
    assert not os.path.exists(pin_dir)
    # the autouse leak check covers namespaces, pins, programs, links, cgroups and child processes
