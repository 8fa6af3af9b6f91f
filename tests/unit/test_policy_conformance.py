"""Conformance of the policy engine with the independent NetworkPolicy model (tests/netpol_model.py).

For each case (the Kubernetes e2e / cyclonus style ones of the reference note's §4 and §6, and a
seeded random set) the engine computes every endpoint's MapState, the kernel's lookup order
(ciliumlite.policy.verdict) decides every (source, destination, port, protocol), and the verdict
must equal the model's. Sources and destinations: pods a, b, c in namespaces x, y, z serving
TCP/UDP 80/81 (named serve-<port>-<proto>), and addresses outside the cluster. The identity of an
address is what cilium_ipcache would answer: a pod's /32, else the longest CIDR prefix the
policies name, else WORLD.
"""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from netpol_model import Cluster, External, Pod, serving

from ciliumlite.policy import (
    PROTOCOLS,
    MemoryIdentityAllocator,
    PolicyEndpoint,
    PolicyEngine,
    ReservedIdentity,
    flow_allowed,
    parse_policies,
    pod_labels,
)

pytestmark = pytest.mark.unit

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
EXTERNALS = (External("192.0.2.10"), External("198.51.100.7"), External("10.244.9.9"))
PORTS = (80, 81, 82)
PROTOS = ("TCP", "UDP", "SCTP")


def pods(relabel: dict[str, dict[str, str]] | None = None) -> list[Pod]:
    """The e2e pods; ``relabel``: ``{"x/a": labels}`` replaces a pod's labels."""
    out = []
    for i, ns in enumerate(NAMESPACES, start=1):
        for j, name in enumerate(PODS):
            labels = (relabel or {}).get(f"{ns}/{name}", {"pod": name})
            out.append(Pod(ns, name, labels, f"10.244.{i}.{j + 10}", serving()))
    return out


def netpol(ns: str, spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def compare(policies: list[dict[str, Any]], namespaces: dict[str, dict[str, str]] | None = None,
            relabel: dict[str, dict[str, str]] | None = None) -> tuple[int, list[str]]:
    """Cells compared and the mismatches, in words."""
    cluster = Cluster(namespaces or {ns: {"ns": ns} for ns in NAMESPACES}, pods(relabel), policies)
    alloc = MemoryIdentityAllocator()
    endpoints = {}
    for pod in cluster.pods:
        labels = pod_labels(pod.namespace, pod.labels, cluster.namespaces.get(pod.namespace, {}))
        endpoints[pod.name, pod.namespace] = PolicyEndpoint(
            alloc.allocate(labels), labels, (IPv4Address(pod.ip),),
            {(p.name, PROTOCOLS[p.protocol]): p.port for p in pod.ports if p.name}, f"{pod.namespace}/{pod.name}")
    engine = PolicyEngine(parse_policies(policies), alloc.cache(), endpoints.values())
    states = {k: engine.map_state(ep) for k, ep in endpoints.items()}
    ipcache = {IPv4Network(ep.ips[0]): ep.identity for ep in endpoints.values()}
    ipcache.update({p: i for p, i in engine.cidr_identities.items() if p not in ipcache})

    def identity(peer: Pod | External) -> int:
        addr = IPv4Address(peer.ip)
        best = max((p for p in ipcache if addr in p), key=lambda p: p.prefixlen, default=None)
        return int(ReservedIdentity.WORLD) if best is None else ipcache[best]

    peers: list[Pod | External] = [*cluster.pods, *EXTERNALS]
    cells, wrong = 0, []
    for src in peers:
        for dst in peers:
            if isinstance(src, External) and isinstance(dst, External):
                continue
            s_state = states[src.name, src.namespace] if isinstance(src, Pod) else None
            d_state = states[dst.name, dst.namespace] if isinstance(dst, Pod) else None
            for proto in PROTOS:
                for port in PORTS:
                    cells += 1
                    want = cluster.allowed(src, dst, port, proto)
                    got = flow_allowed(s_state, identity(src), d_state, identity(dst), PROTOCOLS[proto], port)
                    if got != want:
                        wrong.append(f"{name_of(src)} -> {name_of(dst)} {port}/{proto}: engine {got}, model {want}")
    return cells, wrong


def name_of(peer: Pod | External) -> str:
    return f"{peer.namespace}/{peer.name}" if isinstance(peer, Pod) else peer.ip


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


@pytest.mark.parametrize("case", sorted(CASES))
def test_case(case: str) -> None:
    cells, wrong = compare(CASES[case])
    assert cells == (12 * 12 - 3 * 3) * len(PROTOS) * len(PORTS)
    assert not wrong, f"{len(wrong)} of {cells} cells differ:\n" + "\n".join(wrong[:40])


def test_namespace_relabel() -> None:
    # Namespace y relabelled ns=z: the "from namespace ns=y" policy no longer lets it in.
    policy = CASES["allow from namespace y"]
    _, wrong = compare(policy, {"x": {"ns": "x"}, "y": {"ns": "z"}, "z": {"ns": "z"}})
    assert not wrong, "\n".join(wrong)


def test_pod_relabel() -> None:
    # x/c relabelled pod=b: it is now allowed where x/b is, and shares x/b's identity.
    policy = CASES["allow from pod b"]
    _, wrong = compare(policy, relabel={"x/c": {"pod": "b"}})
    assert not wrong, "\n".join(wrong)


def test_case_count() -> None:
    assert len(CASES) >= 48


# --- randomized ---------------------------------------------------------------------------------

def _random_selector(rng: random.Random, key: str, values: tuple[str, ...]) -> dict[str, Any]:
    kind = rng.randrange(4)
    if kind == 0:
        return {}
    if kind == 1:
        return {"matchLabels": {key: rng.choice(values)}}
    op = rng.choice(["In", "NotIn", "Exists", "DoesNotExist"])
    expr: dict[str, Any] = {"key": rng.choice([key, "other"]), "operator": op}
    if op in ("In", "NotIn"):
        expr["values"] = rng.sample(values, rng.randint(1, 2))
    return {"matchExpressions": [expr]}


def _random_peer(rng: random.Random) -> dict[str, Any]:
    kind = rng.randrange(5)
    if kind == 0:
        return {"podSelector": _random_selector(rng, "pod", PODS)}
    if kind == 1:
        return {"namespaceSelector": _random_selector(rng, "ns", NAMESPACES)}
    if kind == 2:
        return {"podSelector": _random_selector(rng, "pod", PODS),
                "namespaceSelector": _random_selector(rng, "ns", NAMESPACES)}
    cidr = rng.choice(["10.244.0.0/16", "10.244.1.0/24", "0.0.0.0/0", "192.0.2.0/24", "10.244.2.10/31"])
    net = IPv4Network(cidr)
    block: dict[str, Any] = {"cidr": cidr}
    if rng.random() < 0.5 and net.prefixlen < 31:
        sub = list(net.subnets(new_prefix=min(32, net.prefixlen + rng.choice([1, 8, 16]))))
        block["except"] = [str(rng.choice(sub[:300]))]
    return {"ipBlock": block}


def _random_ports(rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 2)):
        proto = rng.choice(["TCP", "UDP", "SCTP"])
        kind = rng.randrange(4)
        if kind == 0:
            out.append({"protocol": proto})
        elif kind == 1:
            out.append({"protocol": proto, "port": rng.choice(PORTS)})
        elif kind == 2:
            out.append({"protocol": proto, "port": 80, "endPort": rng.choice([80, 81, 82, 1000])})
        else:
            out.append({"protocol": proto, "port": rng.choice(["serve-80-tcp", "serve-81-udp", "serve-80-udp"])})
    return out


def _random_policy(rng: random.Random, i: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": _random_selector(rng, "pod", PODS)}
    types = rng.choice([["Ingress"], ["Egress"], ["Ingress", "Egress"], None])
    if types:
        spec["policyTypes"] = types
    for section, peers_key in (("ingress", "from"), ("egress", "to")):
        if rng.random() < 0.7:
            rules = []
            for _ in range(rng.randint(0, 2)):
                rule: dict[str, Any] = {}
                if rng.random() < 0.7:
                    rule[peers_key] = [_random_peer(rng) for _ in range(rng.randint(1, 2))]
                if rng.random() < 0.6:
                    rule["ports"] = _random_ports(rng)
                rules.append(rule)
            spec[section] = rules
    return netpol(rng.choice(NAMESPACES), spec, f"r{i}")


@pytest.mark.parametrize("seed", range(25))
def test_random(seed: int) -> None:
    rng = random.Random(seed)
    policies = [_random_policy(rng, i) for i in range(rng.randint(1, 4))]
    cells, wrong = compare(policies)
    assert not wrong, f"seed {seed}, {len(wrong)} of {cells} cells differ:\n" + "\n".join(wrong[:30]) + \
        f"\npolicies: {policies}"
