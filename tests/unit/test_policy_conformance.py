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
from netpol_cases import CASES, NAMESPACES, PODS, netpol
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
