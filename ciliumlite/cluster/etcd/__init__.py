"""``EtcdStore``: the cluster store over a real etcd, with Cilium's key layout and semantics.

It talks to etcd's HTTP/JSON gateway (``/v3/...``) through the ``etcd3gw`` client: no gRPC, no
protobuf. Every value is JSON; the keys, all under ``cilium/state/`` but the heartbeat, are
listed in ``keys.py`` (on the API page: *The keys*).

Semantics, after Cilium's ``pkg/kvstore``: a store with an ``owner`` (one agent, one node) holds
one lease that a background thread keeps alive; its *own keys* (its node record, its ip entries,
its identity value keys) live on that lease, are re-created at once when someone deletes them, and
are re-written on a new lease when the old one is gone. ``watch`` is list-then-watch from a
revision: it delivers the changes after the revision of the ``nodes()``/``services()`` lists the
calling thread last made, so ``Cluster.join`` (list, then watch) loses nothing in between. A broken
watch or a compaction is answered by a relist that emits deletes for keys that vanished and upserts
for keys that changed. When etcd is down every call raises :class:`KvstoreError`, and the threads
retry with exponential backoff (0.1 s to 5 s) and resync once it is back. Nothing here touches a
datapath: what is programmed stays programmed. See ``docs/kvstore.md``.

The code, by job: :mod:`.keys` (the key layout and the gateway's encoding), :mod:`.records` (the
values: node records, services, :class:`IPIdentity`), :mod:`.client` (requests with failover and
backoff, :class:`KvstoreError`, :class:`KvstoreStatus`), :mod:`.stream` (one watch stream on a
thread), :mod:`.lease` (the owner's lease, keepalive, heartbeat and own keys), :mod:`.watch`
(list-then-watch and relists), :mod:`.identities` (identity allocation) and :mod:`.store`
(:class:`EtcdStore`, composing them). Each imports only those before it in this list.
"""

from __future__ import annotations

from ciliumlite.cluster.etcd.client import KvstoreError, KvstoreStatus
from ciliumlite.cluster.etcd.keys import HEARTBEAT_KEY
from ciliumlite.cluster.etcd.records import IpEvent, IPIdentity, IpWatcher
from ciliumlite.cluster.etcd.store import EtcdStore

__all__ = [
    "HEARTBEAT_KEY",
    "IPIdentity",
    "KvstoreError",
    "KvstoreStatus",
    "EtcdStore",
    "IpEvent",
    "IpWatcher",
]
