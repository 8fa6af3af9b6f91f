"""Programs from raw instructions (``ciliumlite.bpf.raw``): loaded, attached as XDP on a veth with
real traffic, and refused clearly."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from ciliumlite.bpf import BpfError, ProgInfo, ProgType, ValidationError, XdpAction
from ciliumlite.bpf.inventory import link_ids
from ciliumlite.bpf.program import XdpMode
from ciliumlite.bpf.raw import RawProgram
from ciliumlite.testing import VethPair

pytestmark = pytest.mark.integration


def test_a_program_returning_a_constant_is_what_the_kernel_runs() -> None:
    with RawProgram.returning(ProgType.XDP, XdpAction.PASS, "cl_raw_pass") as prog:
        info = ProgInfo.from_fd(prog.fd)
        assert (info.name, info.type, info.xlated_len) == ("cl_raw_pass", ProgType.XDP, 16)
    with pytest.raises(BpfError, match="cl_raw_pass") as exc:
        _ = prog.fd
    assert exc.value.errno == errno.EBADF
    prog.close()  # twice is fine


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_xdp_drop_then_pass_on_real_traffic(veth_pair: VethPair, traffic: Any, mode: XdpMode) -> None:
    ns, dev = veth_pair.ns_a, veth_pair.dev_a
    with RawProgram.returning(ProgType.XDP, XdpAction.DROP, "cl_raw_drop") as drop:
        link = drop.attach_xdp(dev, netns=ns, mode=mode)
    try:  # the link keeps the program after its fd closed
        link_id = link.info.id
        assert link.info.type == "xdp" and (link.point.device, link.point.direction) == (dev, mode)
        assert traffic.udp(traffic.OTHER_PORT) == 0
    finally:
        link.close()
    assert link_id not in link_ids()
    assert traffic.udp(traffic.OTHER_PORT) == traffic.N
    with RawProgram.returning(ProgType.XDP, XdpAction.PASS, "cl_raw_pass") as ok, \
            ok.attach_xdp(dev, netns=ns, mode=mode):
        assert traffic.udp(traffic.OTHER_PORT) == traffic.N
        with pytest.raises(BpfError) as exc:
            ok.attach_xdp(dev, netns=ns, mode=mode)
        assert exc.value.errno == errno.EBUSY and dev in str(exc.value)


def test_bad_programs_are_refused_naming_them(veth_pair: VethPair) -> None:
    with pytest.raises(ValidationError, match="no whole number"):
        RawProgram(ProgType.XDP, b"\x95" * 7, "cl_raw_bad")
    with pytest.raises(ValidationError, match="longer than 15"):
        RawProgram.returning(ProgType.XDP, XdpAction.PASS, "x" * 16)
    with pytest.raises(BpfError, match="cl_raw_noexit") as exc:  # the verifier: no exit, r0 unset
        RawProgram(ProgType.XDP, bytes.fromhex("b701000000000000"), "cl_raw_noexit")
    assert exc.value.errno in (errno.EINVAL, errno.EACCES)
    with RawProgram.returning(ProgType.XDP, XdpAction.PASS, "cl_raw_pass") as prog:
        with pytest.raises(ValidationError, match="native or generic"):
            prog.attach_xdp(veth_pair.dev_a, netns=veth_pair.ns_a, mode="offload")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="no-such-dev"):
            prog.attach_xdp("no-such-dev", netns=veth_pair.ns_a)
