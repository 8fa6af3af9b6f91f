"""healthCheckNodePort's answer (``ciliumlite.node.healthcheck``): which Service it names and what
it counts as local. The server itself is exercised in a lab (tests/integration/test_services_external.py)."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from ciliumlite.manifests.model import NAMESPACE_LABEL, SERVICE_LABEL
from ciliumlite.node.healthcheck import local_endpoints, service_ref
from ciliumlite.service import Backend, Frontend, Service

pytestmark = pytest.mark.unit

PODS = IPv4Network("10.244.1.0/24")


def lb(name: str, *backends: Backend, labels: dict[str, str] | None = None) -> Service:
    return Service(name, Frontend("10.96.0.30", 80), list(backends), type="LoadBalancer",
                   external_traffic_policy="Local", health_check_node_port=30400, labels=labels or {})


def test_the_kubernetes_service_is_named_from_the_manifest_labels() -> None:
    svc = lb("demo/shop:http", labels={NAMESPACE_LABEL: "demo", SERVICE_LABEL: "shop"})
    assert service_ref(svc) == ("demo", "shop")


def test_a_plain_name_gives_namespace_and_name() -> None:
    assert service_ref(lb("demo/shop:http")) == ("demo", "shop")
    assert service_ref(lb("shop")) == ("", "shop")


def test_local_endpoints_are_ready_backends_in_the_pod_cidr() -> None:
    svc = lb("shop", Backend("10.244.1.2", 80), Backend("10.244.1.3", 80, terminating=True), Backend("10.244.2.2", 80))
    assert local_endpoints(svc, PODS) == 1
    assert local_endpoints(lb("shop"), PODS) == 0
