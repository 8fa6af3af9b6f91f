"""The cluster store: an interface, and the embedded in-process implementation used by default.

A distributed store (etcd, the Kubernetes API) implements the same methods; the Cluster never
needs to know which one it talks to. A store that also keeps endpoints and network policies (a
:class:`PolicyStore`: the in-memory one does) lets every node enforce the cluster's policies.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.endpoint import MAX_IDENTITY, MIN_IDENTITY

Event = Literal["upsert", "delete", "service-upsert", "service-delete", "endpoint-upsert", "endpoint-delete",
                "policy-upsert", "policy-delete"]
#: Called with ("upsert" | "delete", NodeInfo), ("service-upsert" | "service-delete", Service),
#: ("endpoint-upsert" | "endpoint-delete", EndpointRecord) or ("policy-upsert" | "policy-delete",
#: a ``ciliumlite.policy.Policy``).
Watcher = Callable[[Event, Any], None]


@dataclass(frozen=True)
class NodeInfo:
    """What the cluster knows of a node: its name, underlay address and pod CIDR."""

    name: str
    ip: str
    pod_cidr: str

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Address(self.ip)
            ipaddress.IPv4Network(self.pod_cidr)
        except ValueError as exc:
            raise ValidationError(f"node {self.name}: {exc}") from exc


@dataclass(frozen=True, eq=False)
class EndpointRecord:
    """A pod as the cluster knows it: Cilium's ipcache entry (address, identity, hosting node)
    plus what policy needs of it (its security labels and named ports)."""

    ip: str
    node: str
    node_ip: str
    identity: int
    #: Security labels in the store's form (``{"k8s:app": "web", ...}``, ``Labels.as_dict()``).
    labels: Mapping[str, str]
    #: ``{(name, protocol number): port}`` of its containers' named ports.
    named_ports: Mapping[tuple[str, int], int] = field(default_factory=dict)
    #: ``namespace/pod``, for messages.
    name: str = ""

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Address(self.ip)
            ipaddress.IPv4Address(self.node_ip)
        except ValueError as exc:
            raise ValidationError(f"endpoint {self.name or self.ip}: {exc}") from exc
        if isinstance(self.identity, bool) or not isinstance(self.identity, int) or \
                not MIN_IDENTITY <= self.identity <= MAX_IDENTITY:
            raise ValidationError(f"endpoint {self.name or self.ip}: identity {self.identity!r} is not in "
                                  f"{MIN_IDENTITY}..{MAX_IDENTITY}")


class ClusterStore(Protocol):
    """Where node records live; watchers hear every change."""

    def put_node(self, node: NodeInfo) -> None:
        """Create or replace a node record."""

    def delete_node(self, name: str) -> None:
        """Remove a node record."""

    def nodes(self) -> list[NodeInfo]:
        """Every node record."""

    def put_service(self, service: Any) -> None:
        """Create or replace a service (a ``ciliumlite.Service``)."""

    def delete_service(self, name: str) -> None:
        """Remove a service."""

    def services(self) -> list[Any]:
        """Every service."""

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """Call ``callback`` for every change from now on; returns a function that stops watching."""

    def allocate_identity(self, labels: Mapping[str, str]) -> int:
        """The cluster-wide security identity of a label set: the same labels get the same number
        on every node, and two label sets never share one. Raises :class:`ValidationError` when
        the identity space is exhausted."""


class PolicyStore(ClusterStore, Protocol):
    """A store that also keeps the cluster's endpoints and network policies."""

    def put_endpoint(self, record: EndpointRecord) -> None:
        """Create or replace the endpoint at ``record.ip``."""

    def delete_endpoint(self, ip: str) -> None:
        """Remove the endpoint at ``ip`` (no-op when absent)."""

    def endpoints(self) -> list[EndpointRecord]:
        """Every endpoint of the cluster."""

    def put_policy(self, policy: Any) -> None:
        """Create or replace a policy (a ``ciliumlite.policy.Policy``, by its ``key``)."""

    def delete_policy(self, key: str) -> None:
        """Remove the policy ``Kind/namespace/name`` (no-op when absent)."""

    def policies(self) -> list[Any]:
        """Every policy, by key."""


def identity_key(labels: Mapping[str, str]) -> str:
    """A label set as one canonical string (sorted ``k=v`` joined by ``;``), Cilium's label-array key."""
    return ";".join(f"{k}={v}" for k, v in sorted(labels.items()))


class InMemoryStore:
    """The embedded store: a dict and synchronous callbacks, safe across threads."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeInfo] = {}
        self._services: dict[str, Any] = {}
        self._watchers: list[Watcher] = []
        self._identities: dict[str, int] = {}
        self._endpoints: dict[str, EndpointRecord] = {}
        self._policies: dict[str, Any] = {}
        self._lock = threading.RLock()

    def _tell(self, event: Event, obj: Any) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for w in watchers:
            w(event, obj)

    def put_node(self, node: NodeInfo) -> None:
        """Create or replace ``node`` and tell the watchers."""
        with self._lock:
            for other in self._nodes.values():
                if other.name != node.name and (other.ip == node.ip or ipaddress.IPv4Network(other.pod_cidr)
                                                .overlaps(ipaddress.IPv4Network(node.pod_cidr))):
                    raise ValidationError(f"node {node.name} ({node.ip}, {node.pod_cidr}) clashes with "
                                          f"{other.name} ({other.ip}, {other.pod_cidr})")
            self._nodes[node.name] = node
            watchers = list(self._watchers)
        for w in watchers:
            w("upsert", node)

    def delete_node(self, name: str) -> None:
        """Remove a node and tell the watchers (no-op when absent)."""
        with self._lock:
            node = self._nodes.pop(name, None)
            watchers = list(self._watchers)
        if node is not None:
            for w in watchers:
                w("delete", node)

    def nodes(self) -> list[NodeInfo]:
        """Every node record, by name."""
        with self._lock:
            return sorted(self._nodes.values(), key=lambda n: n.name)

    def put_service(self, service: Any) -> None:
        """Create or replace a service and tell the watchers."""
        with self._lock:
            self._services[service.name] = service
            watchers = list(self._watchers)
        for w in watchers:
            w("service-upsert", service)

    def delete_service(self, name: str) -> None:
        """Remove a service and tell the watchers (no-op when absent)."""
        with self._lock:
            svc = self._services.pop(name, None)
            watchers = list(self._watchers)
        if svc is not None:
            for w in watchers:
                w("service-delete", svc)

    def services(self) -> list[Any]:
        """Every service, by name."""
        with self._lock:
            return [self._services[k] for k in sorted(self._services)]

    def put_endpoint(self, record: EndpointRecord) -> None:
        """Create or replace the endpoint at ``record.ip`` and tell the watchers."""
        with self._lock:
            self._endpoints[record.ip] = record
        self._tell("endpoint-upsert", record)

    def delete_endpoint(self, ip: str) -> None:
        """Remove the endpoint at ``ip`` and tell the watchers (no-op when absent)."""
        with self._lock:
            record = self._endpoints.pop(ip, None)
        if record is not None:
            self._tell("endpoint-delete", record)

    def endpoints(self) -> list[EndpointRecord]:
        """Every endpoint, by address."""
        with self._lock:
            return sorted(self._endpoints.values(), key=lambda r: ipaddress.IPv4Address(r.ip))

    def put_policy(self, policy: Any) -> None:
        """Create or replace ``policy`` (by its ``key``) and tell the watchers."""
        with self._lock:
            self._policies[policy.key] = policy
        self._tell("policy-upsert", policy)

    def delete_policy(self, key: str) -> None:
        """Remove the policy ``key`` and tell the watchers (no-op when absent)."""
        with self._lock:
            policy = self._policies.pop(key, None)
        if policy is not None:
            self._tell("policy-delete", policy)

    def policies(self) -> list[Any]:
        """Every policy, by key."""
        with self._lock:
            return [self._policies[k] for k in sorted(self._policies)]

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """Subscribe to changes."""
        with self._lock:
            self._watchers.append(callback)

        def stop() -> None:
            with self._lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return stop

    def allocate_identity(self, labels: Mapping[str, str]) -> int:
        """The identity of ``labels``: allocated on first use from MIN_IDENTITY up, then stable."""
        key = identity_key(labels)
        with self._lock:
            ident = self._identities.get(key)
            if ident is None:
                ident = MIN_IDENTITY + len(self._identities)
                if ident > MAX_IDENTITY:
                    raise ValidationError(f"no security identity left for {key!r} (all of "
                                          f"{MIN_IDENTITY}..{MAX_IDENTITY} are taken)")
                self._identities[key] = ident
            return ident
