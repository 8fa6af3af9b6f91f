"""Cluster: joins node datapaths to the store so each learns about the others."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.store import ClusterStore, Event, InMemoryStore, NodeInfo


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


class Cluster:
    """Many nodes, one view. Adding or removing a node updates every other node's datapath.

    Existing connections between other nodes are not disturbed: only the changed node's tunnel entry
    or route is written.
    """

    def __init__(self, store: ClusterStore | None = None) -> None:
        self.store: ClusterStore = store or InMemoryStore()
        self._members: dict[str, tuple[NodeSink, Callable[[], None]]] = {}

    def join(self, info: NodeInfo, datapath: NodeSink) -> None:
        """Register a node: it learns every existing node, and every node learns it."""
        def on_change(event: Event, obj: Any) -> None:
            if event == "service-upsert":
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
