"""XDP links in native (driver) and generic (skb) mode drop real traffic until detached."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import pytest

from ciliumlite.bpf import U32, U64, BpfError, BpfObject, FdLink, Record, ValidationError
from ciliumlite.bpf.inventory import link_ids
from ciliumlite.testing import VethPair

pytestmark = pytest.mark.integration

Loader = Callable[..., BpfObject]
SHOWN_AS = {"native": " xdp ", "generic": " xdpgeneric "}


@dataclass(frozen=True, slots=True)
class Counter(Record, c_name="counter"):
    packets: Annotated[int, U64]
    bytes: Annotated[int, U64]


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_xdp_drops_udp_port_until_detached(veth_pair: VethPair, traffic: Any, load: Loader, ns_tools: Any,
                                           mode: str):
    ns, dev = veth_pair.ns_a, veth_pair.dev_a
    obj = load("test_xdp.o", xdp_drop_port=traffic.DROP_PORT)
    counters = obj.map("xdp_counters", key=U32, value=Counter)
    link = obj.program("xdp_drop_udp_port").attach_xdp(dev, netns=ns, mode=mode)
    try:
        assert isinstance(link, FdLink)
        assert link.info.type == "xdp" and link.info.id in link_ids()
        assert (link.point.kind, link.point.direction, link.point.device) == ("xdp", mode, dev)
        shown = ns_tools.run(ns, "ip", "link", "show", "dev", dev)
        assert SHOWN_AS[mode] in shown, shown
        assert traffic.udp(traffic.DROP_PORT) == 0
        assert traffic.udp(traffic.OTHER_PORT) == traffic.N
        assert counters[1].packets == traffic.N
        assert counters[0].packets >= traffic.N
    finally:
        link.close()
    shown = ns_tools.run(ns, "ip", "link", "show", "dev", dev)
    assert "xdp" not in shown, shown
    assert traffic.udp(traffic.DROP_PORT) == traffic.N
    assert counters[1].packets == traffic.N


def test_second_xdp_link_on_a_device_is_refused(veth_pair: VethPair, traffic: Any, load: Loader):
    ns, dev = veth_pair.ns_a, veth_pair.dev_a
    obj = load("test_xdp.o", xdp_drop_port=traffic.DROP_PORT)
    with obj.program("xdp_drop_udp_port").attach_xdp(dev, netns=ns):
        with pytest.raises(BpfError) as info:
            obj.program("xdp_pass").attach_xdp(dev, netns=ns)
        assert info.value.errno == errno.EBUSY
        assert "attach xdp" in str(info.value) and dev in str(info.value)
        assert traffic.udp(traffic.DROP_PORT) == 0
    assert traffic.udp(traffic.DROP_PORT) == traffic.N


def test_xdp_mode_is_validated(veth_pair: VethPair, load: Loader):
    prog = load("test_xdp.o").program("xdp_pass")
    with pytest.raises(ValidationError, match="native or generic"):
        prog.attach_xdp(veth_pair.dev_a, netns=veth_pair.ns_a, mode="offload")  # type: ignore[arg-type]
