"""Selectors: which identities a policy's subject and peers are.

- :class:`LabelSelector` is a ``metav1.LabelSelector`` (``matchLabels`` and ``matchExpressions``
  with ``In``/``NotIn``/``Exists``/``DoesNotExist``, all ANDed; the empty selector matches every
  label set) over security labels (``source:key=value``). A NetworkPolicy's keys are Kubernetes
  label keys, so they are mapped to ``k8s:<key>`` (pod selectors) or
  ``k8s:io.cilium.k8s.namespace.labels.<key>`` (namespace selectors); a CiliumNetworkPolicy's keys
  carry their own source (``k8s:app``, ``reserved:host``) or none (any source).
- :class:`CidrSelector` is an ``ipBlock`` / ``toCIDRSet`` entry: a prefix minus its excepts.
- :data:`ENTITIES` are CiliumNetworkPolicy's ``fromEntities`` / ``toEntities``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.policy.identity import LOCAL_IDENTITY_FLAG, MIN_IDENTITY, ReservedIdentity
from ciliumlite.policy.labels import (
    NAMESPACE_LABELS,
    SOURCE_ANY,
    SOURCE_K8S,
    Labels,
    split_source,
)

#: The operators of ``matchExpressions``.
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    """One term of a selector: ``source:key <operator> values``."""

    source: str
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Labels) -> bool:
        """Whether ``labels`` satisfy this term (a source of ``any`` accepts every source)."""
        found = labels.with_key(self.key, self.source)
        if self.operator == "In":
            return any(lb.value in self.values for lb in found)
        if self.operator == "NotIn":
            return not any(lb.value in self.values for lb in found)
        if self.operator == "Exists":
            return bool(found)
        return not found  # DoesNotExist

    def __str__(self) -> str:
        key = f"{self.source}:{self.key}"
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{key} {self.operator}"
        return f"{key} {self.operator} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class LabelSelector:
    """Every requirement ANDed; no requirement selects every label set."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Labels) -> bool:
        """Whether ``labels`` satisfy every requirement."""
        return all(r.matches(labels) for r in self.requirements)

    def names_key(self, key: str) -> bool:
        """Whether some requirement is about ``key`` (of the ``k8s`` source or any)."""
        return any(r.key == key and r.source in (SOURCE_K8S, SOURCE_ANY) for r in self.requirements)

    def names_source(self, source: str) -> bool:
        """Whether some requirement is about a key of ``source``."""
        return any(r.source == source for r in self.requirements)

    def and_(self, *more: Requirement) -> LabelSelector:
        """This selector with more requirements."""
        return LabelSelector(self.requirements + more)

    def __str__(self) -> str:
        return " && ".join(map(str, self.requirements)) or "(all)"


def equals(source: str, key: str, value: str) -> Requirement:
    """``source:key=value`` (a ``matchLabels`` term)."""
    return Requirement(source, key, "In", frozenset([value]))


#: Maps a selector's key to (source, key) for the label set it selects from.
KeyMap = Callable[[str], tuple[str, str]]


def pod_keys(key: str) -> tuple[str, str]:
    """A NetworkPolicy pod selector's key: a pod's own Kubernetes label."""
    return SOURCE_K8S, key


def namespace_keys(key: str) -> tuple[str, str]:
    """A NetworkPolicy namespace selector's key: the pod's copy of its namespace's label."""
    return SOURCE_K8S, NAMESPACE_LABELS + key


def cilium_keys(key: str) -> tuple[str, str]:
    """A CiliumNetworkPolicy selector's key: ``source:key``, or any source without one."""
    return split_source(key, SOURCE_ANY)


def check_fields(obj: Mapping[str, Any], allowed: Iterable[str], field: str) -> None:
    """Raise :class:`ValidationError` naming the first key of ``obj`` not in ``allowed``."""
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise ValidationError(f"{field}: unknown field {unknown[0]!r} (allowed: {', '.join(allowed)})")


def parse_label_selector(obj: Any, field: str, keys: KeyMap) -> LabelSelector:
    """A ``metav1.LabelSelector`` dict (``None`` is the empty one). Raises
    :class:`ValidationError` naming the bad field (``field.matchExpressions[1].operator``)."""
    if obj is None:
        return LabelSelector()
    if not isinstance(obj, Mapping):
        raise ValidationError(f"{field}: a label selector is a mapping, not {type(obj).__name__}")
    check_fields(obj, ("matchLabels", "matchExpressions"), field)
    reqs: list[Requirement] = []
    match_labels = obj.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise ValidationError(f"{field}.matchLabels: a mapping of label keys to values")
    for key, value in match_labels.items():
        if not isinstance(key, str) or not key:
            raise ValidationError(f"{field}.matchLabels: key {key!r} is not a label key")
        if not isinstance(value, str):
            raise ValidationError(f"{field}.matchLabels.{key}: value {value!r} is not a string (quote it)")
        source, bare = keys(key)
        reqs.append(equals(source, bare, value))
    exprs = obj.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise ValidationError(f"{field}.matchExpressions: a list of requirements")
    for i, expr in enumerate(exprs):
        here = f"{field}.matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise ValidationError(f"{here}: a requirement is a mapping with key, operator, values")
        check_fields(expr, ("key", "operator", "values"), here)
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values")
        if not isinstance(key, str) or not key:
            raise ValidationError(f"{here}.key: missing or not a label key")
        if op not in OPERATORS:
            raise ValidationError(f"{here}.operator: {op!r} is not one of {', '.join(OPERATORS)}")
        if values is not None and (not isinstance(values, list) or not all(isinstance(v, str) for v in values)):
            raise ValidationError(f"{here}.values: a list of strings")
        if op in ("In", "NotIn") and not values:
            raise ValidationError(f"{here}.values: operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise ValidationError(f"{here}.values: operator {op} takes no values")
        source, bare = keys(key)
        reqs.append(Requirement(source, bare, op, frozenset(values or ())))
    return LabelSelector(tuple(reqs))


@dataclass(frozen=True)
class CidrSelector:
    """A prefix minus its excepts (``ipBlock``, ``toCIDRSet``; ``toCIDR`` has no excepts).
    IPv6 prefixes are kept as written but select nothing: ciliumlite's datapath is IPv4."""

    cidr: IPv4Network | IPv6Network
    excepts: tuple[IPv4Network | IPv6Network, ...] = ()

    @property
    def ipv4(self) -> bool:
        """Whether it can match anything (an IPv4 prefix)."""
        return isinstance(self.cidr, IPv4Network)

    def prefixes(self) -> list[IPv4Network]:
        """Every IPv4 prefix it names (the CIDR identities it needs)."""
        return [p for p in (self.cidr, *self.excepts) if isinstance(p, IPv4Network)]

    def selects_prefix(self, prefix: IPv4Network) -> bool:
        """Whether every address of ``prefix`` is in the cidr and outside every except (prefixes
        nest or are disjoint, so this is all-or-nothing for a CIDR identity's prefix)."""
        if not isinstance(self.cidr, IPv4Network) or not prefix.subnet_of(self.cidr):
            return False
        return not any(isinstance(e, IPv4Network) and prefix.subnet_of(e) for e in self.excepts)

    def contains(self, ip: IPv4Address) -> bool:
        """Whether one address is in the cidr and outside every except."""
        return (isinstance(self.cidr, IPv4Network) and ip in self.cidr
                and not any(isinstance(e, IPv4Network) and ip in e for e in self.excepts))

    def __str__(self) -> str:
        return str(self.cidr) + "".join(f" except {e}" for e in self.excepts)


def parse_cidr(text: Any, field: str) -> IPv4Network | IPv6Network:
    """A CIDR string (host bits allowed and cleared, as Kubernetes accepts them). Raises
    :class:`ValidationError` naming ``field``."""
    if not isinstance(text, str) or "/" not in text:
        raise ValidationError(f"{field}: {text!r} is not a CIDR (write address/prefix, e.g. 192.0.2.0/24)")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise ValidationError(f"{field}: {text!r} is not a CIDR ({e})") from None


def parse_cidr_selector(cidr: Any, excepts: Any, field: str, except_field: str = "except") -> CidrSelector:
    """A cidr and its excepts; each except must be a prefix of the same family inside the cidr
    (and not all of it). Raises :class:`ValidationError` naming the field."""
    net = parse_cidr(cidr, f"{field}.cidr")
    if excepts is None:
        excepts = []
    if not isinstance(excepts, list):
        raise ValidationError(f"{field}.{except_field}: a list of CIDRs")
    out = []
    for i, text in enumerate(excepts):
        here = f"{field}.{except_field}[{i}]"
        exc = parse_cidr(text, here)
        if exc.version != net.version or not exc.subnet_of(net):  # type: ignore[arg-type]
            raise ValidationError(f"{here}: {exc} is not inside the cidr {net}")
        out.append(exc)
    return CidrSelector(net, tuple(out))


def _reserved(*names: ReservedIdentity) -> Callable[[int, Labels], bool]:
    wanted = {int(n) for n in names}
    return lambda ident, labels: ident in wanted


def _world(ident: int, labels: Labels) -> bool:
    return ident == ReservedIdentity.WORLD or bool(ident & LOCAL_IDENTITY_FLAG)


_CLUSTER_RESERVED = {int(r) for r in (ReservedIdentity.HOST, ReservedIdentity.REMOTE_NODE, ReservedIdentity.INIT,
                                      ReservedIdentity.HEALTH, ReservedIdentity.UNMANAGED,
                                      ReservedIdentity.INGRESS, ReservedIdentity.KUBE_APISERVER)}


def _cluster(ident: int, labels: Labels) -> bool:
    # Cilium's "cluster": every identity inside the cluster, reserved ones included, not world.
    return not _world(ident, labels) and (ident >= MIN_IDENTITY or ident in _CLUSTER_RESERVED)


#: CiliumNetworkPolicy's entities: name -> which identities it selects. ``all`` is every peer
#: (the engine writes it as identity 0, any peer), ``none`` none; ``world`` includes every CIDR
#: identity (they are outside the cluster).
ENTITIES: dict[str, Callable[[int, Labels], bool]] = {
    "all": lambda ident, labels: True,
    "none": lambda ident, labels: False,
    "world": _world,
    "world-ipv4": _world,
    "world-ipv6": lambda ident, labels: False,  # an IPv4 datapath has no IPv6 peer
    "cluster": _cluster,
    "host": _reserved(ReservedIdentity.HOST),
    "remote-node": _reserved(ReservedIdentity.REMOTE_NODE),
    "kube-apiserver": _reserved(ReservedIdentity.KUBE_APISERVER),
    "init": _reserved(ReservedIdentity.INIT),
    "health": _reserved(ReservedIdentity.HEALTH),
    "unmanaged": _reserved(ReservedIdentity.UNMANAGED),
    "ingress": _reserved(ReservedIdentity.INGRESS),
}
