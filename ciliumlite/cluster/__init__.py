"""The control plane: what every node must know about every other node (and, later, services)."""

from ciliumlite.cluster.cluster import Cluster
from ciliumlite.cluster.etcd import EtcdStore, IPIdentity, KvstoreError, KvstoreStatus
from ciliumlite.cluster.store import ClusterStore, EndpointRecord, InMemoryStore, NodeInfo, PolicyStore

__all__ = ["Cluster", "ClusterStore", "EndpointRecord", "EtcdStore", "IPIdentity", "InMemoryStore", "KvstoreError",
           "KvstoreStatus", "NodeInfo", "PolicyStore"]
