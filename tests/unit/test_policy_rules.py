"""Policies from manifests (ciliumlite.policy.rules): what they become, and bad input named by field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.policy import PortRule, parse_policies, parse_policy

pytestmark = pytest.mark.unit


def netpol(spec: dict[str, Any], ns: str = "x", name: str = "p") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def cnp(spec: dict[str, Any], ns: str = "x", name: str = "c") -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def test_network_policy_defaults() -> None:
    p = parse_policy(netpol({"podSelector": {}}))
    assert p.key == "NetworkPolicy/x/p"
    (spec,) = p.specs
    assert spec.isolates_ingress and not spec.isolates_egress and spec.rules == ()
    # Egress rules imply Egress; a rule without peers is every peer; protocol defaults to TCP.
    (spec,) = parse_policy(netpol({"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"},
                                                                             {"port": 80, "endPort": 90}]}]})).specs
    assert spec.isolates_ingress and spec.isolates_egress
    (rule,) = spec.rules
    assert rule.egress and rule.peers is None and rule.ports == (PortRule(17, 53, 53), PortRule(6, 80, 90))
    # Missing namespace: default.
    m = netpol({"podSelector": {}})
    del m["metadata"]["namespace"]
    assert parse_policy(m).namespace == "default"


def test_cnp_semantics() -> None:
    # An empty rule is default deny with nothing allowed; only toPorts is every peer on them.
    (spec,) = parse_policy(cnp({"endpointSelector": {}, "ingress": [{}]})).specs
    assert spec.isolates_ingress and not spec.isolates_egress and spec.rules[0].peers == ()
    (spec,) = parse_policy(cnp({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "53"}]}]}]})).specs
    (rule,) = spec.rules
    assert rule.peers is None and {p.protocol for p in rule.ports} == {6, 17, 132}  # ANY: each protocol
    # A deny section isolates too, unless enableDefaultDeny says no.
    (spec,) = parse_policy(cnp({"endpointSelector": {}, "ingressDeny": [{"fromEntities": ["world"]}]})).specs
    assert spec.isolates_ingress and spec.rules[0].deny
    (spec,) = parse_policy(cnp({"endpointSelector": {}, "ingressDeny": [{"fromEntities": ["world"]}],
                                "enableDefaultDeny": {"ingress": False}})).specs
    assert not spec.isolates_ingress
    # fromEntities all is every peer; specs is a list of rules.
    p = parse_policy(cnp({"endpointSelector": {}, "ingress": [{"fromEntities": ["all"]}]}) | {
        "specs": [{"endpointSelector": {"matchLabels": {"app": "x"}}, "egress": [{"toCIDR": ["192.0.2.0/24"]}]}]})
    assert len(p.specs) == 2 and p.specs[0].rules[0].peers is None
    ccnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "g"},
            "spec": {"endpointSelector": {}, "ingress": [{"fromEndpoints": [{}]}]}}
    assert parse_policy(ccnp).namespace == ""


GOOD = netpol({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress", "Egress"],
               "ingress": [{"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 1000, "endPort": 2000}]}],
               "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "dns", "protocol": "UDP"}]}]})


def bad(path: list[Any], value: Any, base: dict[str, Any] = GOOD) -> dict[str, Any]:
    m = copy.deepcopy(base)
    obj: Any = m
    for p in path[:-1]:
        obj = obj[p]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return m


@pytest.mark.parametrize(("manifest", "message"), [
    (bad(["spec", "ingress", 0, "ports", 0, "protocol"], "ICMP"),
     r"NetworkPolicy x/p: spec.ingress\[0\].ports\[0\].protocol: unknown protocol 'ICMP'"),
    (bad(["spec", "ingress", 0, "ports", 0, "port"], 0), r"spec.ingress\[0\].ports\[0\].port: 0 is not a port"),
    (bad(["spec", "ingress", 0, "ports", 0, "port"], 70000), r"ports\[0\].port: 70000 is not a port"),
    (bad(["spec", "ingress", 0, "ports", 1, "endPort"], 999), r"ports\[1\].endPort: 999 is below port 1000"),
    (bad(["spec", "ingress", 0, "ports", 1, "port"], KeyError), r"ports\[1\].endPort: needs a numeric port"),
    (bad(["spec", "egress", 0, "ports", 0, "endPort"], 60), r"egress\[0\].ports\[0\].endPort: cannot go with the named"),
    (bad(["spec", "egress", 0, "ports", 0, "port"], "Not_A_Name"), r"egress\[0\].ports\[0\].port: 'Not_A_Name' is neither"),
    (bad(["spec", "ingress", 0, "from", 1, "ipBlock", "cidr"], "10.0.0.0"),
     r"spec.ingress\[0\].from\[1\].ipBlock.cidr: '10.0.0.0' is not a CIDR"),
    (bad(["spec", "ingress", 0, "from", 1, "ipBlock", "cidr"], "300.0.0.0/8"), r"from\[1\].ipBlock.cidr: '300.0.0.0/8'"),
    (bad(["spec", "ingress", 0, "from", 1, "ipBlock", "except"], ["192.168.0.0/16"]),
     r"from\[1\].ipBlock.except\[0\]: 192.168.0.0/16 is not inside the cidr 10.0.0.0/8"),
    (bad(["spec", "ingress", 0, "from", 1, "podSelector"], {}), r"from\[1\]: ipBlock cannot be combined with a selector"),
    (bad(["spec", "ingress", 0, "from", 0], {}), r"from\[0\]: an empty peer"),
    (bad(["spec", "ingress", 0, "from", 0, "podSelector"], {"matchLabels": {"a": 1}}),
     r"from\[0\].podSelector.matchLabels.a: value 1 is not a string"),
    (bad(["spec", "policyTypes"], ["Ingres"]), r"spec.policyTypes\[0\]: 'Ingres' is not Ingress or Egress"),
    (bad(["spec", "ingres"], []), r"spec: unknown field 'ingres'"),
    (bad(["spec", "ingress"], {"from": []}), r"spec.ingress: a list, not dict"),
    (bad(["metadata", "name"], KeyError), r"metadata.name: missing"),
    (bad(["kind"], "NetPol"), r"kind: 'NetPol' is not a policy kind"),
    (bad(["apiVersion"], "networking.k8s.io/v1beta1"), r"apiVersion 'networking.k8s.io/v1beta1'"),
])
def test_bad_network_policy(manifest: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_policy(manifest)


CNP_GOOD = cnp({"endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
                "egressDeny": [{"toCIDRSet": [{"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}]}]})


@pytest.mark.parametrize(("path", "value", "message"), [
    (["spec", "ingress", 0, "toPorts", 0, "ports", 0, "protocol"], "ICMP", r"toPorts\[0\].ports\[0\].protocol: unknown"),
    (["spec", "ingress", 0, "toPorts", 0, "ports", 0, "endPort"], 79, r"ports\[0\].endPort: 79 is below port 80"),
    (["spec", "ingress", 0, "toPorts", 0, "rules"], {"http": []}, r"toPorts\[0\]: L7 rules are not supported"),
    (["spec", "ingress", 0, "fromEntities"], ["everyone"], r"fromEntities\[0\]: unknown entity 'everyone'"),
    (["spec", "ingress", 0, "toFQDNs"], [], r"spec.ingress\[0\].toFQDNs: not supported by ciliumlite"),
    (["spec", "egressDeny", 0, "toCIDRSet", 0, "except"], ["10.0.0.0/8"],
     r"egressDeny\[0\].toCIDRSet\[0\].except\[0\]: 10.0.0.0/8 is not inside the cidr 192.0.2.0/24"),
    (["spec", "egressDeny", 0, "toCIDR"], ["nope"], r"egressDeny\[0\].toCIDR\[0\]: 'nope' is not a CIDR"),
    (["spec", "endpointSelector"], KeyError, r"spec.endpointSelector: missing"),
    (["spec", "nodeSelector"], {}, r"spec.nodeSelector: not supported"),
    (["spec", "enableDefaultDeny"], {"ingress": "yes"}, r"enableDefaultDeny.ingress: 'yes' is not true or false"),
])
def test_bad_cnp(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=r"CiliumNetworkPolicy x/c: .*" + message):
        parse_policy(bad(path, value, CNP_GOOD))


def test_parse_policies_is_all_or_nothing() -> None:
    assert len(parse_policies([GOOD, CNP_GOOD])) == 2
    with pytest.raises(ValidationError, match=r"manifest 1: NetworkPolicy x/p: spec.policyTypes"):
        parse_policies([GOOD, bad(["spec", "policyTypes"], ["x"])])
    with pytest.raises(ValidationError, match=r"manifest 1: NetworkPolicy/x/p appears twice"):
        parse_policies([GOOD, GOOD])
