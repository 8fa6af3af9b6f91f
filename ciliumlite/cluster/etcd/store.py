"""``EtcdStore``: the cluster store over etcd, composed of the connection (:mod:`.client`), the
owner's lease and own keys (:mod:`.lease`), list-then-watch (:mod:`.watch`) and the identity
allocator (:mod:`.identities`); this module holds the records' API (nodes, services, ipcache)."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.etcd.client import EtcdClient, KvstoreError, KvstoreStatus
from ciliumlite.cluster.etcd.identities import Identities
from ciliumlite.cluster.etcd.keys import (
    IPS,
    NAMESPACES,
    NODES,
    POLICIES,
    SERVICES,
    TXN_ATTEMPTS,
    TXN_OPS,
    b64,
    check_name,
    prefix_end,
    put_op,
)
from ciliumlite.cluster.etcd.lease import OwnKeys
from ciliumlite.cluster.etcd.records import (
    IPIdentity,
    IpWatcher,
    NamespaceRecord,
    decode_endpoint,
    decode_ip,
    decode_namespace,
    decode_node,
    decode_policy,
    decode_service,
    endpoint_json,
    ip_json,
    namespace_json,
    node_json,
    policy_json,
    service_json,
)
from ciliumlite.cluster.etcd.watch import Kind, Watches
from ciliumlite.cluster.store import EndpointRecord, NodeInfo, Watcher
from ciliumlite.service import Service


class EtcdStore:
    """A :class:`~ciliumlite.cluster.store.ClusterStore` over etcd (v3 API, 3.4 or newer).

    Args:
        endpoints: client URLs, e.g. ``["http://127.0.0.1:2379"]``; calls fail over between them.
        cluster: the cluster name in the keys (Cilium's ``cluster-name``).
        owner: the node this store speaks for (one agent). Its node record, ip entries and
            identity value keys are *own keys*: on the lease, kept alive, re-created. None for a
            client that owns nothing (the CLI, ``apply -f``): no lease, no background thread.
        lease_ttl: seconds; the lease is renewed every ``lease_ttl / 3``. etcd raises TTLs below
            its minimum (about 2 s with default election settings). A dead owner's keys vanish
            after this long.
        request_timeout: seconds per request; a hung etcd (SIGSTOP) fails a call after this long.
        connect_timeout: seconds to keep trying to reach etcd at construction (exponential
            backoff) before giving up; 0 tries once. This is the retry option for an etcd that
            starts after the agent.
        sync_interval: seconds between re-assertions of the own keys (Cilium's 5 min
            ``KVstorePeriodicSync``); a deleted own key is re-created at once regardless.
        heartbeat_interval: with an owner, write ``cilium/.heartbeat`` this often (the
            operator's job in Cilium); None writes none.
        watch_idle_timeout: a watch stream silent this long is re-opened from its revision
            (nothing is lost; this finds half-open connections).

    Raises:
        ValidationError: bad arguments.
        KvstoreError: etcd could not be reached within ``connect_timeout`` (or, with an owner,
            the lease could not be granted).
    """

    def __init__(self, endpoints: Sequence[str], *, cluster: str = "default", owner: str | None = None,
                 lease_ttl: int = 15, request_timeout: float = 2.0, connect_timeout: float = 0.0,
                 sync_interval: float = 300.0, heartbeat_interval: float | None = None,
                 watch_idle_timeout: float = 60.0) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValidationError("EtcdStore needs at least one endpoint (e.g. http://127.0.0.1:2379)")
        check_name("cluster", cluster)
        if owner is not None:
            check_name("owner node", owner)
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, int) or lease_ttl < 1:
            raise ValidationError(f"lease_ttl must be a whole number of seconds >= 1, not {lease_ttl!r}")
        if request_timeout <= 0 or connect_timeout < 0 or sync_interval <= 0 or watch_idle_timeout <= 0:
            raise ValidationError("request_timeout, sync_interval and watch_idle_timeout must be > 0, "
                                  "connect_timeout >= 0")
        #: etcd's client URLs (``--kvstore-opt etcd.config`` endpoints in Cilium).
        self.etcd_endpoints: tuple[str, ...] = tuple(endpoints)
        self.cluster = cluster
        self.owner = owner
        self.lease_ttl = lease_ttl
        self.request_timeout = request_timeout
        self.sync_interval = sync_interval
        self.heartbeat_interval = heartbeat_interval
        self.watch_idle_timeout = watch_idle_timeout
        self._client = EtcdClient(self.etcd_endpoints, request_timeout)
        self._own = OwnKeys(self._client, owner=owner, lease_ttl=lease_ttl, sync_interval=sync_interval,
                            heartbeat_interval=heartbeat_interval)
        self._watches = Watches(self._client, idle_timeout=watch_idle_timeout)
        self._identities = Identities(self._client, self._own)
        self._closed = False

        try:
            self._client.connect(connect_timeout, then=self._own.grant if owner is not None else None)
        except BaseException:
            self._client.close()
            raise
        if owner is not None:
            try:
                self._own.start(idle_timeout=watch_idle_timeout)
            except BaseException:
                self.close()  # revokes the lease just granted
                raise

    def _current_revision(self) -> int:
        return self._client.current_revision()

    # -- nodes -------------------------------------------------------------------------------------

    def _node_key(self, name: str) -> str:
        return f"{NODES}{self.cluster}/{name}"

    @property
    def _node_kind(self) -> Kind:
        return Kind(f"{NODES}{self.cluster}/", "upsert", "delete", decode_node)

    @property
    def _service_kind(self) -> Kind:
        return Kind(f"{SERVICES}{self.cluster}/", "service-upsert", "service-delete", decode_service)

    @property
    def _ip_kind(self) -> Kind:
        return Kind(f"{IPS}{self.cluster}/", "ip-upsert", "ip-delete", decode_ip)

    @property
    def _endpoint_kind(self) -> Kind:  # the same keys as the ipcache, read as whole endpoint records
        return Kind(f"{IPS}{self.cluster}/", "endpoint-upsert", "endpoint-delete", decode_endpoint)

    @property
    def _policy_kind(self) -> Kind:
        return Kind(f"{POLICIES}{self.cluster}/", "policy-upsert", "policy-delete", decode_policy)

    @property
    def _namespace_kind(self) -> Kind:
        return Kind(f"{NAMESPACES}{self.cluster}/", "namespace-upsert", "namespace-delete", decode_namespace)

    def put_node(self, node: NodeInfo) -> None:
        """Create or replace a node record. The owner's own node goes on its lease.

        Validated like ``InMemoryStore.put_node`` against the records in etcd, atomically: the
        write is a transaction that holds only if no node record changed since they were read.

        Raises:
            ValidationError: the name is not a key segment, or the node's IP or pod CIDR clashes
                with another node's (nothing is written).
            KvstoreError: etcd is unreachable, or the records kept changing for 64 attempts.
        """
        check_name("node", node.name)
        kind = self._node_kind
        key = self._node_key(node.name)
        value = node_json(node)
        net = ipaddress.IPv4Network(node.pod_cidr)
        for _ in range(TXN_ATTEMPTS):
            listing = self._watches.list_kind(kind, f"read the node records to validate {node.name}", record=False)
            for entry in listing.entries.values():
                other: NodeInfo = entry.obj
                if other.name != node.name and (other.ip == node.ip or
                                                ipaddress.IPv4Network(other.pod_cidr).overlaps(net)):
                    raise ValidationError(f"node {node.name} ({node.ip}, {node.pod_cidr}) clashes with "
                                          f"{other.name} ({other.ip}, {other.pod_cidr})")
            # Every node record must be as read: a concurrent writer makes this fail, and we re-check.
            compare = [{"key": b64(kind.prefix), "range_end": b64(prefix_end(kind.prefix)),
                        "target": "MOD", "result": "LESS", "mod_revision": listing.revision + 1}]
            operation = f"put node {node.name}"
            if node.name == self.owner:
                if self._own.put(operation, key, value, compare=compare):
                    return
            elif self._client.txn(operation, compare, [put_op(key, value)]).get("succeeded"):
                return
        raise KvstoreError(f"put node {node.name}", f"the node records kept changing ({TXN_ATTEMPTS} attempts)",
                           endpoints=self.etcd_endpoints, hint="retry; many nodes are joining at once")

    def delete_node(self, name: str) -> None:
        """Remove a node record (no-op when absent). Deleting another live agent's own node makes
        that agent re-create it, as in Cilium.

        Raises:
            KvstoreError: etcd is unreachable.
        """
        key = self._node_key(name)
        if name == self.owner:
            self._own.drop(key)  # first: the guard must not re-create it
        self._client.post(f"delete node {name}", "/kv/deleterange", {"key": b64(key)})

    def nodes(self) -> list[NodeInfo]:
        """Every node record of the cluster, by name (records that do not parse are skipped, with a
        warning). The revision of this list is the start of this thread's next :meth:`watch`.

        Raises:
            KvstoreError: etcd is unreachable.
        """
        return self._watches.objects(self._node_kind, "list the nodes", key=lambda n: n.name)

    # -- services ----------------------------------------------------------------------------------

    def _service_key(self, name: str) -> str:
        return f"{SERVICES}{self.cluster}/{name}"

    def put_service(self, service: Any) -> None:
        """Create or replace a service (a :class:`ciliumlite.Service`, stored as ``to_dict()`` JSON).

        Raises:
            ValidationError: not a Service, or an empty name.
            KvstoreError: etcd is unreachable.
        """
        key, value = self._service_item(service)
        self._client.post(f"put service {service.name}", "/kv/put", {"key": b64(key), "value": b64(value)})

    def _service_item(self, service: Any) -> tuple[str, bytes]:
        if not isinstance(service, Service):
            raise ValidationError(f"put_service takes a ciliumlite.Service, not {type(service).__name__}")
        if not service.name or service.name != service.name.strip():
            raise ValidationError(f"service name {service.name!r} cannot be an etcd key")
        return self._service_key(service.name), service_json(service)

    def put_services(self, services: Iterable[Any]) -> int:
        """Write many services in transactions of up to 100 puts (etcd's ``max-txn-ops`` is 128).
        Every service is encoded before anything is written. Returns how many were written.

        Raises:
            ValidationError: one of them is not a Service, or a name repeats (nothing written).
            KvstoreError: etcd failed part-way; the message says how many were written.
        """
        items: dict[str, bytes] = {}
        for svc in services:
            key, value = self._service_item(svc)
            if key in items:
                raise ValidationError(f"put_services: service {svc.name!r} appears twice")
            items[key] = value
        pairs = list(items.items())
        for i in range(0, len(pairs), TXN_OPS):
            chunk = pairs[i:i + TXN_OPS]
            try:
                self._client.txn(f"put services {i + 1}..{i + len(chunk)} of {len(pairs)}", [],
                                 [put_op(k, v) for k, v in chunk])
            except KvstoreError as exc:
                raise KvstoreError(exc.operation, f"{exc.detail} ({i} of {len(pairs)} written before)",
                                   endpoints=exc.endpoints, hint=exc.hint) from exc
        return len(pairs)

    def delete_service(self, name: str) -> None:
        """Remove a service (no-op when absent).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        self._client.post(f"delete service {name}", "/kv/deleterange", {"key": b64(self._service_key(name))})

    def services(self) -> list[Any]:
        """Every service of the cluster, by name (records that do not parse are skipped, with a
        warning). The revision of this list is the start of this thread's next :meth:`watch`.

        Raises:
            KvstoreError: etcd is unreachable.
        """
        return self._watches.objects(self._service_kind, "list the services", key=lambda s: s.name)

    # -- the ip-to-identity cache --------------------------------------------------------------------

    def _ip_key(self, ip: str) -> str:
        return f"{IPS}{self.cluster}/{ip}"

    def put_ip_identity(self, ip: str, identity: int, host_ip: str, *, namespace: str = "", pod: str = "") -> None:
        """Publish that endpoint ``ip`` has security ``identity`` and lives behind ``host_ip``.
        With an owner the entry is an own key (on the lease: it goes when the agent dies).

        Raises:
            ValidationError: a bad address or identity.
            KvstoreError: etcd is unreachable.
        """
        entry = IPIdentity(ip, identity, host_ip, namespace, pod)
        key = self._ip_key(entry.ip)
        value = ip_json(entry)
        if self.owner is not None:
            self._own.put(f"put ip identity {ip}", key, value)
        else:
            self._client.post(f"put ip identity {ip}", "/kv/put", {"key": b64(key), "value": b64(value)})

    def delete_ip_identity(self, ip: str) -> None:
        """Remove an ipcache entry (no-op when absent).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        key = self._ip_key(ip)
        self._own.drop(key)
        self._client.post(f"delete ip identity {ip}", "/kv/deleterange", {"key": b64(key)})

    def ip_identities(self) -> list[IPIdentity]:
        """Every ipcache entry of the cluster, by IP.

        Raises:
            KvstoreError: etcd is unreachable.
        """
        return self._watches.objects(self._ip_kind, "list the ip identities",
                                     key=lambda e: ipaddress.IPv4Address(e.ip))

    def watch_ip_identities(self, callback: IpWatcher, *, replay: bool = True) -> Callable[[], None]:
        """Follow the ipcache: ``callback("ip-upsert" | "ip-delete", IPIdentity)`` on one thread,
        in revision order. ``replay`` (the default here) first delivers every current entry as an
        upsert. Returns a function that stops the watch.

        Raises:
            KvstoreError: etcd is unreachable when the watch starts.
        """
        return self._start_watch([self._ip_kind], callback, replay=replay, name="kvstore-watch-ip")

    # -- endpoints, policies and namespaces (a PolicyStore) ----------------------------------------------

    def put_endpoint(self, record: EndpointRecord) -> None:
        """Publish an endpoint: its ipcache entry (every ipcache reader sees it) with its security
        labels and named ports, for policy. With an owner it is an own key, like the ipcache's.

        Raises:
            ValidationError: not an EndpointRecord.
            KvstoreError: etcd is unreachable.
        """
        if not isinstance(record, EndpointRecord):
            raise ValidationError(f"put_endpoint takes an EndpointRecord, not {type(record).__name__}")
        key, value = self._ip_key(record.ip), endpoint_json(record)
        if self.owner is not None:
            self._own.put(f"put endpoint {record.ip}", key, value)
        else:
            self._client.post(f"put endpoint {record.ip}", "/kv/put", {"key": b64(key), "value": b64(value)})

    def delete_endpoint(self, ip: str) -> None:
        """Withdraw the endpoint at ``ip`` (its ipcache entry; no-op when absent).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        self.delete_ip_identity(ip)

    def endpoints(self) -> list[EndpointRecord]:
        """Every endpoint of the cluster, by IP (ipcache entries that are no pod's are skipped).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        return self._watches.objects(self._endpoint_kind, "list the endpoints",
                                     key=lambda e: ipaddress.IPv4Address(e.ip))

    def _policy_key(self, key: str) -> str:
        kind, sep, rest = key.partition("/")
        if not sep or not kind or "/" not in rest or not rest.rpartition("/")[2]:
            raise ValidationError(f"policy key {key!r} is not Kind/namespace/name")
        return f"{POLICIES}{self.cluster}/{key}"

    def put_policy(self, policy: Any) -> None:
        """Create or replace a network policy (a parsed :class:`~ciliumlite.policy.Policy`,
        stored as the manifest it came from); every agent enforces it.

        Raises:
            ValidationError: not a Policy, or one without a manifest (built in Python).
            KvstoreError: etcd is unreachable.
        """
        from ciliumlite.policy.rules import Policy

        if not isinstance(policy, Policy):
            raise ValidationError(f"put_policy takes a ciliumlite.policy.Policy, not {type(policy).__name__}")
        key, value = self._policy_key(policy.key), policy_json(policy)
        self._client.post(f"put policy {policy.key}", "/kv/put", {"key": b64(key), "value": b64(value)})

    def delete_policy(self, key: str) -> None:
        """Remove the policy ``Kind/namespace/name`` (no-op when absent).

        Raises:
            ValidationError: a malformed key.
            KvstoreError: etcd is unreachable.
        """
        self._client.post(f"delete policy {key}", "/kv/deleterange", {"key": b64(self._policy_key(key))})

    def policies(self) -> list[Any]:
        """Every policy, by key (records that do not parse are skipped, with a warning).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        return self._watches.objects(self._policy_kind, "list the policies", key=lambda p: p.key)

    def put_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Record a Kubernetes namespace's labels (what its pods' identities take from it).

        Raises:
            ValidationError: a bad name.
            KvstoreError: etcd is unreachable.
        """
        check_name("namespace", name)
        value = namespace_json(NamespaceRecord(name, dict(labels or {})))
        self._client.post(f"put namespace {name}", "/kv/put",
                          {"key": b64(f"{NAMESPACES}{self.cluster}/{name}"), "value": b64(value)})

    def namespace_labels(self, name: str) -> dict[str, str]:
        """The labels recorded for namespace ``name`` (none recorded: empty).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        found = self._watches.objects(self._namespace_kind, "list the namespaces", key=lambda n: n.name)
        return next((dict(n.labels) for n in found if n.name == name), {})

    # -- identities ----------------------------------------------------------------------------------

    def allocate_identity(self, labels: Mapping[str, str]) -> int:
        """The cluster-wide security identity of a label set.

        The same labels get the same number on every node (the reverse index key
        ``identities/v1/labels/<labels>`` is the one truth) and two label sets never share one
        (``id/<n>`` and the index key are created in one transaction that holds only if both
        are absent; on a clash the next free number is tried). Numbers start at
        ``MIN_IDENTITY`` (256). With an owner, the node's ``value/<labels>/<node>`` key is written
        on its lease, like Cilium's, to show who uses the identity.

        Raises:
            ValidationError: the identity space (up to ``MAX_IDENTITY``) is exhausted.
            KvstoreError: etcd is unreachable, or 64 attempts clashed.
        """
        return self._identities.allocate(labels)

    def release_identity(self, labels: Mapping[str, str]) -> None:
        """Stop using an identity here: the owner's value key goes (the number stays allocated).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        self._identities.release(labels)

    def identities(self) -> dict[int, dict[str, str]]:
        """Every allocated identity and its labels.

        Raises:
            KvstoreError: etcd is unreachable.
        """
        return self._identities.all()

    # -- watching ----------------------------------------------------------------------------------

    def watch(self, callback: Watcher, *, replay: bool = False) -> Callable[[], None]:
        """Call ``callback(event, obj)`` for every node and service change, on one thread of its
        own, in revision order: ``("upsert" | "delete", NodeInfo)``, ``("service-upsert" |
        "service-delete", Service)``. Returns a function that stops the watch (and joins the
        thread, unless called from the callback).

        Without ``replay`` it delivers the changes *after* what the calling thread's last
        :meth:`nodes` and :meth:`services` calls returned (each kind from the revision of its own
        list + 1, so nothing in between is lost or repeated); a kind this thread has not listed
        starts from now. With ``replay`` it first delivers every current node and service as an
        upsert. A broken stream or a compaction is answered by a relist that emits deletes for
        records that vanished and upserts for records that changed; identical re-writes (an
        agent re-asserting its keys) are not delivered. Exceptions from ``callback`` are logged.

        Raises:
            KvstoreError: etcd is unreachable when the watch starts.
        """
        return self._start_watch([self._node_kind, self._service_kind, self._endpoint_kind, self._policy_kind],
                                 callback, replay=replay, name="kvstore-watch")

    def _start_watch(self, kinds: list[Kind], callback: Callable[[Any, Any], None], *, replay: bool,
                     name: str) -> Callable[[], None]:
        if self._closed:
            raise KvstoreError("watch", "the store is closed", endpoints=self.etcd_endpoints)
        return self._watches.start(kinds, callback, replay=replay, name=name)

    # -- status and life cycle -----------------------------------------------------------------------

    def status(self) -> KvstoreStatus:
        """The kvstore's health. With an owner it reports the keepalive thread's last round trip
        (no request is made); without one it makes one request (at most ``request_timeout``).
        Never raises for an unreachable etcd: that is ``connected=False`` and ``last_error``."""
        if self.owner is None and not self._closed:
            with contextlib.suppress(KvstoreError):
                self._client.post("status", "/maintenance/status", {})
        ok, fail, last_error, watch_revision = self._client.health()
        connected = ok is not None and (fail is None or ok >= fail) and not self._closed
        return KvstoreStatus(connected=connected, endpoints=self.etcd_endpoints, last_heartbeat=ok,
                             lease_id=self._own.lease_id, lease_ttl=self.lease_ttl,
                             last_error=last_error, watch_revision=watch_revision)

    def lease_keys(self) -> list[str]:
        """The keys etcd holds on this store's lease (empty without an owner).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        return self._own.keys_on_lease()

    def close(self, delete_own_keys: bool = True) -> None:
        """Stop the watch and keepalive threads; then revoke the lease, so every own key goes at
        once, unless ``delete_own_keys`` is False (they then expire with the lease after
        ``lease_ttl``, like a crashed agent's). Idempotent; an unreachable etcd is logged, not
        raised: the lease then expires by itself."""
        if self._closed:
            return
        self._closed = True
        self._own.begin_close()
        self._watches.stop_all()
        self._own.close(revoke=delete_own_keys)
        self._client.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EtcdStore({list(self.etcd_endpoints)}, cluster={self.cluster!r}, owner={self.owner!r})"
