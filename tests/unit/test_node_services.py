"""lb_rows: which LB map rows a Service becomes on a node (pure: no kernel, no root)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from ciliumlite import Backend, Frontend, Service, ValidationError
from ciliumlite.datapath.records import (
    SCOPE_EXTERNAL,
    SCOPE_INTERNAL,
    SVC_FLAG2_MAGLEV,
    SVC_FLAG2_TWO_SCOPES,
    SVC_FLAG_AFFINITY,
    SVC_FLAG_EXT_LOCAL_SCOPE,
    SVC_FLAG_NODEPORT,
    SVC_FLAG_ROUTABLE,
)
from ciliumlite.node import lb_rows
from ciliumlite.node.services import check_conflicts

pytestmark = pytest.mark.unit

NODE_IP = "10.0.0.11"
PODS = "10.244.1.0/24"
LOCAL, REMOTE = Backend("10.244.1.5", 8080), Backend("10.244.2.7", 8080)
ANY = IPv4Address("0.0.0.0")


def be(*backends: Backend) -> tuple[tuple[IPv4Address, int], ...]:
    return tuple((IPv4Address(b.ip), b.port) for b in backends)


def test_cluster_ip_is_one_row_with_every_backend() -> None:
    svc = Service("web", Frontend("10.96.0.10", 80), [LOCAL, REMOTE])
    [row] = lb_rows(svc, NODE_IP, PODS)
    assert (row.address, row.port, row.proto, row.scope) == (IPv4Address("10.96.0.10"), 80, 6, SCOPE_EXTERNAL)
    assert row.backends == be(LOCAL, REMOTE)
    assert (row.flags, row.flags2, row.affinity_timeout, row.maglev) == (0, 0, 0, False)


def test_udp_cluster_ip_carries_its_protocol() -> None:
    [row] = lb_rows(Service("dns", Frontend("10.96.0.53", 53, "UDP"), [LOCAL]), NODE_IP, PODS)
    assert row.proto == 17


def test_node_port_adds_the_node_address_and_the_wildcard() -> None:
    svc = Service("np", Frontend("10.96.0.20", 80), [LOCAL, REMOTE], type="NodePort", node_port=30080)
    cluster_ip, *node_rows = lb_rows(svc, NODE_IP, PODS)
    assert cluster_ip.address == IPv4Address("10.96.0.20") and cluster_ip.flags == 0
    assert sorted(r.address for r in node_rows) == [ANY, IPv4Address(NODE_IP)]
    for row in node_rows:
        assert (row.port, row.scope, row.backends) == (30080, SCOPE_EXTERNAL, be(LOCAL, REMOTE))
        assert row.flags == SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE and row.flags2 == 0


def test_node_port_on_a_node_without_address_has_one_wildcard_row() -> None:
    svc = Service("np", Frontend("10.96.0.20", 80), [LOCAL], type="NodePort", node_port=30080)
    rows = lb_rows(svc, "0.0.0.0", PODS)
    assert [r.address for r in rows] == [IPv4Address("10.96.0.20"), ANY]


def test_local_traffic_policy_gives_two_scopes_per_node_port_frontend() -> None:
    svc = Service("loc", Frontend("10.96.0.30", 80), [LOCAL, REMOTE], type="NodePort", node_port=30030,
                  external_traffic_policy="Local")
    rows = lb_rows(svc, NODE_IP, PODS)[1:]
    assert len(rows) == 4
    for addr in (ANY, IPv4Address(NODE_IP)):
        ext = next(r for r in rows if r.address == addr and r.scope == SCOPE_EXTERNAL)
        internal = next(r for r in rows if r.address == addr and r.scope == SCOPE_INTERNAL)
        assert ext.backends == be(LOCAL), "from outside: only this node's backends"
        assert internal.backends == be(LOCAL, REMOTE), "from inside the cluster: every backend"
        for r in (ext, internal):
            assert r.flags == SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE | SVC_FLAG_EXT_LOCAL_SCOPE
            assert r.flags2 == SVC_FLAG2_TWO_SCOPES


def test_local_policy_on_a_node_without_local_backends_has_an_empty_external_scope() -> None:
    svc = Service("loc", Frontend("10.96.0.30", 80), [REMOTE], type="NodePort", node_port=30030,
                  external_traffic_policy="Local")
    ext = [r for r in lb_rows(svc, NODE_IP, PODS)[1:] if r.scope == SCOPE_EXTERNAL]
    assert ext and all(r.backends == () for r in ext)


def test_maglev_flags_only_the_node_port_rows() -> None:
    svc = Service("mg", Frontend("10.96.0.40", 80), [LOCAL, REMOTE], type="NodePort", node_port=30040, maglev=True)
    cluster_ip, *node_rows = lb_rows(svc, NODE_IP, PODS)
    assert not cluster_ip.maglev and cluster_ip.flags2 == 0
    assert all(r.maglev and r.flags2 == SVC_FLAG2_MAGLEV for r in node_rows)


def test_maglev_with_local_policy_keeps_both_flags() -> None:
    svc = Service("mg", Frontend("10.96.0.40", 80), [LOCAL], type="NodePort", node_port=30040, maglev=True,
                  external_traffic_policy="Local")
    assert all(r.flags2 == SVC_FLAG2_MAGLEV | SVC_FLAG2_TWO_SCOPES for r in lb_rows(svc, NODE_IP, PODS)[1:])


def test_affinity_sets_the_flag_and_timeout_on_every_row() -> None:
    svc = Service("aff", Frontend("10.96.0.50", 80), [LOCAL], type="NodePort", node_port=30050,
                  session_affinity=True, affinity_timeout=60)
    rows = lb_rows(svc, NODE_IP, PODS)
    assert len(rows) == 3
    assert all(r.flags & SVC_FLAG_AFFINITY and r.affinity_timeout == 60 for r in rows)


def test_no_affinity_means_no_timeout() -> None:
    [row] = lb_rows(Service("web", Frontend("10.96.0.10", 80), [LOCAL], affinity_timeout=60), NODE_IP, PODS)
    assert row.affinity_timeout == 0 and not row.flags & SVC_FLAG_AFFINITY


def test_rows_are_a_function_of_their_inputs() -> None:
    svc = Service("np", Frontend("10.96.0.20", 80), [REMOTE, LOCAL], type="NodePort", node_port=30080)
    assert lb_rows(svc, NODE_IP, PODS) == lb_rows(svc, NODE_IP, PODS)
    assert lb_rows(svc, NODE_IP, PODS)[0].backends == be(REMOTE, LOCAL), "backend order is kept (slot order)"


def test_conflicts() -> None:
    web = Service("web", Frontend("10.96.0.10", 80), [LOCAL], type="NodePort", node_port=30080)
    check_conflicts(web, {"web": web})  # itself: an update
    with pytest.raises(ValidationError, match="already used by web"):
        check_conflicts(Service("other", Frontend("10.96.0.10", 80), [LOCAL]), {"web": web})
    with pytest.raises(ValidationError, match="node port 30080/TCP is already taken by web"):
        check_conflicts(Service("np2", Frontend("10.96.0.11", 80), [LOCAL], type="NodePort", node_port=30080),
                        {"web": web})
    check_conflicts(Service("udp", Frontend("10.96.0.11", 80, "UDP"), [LOCAL], type="NodePort", node_port=30080),
                    {"web": web})
    with pytest.raises(ValidationError, match="expected a Service"):
        check_conflicts("web", {})  # type: ignore[arg-type]
