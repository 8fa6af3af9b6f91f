"""The control plane: what every node must know about every other node (and, later, services)."""

from ciliumlite.cluster.cluster import Cluster
from ciliumlite.cluster.etcd import EtcdStore, IPIdentity, KvstoreError, KvstoreStatus
from ciliumlite.cluster.store import ClusterStore, InMemoryStore, NodeInfo

__all__ = ["Cluster", "ClusterStore", "EtcdStore", "IPIdentity", "InMemoryStore", "KvstoreError", "KvstoreStatus",
           "NodeInfo"]
