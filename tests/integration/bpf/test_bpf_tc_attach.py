"""tc attach in both modes (tcx links and clsact + cls_bpf) changes real traffic on a veth pair."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import pytest

from ciliumlite.bpf import U32, U64, BpfError, BpfObject, ClsactLink, FdLink, Record, ValidationError
from ciliumlite.bpf.inventory import link_ids
from ciliumlite.testing import VethPair

pytestmark = pytest.mark.integration

Loader = Callable[..., BpfObject]


@dataclass(frozen=True, slots=True)
class Counter(Record, c_name="counter"):
    packets: Annotated[int, U64]
    bytes: Annotated[int, U64]


@pytest.mark.parametrize("direction", ["ingress", "egress"])
@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_drop_udp_port_on_real_traffic(veth_pair: VethPair, traffic: Any, load: Loader, ns_tools: Any,
                                       mode: str, direction: str):
    # ingress: on veth-a as packets arrive in ns_a; egress: on veth-b as they leave ns_b
    ns, dev = (veth_pair.ns_a, veth_pair.dev_a) if direction == "ingress" else (veth_pair.ns_b, veth_pair.dev_b)
    obj = load("test_tc.o", drop_port=traffic.DROP_PORT)
    counters = obj.map("tc_counters", key=U32, value=Counter)
    link = obj.program("tc_drop_udp_port").attach_tc(dev, direction, netns=ns, mode=mode)
    try:
        assert (link.point.kind, link.point.device, link.point.direction, link.point.netns) == (
            mode, dev, direction, ns)
        if mode == "tcx":
            assert isinstance(link, FdLink)
            assert link.info.type == "tcx" and link.info.id in link_ids()
            assert "clsact" not in ns_tools.qdiscs(ns, dev)
        else:
            assert isinstance(link, ClsactLink)
            assert "clsact" in ns_tools.qdiscs(ns, dev)
            shown = ns_tools.filters(ns, dev, direction)
            assert "tc_drop_udp_port" in shown and "direct-action" in shown
        assert traffic.udp(traffic.DROP_PORT) == 0
        assert traffic.udp(traffic.OTHER_PORT) == traffic.N
        assert counters[1].packets == traffic.N  # every dropped datagram went through the program
        assert counters[3].packets >= traffic.N
    finally:
        link.close()
    assert link.closed
    link.close()  # idempotent
    assert traffic.udp(traffic.DROP_PORT) == traffic.N
    assert counters[1].packets == traffic.N  # nothing runs the program any more
    assert "clsact" not in ns_tools.qdiscs(ns, dev)
    assert ns_tools.filters(ns, dev, direction) == ""


def test_auto_mode_uses_tcx(veth_pair: VethPair, traffic: Any, load: Loader):
    obj = load("test_tc.o", drop_port=traffic.DROP_PORT)
    with obj.program("tc_drop_udp_port").attach_tc(veth_pair.dev_a, netns=veth_pair.ns_a) as link:
        assert isinstance(link, FdLink) and link.point.kind == "tcx"
        assert traffic.udp(traffic.DROP_PORT) == 0
        link.detach()  # the same as close()
        assert link.closed
        assert traffic.udp(traffic.DROP_PORT) == traffic.N


def test_clsact_keeps_a_qdisc_it_did_not_create(veth_pair: VethPair, traffic: Any, load: Loader, ns_tools: Any):
    ns, dev = veth_pair.ns_a, veth_pair.dev_a
    ns_tools.run(ns, "tc", "qdisc", "add", "dev", dev, "clsact")
    obj = load("test_tc.o", drop_port=traffic.DROP_PORT)
    with obj.program("tc_drop_udp_port").attach_tc(dev, "ingress", netns=ns, mode="clsact"):
        assert "tc_drop_udp_port" in ns_tools.filters(ns, dev, "ingress")
        assert traffic.udp(traffic.DROP_PORT) == 0
    assert ns_tools.filters(ns, dev, "ingress") == ""  # our filter is gone ...
    assert "clsact" in ns_tools.qdiscs(ns, dev)  # ... the qdisc we found stays
    assert traffic.udp(traffic.DROP_PORT) == traffic.N
    # attaching again still works on the foreign qdisc, and still leaves it in place
    with obj.program("tc_drop_udp_port").attach_tc(dev, "ingress", netns=ns, mode="clsact"):
        assert traffic.udp(traffic.DROP_PORT) == 0
    assert "clsact" in ns_tools.qdiscs(ns, dev)


def test_clsact_removes_its_qdisc_with_its_last_filter(veth_pair: VethPair, traffic: Any, load: Loader,
                                                        ns_tools: Any):
    ns, dev = veth_pair.ns_a, veth_pair.dev_a
    obj = load("test_tc.o", drop_port=traffic.DROP_PORT)
    prog = obj.program("tc_drop_udp_port")
    ingress = prog.attach_tc(dev, "ingress", netns=ns, mode="clsact")
    egress = prog.attach_tc(dev, "egress", netns=ns, mode="clsact")
    try:
        assert traffic.udp(traffic.DROP_PORT) == 0
        ingress.close()
        assert "clsact" in ns_tools.qdiscs(ns, dev)  # the egress filter still needs it
        assert ns_tools.filters(ns, dev, "ingress") == ""
        assert "tc_drop_udp_port" in ns_tools.filters(ns, dev, "egress")
        assert traffic.udp(traffic.DROP_PORT) == traffic.N
    finally:
        ingress.close()
        egress.close()
    assert "clsact" not in ns_tools.qdiscs(ns, dev)


def test_clsact_second_filter_on_a_used_priority(veth_pair: VethPair, traffic: Any, load: Loader,
                                                  ns_tools: Any):
    ns, dev = veth_pair.ns_a, veth_pair.dev_a
    obj = load("test_tc.o", drop_port=traffic.DROP_PORT)
    prog = obj.program("tc_drop_udp_port")
    with prog.attach_tc(dev, "ingress", netns=ns, mode="clsact", priority=1):
        with pytest.raises(BpfError) as info:
            prog.attach_tc(dev, "ingress", netns=ns, mode="clsact", priority=1)
        assert info.value.errno == errno.EEXIST and "priority" in info.value.hint
        assert traffic.udp(traffic.DROP_PORT) == 0  # the first filter is untouched
        with prog.attach_tc(dev, "ingress", netns=ns, mode="clsact", priority=2) as second:
            assert second.point.kind == "clsact"
            assert ns_tools.filters(ns, dev, "ingress").count("tc_drop_udp_port") == 2
        assert "clsact" in ns_tools.qdiscs(ns, dev)
        assert traffic.udp(traffic.DROP_PORT) == 0
    assert "clsact" not in ns_tools.qdiscs(ns, dev)
    assert traffic.udp(traffic.DROP_PORT) == traffic.N


def test_tcx_and_clsact_together(veth_pair: VethPair, traffic: Any, load: Loader, ns_tools: Any):
    ns, dev = veth_pair.ns_a, veth_pair.dev_a
    obj = load("test_tc.o", drop_port=traffic.DROP_PORT)
    prog = obj.program("tc_drop_udp_port")
    tcx = prog.attach_tc(dev, "ingress", netns=ns, mode="tcx")
    cls = prog.attach_tc(dev, "ingress", netns=ns, mode="clsact")
    try:
        tcx.close()
        assert traffic.udp(traffic.DROP_PORT) == 0  # clsact still drops
    finally:
        tcx.close()
        cls.close()
    assert traffic.udp(traffic.DROP_PORT) == traffic.N
    assert "clsact" not in ns_tools.qdiscs(ns, dev)


def test_attach_argument_errors(veth_pair: VethPair, load: Loader):
    prog = load("test_tc.o").program("tc_drop_udp_port")
    with pytest.raises(ValidationError, match="no network device 'nope0'"):
        prog.attach_tc("nope0", netns=veth_pair.ns_a)
    with pytest.raises(ValidationError, match="direction"):
        prog.attach_tc(veth_pair.dev_a, "sideways", netns=veth_pair.ns_a)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="mode"):
        prog.attach_tc(veth_pair.dev_a, netns=veth_pair.ns_a, mode="bpfilter")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="does not exist"):
        prog.attach_tc(veth_pair.dev_a, netns="cl-no-such-netns")
    # veth-b lives in ns_b, not ns_a
    with pytest.raises(ValidationError, match="veth-b"):
        prog.attach_tc(veth_pair.dev_b, netns=veth_pair.ns_a, mode="tcx")


def test_closing_a_clsact_link_after_its_namespace_went_does_not_bring_it_back(load: Loader) -> None:
    # pyroute2's IPRoute(netns=name) creates a missing namespace; closing must not resurrect one.
    from ciliumlite.bpf import netns as nsmod
    from ciliumlite.testing.resources import unique_name

    pair = VethPair.create()
    try:
        obj = load("test_tc.o", drop_port=5000)
        link = obj.program("tc_drop_udp_port").attach_tc(pair.dev_a, "ingress", netns=pair.ns_a, mode="clsact")
    finally:
        pair.remove()  # both namespaces go, and the filter with them
    link.close()
    assert pair.ns_a not in nsmod.list_all(), "closing the link re-created the namespace"
    with pytest.raises(FileNotFoundError):
        nsmod.iproute(unique_name("gone"))
    assert not [n for n in nsmod.list_all() if "gone" in n]
