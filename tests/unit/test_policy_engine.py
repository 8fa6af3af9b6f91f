"""The engine's MapStates and the lookup order (ciliumlite.policy.engine, mapstate, verdict):
Cilium's semantics for CiliumNetworkPolicy, deny wins, the lookup precedence levels."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from ciliumlite.policy import (
    DROP_POLICY,
    DROP_POLICY_DENY,
    LOCAL_IDENTITY_FLAG,
    MapState,
    PolicyEndpoint,
    PolicyEngine,
    PolicyEntry,
    PolicyKey,
    ReservedIdentity,
    allow_all,
    deny_wins,
    diff,
    lookup,
    parse_policies,
    pod_labels,
)
from ciliumlite.policy.mapstate import covers
from ciliumlite.policy.verdict import MATCH_ALL, MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L4_ONLY, MATCH_PROTO_ONLY

pytestmark = pytest.mark.unit

HOST, WORLD = int(ReservedIdentity.HOST), int(ReservedIdentity.WORLD)
WEB = PolicyEndpoint(300, pod_labels("x", {"app": "web"}), (IPv4Address("10.244.1.10"),), {("http", 6): 8080}, "x/web")
CLIENT = PolicyEndpoint(301, pod_labels("x", {"app": "client"}), (IPv4Address("10.244.1.11"),), {}, "x/client")
CLIENT2 = PolicyEndpoint(302, pod_labels("x", {"app": "client", "other": "client"}), (IPv4Address("10.244.2.12"),),
                         {}, "x/client2")
OTHER_NS = PolicyEndpoint(303, pod_labels("y", {"app": "client"}), (IPv4Address("10.244.3.13"),), {}, "y/client")
EPS = (WEB, CLIENT, CLIENT2, OTHER_NS)


def cnp(spec: dict[str, Any], ns: str = "x", name: str = "c") -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def engine(*manifests: dict[str, Any]) -> PolicyEngine:
    return PolicyEngine(parse_policies(manifests), endpoints=EPS)


WEB_SEL = {"matchLabels": {"app": "web"}}


def test_no_policy_is_allow_all() -> None:
    assert engine().map_state(WEB) == {allow_all(False): PolicyEntry(), allow_all(True): PolicyEntry()}


def test_cnp_empty_rule_is_default_deny() -> None:
    # all-ingress-deny: ingress [{}] allows nothing but the node.
    result = engine(cnp({"endpointSelector": {}, "ingress": [{}]})).compute(WEB)
    assert result.ingress_enforced and not result.egress_enforced and result.policies == ("CiliumNetworkPolicy/x/c",)
    assert result.map_state == {PolicyKey(HOST, False): PolicyEntry(), allow_all(True): PolicyEntry()}
    assert lookup(result.map_state, CLIENT.identity, False, 6, 80).reason == DROP_POLICY
    assert lookup(result.map_state, HOST, False, 6, 80).allowed


def test_cnp_client_ingress_and_namespace_scope() -> None:
    state = engine(cnp({"endpointSelector": WEB_SEL, "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                                                  "toPorts": [{"ports": [{"port": "8080"}]}]}]})).map_state(WEB)
    # Both x clients, not y's (a namespaced CNP's peers are its namespace's), on 8080 of any protocol.
    assert lookup(state, CLIENT.identity, False, 6, 8080).allowed and lookup(state, CLIENT2.identity, False, 17, 8080).allowed
    assert not lookup(state, OTHER_NS.identity, False, 6, 8080).allowed
    assert not lookup(state, CLIENT.identity, False, 6, 80).allowed
    state = engine(cnp({"endpointSelector": WEB_SEL, "ingress": [{"fromEndpoints": [
        {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "y"}}]}]})).map_state(WEB)
    assert lookup(state, OTHER_NS.identity, False, 6, 1).allowed and not lookup(state, CLIENT.identity, False, 6, 1).allowed


def test_deny_wins_over_allow_all() -> None:
    # echo-ingress-from-other-client-deny: allow all, deny client2 (other=client): 181 for it.
    e = engine(cnp({"endpointSelector": {}, "ingress": [{"fromEntities": ["all"]}]}, name="allow"),
               cnp({"endpointSelector": WEB_SEL, "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"other": "client"}}]}]},
                   name="deny"))
    state = e.map_state(WEB)
    v = lookup(state, CLIENT2.identity, False, 6, 8080)
    assert (v.allowed, v.reason) == (False, DROP_POLICY_DENY)
    assert lookup(state, CLIENT.identity, False, 6, 8080).allowed
    assert lookup(state, WORLD, False, 6, 8080).allowed


def test_deny_beats_more_specific_allow() -> None:
    e = engine(cnp({"endpointSelector": WEB_SEL, "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                                             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
                    "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"other": "client"}}],
                                     "toPorts": [{"ports": [{"port": "0", "protocol": "TCP"}]}]},
                                    {"toPorts": [{"ports": [{"port": "80", "endPort": 81, "protocol": "TCP"}]}]}]}))
    state = e.map_state(WEB)
    # The allow for client2 on 80/TCP is under both denies: it became a deny.
    assert state[PolicyKey(CLIENT2.identity, False, 6, 80, 16)] == PolicyEntry(deny=True)
    assert lookup(state, CLIENT2.identity, False, 6, 80).reason == DROP_POLICY_DENY
    # client's exact allow loses to the L4-only deny on 80-81 (the wildcard-peer deny in lookup B).
    assert lookup(state, CLIENT.identity, False, 6, 80).reason == DROP_POLICY_DENY
    assert lookup(state, CLIENT.identity, False, 6, 82).reason == DROP_POLICY


def test_to_cidr_never_matches_pods_and_world_entity() -> None:
    e = engine(cnp({"endpointSelector": {}, "egress": [{"toCIDRSet": [{"cidr": "10.244.0.0/16",
                                                                       "except": ["10.244.2.0/24"]}]}]}))
    state = e.map_state(CLIENT)
    ids = e.cidr_identities
    assert set(ids) == {IPv4Network("10.244.0.0/16"), IPv4Network("10.244.2.0/24")}
    assert all(i & LOCAL_IDENTITY_FLAG for i in ids.values())
    assert lookup(state, ids[IPv4Network("10.244.0.0/16")], True, 6, 80).allowed
    assert not lookup(state, ids[IPv4Network("10.244.2.0/24")], True, 6, 80).allowed
    assert not lookup(state, WEB.identity, True, 6, 80).allowed  # a pod inside the CIDR: not matched
    world = engine(cnp({"endpointSelector": {}, "egress": [{"toEntities": ["world"], "toPorts": [{"ports": [
        {"port": "80", "protocol": "TCP"}]}]}]}, name="w"), cnp({"endpointSelector": {}, "egress": [
            {"toCIDR": ["192.0.2.0/24"]}]}, name="cidr"))
    state = world.map_state(CLIENT)
    cidr_id = world.cidr_identities[IPv4Network("192.0.2.0/24")]
    assert lookup(state, WORLD, True, 6, 80).allowed and not lookup(state, WORLD, True, 6, 443).allowed
    assert lookup(state, cidr_id, True, 6, 80).allowed and lookup(state, cidr_id, True, 6, 443).allowed
    assert not lookup(state, WEB.identity, True, 6, 80).allowed


def test_entities_host_and_cluster() -> None:
    e = engine(cnp({"endpointSelector": {}, "egress": [{"toEntities": ["host"]}]}, name="h"),
               cnp({"endpointSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]}, name="c"))
    state = e.map_state(CLIENT)
    assert lookup(state, HOST, True, 6, 22).allowed and not lookup(state, WORLD, True, 6, 22).allowed
    assert not lookup(state, WEB.identity, True, 6, 22).allowed
    assert lookup(state, OTHER_NS.identity, False, 6, 1).allowed and lookup(state, 6, False, 6, 1).allowed
    assert not lookup(state, WORLD, False, 6, 1).allowed


def test_named_ports() -> None:
    e = engine(cnp({"endpointSelector": WEB_SEL, "ingress": [{"toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}]}]}]}),
               cnp({"endpointSelector": {"matchLabels": {"app": "client"}}, "egress": [{"toPorts": [{"ports": [
                   {"port": "http", "protocol": "TCP"}]}]}]}, name="out"))
    assert lookup(e.map_state(WEB), CLIENT.identity, False, 6, 8080).allowed
    assert not lookup(e.map_state(WEB), CLIENT.identity, False, 6, 80).allowed
    out = e.map_state(CLIENT)
    assert out == {allow_all(False): PolicyEntry(), PolicyKey(WEB.identity, True, 6, 8080, 16): PolicyEntry()}


def test_ipblock_partial_identity_is_not_selected() -> None:
    twin = PolicyEndpoint(CLIENT.identity, CLIENT.labels, (IPv4Address("10.244.9.1"),), {}, "x/client-twin")
    np = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
          "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.1.0/24"}}]}]}}
    result = PolicyEngine(parse_policies([np]), endpoints=(*EPS, twin)).compute(WEB)
    assert not lookup(result.map_state, CLIENT.identity, False, 6, 80).allowed
    assert lookup(result.map_state, WEB.identity, False, 6, 80).allowed  # web itself is all inside
    assert result.warnings and "covers only some addresses of identity 301" in result.warnings[0]


def test_cidr_identities_are_stable_and_skip_endpoint_hosts() -> None:
    m = cnp({"endpointSelector": {}, "egress": [{"toCIDR": ["192.0.2.0/24", "10.244.1.10/32", "0.0.0.0/0"]}]})
    first = engine(m)
    assert set(first.cidr_identities) == {IPv4Network("192.0.2.0/24")}  # /0 is WORLD; a pod's /32 is the pod's
    second = PolicyEngine(parse_policies([m]), endpoints=EPS, cidr_allocator=first.cidr_allocator)
    assert second.cidr_identities == first.cidr_identities
    assert lookup(second.map_state(CLIENT), WORLD, True, 6, 1).allowed


def test_lookup_precedence_levels() -> None:
    peer = 400
    levels: list[tuple[PolicyKey, int]] = [
        (PolicyKey(peer, False, 6, 80, 16), MATCH_L3_L4),
        (PolicyKey(0, False, 6, 80, 16), MATCH_L4_ONLY),
        (PolicyKey(0, False, 6, 0, 0), MATCH_PROTO_ONLY),
        (PolicyKey(peer, False, 0, 0, 0), MATCH_L3_ONLY),
        (PolicyKey(0, False, 0, 0, 0), MATCH_ALL),
    ]
    state: MapState = {k: PolicyEntry() for k, _ in levels}
    for key, match in levels:
        v = lookup(state, peer, False, 6, 80)
        assert v.key == key and v.match_type == match
        del state[key]
    assert lookup(state, peer, False, 6, 80).reason == DROP_POLICY
    # L3 beats L4-only on a tie; the longer B beats a shorter A.
    tie = {PolicyKey(peer, False, 6, 80, 16): PolicyEntry(), PolicyKey(0, False, 6, 80, 16): PolicyEntry()}
    assert lookup(tie, peer, False, 6, 80).key == PolicyKey(peer, False, 6, 80, 16)
    longer_b = {PolicyKey(peer, False, 6, 0, 0): PolicyEntry(), PolicyKey(0, False, 6, 80, 16): PolicyEntry()}
    assert lookup(longer_b, peer, False, 6, 80).key == PolicyKey(0, False, 6, 80, 16)


def _brute(state: MapState, peer: int, egress: bool, proto: int, port: int) -> int:
    """The intended semantics: any covering deny -> 181, else any covering allow -> 0, else 133."""
    hits = [e for k, e in state.items() for ident in (peer, 0)
            if covers(k, PolicyKey(ident, egress, proto, port, 16)) and k.identity == ident]
    if any(e.deny for e in hits):
        return DROP_POLICY_DENY
    return 0 if hits else DROP_POLICY


@pytest.mark.parametrize("seed", range(20))
def test_deny_wins_random(seed: int) -> None:
    # Random allows and denies over 2 peers, the wildcard, 2 protocols and port prefixes: after
    # deny_wins the kernel's lookup order gives the intended verdict for every packet.
    rng = random.Random(seed)
    state: MapState = {}
    for _ in range(rng.randint(1, 12)):
        ident, proto = rng.choice([0, 500, 501]), rng.choice([0, 6, 17])
        bits = 0 if proto == 0 else rng.choice([0, 8, 14, 15, 16])
        port = rng.choice([80, 81, 82, 96]) & ~((1 << (16 - bits)) - 1) & 0xFFFF
        state[PolicyKey(ident, False, proto, port, bits)] = PolicyEntry(deny=rng.random() < 0.4)
    fixed = deny_wins(state)
    for peer in (500, 501, 502):
        for proto in (6, 17, 132):
            for port in range(76, 100):
                assert lookup(fixed, peer, False, proto, port).reason == _brute(state, peer, False, proto, port), \
                    (seed, peer, proto, port, state)


def test_diff() -> None:
    a = {allow_all(False): PolicyEntry(), PolicyKey(300, True): PolicyEntry()}
    b = {allow_all(False): PolicyEntry(deny=True), PolicyKey(301, True): PolicyEntry()}
    writes, deletes = diff(a, b)
    assert writes == b and deletes == [PolicyKey(300, True)]
    assert diff(b, b) == ({}, [])
