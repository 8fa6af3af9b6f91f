"""The control plane: what every node must know about every other node (and, later, services)."""

from ciliumlite.cluster.cluster import Cluster
from ciliumlite.cluster.store import ClusterStore, InMemoryStore, NodeInfo

__all__ = ["Cluster", "ClusterStore", "InMemoryStore", "NodeInfo"]
