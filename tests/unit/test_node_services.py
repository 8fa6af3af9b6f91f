"""lb_rows: which LB map rows a Service becomes on a node (pure: no kernel, no root)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from ciliumlite import Backend, Frontend, Service, ValidationError
from ciliumlite.datapath.lb import LbCapacity, LbMapFullError, LbUsage, check_fits
from ciliumlite.datapath.records import (
    BE_STATE_ACTIVE,
    BE_STATE_TERMINATING,
    SCOPE_EXTERNAL,
    SCOPE_INTERNAL,
    SVC_FLAG2_INT_LOCAL_SCOPE,
    SVC_FLAG2_MAGLEV,
    SVC_FLAG2_TWO_SCOPES,
    SVC_FLAG_AFFINITY,
    SVC_FLAG_EXT_LOCAL_SCOPE,
    SVC_FLAG_EXTERNAL_IP,
    SVC_FLAG_LOADBALANCER,
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


# -- external IPs, LoadBalancer IPs, internalTrafficPolicy, terminating backends, LB map capacity ------
EXT, LBIP = IPv4Address("198.51.100.7"), IPv4Address("203.0.113.80")
DYING = Backend("10.244.1.6", 8080, terminating=True)


def test_external_and_load_balancer_ips_are_frontends_at_the_service_port() -> None:
    svc = Service("lb", Frontend("10.96.0.30", 80), [LOCAL, REMOTE], type="LoadBalancer", node_port=30080,
                  external_ips=[str(EXT)], load_balancer_ips=[str(LBIP)])
    by_addr = {r.address: r for r in lb_rows(svc, NODE_IP, PODS)}
    assert set(by_addr) == {IPv4Address("10.96.0.30"), IPv4Address(NODE_IP), ANY, EXT, LBIP}
    assert (by_addr[EXT].port, by_addr[EXT].flags) == (80, SVC_FLAG_EXTERNAL_IP | SVC_FLAG_ROUTABLE)
    assert (by_addr[LBIP].port, by_addr[LBIP].flags) == (80, SVC_FLAG_LOADBALANCER | SVC_FLAG_ROUTABLE)
    assert by_addr[IPv4Address(NODE_IP)].flags == SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE
    assert all(r.backends == be(LOCAL, REMOTE) for r in by_addr.values())


def test_load_balancer_without_node_port_has_no_node_port_rows() -> None:
    svc = Service("lb", Frontend("10.96.0.30", 80), [LOCAL], type="LoadBalancer", load_balancer_ips=[str(LBIP)])
    assert [r.address for r in lb_rows(svc, NODE_IP, PODS)] == [IPv4Address("10.96.0.30"), LBIP]


def test_external_ip_with_local_policy_has_two_scopes() -> None:
    svc = Service("ext", Frontend("10.96.0.31", 80), [LOCAL, REMOTE], external_ips=[str(EXT)],
                  external_traffic_policy="Local")
    ext, internal = [r for r in lb_rows(svc, NODE_IP, PODS) if r.address == EXT]
    assert (ext.scope, ext.backends) == (SCOPE_EXTERNAL, be(LOCAL))
    assert (internal.scope, internal.backends) == (SCOPE_INTERNAL, be(LOCAL, REMOTE))
    assert ext.flags & SVC_FLAG_EXT_LOCAL_SCOPE and ext.flags2 & SVC_FLAG2_TWO_SCOPES


def test_internal_traffic_policy_local_narrows_what_traffic_from_inside_reads() -> None:
    svc = Service("itp", Frontend("10.96.0.32", 80), [LOCAL, REMOTE], type="NodePort", node_port=30080,
                  internal_traffic_policy="Local")
    rows = lb_rows(svc, NODE_IP, PODS)
    assert rows[0].backends == be(LOCAL) and rows[0].flags2 == SVC_FLAG2_INT_LOCAL_SCOPE
    node_rows = [r for r in rows if r.address == IPv4Address(NODE_IP)]
    assert [(r.scope, r.backends) for r in node_rows] == [(SCOPE_EXTERNAL, be(LOCAL, REMOTE)),
                                                           (SCOPE_INTERNAL, be(LOCAL))]
    # Both Local: one row per frontend again (the scopes would hold the same backends)
    both = Service("itp", Frontend("10.96.0.32", 80), [LOCAL, REMOTE], type="NodePort", node_port=30080,
                   internal_traffic_policy="Local", external_traffic_policy="Local")
    assert all(r.scope == SCOPE_EXTERNAL and r.backends == be(LOCAL) for r in lb_rows(both, NODE_IP, PODS))


def test_no_local_backend_with_internal_policy_local_is_an_empty_row() -> None:
    svc = Service("itp", Frontend("10.96.0.32", 80), [REMOTE], internal_traffic_policy="Local")
    [row] = lb_rows(svc, NODE_IP, PODS)
    assert row.backends == ()  # count 0: refused like a service without backends (Cilium drops it too)


def test_terminating_backends_sit_after_the_selectable_slots() -> None:
    [row] = lb_rows(Service("t", Frontend("10.96.0.33", 80), [DYING, LOCAL]), NODE_IP, PODS)
    assert row.backends == be(LOCAL) and row.draining == be(DYING) and row.slots == be(LOCAL, DYING)
    assert row.state(be(DYING)[0]) == BE_STATE_TERMINATING and row.state(be(LOCAL)[0]) == BE_STATE_ACTIVE


def test_only_terminating_backends_are_selectable() -> None:
    [row] = lb_rows(Service("t", Frontend("10.96.0.33", 80), [DYING]), NODE_IP, PODS)
    assert row.backends == be(DYING) and row.draining == () and row.state(be(DYING)[0]) == BE_STATE_TERMINATING


def test_external_ip_taken_by_another_service_is_a_conflict() -> None:
    web = Service("web", Frontend("10.96.0.10", 80), [LOCAL], external_ips=[str(EXT)])
    with pytest.raises(ValidationError, match=r"frontend 198\.51\.100\.7:80/TCP is already used by web"):
        check_conflicts(Service("other", Frontend(str(EXT), 80), [LOCAL]), {"web": web})
    hc = Service("lb", Frontend("10.96.0.11", 80), [LOCAL], type="LoadBalancer", external_traffic_policy="Local",
                 health_check_node_port=30090)
    with pytest.raises(ValidationError, match=r"node port 30090/TCP is already taken by lb"):
        check_conflicts(Service("np", Frontend("10.96.0.12", 80), [LOCAL], type="NodePort", node_port=30090),
                        {"lb": hc})
    check_conflicts(Service("np", Frontend("10.96.0.12", 80, "UDP"), [LOCAL], type="NodePort", node_port=30090),
                    {"lb": hc})  # health checks are TCP: a UDP node port may share the number


def test_check_fits_counts_every_map_before_writing() -> None:
    svc = Service("big", Frontend("10.96.0.40", 80), [Backend(f"10.244.1.{i}", 80) for i in range(2, 12)],
                  type="NodePort", node_port=30040)
    rows = lb_rows(svc, NODE_IP, PODS)  # 3 rows x (1 + 10 slots) = 33 entries, 10 backends, 3 frontends
    check_fits("big", rows, LbUsage.empty(), LbCapacity(33, 10, 3, 0), 1021)
    for cap, map_name in ((LbCapacity(32, 10, 3, 0), "cilium_lb4_services_v2"),
                          (LbCapacity(33, 9, 3, 0), "cilium_lb4_backends_v3"),
                          (LbCapacity(33, 10, 2, 0), "cilium_lb4_reverse_nat")):
        with pytest.raises(LbMapFullError) as info:
            check_fits("big", rows, LbUsage.empty(), cap, 1021)
        assert info.value.map_name == map_name and isinstance(info.value, ValidationError)
    maglev = Service("big", svc.frontend, svc.backends, type="NodePort", node_port=30040, maglev=True)
    with pytest.raises(LbMapFullError, match=r"cilium_lb4_maglev would need 2042 entries, it has 2041"):
        check_fits("big", lb_rows(maglev, NODE_IP, PODS), LbUsage.empty(), LbCapacity(99, 99, 99, 2041), 1021)


def test_check_fits_counts_a_replaced_row_once() -> None:
    old = lb_rows(Service("s", Frontend("10.96.0.41", 80), [LOCAL]), NODE_IP, PODS)
    usage = LbUsage(2, {(IPv4Address(LOCAL.ip), LOCAL.port, 6)}, {old[0].frontend}, (), {"s": old})
    new = lb_rows(Service("s", Frontend("10.96.0.41", 80), [LOCAL, REMOTE]), NODE_IP, PODS)
    check_fits("s", new, usage, LbCapacity(3, 2, 1, 0), 1021)  # the row grows in place by one slot
    with pytest.raises(LbMapFullError):
        check_fits("s", new, usage, LbCapacity(2, 2, 1, 0), 1021)
