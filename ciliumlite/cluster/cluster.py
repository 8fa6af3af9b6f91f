"""Cluster: joins node datapaths to the store so each learns about the others."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol, cast

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.store import ClusterStore, EndpointRecord, Event, InMemoryStore, NodeInfo, PolicyStore


class NodeSink(Protocol):
    """What a node offers the cluster: remote nodes and services in (``ciliumlite.Datapath`` implements it)."""

    def add_remote_node(self, node: NodeInfo) -> None:
        """Program the route or tunnel to ``node``'s pods."""

    def remove_remote_node(self, node: NodeInfo) -> None:
        """Forget ``node``."""

    def upsert_service(self, svc: Any) -> None:
        """Program a service."""

    def validate_service(self, svc: Any) -> None:
        """Raise ValidationError if ``svc`` cannot be programmed here (nothing is written)."""

    def delete_service(self, name: str) -> None:
        """Remove a service."""

    def sync_policy(self, policies: list[Any], endpoints: list[EndpointRecord]) -> object:
        """Enforce ``policies`` on this node's endpoints, knowing every endpoint of the cluster."""


def keeps_policy(store: ClusterStore) -> bool:
    """Whether ``store`` keeps endpoints and policies (a :class:`PolicyStore`)."""
    return all(callable(getattr(store, m, None)) for m in ("put_endpoint", "endpoints", "put_policy", "policies"))


def policy_store(store: ClusterStore) -> PolicyStore | None:
    """``store`` as a :class:`PolicyStore`, or None if it keeps no endpoints and policies."""
    return cast(PolicyStore, store) if keeps_policy(store) else None


class Cluster:
    """Many nodes, one view. Adding or removing a node updates every other node's datapath.

    Existing connections between other nodes are not disturbed: only the changed node's tunnel entry
    or route is written. With a store that keeps endpoints and policies (the in-memory one), every
    change to either makes each node sync its policy (``NodeSink.sync_policy``) before the call
    that made it returns.
    """

    def __init__(self, store: ClusterStore | None = None) -> None:
        self.store: ClusterStore = store or InMemoryStore()
        self._members: dict[str, tuple[NodeSink, Callable[[], None]]] = {}

    def join(self, info: NodeInfo, datapath: NodeSink) -> None:
        """Register a node: it learns every existing node, and every node learns it."""
        def on_change(event: Event, obj: Any) -> None:
            if event.startswith(("endpoint-", "policy-")):
                self._sync_policy(datapath)
            elif event == "service-upsert":
                datapath.upsert_service(obj)
            elif event == "service-delete":
                with contextlib.suppress(ValidationError):  # a node that never got it
                    datapath.delete_service(obj.name)
            elif obj.name == info.name:
                return
            elif event == "upsert":
                datapath.add_remote_node(obj)
            else:
                datapath.remove_remote_node(obj)

        self.store.put_node(info)  # validates first: a rejected node is subscribed to nothing
        previous = self._members.pop(info.name, None)
        if previous is not None:  # the node re-joined (e.g. restarted): its old subscription goes
            previous[1]()
        for existing in self.store.nodes():
            if existing.name != info.name:
                datapath.add_remote_node(existing)
        for svc in self.store.services():
            datapath.upsert_service(svc)
        self._sync_policy(datapath)
        stop = self.store.watch(on_change)
        self._members[info.name] = (datapath, stop)

    def leave(self, name: str) -> None:
        """Remove a node: every other node forgets it."""
        member = self._members.pop(name, None)
        if member is not None:
            member[1]()
        self.store.delete_node(name)

    def nodes(self) -> list[NodeInfo]:
        """Every node the cluster knows."""
        return self.store.nodes()

    def upsert_service(self, svc: Any) -> None:
        """Program ``svc`` on every node; it is validated against every node first, so a rejected
        service changes no node."""
        for datapath, _ in self._members.values():
            datapath.validate_service(svc)
        previous = next((s for s in self.store.services() if s.name == svc.name), None)
        try:
            self.store.put_service(svc)
        except BaseException:
            # A node failed part-way (e.g. a full map): put every node back where it was.
            if previous is not None:
                self.store.put_service(previous)
            else:
                self.store.delete_service(svc.name)
            raise

    def delete_service(self, name: str) -> None:
        """Remove a service from every node."""
        self.store.delete_service(name)

    def services(self) -> list[Any]:
        """Every service the cluster knows."""
        return self.store.services()

    # -- endpoints and policies (a PolicyStore only) ---------------------------------------------------
    def _policy_store(self) -> PolicyStore:
        store = policy_store(self.store)
        if store is None:
            raise ValidationError(f"this cluster's store ({type(self.store).__name__}) keeps no endpoints or "
                                  "policies: use the in-memory store (the default)")
        return store

    def _sync_policy(self, datapath: NodeSink) -> None:
        store = policy_store(self.store)
        if store is not None:
            datapath.sync_policy(store.policies(), store.endpoints())

    def put_endpoint(self, record: EndpointRecord) -> None:
        """Publish an endpoint: every node learns its identity (and enforces policies on it)."""
        self._policy_store().put_endpoint(record)

    def delete_endpoint(self, ip: str) -> None:
        """Withdraw the endpoint at ``ip`` from every node."""
        self._policy_store().delete_endpoint(ip)

    def endpoints(self) -> list[EndpointRecord]:
        """Every endpoint the cluster knows."""
        return self._policy_store().endpoints()

    def put_policy(self, policy: Any) -> None:
        """Apply a policy (a ``ciliumlite.policy.Policy``) on every node."""
        self._policy_store().put_policy(policy)

    def delete_policy(self, key: str) -> None:
        """Remove the policy ``Kind/namespace/name`` from every node."""
        self._policy_store().delete_policy(key)

    def policies(self) -> list[Any]:
        """Every policy the cluster holds."""
        return self._policy_store().policies()
