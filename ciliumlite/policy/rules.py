"""Typed policies parsed from manifests: Kubernetes ``networking.k8s.io/v1`` NetworkPolicy and the
L3/L4 subset of ``cilium.io/v2`` CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy.

Both become one form the engine reads: a :class:`Policy` of :class:`PolicySpec` (a subject
selector, which directions it isolates, and :class:`Rule` s of peers AND ports). What differs
between the two languages is decided here, at parse time:

- a NetworkPolicy rule without ``from``/``to`` allows every peer, and ``ingress: [{}]`` allows
  all; a CiliumNetworkPolicy rule with neither peers nor ``toPorts`` allows nothing (``ingress:
  [{}]`` is default deny), and one with only ``toPorts`` allows those ports from every peer;
- a NetworkPolicy ``ipBlock`` also matches pod addresses (the Kubernetes text and cyclonus);
  a CiliumNetworkPolicy CIDR never does (Cilium's ipcache resolves a pod's /32 to the pod);
- a NetworkPolicy port's protocol defaults to TCP, a CiliumNetworkPolicy's to ANY.

A bad manifest raises :class:`ValidationError` naming the field
(``NetworkPolicy x/p: spec.ingress[0].ports[1].endPort: ...``); nothing is returned half-parsed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.policy.labels import POD_NAMESPACE, SOURCE_K8S, SOURCE_RESERVED
from ciliumlite.policy.ports import PROTOCOLS, protocol_number
from ciliumlite.policy.selector import (
    ENTITIES,
    CidrSelector,
    LabelSelector,
    Requirement,
    check_fields,
    cilium_keys,
    equals,
    namespace_keys,
    parse_cidr,
    parse_cidr_selector,
    parse_label_selector,
    pod_keys,
)

NETWORK_POLICY = "NetworkPolicy"
CILIUM_NETWORK_POLICY = "CiliumNetworkPolicy"
CILIUM_CLUSTERWIDE_NETWORK_POLICY = "CiliumClusterwideNetworkPolicy"
#: apiVersion of each kind this module reads.
API_VERSIONS = {NETWORK_POLICY: "networking.k8s.io/v1", CILIUM_NETWORK_POLICY: "cilium.io/v2",
                CILIUM_CLUSTERWIDE_NETWORK_POLICY: "cilium.io/v2"}

#: A port name as Kubernetes validates it (IANA_SVC_NAME: 1-15 characters, lowercase letters,
#: digits and inner single hyphens, at least one letter).
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_IS_POD = Requirement(SOURCE_K8S, POD_NAMESPACE, "Exists")


@dataclass(frozen=True)
class PortRule:
    """One port of a rule: a protocol (0: any, CiliumNetworkPolicy's ANY without a port) and a
    number range, all ports (``first is None``) or a name resolved against the serving pod."""

    protocol: int
    first: int | None = None
    last: int | None = None
    name: str | None = None

    def __str__(self) -> str:
        proto = next((k for k, v in PROTOCOLS.items() if v == self.protocol), "ANY")
        if self.name:
            return f"{self.name}/{proto}"
        if self.first is None:
            return f"*/{proto}"
        return f"{self.first}{'' if self.last == self.first else f'-{self.last}'}/{proto}"


@dataclass(frozen=True)
class Peer:
    """One peer of a rule, one of: a label selector over identities, a CIDR (``match_pods``: a
    NetworkPolicy ipBlock, which also matches pod addresses) or a CiliumNetworkPolicy entity."""

    selector: LabelSelector | None = None
    cidr: CidrSelector | None = None
    match_pods: bool = False
    entity: str | None = None

    def __str__(self) -> str:
        if self.selector is not None:
            return f"endpoints({self.selector})"
        if self.cidr is not None:
            return f"cidr({self.cidr})"
        return f"entity({self.entity})"


@dataclass(frozen=True)
class Rule:
    """Peers AND ports. ``peers is None``: every peer (identity 0); ``()``: none. ``ports == ()``:
    every port and protocol."""

    egress: bool
    deny: bool
    peers: tuple[Peer, ...] | None
    ports: tuple[PortRule, ...] = ()


@dataclass(frozen=True)
class PolicySpec:
    """One subject and its rules (a NetworkPolicy has one; a CiliumNetworkPolicy one per rule of
    ``specs``). ``isolates_*``: whether an endpoint it selects becomes default deny in that
    direction."""

    subject: LabelSelector
    isolates_ingress: bool
    isolates_egress: bool
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Policy:
    """A parsed policy: its kind, ``namespace/name`` (namespace "" for a clusterwide one) and specs."""

    kind: str
    namespace: str
    name: str
    specs: tuple[PolicySpec, ...]
    #: The manifest it was parsed from (JSON-ready), what a store keeps: ``parse_policy(source)``
    #: gives the same policy back. None for one built in Python.
    source: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        """``Kind/namespace/name``: unique among policies."""
        return f"{self.kind}/{self.namespace}/{self.name}"

    def describe(self) -> dict[str, Any]:
        """The policy in words, as JSON-ready data (what ``ciliumlite policy get`` shows): each
        spec's subject, the directions it isolates, and its rules' verdict, peers and ports
        (``peers`` None: every peer; ``ports`` empty: every port)."""
        return {"key": self.key, "kind": self.kind, "namespace": self.namespace, "name": self.name,
                "specs": [{"subject": str(s.subject),
                           "isolates": [d for d, on in (("ingress", s.isolates_ingress),
                                                        ("egress", s.isolates_egress)) if on],
                           "rules": [{"direction": "egress" if r.egress else "ingress",
                                      "verdict": "deny" if r.deny else "allow",
                                      "peers": None if r.peers is None else [str(p) for p in r.peers],
                                      "ports": [str(p) for p in r.ports]} for r in s.rules]}
                          for s in self.specs]}


def _list(obj: Any, field: str) -> list[Any]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise ValidationError(f"{field}: a list, not {type(obj).__name__}")
    return obj


def _mapping(obj: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValidationError(f"{field}: a mapping, not {type(obj).__name__}")
    return obj


def _port_number(value: Any, field: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (0 if allow_zero else 1) <= value <= 65535:
        raise ValidationError(f"{field}: {value!r} is not a port ({0 if allow_zero else 1}..65535)")
    return value


def _port_name(value: str, field: str) -> str:
    if not _PORT_NAME.match(value):
        raise ValidationError(f"{field}: {value!r} is neither a port number nor a port name "
                              "(1-15 lowercase letters, digits and '-', with a letter)")
    return value


# --- NetworkPolicy --------------------------------------------------------------------------------

def _np_port(obj: Any, field: str) -> PortRule:
    obj = _mapping(obj, field)
    check_fields(obj, ("protocol", "port", "endPort"), field)
    proto = protocol_number(obj.get("protocol", "TCP"), f"{field}.protocol")
    port, end = obj.get("port"), obj.get("endPort")
    if port is None:
        if end is not None:
            raise ValidationError(f"{field}.endPort: needs a numeric port")
        return PortRule(proto)
    if isinstance(port, str):
        if end is not None:
            raise ValidationError(f"{field}.endPort: cannot go with the named port {port!r}")
        return PortRule(proto, name=_port_name(port, f"{field}.port"))
    first = _port_number(port, f"{field}.port")
    last = first if end is None else _port_number(end, f"{field}.endPort")
    if last < first:
        raise ValidationError(f"{field}.endPort: {last} is below port {first}")
    return PortRule(proto, first, last)


def _np_peer(obj: Any, field: str, namespace: str) -> Peer:
    obj = _mapping(obj, field)
    check_fields(obj, ("podSelector", "namespaceSelector", "ipBlock"), field)
    if not obj:
        raise ValidationError(f"{field}: an empty peer (give podSelector, namespaceSelector or ipBlock)")
    if "ipBlock" in obj:
        if len(obj) > 1:
            raise ValidationError(f"{field}: ipBlock cannot be combined with a selector in one peer")
        block = _mapping(obj["ipBlock"], f"{field}.ipBlock")
        check_fields(block, ("cidr", "except"), f"{field}.ipBlock")
        return Peer(cidr=parse_cidr_selector(block.get("cidr"), block.get("except"), f"{field}.ipBlock"),
                    match_pods=True)
    pods = parse_label_selector(obj.get("podSelector"), f"{field}.podSelector", pod_keys)
    if "namespaceSelector" in obj:
        nss = parse_label_selector(obj["namespaceSelector"], f"{field}.namespaceSelector", namespace_keys)
        return Peer(selector=pods.and_(_IS_POD, *nss.requirements))
    return Peer(selector=pods.and_(equals(SOURCE_K8S, POD_NAMESPACE, namespace)))


def _np_rules(spec: Mapping[str, Any], egress: bool, namespace: str) -> list[Rule]:
    section, peers_key = ("egress", "to") if egress else ("ingress", "from")
    out = []
    for i, rule in enumerate(_list(spec.get(section), f"spec.{section}")):
        here = f"spec.{section}[{i}]"
        rule = _mapping(rule or {}, here)
        check_fields(rule, (peers_key, "ports"), here)
        raw_peers = _list(rule.get(peers_key), f"{here}.{peers_key}")
        peers = tuple(_np_peer(p, f"{here}.{peers_key}[{j}]", namespace) for j, p in enumerate(raw_peers))
        ports = tuple(_np_port(p, f"{here}.ports[{j}]") for j, p in enumerate(_list(rule.get("ports"), f"{here}.ports")))
        # No peers listed: every peer (Kubernetes: "from/to omitted or empty matches all").
        out.append(Rule(egress, False, peers or None, ports))
    return out


def parse_network_policy(manifest: Mapping[str, Any]) -> Policy:
    """A ``networking.k8s.io/v1`` NetworkPolicy (the manifest as loaded from YAML)."""
    meta = _mapping(manifest.get("metadata") or {}, "metadata")
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    where = f"NetworkPolicy {namespace}/{name}"
    try:
        if not isinstance(name, str) or not name:
            raise ValidationError("metadata.name: missing")
        spec = _mapping(manifest.get("spec"), "spec")
        check_fields(spec, ("podSelector", "policyTypes", "ingress", "egress"), "spec")
        subject = parse_label_selector(spec.get("podSelector"), "spec.podSelector", pod_keys)
        types = _list(spec.get("policyTypes"), "spec.policyTypes")
        for i, t in enumerate(types):
            if t not in ("Ingress", "Egress"):
                raise ValidationError(f"spec.policyTypes[{i}]: {t!r} is not Ingress or Egress")
        if not types:  # Kubernetes' default: Ingress always, Egress when there are egress rules
            types = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
        ingress, egress = _np_rules(spec, False, namespace), _np_rules(spec, True, namespace)
        # Rules of a direction the policy does not isolate are ignored (as Kubernetes does).
        rules = (ingress if "Ingress" in types else []) + (egress if "Egress" in types else [])
        sel = subject.and_(equals(SOURCE_K8S, POD_NAMESPACE, namespace))
        return Policy(NETWORK_POLICY, namespace, name,
                      (PolicySpec(sel, "Ingress" in types, "Egress" in types, tuple(rules)),))
    except ValidationError as e:
        raise ValidationError(f"{where}: {e}") from None


# --- CiliumNetworkPolicy --------------------------------------------------------------------------

_CNP_RULE_FIELDS = ("endpointSelector", "ingress", "egress", "ingressDeny", "egressDeny", "enableDefaultDeny",
                    "description", "labels")
_CNP_UNSUPPORTED = ("nodeSelector", "fromRequires", "toRequires", "toServices", "toFQDNs", "toGroups", "fromGroups",
                    "icmps", "authentication", "fromNodes", "toNodes", "toCIDRGroupRef", "fromCIDRGroupRef")


def _cnp_endpoints(obj: Any, field: str, namespace: str) -> LabelSelector:
    sel = parse_label_selector(obj, field, cilium_keys)
    # In a namespaced policy a selector means that namespace's pods, unless it names the
    # namespace itself or selects reserved identities (Cilium's getEndpointSelector).
    if namespace and not sel.names_key(POD_NAMESPACE) and not sel.names_source(SOURCE_RESERVED):
        sel = sel.and_(equals(SOURCE_K8S, POD_NAMESPACE, namespace))
    return sel


def _cnp_port(obj: Any, field: str) -> list[PortRule]:
    obj = _mapping(obj, field)
    check_fields(obj, ("port", "endPort", "protocol"), field)
    proto_name = obj.get("protocol", "ANY")
    protos = list(PROTOCOLS.values()) if proto_name == "ANY" else [protocol_number(proto_name, f"{field}.protocol")]
    port, end = obj.get("port"), obj.get("endPort")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, str):
        if end is not None:
            raise ValidationError(f"{field}.endPort: cannot go with the named port {port!r}")
        name = _port_name(port, f"{field}.port")
        return [PortRule(p, name=name) for p in protos]
    if port is None or port == 0:  # Cilium: no port or port 0 is every port
        if end is not None:
            raise ValidationError(f"{field}.endPort: needs a nonzero port")
        return [PortRule(0)] if proto_name == "ANY" else [PortRule(p) for p in protos]
    first = _port_number(port, f"{field}.port")
    last = first if end is None else _port_number(end, f"{field}.endPort")
    if last < first:
        raise ValidationError(f"{field}.endPort: {last} is below port {first}")
    return [PortRule(p, first, last) for p in protos]


def _cnp_rule(obj: Any, field: str, egress: bool, deny: bool, namespace: str) -> Rule:
    obj = _mapping(obj or {}, field)
    side = "to" if egress else "from"
    for key in _CNP_UNSUPPORTED:
        if key in obj:
            raise ValidationError(f"{field}.{key}: not supported by ciliumlite (the L3/L4 subset)")
    check_fields(obj, (f"{side}Endpoints", f"{side}Entities", f"{side}CIDR", f"{side}CIDRSet", "toPorts"), field)
    peers: list[Peer] = []
    for i, sel in enumerate(_list(obj.get(f"{side}Endpoints"), f"{field}.{side}Endpoints")):
        peers.append(Peer(selector=_cnp_endpoints(sel, f"{field}.{side}Endpoints[{i}]", namespace)))
    for i, ent in enumerate(_list(obj.get(f"{side}Entities"), f"{field}.{side}Entities")):
        if ent not in ENTITIES:
            raise ValidationError(f"{field}.{side}Entities[{i}]: unknown entity {ent!r} "
                                  f"(one of {', '.join(sorted(ENTITIES))})")
        peers.append(Peer(entity=ent))
    for i, text in enumerate(_list(obj.get(f"{side}CIDR"), f"{field}.{side}CIDR")):
        peers.append(Peer(cidr=CidrSelector(parse_cidr(text, f"{field}.{side}CIDR[{i}]"))))
    for i, item in enumerate(_list(obj.get(f"{side}CIDRSet"), f"{field}.{side}CIDRSet")):
        here = f"{field}.{side}CIDRSet[{i}]"
        item = _mapping(item, here)
        check_fields(item, ("cidr", "except"), here)
        peers.append(Peer(cidr=parse_cidr_selector(item.get("cidr"), item.get("except"), here)))
    ports: list[PortRule] = []
    to_ports = _list(obj.get("toPorts"), f"{field}.toPorts")
    for i, group in enumerate(to_ports):
        here = f"{field}.toPorts[{i}]"
        group = _mapping(group or {}, here)
        if "rules" in group or "listener" in group or "serverNames" in group or "originatingTLS" in group:
            raise ValidationError(f"{here}: L7 rules are not supported by ciliumlite (the L3/L4 subset)")
        check_fields(group, ("ports",), here)
        plist = _list(group.get("ports"), f"{here}.ports")
        if not plist:
            ports.append(PortRule(0))
        for j, p in enumerate(plist):
            ports += _cnp_port(p, f"{here}.ports[{j}]")
    has_l3 = any(f"{side}{k}" in obj for k in ("Endpoints", "Entities", "CIDR", "CIDRSet"))
    if not has_l3:
        # Only toPorts: those ports from every peer. Neither: an empty rule, which selects nothing.
        return Rule(egress, deny, None if to_ports else (), tuple(ports))
    if any(p.entity == "all" for p in peers):
        return Rule(egress, deny, None, tuple(ports))
    return Rule(egress, deny, tuple(peers), tuple(ports))


def _cnp_spec(obj: Any, field: str, namespace: str) -> PolicySpec:
    obj = _mapping(obj, field)
    for key in _CNP_UNSUPPORTED:
        if key in obj:
            raise ValidationError(f"{field}.{key}: not supported by ciliumlite (the L3/L4 subset)")
    check_fields(obj, _CNP_RULE_FIELDS, field)
    if "endpointSelector" not in obj:
        raise ValidationError(f"{field}.endpointSelector: missing")
    subject = parse_label_selector(obj["endpointSelector"], f"{field}.endpointSelector", cilium_keys)
    if namespace:  # a namespaced policy's subject is always in its namespace
        subject = subject.and_(equals(SOURCE_K8S, POD_NAMESPACE, namespace))
    rules: list[Rule] = []
    for section, egress, deny in (("ingress", False, False), ("ingressDeny", False, True),
                                  ("egress", True, False), ("egressDeny", True, True)):
        for i, r in enumerate(_list(obj.get(section), f"{field}.{section}")):
            rules.append(_cnp_rule(r, f"{field}.{section}[{i}]", egress, deny, namespace))
    default_deny = _mapping(obj.get("enableDefaultDeny") or {}, f"{field}.enableDefaultDeny")
    check_fields(default_deny, ("ingress", "egress"), f"{field}.enableDefaultDeny")
    for k, v in default_deny.items():
        if not isinstance(v, bool):
            raise ValidationError(f"{field}.enableDefaultDeny.{k}: {v!r} is not true or false")
    # Cilium: a rule with an ingress or ingressDeny section makes its endpoints default deny in
    # that direction, unless enableDefaultDeny says otherwise.
    has_in = bool(obj.get("ingress") or obj.get("ingressDeny"))
    has_out = bool(obj.get("egress") or obj.get("egressDeny"))
    return PolicySpec(subject, has_in and default_deny.get("ingress", True),
                      has_out and default_deny.get("egress", True), tuple(rules))


def parse_cilium_network_policy(manifest: Mapping[str, Any]) -> Policy:
    """A ``cilium.io/v2`` CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy (``spec`` and/or
    ``specs``), the L3/L4 subset."""
    kind = manifest.get("kind", CILIUM_NETWORK_POLICY)
    meta = _mapping(manifest.get("metadata") or {}, "metadata")
    name = meta.get("name")
    namespace = "" if kind == CILIUM_CLUSTERWIDE_NETWORK_POLICY else (meta.get("namespace") or "default")
    where = f"{kind} {namespace + '/' if namespace else ''}{name}"
    try:
        if not isinstance(name, str) or not name:
            raise ValidationError("metadata.name: missing")
        specs = []
        if manifest.get("spec") is not None:
            specs.append(_cnp_spec(manifest["spec"], "spec", namespace))
        for i, s in enumerate(_list(manifest.get("specs"), "specs")):
            specs.append(_cnp_spec(s, f"specs[{i}]", namespace))
        if not specs:
            raise ValidationError("spec: missing (give spec or specs)")
        return Policy(kind, namespace, name, tuple(specs))
    except ValidationError as e:
        raise ValidationError(f"{where}: {e}") from None


def parse_policy(manifest: Mapping[str, Any]) -> Policy:
    """Any supported policy manifest, by its ``kind`` and ``apiVersion``. Raises
    :class:`ValidationError` naming the bad field."""
    if not isinstance(manifest, Mapping):
        raise ValidationError(f"a policy manifest is a mapping, not {type(manifest).__name__}")
    kind, api = manifest.get("kind"), manifest.get("apiVersion")
    if kind not in API_VERSIONS:
        raise ValidationError(f"kind: {kind!r} is not a policy kind ({', '.join(API_VERSIONS)})")
    if api != API_VERSIONS[kind]:
        raise ValidationError(f"{kind}: apiVersion {api!r} is not {API_VERSIONS[kind]!r}")
    parsed = parse_network_policy(manifest) if kind == NETWORK_POLICY else parse_cilium_network_policy(manifest)
    try:
        source = json.loads(json.dumps(manifest))
    except (TypeError, ValueError):
        source = None  # a value YAML can hold and JSON cannot (a date): kept in memory only
    return dataclasses.replace(parsed, source=source)


def parse_policies(manifests: Iterable[Mapping[str, Any]]) -> list[Policy]:
    """Every manifest parsed, or a :class:`ValidationError` for the first bad one (none returned:
    nothing is half-applied). Two policies with one kind/namespace/name are an error."""
    out: list[Policy] = []
    seen: set[str] = set()
    for i, m in enumerate(manifests):
        try:
            p = parse_policy(m)
        except ValidationError as e:
            raise ValidationError(f"manifest {i}: {e}") from None
        if p.key in seen:
            raise ValidationError(f"manifest {i}: {p.key} appears twice")
        seen.add(p.key)
        out.append(p)
    return out


def parse_policy_input(policy: str | Mapping[str, Any] | Policy | Iterable[Mapping[str, Any] | Policy]) -> list[Policy]:
    """Policies from YAML text (documents of policy kinds), a manifest mapping, a parsed
    :class:`Policy`, or a list of those; all parsed first (:func:`parse_policies`'s errors)."""
    if isinstance(policy, str):
        try:
            docs: list[Any] = [d for d in yaml.safe_load_all(policy) if d is not None]
        except yaml.YAMLError as exc:
            raise ValidationError(f"policy YAML does not parse: {exc}") from None
    elif isinstance(policy, (Mapping, Policy)):
        docs = [policy]
    else:
        docs = list(policy)
    parsed = parse_policies([d for d in docs if not isinstance(d, Policy)])
    ready = [d for d in docs if isinstance(d, Policy)]
    out = ready + parsed
    keys = [p.key for p in out]
    if len(set(keys)) != len(keys):
        raise ValidationError(f"a policy appears twice: {sorted(k for k in keys if keys.count(k) > 1)[0]}")
    return out
