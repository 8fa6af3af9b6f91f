"""Conntrack and NAT garbage collection on a live datapath: expired entries go, live ones stay."""

from __future__ import annotations

import pytest

from ciliumlite import Backend, Frontend, Service
from ciliumlite.datapath import gc
from ciliumlite.lab import Lab

pytestmark = pytest.mark.integration


def test_gc_keeps_live_entries_and_removes_expired_ones() -> None:
    with Lab("gc") as lab:
        cl = lab.cluster(["a", "b"], routing="native", bgp=False, socket_lb=False, bpf_masquerade=True)
        client = cl.node("a").add_pod("client")
        backend = cl.node("b").add_pod("backend")
        backend.ensure_echo_server(80)
        cl.upsert_service(Service(name="web", frontend=Frontend("10.96.0.10", 80), backends=[Backend(backend.ip, 80)]))
        assert client.tcp_echo("10.96.0.10", 80).ok            # per-packet LB: a CT service entry
        world = lab.outside()
        world.ensure_echo_server(9000)
        assert client.tcp_echo(world.ip, 9000).seen_client.startswith("10.0.0.11:")   # masquerade: NAT entries
        dp = cl.node("a").datapath
        assert dp is not None
        entries = len(dp.conntrack())
        assert entries > 0
        live = dp.gc_conntrack()
        assert live.ct_deleted == 0 and live.ct_kept == entries and live.nat_kept > 0
        later = dp.gc_conntrack(at=gc.now() + gc.MAX_CT_LIFETIME + 1)
        assert later.ct_deleted == entries and later.ct_kept == 0
        assert later.nat_deleted == live.nat_kept and later.nat_kept == 0
        assert dp.conntrack() == {}
