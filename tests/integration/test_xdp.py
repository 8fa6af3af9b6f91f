"""XDP on the node's native device with real traffic in a lab (``bpf_xdp``, ``Datapath.prefilter``).

* NodePort acceleration in SNAT and DSR mode, each in driver mode (the lab's fabric port of the
  node runs a pass-everything XDP program, which gives the veth peer NAPI) and in generic mode
  (``xdp_peer=False``: ``best-effort`` falls back, said in ``status``): outside client -> node a's
  NodePort -> backend on node b. Every connection completes (small and 100 kB ones, bytes
  compared), XDP forwards its packets (``XDP_FORWARDED`` at node a) and tc forwards none of them
  (``FIB_REDIRECT`` unchanged at a).
* The prefilter under traffic: pings from the world pass, stop (counted ``DROP_PREFILTER`` at
  XDP, nothing reaching tc) while its CIDR is denied, pass again once it is removed; the list
  survives a reload and is in the state a restore reads.
* Bad input changes nothing: a bad CIDR, a full prefilter, ``acceleration="native"`` where
  driver-mode XDP_TX cannot work (a fabric port without an XDP program).
* What the lab attaches for XDP goes with the node and with the lab.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from ciliumlite.bpf import inventory
from ciliumlite.bpf.errors import MapFullError, NotSupportedError, ValidationError
from ciliumlite.datapath.config import LbMode
from ciliumlite.datapath.maps import PREFILTER_DYN
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.lab import Host, Lab, LabCluster, Pod
from ciliumlite.node import prefilter as pf
from ciliumlite.node import state as state_mod
from ciliumlite.service import Backend, Frontend, Service

pytestmark = pytest.mark.integration

NODE_PORT = 31080
WORLD_NET = "203.0.113.0/24"


class XdpLab:
    def __init__(self, lab: Lab, cluster: LabCluster, backend: Pod, world: Host) -> None:
        self.lab, self.cluster, self.backend, self.world = lab, cluster, backend, world
        self.entry, self.far = cluster.node("a"), cluster.node("b")
        assert self.entry.ip is not None and self.far.ip is not None
        self.entry_ip, self.far_ip = self.entry.ip, self.far.ip


def _build(mode: LbMode, xdp: str = "native") -> Iterator[XdpLab]:
    """A two-node lab whose node a accelerates NodePort in ``xdp`` mode: "native" (the fabric port
    has its XDP program) or "generic" (it has none, so best-effort falls back)."""
    with Lab(f"xdp-{mode}-{xdp}") as lab:
        cluster = lab.cluster(["a", "b"], routing="native", bgp=False, load_balancer_mode=mode,
                              acceleration="native" if xdp == "native" else "best-effort",
                              xdp_peer=xdp == "native")
        backend = cluster.node("b").add_pod("be")
        backend.ensure_echo_server(80)
        cluster.upsert_service(Service(name="np", frontend=Frontend("10.96.0.30", 80), type="NodePort",
                                       node_port=NODE_PORT, backends=[Backend(backend.ip, 80)]))
        world = lab.outside()
        xl = XdpLab(lab, cluster, backend, world)
        # Neighbours known (XDP cannot resolve one: its first packet would go through tc).
        assert world.ping(xl.entry_ip, count=1).received == 1
        xl.entry.run("ping", "-c1", "-W1", xl.far_ip)
        yield xl


@pytest.fixture(scope="module")
def snat() -> Iterator[XdpLab]:
    yield from _build("snat")


@pytest.fixture(scope="module", params=[("snat", "generic"), ("dsr", "native"), ("dsr", "generic")],
                ids=lambda p: "-".join(p))
def other(request: pytest.FixtureRequest) -> Iterator[XdpLab]:
    yield from _build(*request.param)


def _nodeport_connections(xl: XdpLab, n: int = 5, payload: str = "hello") -> tuple[list[str], int, int]:
    dp = xl.entry.datapath
    assert dp is not None
    xdp0, tc0 = dp.count(Reason.XDP_FORWARDED), dp.count(Reason.FIB_REDIRECT, Direction.INGRESS)
    seen = []
    for _ in range(n):
        res = xl.world.tcp_echo(xl.entry_ip, NODE_PORT, payload=payload, timeout=5.0)
        assert res.ok and res.reply == payload, (res.ok, res.error, len(res.reply))
        seen.append(res.seen_client)
    return seen, dp.count(Reason.XDP_FORWARDED) - xdp0, dp.count(Reason.FIB_REDIRECT, Direction.INGRESS) - tc0


def test_snat_nodeport_forwarded_by_native_xdp(snat: XdpLab) -> None:
    _forwarded_by_xdp(snat, "snat", "native")


def test_nodeport_forwarded_by_xdp(other: XdpLab, request: pytest.FixtureRequest) -> None:
    mode, xdp = request.node.callspec.params["other"]
    _forwarded_by_xdp(other, mode, xdp)


def _forwarded_by_xdp(xl: XdpLab, mode: str, xdp: str) -> None:
    dp = xl.entry.datapath
    assert dp is not None
    st = dp.status()["xdp"]
    assert st["attached"] and st["nodeport"] and st["mode"] == xdp, st
    fabric = xl.lab.fabric
    assert fabric is not None
    if xdp == "native":
        assert st["note"] == "" and sorted(fabric.xdp_ports) == ["n0", "n1"]
    else:
        assert "no XDP program" in st["note"] and fabric.xdp_ports == {}
    seen, by_xdp, by_tc = _nodeport_connections(xl)
    want = xl.entry_ip if mode == "snat" else xl.world.ip
    assert all(s.startswith(want + ":") for s in seen), seen
    # Each connection: SYN, ACK, data, FIN, ACK at least, all at XDP; SNAT replies too.
    assert by_xdp >= 5 * (8 if mode == "snat" else 4), by_xdp
    assert by_tc == 0, "tc forwarded NodePort packets that XDP should have"
    # Full-sized segments both ways (100 kB echoed): every one forwarded at XDP, none lost.
    _, by_xdp, by_tc = _nodeport_connections(xl, n=2, payload="x" * 100_000)
    assert by_xdp >= 2 * 100_000 // 1448 and by_tc == 0, (by_xdp, by_tc)


def test_prefilter_under_traffic(snat: XdpLab) -> None:
    dp = snat.entry.datapath
    assert dp is not None
    stream: dict[str, object] = {}
    bg = threading.Thread(target=lambda: stream.update(r=snat.world.ping(snat.entry_ip, count=80, interval=0.05,
                                                                          timeout=0.5)))
    bg.start()
    try:
        base = snat.world.ping(snat.entry_ip, count=3, interval=0.05)
        assert base.received == 3
        drops0 = dp.count(Reason.DROP_PREFILTER)
        tc0 = sum(m.packets for m in dp.metrics() if m.reason == Reason.TO_STACK)
        dp.prefilter.add(WORLD_NET)
        assert dp.prefilter.list() == [IPv4Network(WORLD_NET)] and WORLD_NET in dp.prefilter
        blocked = snat.world.ping(snat.entry_ip, count=5, interval=0.05, timeout=0.5)
        assert blocked.received == 0
        assert dp.count(Reason.DROP_PREFILTER) - drops0 >= 5
        dp.prefilter.remove(WORLD_NET)
        again = snat.world.ping(snat.entry_ip, count=3, interval=0.05)
        assert again.received == 3 and dp.prefilter.list() == []
        assert sum(m.packets for m in dp.metrics() if m.reason == Reason.TO_STACK) >= tc0
    finally:
        bg.join(timeout=30)
    # The stream running all along saw both: answers, and a gap while the CIDR was denied.
    r = stream["r"]
    assert 0 < r.received < r.transmitted, r  # type: ignore[attr-defined]


@pytest.mark.replaces_objects  # the module's lab owns what it swaps
def test_prefilter_survives_a_reload_and_is_in_the_state(snat: XdpLab) -> None:
    dp = snat.entry.datapath
    assert dp is not None
    dp.prefilter.add("198.51.100.0/24", "192.0.2.7/32")
    try:
        dp.reload()
        assert dp.prefilter.list() == [IPv4Network("192.0.2.7/32"), IPv4Network("198.51.100.0/24")]
        st = state_mod.read(dp.config)
        assert sorted(i["cidr"] for i in st["prefilter"]) == ["192.0.2.7/32", "198.51.100.0/24"]
        assert st["xdp"]["link"]["point"]["kind"] == "xdp"
        dp.prefilter.add(WORLD_NET)
        assert snat.world.ping(snat.entry_ip, count=2, interval=0.05, timeout=0.5).received == 0
        dp.prefilter.remove(WORLD_NET)
    finally:
        dp.prefilter.remove("198.51.100.0/24", "192.0.2.7/32")
    assert snat.world.ping(snat.entry_ip, count=2, interval=0.05).received == 2


@pytest.mark.parametrize("bad", ["198.51.100.7/24", "not-a-cidr", "2001:db8::/32", "10.0.0.0/33", 42])
def test_bad_cidr_is_refused_naming_it_and_nothing_changes(snat: XdpLab, bad: object) -> None:
    dp = snat.entry.datapath
    assert dp is not None
    with pytest.raises(ValidationError, match=re.escape(repr(bad))):
        dp.prefilter.add("192.0.2.0/24", bad)  # type: ignore[arg-type]
    assert dp.prefilter.list() == []
    with pytest.raises(ValidationError, match=re.escape("no 192.0.2.0/24")):
        dp.prefilter.remove("192.0.2.0/24")


def test_full_prefilter_is_refused_before_any_write(snat: XdpLab) -> None:
    dp = snat.entry.datapath
    assert dp is not None
    too_many = [f"10.{i // 256}.{i % 256}.0/24" for i in range(pf.DYN_MAX + 1)]
    with pytest.raises(MapFullError, match="at most"):
        dp.prefilter.add(*too_many)
    assert dp.prefilter.list() == []
    assert len(list(dp.maps.get(PREFILTER_DYN).keys()) if dp.maps and dp.maps.has(PREFILTER_DYN) else []) == 0


def test_native_acceleration_is_refused_where_xdp_tx_cannot_work() -> None:
    with Lab("xdp-native") as lab:
        with pytest.raises(NotSupportedError, match="runs no XDP program"):
            lab.add_node("a", routing="native", acceleration="native", xdp_peer=False)
        assert "a" not in lab.nodes
        assert lab.fabric is not None and lab.fabric.xdp_ports == {}
        # best-effort on the same port: generic XDP, and why.
        node = lab.add_node("b", routing="native", acceleration="best-effort", xdp_peer=False)
        assert node.datapath is not None
        st = node.datapath.status()["xdp"]
        assert st["mode"] == "generic" and "runs no XDP program" in st["note"], st


def test_what_the_lab_attaches_goes_with_the_node_and_the_lab() -> None:
    with Lab("xdp-clean") as lab:
        a = lab.add_node("a", routing="native", acceleration="native")
        lab.add_node("b", routing="native", acceleration="native")
        assert a.datapath is not None and a.datapath.status()["xdp"]["mode"] == "native"
        fabric = lab.fabric
        assert fabric is not None
        links = {port: link.info for port, link in fabric.xdp_ports.items()}
        assert sorted(links) == ["n0", "n1"] and len({i.prog_id for i in links.values()}) == 1
        lab.remove_node("a")
        assert sorted(fabric.xdp_ports) == ["n1"]
        assert links["n0"].id not in inventory.link_ids()
    deadline = time.monotonic() + 5  # programs are freed after an RCU grace period
    while links["n1"].prog_id in inventory.prog_ids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert links["n1"].id not in inventory.link_ids() and links["n1"].prog_id not in inventory.prog_ids()
