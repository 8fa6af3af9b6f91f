"""The service model (``ciliumlite.service``): bad input is refused up front with a ValidationError that
names the problem; good input is normalised (addresses as text, backends as a tuple). No root."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.service import MAX_BACKENDS, NODEPORT_RANGE, Backend, Frontend, Service

pytestmark = pytest.mark.unit

FE = Frontend("10.96.0.10", 80)
BE = Backend("10.244.0.5", 8080)


def refused(match: str, fn: Any, *args: Any, **kw: Any) -> ValidationError:
    """``fn(*args, **kw)`` must raise ValidationError whose text matches ``match`` (case-insensitive)."""
    with pytest.raises(ValidationError) as info:
        fn(*args, **kw)
    assert re.search(match, str(info.value), re.IGNORECASE), f"{info.value!s} does not name {match!r}"
    return info.value


# -- Frontend / Backend ------------------------------------------------------------------------------------
@pytest.mark.parametrize("addr", ["10.96.0", "10.96.0.256", "fd00::1", "", "ten.nine.six.one", None, 3.5,
                                  "10.96.0.1/32", " 10.96.0.1"])
def test_frontend_rejects_invalid_address(addr: Any) -> None:
    refused(r"not an IPv4 address", Frontend, addr, 80)


@pytest.mark.parametrize("addr", ["0.0.0.0", "224.0.0.1", "239.255.255.250", "255.255.255.255"])
def test_frontend_rejects_unusable_address(addr: str) -> None:
    refused(rf"{re.escape(addr)} cannot be used", Frontend, addr, 80)


@pytest.mark.parametrize("addr", ["10.244.0", "300.1.1.1", "::1", "", None])
def test_backend_rejects_invalid_address(addr: Any) -> None:
    refused(r"backend.*not an IPv4 address", Backend, addr, 80)


@pytest.mark.parametrize("port", [0, 65536, -1, True, False, 80.0, "80", None])
def test_frontend_rejects_bad_port(port: Any) -> None:
    refused(rf"port {re.escape(repr(port))} is outside 1\.\.65535", Frontend, "10.96.0.10", port)


@pytest.mark.parametrize("port", [0, 65536, True, "8080"])
def test_backend_rejects_bad_port(port: Any) -> None:
    refused(rf"backend 10\.244\.0\.5: port {re.escape(repr(port))} is outside", Backend, "10.244.0.5", port)


@pytest.mark.parametrize("proto", ["SCTP", "tcp", "udp", "ICMP", "", 6, None])
def test_frontend_rejects_unknown_protocol(proto: Any) -> None:
    refused(rf"protocol {re.escape(repr(proto))} is not TCP or UDP", Frontend, "10.96.0.10", 80, proto)


@pytest.mark.parametrize("port", [1, 65535])
def test_port_bounds_are_accepted(port: int) -> None:
    assert Frontend("10.96.0.10", port).port == port
    assert Backend("10.244.0.5", port).port == port


def test_addresses_are_normalised_and_protocol_numbered() -> None:
    from ipaddress import IPv4Address

    fe = Frontend(IPv4Address("10.96.0.10"), 53, "UDP")  # type: ignore[arg-type]
    assert (fe.ip, fe.proto_number) == ("10.96.0.10", 17)
    assert Frontend("10.96.0.10", 80).proto_number == 6
    assert Backend(IPv4Address("10.244.0.5"), 1).ip == "10.244.0.5"  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=65535), st.sampled_from(["TCP", "UDP"]),
       st.ip_addresses(v=4).filter(lambda a: not (a.is_unspecified or a.is_multicast or int(a) == 0xFFFFFFFF)))
def test_any_valid_frontend_is_accepted(port: int, proto: str, addr: Any) -> None:
    fe = Frontend(str(addr), port, proto)  # type: ignore[arg-type]
    assert (fe.ip, fe.port, fe.protocol) == (str(addr), port, proto)


# -- Service -----------------------------------------------------------------------------------------------
def test_duplicate_backends_are_refused() -> None:
    refused(r"duplicate backend 10\.244\.0\.5:8080", Service, "web", FE, [BE, Backend("10.244.0.6", 8080),
                                                                          Backend("10.244.0.5", 8080)])


def test_same_ip_on_other_port_is_not_a_duplicate() -> None:
    svc = Service("web", FE, [BE, Backend("10.244.0.5", 8081)])
    assert svc.backends == (BE, Backend("10.244.0.5", 8081))
    assert isinstance(svc.backends, tuple)


@pytest.mark.parametrize("node_port", [NODEPORT_RANGE[0] - 1, NODEPORT_RANGE[1] + 1, 0, 80, 65536, -30080, True])
def test_node_port_outside_range_is_refused(node_port: Any) -> None:
    refused(rf"node_port {re.escape(repr(node_port))} is outside 30000\.\.32767", Service, "web", FE, [BE],
            type="NodePort", node_port=node_port)


@pytest.mark.parametrize("node_port", [30000, 32767, 31000])
def test_node_port_range_bounds_are_accepted(node_port: int) -> None:
    assert Service("web", FE, [BE], type="NodePort", node_port=node_port).node_port == node_port


def test_node_port_type_without_node_port_is_refused() -> None:
    refused(r"needs node_port", Service, "web", FE, [BE], type="NodePort")


def test_node_port_on_cluster_ip_is_refused() -> None:
    refused(r"node_port is only for type NodePort", Service, "web", FE, [BE], node_port=30080)


def test_too_many_backends_are_refused() -> None:
    many = [Backend(f"10.244.{i // 250}.{i % 250 + 1}", 80) for i in range(MAX_BACKENDS + 1)]
    refused(rf"{MAX_BACKENDS + 1} backends, at most {MAX_BACKENDS}", Service, "web", FE, many)
    assert len(Service("web", FE, many[:MAX_BACKENDS]).backends) == MAX_BACKENDS


def test_maglev_on_cluster_ip_is_refused() -> None:
    refused(r"maglev applies to traffic from outside", Service, "web", FE, [BE], maglev=True)
    assert Service("web", FE, [BE], type="NodePort", node_port=30080, maglev=True).maglev
    assert Service("web", FE, [BE], external_ips=["198.51.100.7"], maglev=True).maglev  # reached from outside


@pytest.mark.parametrize("svc_type", ["ExternalName", "clusterip", ""])
def test_unknown_service_type_is_refused(svc_type: str) -> None:
    refused(rf"type {re.escape(repr(svc_type))} is not ClusterIP, NodePort or LoadBalancer", Service, "web", FE, [BE],
            type=svc_type)


@pytest.mark.parametrize("name", ["", "x" * 64])
def test_bad_name_is_refused(name: str) -> None:
    refused(r"must be 1\.\.63 characters", Service, name, FE, [BE])


@pytest.mark.parametrize(("field", "value", "match"), [
    ("frontend", ("10.96.0.10", 80), r"frontend must be a Frontend"),
    ("backends", [("10.244.0.5", 8080)], r"backends must be Backend values"),
    ("external_traffic_policy", "local", r"external_traffic_policy must be Cluster or Local"),
    ("affinity_timeout", 0, r"affinity_timeout must be 1\.\.86400"),
    ("affinity_timeout", 86401, r"affinity_timeout must be 1\.\.86400"),
])
def test_wrong_field_values_are_refused(field: str, value: Any, match: str) -> None:
    kw: dict[str, Any] = {"name": "web", "frontend": FE, "backends": [BE], field: value}
    refused(match, Service, **kw)


def test_empty_backends_are_a_valid_service() -> None:
    # A service whose endpoints are all gone is legal: the datapath refuses connections to it.
    assert Service("web", FE).backends == ()


def test_services_are_immutable_values() -> None:
    svc = Service("web", FE, [BE])
    with pytest.raises(AttributeError):
        svc.node_port = 30080  # type: ignore[misc]
    assert svc == Service("web", FE, (BE,))


def test_service_round_trips_through_json() -> None:
    import json

    svc = Service("web", Frontend("10.96.0.1", 80, "UDP"), [Backend("10.244.1.2", 8080)], type="NodePort",
                  node_port=30001, external_traffic_policy="Local", session_affinity=True, affinity_timeout=60,
                  maglev=True, labels={"app": "web"})
    again = Service.from_dict(json.loads(json.dumps(svc.to_dict())))
    assert again == svc and again.labels == {"app": "web"}


@pytest.mark.parametrize(("data", "match"), [
    ({"name": "x"}, "missing field frontend"),
    ({"name": "x", "frontend": {"ip": "10.96.0.1", "port": 80}, "bogus": 1}, "unknown field"),
    ({"name": "x", "frontend": {"ip": "10.96.0.1", "port": 80, "colour": "red"}}, "colour"),
    ({"name": "x", "frontend": {"ip": "10.96.0.1", "port": 0}}, "outside 1..65535"),
    ([1, 2], "JSON object"),
])
def test_service_from_bad_dicts(data: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Service.from_dict(data)


# -- LoadBalancer, externalIPs, internalTrafficPolicy, healthCheckNodePort, terminating backends ----------
LB_IP, EXT_IP = "203.0.113.80", "198.51.100.7"


def test_load_balancer_service_is_accepted_with_and_without_node_port() -> None:
    svc = Service("web", FE, [BE], type="LoadBalancer", node_port=30080, load_balancer_ips=[LB_IP],
                  external_traffic_policy="Local", health_check_node_port=30081)
    assert svc.load_balancer_ips == (LB_IP,) and svc.external_addresses == (LB_IP,)
    # allocateLoadBalancerNodePorts: false -- only the LoadBalancer IPs are served
    assert Service("web", FE, [BE], type="LoadBalancer", load_balancer_ips=[LB_IP]).node_port is None


def test_external_addresses_are_normalised_and_round_trip() -> None:
    svc = Service("web", FE, [BE, Backend("10.244.0.6", 8080, terminating=True)], external_ips=[EXT_IP],
                  internal_traffic_policy="Local")
    assert svc.external_ips == (EXT_IP,)
    assert Service.from_dict(svc.to_dict()) == svc


@pytest.mark.parametrize(("kw", "match"), [
    ({"external_ips": ["198.51.100.300"]}, r"external_ips: '198\.51\.100\.300' is not an IPv4 address"),
    ({"external_ips": ["0.0.0.0"]}, r"external_ips: 0\.0\.0\.0 cannot be used"),
    ({"external_ips": "198.51.100.7"}, r"external_ips must be a list"),
    ({"external_ips": [EXT_IP, EXT_IP]}, r"external_ips 198\.51\.100\.7 is already in external_ips"),
    ({"external_ips": ["10.96.0.10"]}, r"external_ips 10\.96\.0\.10 is already the ClusterIP"),
    ({"external_ips": [EXT_IP], "type": "LoadBalancer", "load_balancer_ips": [EXT_IP]},
     r"load_balancer_ips 198\.51\.100\.7 is already in external_ips"),
    ({"load_balancer_ips": [LB_IP]}, r"load_balancer_ips are only for type LoadBalancer"),
    ({"external_ips": [f"198.51.100.{i}" for i in range(1, 66)]}, r"65 external addresses, at most 64"),
    ({"internal_traffic_policy": "Global"}, r"internal_traffic_policy must be Cluster or Local"),
    ({"type": "NodePort", "node_port": 30080, "external_traffic_policy": "Local", "health_check_node_port": 30081},
     r"health_check_node_port is only for a LoadBalancer service with external_traffic_policy Local"),
    ({"type": "LoadBalancer", "health_check_node_port": 30081}, r"only for a LoadBalancer service with"),
    ({"type": "LoadBalancer", "external_traffic_policy": "Local", "health_check_node_port": 0},
     r"health_check_node_port 0 is outside 30000\.\.32767"),
    ({"type": "LoadBalancer", "external_traffic_policy": "Local", "node_port": 30080,
      "health_check_node_port": 30080}, r"health_check_node_port 30080 is also its node_port"),
    ({"type": "LoadBalancer", "node_port": 0}, r"node_port 0 is outside 30000\.\.32767"),
])
def test_bad_external_input_is_refused(kw: dict[str, Any], match: str) -> None:
    refused(match, Service, "web", FE, [BE], **kw)


def test_terminating_backends_are_chosen_only_without_active_ones() -> None:
    dying = Backend("10.244.0.6", 8080, terminating=True)
    assert Service("web", FE, [BE, dying]).active_backends == (BE,)
    assert Service("web", FE, [dying]).active_backends == (dying,)  # kube-proxy's and Cilium's fallback
    refused(r"terminating must be a bool", Backend, "10.244.0.6", 8080, "yes")
    refused(r"duplicate backend 10\.244\.0\.5:8080", Service, "web", FE, [BE, Backend(BE.ip, BE.port, True)])
