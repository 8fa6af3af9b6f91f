"""Manifests into a cluster store: :func:`apply` and :func:`delete`, with kubectl's summary lines.

A Kubernetes Service becomes one ciliumlite :class:`~ciliumlite.service.Service` per port
(:meth:`~ciliumlite.manifests.model.KubeService.service_name`); its EndpointSlices and Endpoints give
the backends. The store has only nodes and services (:class:`~ciliumlite.cluster.store.ClusterStore`),
so each ciliumlite service carries in its ``labels`` what a later apply needs: the Kubernetes
namespace, name, port name and target port, and each EndpointSlice's or Endpoints' ready addresses
and ports (:attr:`~ciliumlite.manifests.model.ObjectRef.source_label`). That is how a slice applied
alone updates a stored Service, and how a Service applied again keeps its backends.

Everything is checked, against the store too (a frontend or node port another service has, a node
address or pod CIDR another node has), before anything is written. The writes themselves are not a
transaction (the store interface has none); applying the same files again is safe.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.cluster import policy_store
from ciliumlite.cluster.store import ClusterStore, NodeInfo, PolicyStore
from ciliumlite.manifests.fields import ManifestError
from ciliumlite.manifests.model import (
    NAMESPACE_LABEL,
    POLICY_KINDS,
    PORT_LABEL,
    SERVICE_LABEL,
    SOURCE_PREFIXES,
    TARGET_PORT_LABEL,
    KubeEndpoints,
    KubeNode,
    KubePolicy,
    KubeService,
    Manifest,
    Manifests,
    ObjectRef,
    Origin,
    ServicePort,
    decode_groups,
)
from ciliumlite.policy.rules import Policy
from ciliumlite.service import Backend, Frontend, Service

Action = Literal["created", "configured", "unchanged", "deleted", "not found"]
Key = tuple[str, str]


@dataclass(frozen=True)
class Change:
    """What happened to one object: ``services`` are the ciliumlite services it wrote or removed."""

    ref: ObjectRef
    action: Action
    services: tuple[str, ...] = ()

    def line(self, dry_run: bool = False) -> str:
        """kubectl's line: ``service/web created`` (`` (dry run)`` appended for a dry run)."""
        return f"{self.ref} {self.action}{' (dry run)' if dry_run else ''}"


@dataclass
class Result:
    """Every object's :class:`Change`, in the order of the documents, and the warnings."""

    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    def lines(self) -> list[str]:
        """One kubectl-like line per object."""
        return [c.line(self.dry_run) for c in self.changes]

    @property
    def not_found(self) -> list[Change]:
        """The objects :func:`delete` did not find."""
        return [c for c in self.changes if c.action == "not found"]


def apply(store: ClusterStore, manifests: Manifests | Iterable[Manifest], *, dry_run: bool = False) -> Result:
    """Create or update the objects in ``store`` (nothing is written with ``dry_run``).

    A Service and its EndpointSlices/Endpoints (in this apply or already stored) become its ports'
    ciliumlite services; a Service whose endpoints are not known yet gets no backends (its
    connections are refused, as Cilium does); a stored port the Service no longer has is removed.

    Raises :class:`ManifestError` (every problem found, none written) for a repeated object, an
    EndpointSlice or Endpoints whose Service is neither in this apply nor stored, a frontend, node
    port, node address or pod CIDR that another service or node has, or a name taken by a service
    not made from this Service; whatever the store raises while writing goes through unchanged.
    """
    items = list(manifests)
    result = Result(warnings=list(manifests.warnings) if isinstance(manifests, Manifests) else [], dry_run=dry_run)
    _unique([m.ref for m in items])
    by_name = {s.name: s for s in store.services()}
    by_key = _by_key(by_name.values())
    services = {m.ref.service_key: m for m in items if isinstance(m, KubeService)}
    endpoints: dict[Key, list[KubeEndpoints]] = {}
    for m in items:
        if isinstance(m, KubeEndpoints):
            endpoints.setdefault(m.ref.service_key, []).append(m)
    errors: list[ManifestError] = []
    change_of: dict[int, Change] = {}
    removes: list[str] = []
    puts: dict[str, Service] = {}
    owners: dict[str, tuple[Origin, ServicePort]] = {}

    for key in sorted(set(services) | set(endpoints)):
        prev = by_key.get(key, [])
        svc = services.get(key) or (from_store(key, prev) if prev else None)
        slices = endpoints.get(key, [])
        if svc is None:
            errors += [e.ref.origin.error(_service_field(e), f"Service {key[0]}/{key[1]} is neither in this apply "
                                          f"nor in the store: apply the Service first, or in the same apply")
                       for e in slices]
            continue
        old_sources = _sources(prev)
        sources = dict(old_sources) | {e.ref.source_label: e.encode() for e in slices}
        try:
            new = build(svc, sources, result.warnings)
        except ValidationError as exc:
            errors.append((slices[-1].ref if slices else svc.ref).origin.error("", str(exc)))
            continue
        for s in new:
            other = by_name.get(s.name)
            if other is not None and _key_of(other) != key:
                errors.append(svc.ref.origin.error("metadata.name", f"the ciliumlite service {s.name!r} exists and "
                                                   f"was not made from this Service: delete it first"))
        names = tuple(s.name for s in new)
        removes += [s.name for s in prev if s.name not in names]
        puts |= {s.name: s for s in new if s.name not in by_name or by_name[s.name].to_dict() != s.to_dict()}
        if key in services:
            action: Action = "created" if not prev else \
                "unchanged" if _specs(prev) == _specs(new) else "configured"
            change_of[id(svc)] = Change(svc.ref, action, names)
            owners |= {s.name: (svc.ref.origin, p) for s, p in zip(new, svc.ports, strict=True)}
        for e in slices:
            old = old_sources.get(e.ref.source_label)
            action = "created" if old is None else "unchanged" if old == e.encode() else "configured"
            change_of[id(e)] = Change(e.ref, action, names)

    errors += _service_clashes(by_name, removes, puts, owners)
    node_puts, node_errors = _plan_nodes(store, [m for m in items if isinstance(m, KubeNode)], change_of)
    errors += node_errors
    policy_puts = _plan_policies(store, [m for m in items if isinstance(m, KubePolicy)], change_of, errors)
    if errors:
        raise ManifestError.combine(errors)
    result.changes = [change_of[id(m)] for m in items]
    if not dry_run:
        for node in node_puts:
            store.put_node(node)
        for name in removes:  # first: a renamed port's new service may take over the old one's frontend
            store.delete_service(name)
        for svc_value in puts.values():
            store.put_service(svc_value)
        for policy in policy_puts:  # last: the services they may be about exist by then
            cast(PolicyStore, store).put_policy(policy)
    return result


def _plan_policies(store: ClusterStore, items: list[KubePolicy], change_of: dict[int, Change],
                   errors: list[ManifestError]) -> list[Policy]:
    """The policies to write, each item's Change recorded; a store without policies is an error."""
    if not items:
        return []
    pstore = policy_store(store)
    if pstore is None:
        errors += [m.ref.origin.error("kind", f"this cluster's store ({type(store).__name__}) keeps no network "
                                      "policies: apply policies to an in-process lab's cluster") for m in items]
        return []
    stored = {p.key: p for p in pstore.policies()}
    out = []
    for m in items:
        old = stored.get(m.key)
        action: Action = "created" if old is None else "unchanged" if old == m.policy else "configured"
        change_of[id(m)] = Change(m.ref, action)
        if action != "unchanged":
            out.append(m.policy)
    return out


def delete(store: ClusterStore, objects: Iterable[ObjectRef | Manifest], *, dry_run: bool = False) -> Result:
    """Remove the objects from ``store`` (nothing is removed with ``dry_run``).

    A Service removes every ciliumlite service of its ports (with the endpoints they keep); an
    EndpointSlice or Endpoints removes its backends from its Service; a Node removes the node record.
    What is not there is reported ``not found``. Raises :class:`ManifestError` for an object named
    twice, :class:`ValidationError` for a stored service whose labels ``apply`` did not write.
    """
    refs = [o if isinstance(o, ObjectRef) else o.ref for o in objects]
    _unique(refs)
    result = Result(dry_run=dry_run)
    by_key = _by_key(store.services())
    nodes = {n.name for n in store.nodes()}
    gone = {r.service_key for r in refs if r.kind == "Service"}
    removes: list[str] = []
    node_removes: list[str] = []
    dropped: dict[Key, set[str]] = {}
    pstore = policy_store(store)
    policies = {p.key for p in pstore.policies()} if pstore is not None else set()
    policy_removes: list[str] = []
    for r in refs:
        prev = by_key.get(r.service_key, []) if r.kind not in ("Node", *POLICY_KINDS) else []
        names = tuple(s.name for s in prev)
        if r.kind in POLICY_KINDS:
            pkey = f"{r.kind}/{r.namespace}/{r.name}"
            found = pkey in policies
            policy_removes += [pkey] if found else []
        elif r.kind == "Node":
            found = r.name in nodes
            node_removes += [r.name] if found else []
        elif r.kind == "Service":
            found = bool(prev)
            removes += names
        else:
            found = bool(prev) and r.source_label in prev[0].labels
            if found and r.service_key not in gone:
                dropped.setdefault(r.service_key, set()).add(r.source_label)
        result.changes.append(Change(r, "deleted" if found else "not found", names if found else ()))
    puts = []
    for key, labels in sorted(dropped.items()):
        prev = by_key[key]
        sources = {k: v for k, v in _sources(prev).items() if k not in labels}
        puts += build(from_store(key, prev), sources, result.warnings)
    if not dry_run:
        for name in removes:
            store.delete_service(name)
        for svc in puts:
            store.put_service(svc)
        for name in node_removes:
            store.delete_node(name)
        for pkey in policy_removes:
            cast(PolicyStore, store).delete_policy(pkey)
    return result


def build(svc: KubeService, sources: dict[str, str], warnings: list[str]) -> list[Service]:
    """The ciliumlite services of ``svc``, one per port, with the backends of ``sources`` (source
    label → :meth:`~ciliumlite.manifests.model.KubeEndpoints.encode`). A source with ready addresses
    but no port for one of the Service's ports adds a warning. Raises :class:`ValidationError`
    when a service cannot hold its backends (more than the model allows)."""
    ns, name = svc.ref.namespace, svc.ref.name
    decoded = [(label, decode_groups(value, f"service {ns}/{name}: label {label}"))
               for label, value in sorted(sources.items())]
    out = []
    for i, p in enumerate(svc.ports):
        backends: set[tuple[str, int]] = set()
        dying: set[tuple[str, int]] = set()
        for label, groups in decoded:
            for g in groups:
                number = g.port_for(p)
                if number is not None:
                    backends.update((a, number) for a in g.addresses)
                    dying.update((a, number) for a in g.terminating)
                elif g.addresses:
                    warnings.append(f"{_source_name(label)}: no port named {p.name or '(unnamed)'!r}/{p.protocol} "
                                    f"(the Service port's name) or matching its targetPort {p.target_port!r}: its "
                                    f"{len(g.addresses)} ready address(es) are not backends of {svc.service_name(p)}")
        labels = {NAMESPACE_LABEL: ns, SERVICE_LABEL: name, PORT_LABEL: p.name, TARGET_PORT_LABEL: str(p.target_port),
                  **sources}
        dying -= backends  # ready in one slice wins over terminating in another
        ordered = sorted(backends | dying, key=lambda b: (ipaddress.IPv4Address(b[0]), b[1]))
        # One health check per Kubernetes Service (its node port is one port): the first port's
        # service serves it.
        health = svc.health_check_node_port if i == 0 else None
        out.append(Service(svc.service_name(p), Frontend(svc.cluster_ip, p.port, p.protocol),
                           tuple(Backend(ip, port, (ip, port) in dying) for ip, port in ordered), svc.type,
                           p.node_port, svc.external_traffic_policy, svc.session_affinity, svc.affinity_timeout,
                           svc.maglev, labels, svc.external_ips, svc.load_balancer_ips, svc.internal_traffic_policy,
                           health))
    return out


def from_store(key: Key, services: list[Service]) -> KubeService:
    """The Kubernetes Service that ``services`` (its ports' ciliumlite services, as stored) came from."""
    first = services[0]
    ports = tuple(ServicePort(s.labels.get(PORT_LABEL, ""), s.frontend.protocol, s.frontend.port,
                              _target(s.labels.get(TARGET_PORT_LABEL, ""), s.frontend.port), s.node_port,
                              f"spec.ports[{i}]")
                  for i, s in enumerate(sorted(services, key=lambda s: s.labels.get(PORT_LABEL, ""))))
    origin = Origin("the store", None, "Service", f"{key[0]}/{key[1]}")
    health = next((s.health_check_node_port for s in services if s.health_check_node_port is not None), None)
    return KubeService(ObjectRef("Service", key[0], key[1], origin), first.type, first.frontend.ip, ports,
                       first.external_traffic_policy, first.session_affinity, first.affinity_timeout, first.maglev,
                       tuple(first.external_ips), tuple(first.load_balancer_ips), first.internal_traffic_policy,
                       health)


def _target(value: str, port: int) -> int | str:
    if not value:
        return port
    return int(value) if value.isdigit() else value


def _key_of(svc: Service) -> Key | None:
    ns, name = svc.labels.get(NAMESPACE_LABEL), svc.labels.get(SERVICE_LABEL)
    return (ns, name) if ns is not None and name is not None else None


def _by_key(services: Iterable[Any]) -> dict[Key, list[Service]]:
    """Stored ciliumlite services made from manifests, by (namespace, name) of their Kubernetes Service."""
    out: dict[Key, list[Service]] = {}
    for s in services:
        key = _key_of(s) if isinstance(s, Service) else None
        if key is not None:
            out.setdefault(key, []).append(s)
    for group in out.values():
        group.sort(key=lambda s: s.name)
    return out


def _sources(services: list[Service]) -> dict[str, str]:
    """The EndpointSlice/Endpoints contents a stored Service keeps (the same on every port's service)."""
    if not services:
        return {}
    return {k: v for k, v in services[0].labels.items() if k.startswith(SOURCE_PREFIXES)}


def _source_name(label: str) -> str:
    """``k8s.ciliumlite.io/endpointslice.web-abc`` → ``endpointslice.discovery.k8s.io/web-abc``."""
    for prefix, resource in zip(SOURCE_PREFIXES, ("endpointslice.discovery.k8s.io", "endpoints"), strict=True):
        if label.startswith(prefix):
            return f"{resource}/{label[len(prefix):]}"
    return label


def _specs(services: list[Service]) -> dict[str, dict[str, Any]]:
    """What a Service manifest decides of its ciliumlite services: all but backends and their sources."""
    out = {}
    for s in services:
        d = s.to_dict()
        d.pop("backends")
        d["labels"] = {k: v for k, v in s.labels.items() if not k.startswith(SOURCE_PREFIXES)}
        out[s.name] = d
    return out


def _service_field(e: KubeEndpoints) -> str:
    return "metadata.labels[kubernetes.io/service-name]" if e.ref.kind == "EndpointSlice" else "metadata.name"


def _unique(refs: list[ObjectRef]) -> None:
    seen: dict[tuple[str, str, str], ObjectRef] = {}
    errors = []
    for r in refs:
        first = seen.setdefault((r.kind, r.namespace, r.name), r)
        if first is not r:
            where = f"{first.origin.source}, document {first.origin.document}"
            errors.append(r.origin.error("metadata.name", f"{r.kind} {first.origin.name} appears twice ({where})"))
    if errors:
        raise ManifestError.combine(errors)


def _service_clashes(by_name: dict[str, Service], removes: list[str], puts: dict[str, Service],
                     owners: dict[str, tuple[Origin, ServicePort]]) -> list[ManifestError]:
    """A frontend or node port that two services would have (the datapath would refuse the second)."""
    final = {n: s for n, s in by_name.items() if n not in removes} | puts
    errors = []
    reported: set[frozenset[str]] = set()
    for name, svc in puts.items():
        if name not in owners:  # unchanged frontends of a stored Service (a slice applied alone)
            continue
        origin, port = owners[name]
        for other in final.values():
            pair = frozenset((name, other.name))
            if other.name == name or pair in reported:
                continue
            # The ClusterIP and each external/LoadBalancer IP at the port; the node port and the
            # health check port: the same claims the datapath checks.
            shared_fe = [fe for fe in svc.frontends() if fe in other.frontends()]
            shared_np = [np for np in svc.node_ports() if np in other.node_ports()]
            if shared_fe:
                fe = shared_fe[0]
                reported.add(pair)
                errors.append(origin.error(f"{port.path}.port", f"frontend {fe.ip}:{fe.port}/{fe.protocol} is "
                                           f"already used by service {other.name}"))
            elif shared_np:
                number, proto = shared_np[0]
                field = "nodePort" if number == svc.node_port else "healthCheckNodePort"
                where = f"{port.path}.nodePort" if field == "nodePort" else "spec.healthCheckNodePort"
                reported.add(pair)
                errors.append(origin.error(where, f"node port {number}/{proto} is already used by service "
                                           f"{other.name}"))
    return errors


def _plan_nodes(store: ClusterStore, nodes: list[KubeNode],
                change_of: dict[int, Change]) -> tuple[list[NodeInfo], list[ManifestError]]:
    """The node records to write, and the address or pod CIDR clashes (the store would refuse them)."""
    stored = {n.name: n for n in store.nodes()}
    final = dict(stored) | {n.info.name: n.info for n in nodes}
    errors = []
    reported: set[frozenset[str]] = set()
    puts = []
    for n in nodes:
        info = n.info
        for other in final.values():
            pair = frozenset((info.name, other.name))
            if other.name == info.name or pair in reported:
                continue
            if other.ip == info.ip:
                reported.add(pair)
                errors.append(n.ref.origin.error(n.ip_path, f"{info.ip} is already the address of node {other.name}"))
            elif ipaddress.IPv4Network(other.pod_cidr).overlaps(ipaddress.IPv4Network(info.pod_cidr)):
                reported.add(pair)
                errors.append(n.ref.origin.error(n.cidr_path, f"{info.pod_cidr} overlaps the pod CIDR of node "
                                                 f"{other.name} ({other.pod_cidr})"))
        old = stored.get(info.name)
        action: Action = "created" if old is None else "unchanged" if old == info else "configured"
        change_of[id(n)] = Change(n.ref, action)
        if action != "unchanged":
            puts.append(info)
    return puts, errors
