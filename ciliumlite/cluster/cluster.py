"""Cluster: joins node datapaths to the store so each learns about the others."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ciliumlite.cluster.store import ClusterStore, Event, InMemoryStore, NodeInfo


class RemoteNodeSink(Protocol):
    """What a node's datapath offers the cluster (``ciliumlite.Datapath`` implements it)."""

    def add_remote_node(self, node: NodeInfo) -> None:
        """Program the route or tunnel to ``node``'s pods."""

    def remove_remote_node(self, node: NodeInfo) -> None:
        """Forget ``node``."""


class Cluster:
    """Many nodes, one view. Adding or removing a node updates every other node's datapath.

    Existing connections between other nodes are not disturbed: only the changed node's tunnel entry
    or route is written.
    """

    def __init__(self, store: ClusterStore | None = None) -> None:
        self.store: ClusterStore = store or InMemoryStore()
        self._members: dict[str, tuple[RemoteNodeSink, Callable[[], None]]] = {}

    def join(self, info: NodeInfo, datapath: RemoteNodeSink) -> None:
        """Register a node: it learns every existing node, and every node learns it."""
        def on_change(event: Event, node: NodeInfo) -> None:
            if node.name == info.name:
                return
            if event == "upsert":
                datapath.add_remote_node(node)
            else:
                datapath.remove_remote_node(node)

        for existing in self.store.nodes():
            if existing.name != info.name:
                datapath.add_remote_node(existing)
        stop = self.store.watch(on_change)
        self._members[info.name] = (datapath, stop)
        self.store.put_node(info)

    def leave(self, name: str) -> None:
        """Remove a node: every other node forgets it."""
        member = self._members.pop(name, None)
        if member is not None:
            member[1]()
        self.store.delete_node(name)

    def nodes(self) -> list[NodeInfo]:
        """Every node the cluster knows."""
        return self.store.nodes()
