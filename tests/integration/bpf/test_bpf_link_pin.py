"""Pinned links keep a program attached past close() (and past its object) until unpinned."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from ciliumlite.bpf import BpfError, BpfObject, FdLink, NotSupportedError
from ciliumlite.bpf.inventory import link_ids
from ciliumlite.testing import VethPair

pytestmark = pytest.mark.integration

Loader = Callable[..., BpfObject]


def wait_link_gone(link_id: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while link_id in link_ids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_pinned_tcx_link_stays_attached_until_unpinned(veth_pair: VethPair, traffic: Any, load: Loader,
                                                       bpffs_dir: str):
    path = os.path.join(bpffs_dir, "tcx_drop")
    obj = load("test_tc.o", drop_port=traffic.DROP_PORT)
    link = obj.program("tc_drop_udp_port").attach_tc(veth_pair.dev_a, "ingress", netns=veth_pair.ns_a, mode="tcx")
    info = link.info
    try:
        link.pin(path)
        assert link.pin_path == path and os.path.exists(path)
        link.close()
        assert link.closed
        assert traffic.udp(traffic.DROP_PORT) == 0  # still attached: the pin holds it
        obj.close()  # the link holds the program too
        assert traffic.udp(traffic.DROP_PORT) == 0
        assert info.id in link_ids()

        adopted = FdLink.open_pinned(path)
        assert adopted.info == info
        assert adopted.info.type == "tcx" and adopted.point.kind == "tcx"
        assert adopted.pin_path == path
        assert f"prog id {info.prog_id}" in repr(adopted)
        adopted.close()  # closing an adopted handle of a pinned link detaches nothing either
        assert traffic.udp(traffic.DROP_PORT) == 0

        again = FdLink.open_pinned(path)
        again.unpin()
        assert not os.path.exists(path)
        assert traffic.udp(traffic.DROP_PORT) == 0  # our fd still holds it
        again.close()
    finally:
        if os.path.exists(path):
            os.unlink(path)
    assert wait_link_gone(info.id)
    assert traffic.udp(traffic.DROP_PORT) == traffic.N


def test_destroy_detaches_a_pinned_link_now(veth_pair: VethPair, traffic: Any, load: Loader, bpffs_dir: str):
    path = os.path.join(bpffs_dir, "tcx_destroy")
    obj = load("test_tc.o", drop_port=traffic.DROP_PORT)
    link = obj.program("tc_drop_udp_port").attach_tc(veth_pair.dev_a, "ingress", netns=veth_pair.ns_a, mode="tcx")
    link_id = link.info.id
    link.pin(path)
    other = FdLink.open_pinned(path)  # a second holder: destroy must detach regardless
    try:
        assert traffic.udp(traffic.DROP_PORT) == 0
        assert isinstance(link, FdLink)
        link.destroy()
        assert link.closed and not os.path.exists(path)
        assert traffic.udp(traffic.DROP_PORT) == traffic.N
    finally:
        other.close()
        if os.path.exists(path):
            os.unlink(path)
    assert wait_link_gone(link_id)


def test_clsact_attachments_cannot_be_pinned(veth_pair: VethPair, load: Loader, bpffs_dir: str):
    obj = load("test_tc.o")
    with obj.program("tc_drop_udp_port").attach_tc(veth_pair.dev_a, netns=veth_pair.ns_a, mode="clsact") as link:
        with pytest.raises(NotSupportedError, match="tcx") as info:
            link.pin(os.path.join(bpffs_dir, "nope"))
        assert info.value.feature == "bpf_link"
    assert os.listdir(bpffs_dir) == []


def test_open_pinned_link_missing(bpffs_dir: str):
    with pytest.raises(BpfError, match="open pinned link"):
        FdLink.open_pinned(os.path.join(bpffs_dir, "missing"))
