"""The NetworkPolicy oracle (tests/netpol_model.py) against truth tables edited by hand, the way the
Kubernetes e2e suite writes its expectations (start from all-allowed, then mark what a case denies)."""

from __future__ import annotations

from typing import Any

import pytest
from netpol_model import Cluster, External, Pod, policy_types, selector_matches, serving

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")


def cluster(*policies: dict[str, Any]) -> Cluster:
    """The e2e model: namespaces x, y, z (label ns=<name>), pods a, b, c in each (label pod=<name>)."""
    pods = [Pod(ns, p, {"pod": p}, f"10.244.{i}.{j + 10}", serving())
            for i, ns in enumerate(NAMESPACES, start=1) for j, p in enumerate(PODS)]
    return Cluster({ns: {"ns": ns} for ns in NAMESPACES}, pods, list(policies))


def netpol(ns: str, spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def all_true() -> dict[tuple[str, str], bool]:
    names = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]
    return {(s, d): True for s in names for d in names}


def test_no_policy_allows_everything() -> None:
    assert cluster().table(80) == all_true()


def test_default_deny_ingress_denies_every_peer_of_the_namespace_but_itself_is_loopback() -> None:
    c = cluster(netpol("x", {"podSelector": {}}))  # policyTypes default: Ingress
    want = all_true()
    for src in want:
        if src[1].startswith("x/"):
            want[src] = False
    assert c.table(80) == want


def test_allow_from_a_pod_selector_means_the_policy_namespace_only() -> None:
    c = cluster(netpol("x", {"podSelector": {"matchLabels": {"pod": "a"}},
                             "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    want = all_true()
    for s, d in want:
        if d == "x/a":
            want[(s, d)] = s == "x/b"
    assert c.table(80) == want


def test_pod_and_namespace_selector_in_one_peer_is_and_in_two_peers_is_or() -> None:
    and_peer = [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]
    or_peers = [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]
    c_and = cluster(netpol("x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": and_peer}]}))
    c_or = cluster(netpol("x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": or_peers}]}))
    allowed_and = {s for (s, d), ok in c_and.table(80).items() if d == "x/a" and ok}
    allowed_or = {s for (s, d), ok in c_or.table(80).items() if d == "x/a" and ok}
    assert allowed_and == {"y/b"}
    assert allowed_or == {"y/a", "y/b", "y/c", "x/b"}


def test_named_port_resolves_against_the_destination_pod() -> None:
    c = cluster(netpol("x", {"podSelector": {}, "ingress": [{"ports": [{"port": "serve-80-tcp"}]}]}))
    a = next(p for p in c.pods if (p.namespace, p.name) == ("x", "a"))
    b = next(p for p in c.pods if (p.namespace, p.name) == ("y", "b"))
    assert c.allowed(b, a, 80) and not c.allowed(b, a, 81) and not c.allowed(b, a, 80, "UDP")


def test_end_port_range_and_protocol() -> None:
    c = cluster(netpol("x", {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 81, "protocol": "UDP"}]}]}))
    a, b = c.pods[0], c.pods[4]
    assert c.allowed(b, a, 80, "UDP") and c.allowed(b, a, 81, "UDP")
    assert not c.allowed(b, a, 80, "TCP") and not c.allowed(b, a, 82, "UDP")


def test_egress_default_deny_and_both_directions_must_allow() -> None:
    deny_egress = netpol("x", {"podSelector": {}, "policyTypes": ["Egress"]})
    c = cluster(deny_egress)
    assert all(not ok for (s, _), ok in c.table(80).items() if s.startswith("x/"))
    assert all(ok for (s, _), ok in c.table(80).items() if not s.startswith("x/"))
    allow_to_y = netpol("x", {"podSelector": {}, "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]},
                        name="allow-y")
    deny_in_y = netpol("y", {"podSelector": {}}, name="deny")
    c = cluster(deny_egress, allow_to_y, deny_in_y)
    assert not any(ok for (s, d), ok in c.table(80).items() if s.startswith("x/") and d.startswith("y/"))


def test_ip_block_with_except_matches_pod_addresses_and_the_outside() -> None:
    c = cluster(netpol("x", {"podSelector": {}, "policyTypes": ["Egress"],
                             "egress": [{"to": [{"ipBlock": {"cidr": "10.244.2.0/24", "except": ["10.244.2.11/32"]}}]}]}))
    a = c.pods[0]
    y = {p.name: p for p in c.pods if p.namespace == "y"}
    assert c.allowed(a, y["a"], 80) and not c.allowed(a, y["b"], 80) and c.allowed(a, y["c"], 80)
    assert not c.allowed(a, External("198.51.100.7"), 80)
    c.policies[0]["spec"]["egress"][0]["to"].append({"ipBlock": {"cidr": "198.51.100.0/24"}})
    assert c.allowed(a, External("198.51.100.7"), 80)


def test_empty_rules_deny_and_an_empty_rule_allows() -> None:
    deny = cluster(netpol("x", {"podSelector": {}, "ingress": []}))
    allow = cluster(netpol("x", {"podSelector": {}, "ingress": [{}]}))
    assert not deny.allowed(deny.pods[4], deny.pods[0], 80)
    assert allow.allowed(allow.pods[4], allow.pods[0], 80)


@pytest.mark.parametrize(("selector", "labels", "want"), [
    ({}, {}, True),
    ({"matchLabels": {"pod": "a"}}, {"pod": "b"}, False),
    ({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]}, {"pod": "b"}, True),
    ({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "pod", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]}, {"x": "1"}, True),
])
def test_label_selectors(selector: dict[str, Any], labels: dict[str, str], want: bool) -> None:
    assert selector_matches(selector, labels) is want


def test_policy_types_default() -> None:
    assert policy_types(netpol("x", {"podSelector": {}})) == ["Ingress"]
    assert policy_types(netpol("x", {"podSelector": {}, "egress": [{}]})) == ["Ingress", "Egress"]
