"""An independent model of Kubernetes NetworkPolicy, the oracle of the policy conformance test.

Written from the Kubernetes text (concepts/services-networking/network-policies and the
``networking.k8s.io/v1`` API reference), not from ciliumlite's engine, and kept free of any import
from ``ciliumlite`` so that a bug there cannot hide here. It works on plain manifest dicts, the
same ones the test applies, and answers one question: may ``src`` reach ``dst`` on ``port`` over
``protocol``? A connection needs the source's egress and the destination's ingress to allow it;
traffic from a pod's own node is always allowed (a pod cannot block its node) and is not modelled.

What the text leaves open is decided as cyclonus decides it: ``ipBlock`` matches any address in
``cidr`` minus ``except``, pod addresses included.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Port:
    """A port a pod serves, with its protocol and (optional) containerPort name."""

    port: int
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True)
class Pod:
    """A pod as the model sees it."""

    namespace: str
    name: str
    labels: Labels
    ip: str
    ports: Sequence[Port] = ()


@dataclass(frozen=True)
class External:
    """An address outside the cluster (only ``ipBlock`` peers can match it)."""

    ip: str


Peer = Pod | External


@dataclass
class Cluster:
    """Namespaces (name -> labels), pods and NetworkPolicy manifests (dicts)."""

    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)

    def namespace_labels(self, ns: str) -> dict[str, str]:
        """A namespace's labels, with the label every namespace carries by name."""
        return {**self.namespaces.get(ns, {}), "kubernetes.io/metadata.name": ns}

    def allowed(self, src: Peer, dst: Peer, port: int, protocol: str = "TCP") -> bool:
        """Whether ``src`` may open a connection to ``dst`` on ``port``/``protocol``."""
        if isinstance(src, Pod) and not self._allows(src, "Egress", dst, port, protocol, target=dst):
            return False
        return not (isinstance(dst, Pod) and not self._allows(dst, "Ingress", src, port, protocol, target=dst))

    def table(self, port: int, protocol: str = "TCP") -> dict[tuple[str, str], bool]:
        """Every pod to every pod: ``{("ns/src", "ns/dst"): allowed}`` (loopback included)."""
        return {(f"{s.namespace}/{s.name}", f"{d.namespace}/{d.name}"): self.allowed(s, d, port, protocol)
                for s in self.pods for d in self.pods}

    # --- one direction of one pod ---------------------------------------------------------------

    def _allows(self, pod: Pod, direction: str, peer: Peer, port: int, protocol: str, target: Peer) -> bool:
        selecting = [p for p in self.policies if self._selects(p, pod) and direction in policy_types(p)]
        if not selecting:
            return True  # not isolated in this direction
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in selecting:
            ns = policy["metadata"].get("namespace", "default")
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(peers_key) or []
                if peers and not any(self._peer_matches(ns, p, peer) for p in peers):
                    continue
                ports = rule.get("ports") or []
                if not ports or any(port_matches(p, port, protocol, target) for p in ports):
                    return True
        return False

    def _selects(self, policy: Mapping[str, Any], pod: Pod) -> bool:
        ns = policy["metadata"].get("namespace", "default")
        return pod.namespace == ns and selector_matches(policy["spec"].get("podSelector") or {}, pod.labels)

    def _peer_matches(self, policy_ns: str, peer_rule: Mapping[str, Any], peer: Peer) -> bool:
        block = peer_rule.get("ipBlock")
        if block is not None:
            addr = ipaddress.IPv4Address(peer.ip)
            return addr in ipaddress.IPv4Network(block["cidr"], strict=False) and not any(
                addr in ipaddress.IPv4Network(e, strict=False) for e in block.get("except") or [])
        if not isinstance(peer, Pod):
            return False  # selectors only ever select pods
        pod_sel, ns_sel = peer_rule.get("podSelector"), peer_rule.get("namespaceSelector")
        if ns_sel is None:
            in_ns = peer.namespace == policy_ns
        else:
            in_ns = selector_matches(ns_sel, self.namespace_labels(peer.namespace))
        return in_ns and (pod_sel is None or selector_matches(pod_sel, peer.labels))


def policy_types(policy: Mapping[str, Any]) -> list[str]:
    """``spec.policyTypes``, or its default: Ingress always, Egress when there are egress rules."""
    spec = policy["spec"]
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def selector_matches(selector: Mapping[str, Any], labels: Labels) -> bool:
    """A metav1.LabelSelector: ``matchLabels`` and every ``matchExpressions`` term (ANDed); the
    empty selector matches everything."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def port_matches(rule: Mapping[str, Any], port: int, protocol: str, target: Peer) -> bool:
    """A NetworkPolicyPort against a connection: protocol (default TCP), then a number, a
    number range (``endPort``) or a name resolved against the destination pod's ports."""
    if rule.get("protocol", "TCP") != protocol:
        return False
    want = rule.get("port")
    if want is None:
        return True
    if isinstance(want, str):
        return isinstance(target, Pod) and any(p.name == want and p.protocol == protocol and p.port == port
                                               for p in target.ports)
    end = rule.get("endPort")
    return want <= port <= end if end is not None else want == port


def serving(ports: Iterable[int] = (80, 81), protocols: Iterable[str] = ("TCP", "UDP")) -> tuple[Port, ...]:
    """The e2e suite's pod ports: one per (port, protocol), named ``serve-<port>-<proto>``."""
    return tuple(Port(p, proto, f"serve-{p}-{proto.lower()}") for p in ports for proto in protocols)
