"""The cluster store: an interface, and the embedded in-process implementation used by default.

A distributed store (etcd, the Kubernetes API) implements the same four methods; the Cluster never
needs to know which one it talks to.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.endpoint import MAX_IDENTITY, MIN_IDENTITY

Event = Literal["upsert", "delete", "service-upsert", "service-delete"]
#: Called with ("upsert" | "delete", NodeInfo) or ("service-upsert" | "service-delete", Service).
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
        self._lock = threading.RLock()

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
