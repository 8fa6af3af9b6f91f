"""The network policy conformance cases (Kubernetes e2e / cyclonus style), shared by the
engine-only test (tests/unit/test_policy_conformance.py) and the live one on a lab cluster
(tests/integration/test_policy_conformance_live.py).

Each case is a list of ``networking.k8s.io/v1`` NetworkPolicy manifests (dicts) over namespaces
x, y, z (labelled ``ns=<name>``) holding pods a, b, c (labelled ``pod=<name>``) that serve TCP and
UDP on 80 and 81 under the names ``serve-<port>-<proto>``. ``POD_B_IP`` is the address the
``ipBlock except one pod`` case names: pod x/b must have it.
"""

from __future__ import annotations

from typing import Any

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")


def netpol(ns: str, spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    """A NetworkPolicy manifest named ``name`` in namespace ``ns``."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def ports(*items: Any) -> list[dict[str, Any]]:
    """``ports(80, (81, "UDP"), "serve-80-tcp", (80, "TCP", 82))`` -> NetworkPolicyPorts."""
    out: list[dict[str, Any]] = []
    for it in items:
        if not isinstance(it, tuple):
            it = (it,)
        p: dict[str, Any] = {"port": it[0]} if it[0] is not None else {}
        if len(it) > 1:
            p["protocol"] = it[1]
        if len(it) > 2:
            p["endPort"] = it[2]
        out.append(p)
    return out


POD_A = {"matchLabels": {"pod": "a"}}
POD_B = {"matchLabels": {"pod": "b"}}
NS_Y = {"matchLabels": {"ns": "y"}}
DENY_ALL_IN = {"podSelector": {}, "policyTypes": ["Ingress"]}
DENY_ALL_OUT = {"podSelector": {}, "policyTypes": ["Egress"]}
POD_B_IP = "10.244.1.11"

CASES: dict[str, list[dict[str, Any]]] = {
    "no policy": [],
    "default deny ingress": [netpol("x", DENY_ALL_IN)],
    "default deny egress": [netpol("x", DENY_ALL_OUT)],
    "default deny both": [netpol("x", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})],
    "deny ingress to one pod": [netpol("x", {"podSelector": POD_A})],
    "allow all ingress": [netpol("x", {"podSelector": {}, "ingress": [{}]})],
    "allow all egress": [netpol("x", {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]})],
    "deny all plus allow all": [netpol("x", DENY_ALL_IN, "deny"), netpol("x", {"podSelector": {}, "ingress": [{}]}, "allow")],
    "allow from same namespace": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"podSelector": {}}]}]})],
    "allow from pod b": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"podSelector": POD_B}]}]})],
    "allow from namespace y": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"namespaceSelector": NS_Y}]}]})],
    "allow from all namespaces": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"namespaceSelector": {}}]}]})],
    "allow from namespace by name": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]})],
    "namespace NotIn x": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"namespaceSelector": {
        "matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]}}]}]})],
    "pod In b,c": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"podSelector": {
        "matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}]})],
    "pod selector Exists and DoesNotExist": [netpol("x", {"podSelector": {"matchExpressions": [
        {"key": "pod", "operator": "Exists"}]}, "ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "nope", "operator": "DoesNotExist"}]}}]}]})],
    "pod AND namespace": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"namespaceSelector": NS_Y,
                                                                                    "podSelector": POD_B}]}]})],
    "pod OR namespace": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"namespaceSelector": NS_Y},
                                                                                  {"podSelector": POD_B}]}]})],
    "all namespaces AND pod b": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"namespaceSelector": {},
                                                                                          "podSelector": POD_B}]}]})],
    "port 80 only": [netpol("x", {"podSelector": POD_A, "ingress": [{"ports": ports(80)}]})],
    "port 81 from namespace y": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"namespaceSelector": NS_Y}],
                                                                                 "ports": ports(81)}]})],
    "two rules, two ports": [netpol("x", {"podSelector": POD_A, "ingress": [
        {"from": [{"podSelector": POD_B}], "ports": ports(80)}, {"from": [{"namespaceSelector": NS_Y}], "ports": ports(81)}]})],
    "UDP only must not allow TCP": [netpol("x", {"podSelector": POD_A, "ingress": [{"ports": ports((80, "UDP"))}]})],
    "SCTP only must not allow TCP": [netpol("x", {"podSelector": POD_A, "ingress": [{"ports": ports((81, "SCTP"))}]})],
    "protocol without port": [netpol("x", {"podSelector": POD_A, "ingress": [{"ports": ports((None, "UDP"))}]})],
    "endPort range": [netpol("x", {"podSelector": POD_A, "ingress": [{"ports": ports((81, "TCP", 82))}]})],
    "endPort range egress": [netpol("x", {"podSelector": POD_A, "policyTypes": ["Egress"],
                                          "egress": [{"ports": ports((80, "UDP", 81))}]})],
    "named port ingress": [netpol("x", {"podSelector": POD_A, "ingress": [{"ports": ports("serve-81-tcp")}]})],
    "named port UDP ingress": [netpol("x", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": NS_Y}],
                                                                            "ports": ports(("serve-80-udp", "UDP"))}]})],
    "named port egress": [netpol("x", {"podSelector": POD_A, "policyTypes": ["Egress"],
                                       "egress": [{"ports": ports("serve-80-tcp")}]})],
    "named port egress to namespace y": [netpol("x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"namespaceSelector": NS_Y}], "ports": ports("serve-81-tcp", ("serve-81-udp", "UDP"))}]})],
    "named port with wrong protocol": [netpol("x", {"podSelector": POD_A, "ingress": [{"ports": ports(("serve-80-tcp", "UDP"))}]})],
    "egress to namespace y": [netpol("x", {"podSelector": {}, "policyTypes": ["Egress"],
                                           "egress": [{"to": [{"namespaceSelector": NS_Y}]}]})],
    "egress to DNS-like UDP 81 anywhere": [netpol("x", {"podSelector": {}, "policyTypes": ["Egress"],
                                                        "egress": [{"ports": ports((81, "UDP"))}]})],
    "egress to pod b and DNS": [netpol("x", {"podSelector": POD_A, "policyTypes": ["Egress"], "egress": [
        {"to": [{"podSelector": POD_B}]}, {"ports": ports((81, "UDP"), (81, "TCP"))}]})],
    "egress rules imply Egress": [netpol("x", {"podSelector": POD_A, "egress": [{"to": [{"podSelector": POD_B}]}]})],
    "egress rules ignored without Egress": [netpol("x", {"podSelector": POD_A, "policyTypes": ["Ingress"],
                                                         "ingress": [{}], "egress": [{"to": [{"podSelector": POD_B}]}]})],
    "ingress and egress": [netpol("x", {"podSelector": POD_A, "policyTypes": ["Ingress", "Egress"],
                                        "ingress": [{"from": [{"namespaceSelector": NS_Y}]}],
                                        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]})],
    "ipBlock pod subnet": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.2.0/24"}}]}]})],
    "ipBlock with except": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"ipBlock": {
        "cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]}]})],
    "ipBlock except one pod": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"ipBlock": {
        "cidr": "10.244.1.0/24", "except": [f"{POD_B_IP}/32"]}}]}]})],
    "ipBlock egress to outside": [netpol("x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]})],
    "ipBlock egress everything except documentation range": [netpol("x", {"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["198.51.100.0/24"]}}], "ports": ports(80)}]})],
    "ipBlock ingress from everything": [netpol("y", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]})],
    "ipBlock nested prefixes": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"ipBlock": {
        "cidr": "10.244.0.0/16", "except": ["10.244.9.0/24"]}}]}]}, "outer"),
        netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.9.8/29"}}]}]}, "inner")],
    "multiple policies union": [netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"podSelector": POD_B}]}]}, "p1"),
                                netpol("x", {"podSelector": POD_A, "ingress": [{"from": [{"namespaceSelector": NS_Y}],
                                                                                "ports": ports(80)}]}, "p2")],
    "policies in every namespace": [netpol(ns, DENY_ALL_IN, f"deny-{ns}") for ns in NAMESPACES] + [
        netpol("z", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}, "allow-z")],
    "deny egress, allow ingress elsewhere": [netpol("x", DENY_ALL_OUT, "e"),
                                            netpol("y", {"podSelector": POD_A, "ingress": [{"from": [{"podSelector": {}}]}]}, "i")],
    "policy selecting nothing": [netpol("x", {"podSelector": {"matchLabels": {"pod": "nobody"}}})],
    "ingress empty list denies": [netpol("x", {"podSelector": {}, "ingress": []})],
}
