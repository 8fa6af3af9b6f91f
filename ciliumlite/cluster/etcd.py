"""``EtcdStore``: the cluster store over a real etcd, with Cilium's key layout and semantics.

It talks to etcd's HTTP/JSON gateway (``/v3/...``) through the ``etcd3gw`` client: no gRPC, no
protobuf. Keys (``<c>`` is the cluster name; every value is JSON):

- ``cilium/state/nodes/v1/<c>/<node>``: ``{name, ip, pod_cidr}``, on the owner's lease;
- ``cilium/state/services/v1/<c>/<name>``: ``Service.to_dict()``;
- ``cilium/state/identities/v1/id/<id>``: ``{key, labels}``;
- ``cilium/state/identities/v1/labels/<labels>``: ``<id>`` (the reverse index);
- ``cilium/state/identities/v1/value/<labels>/<node>``: ``<id>``, on that node's lease;
- ``cilium/state/ip/v1/<c>/<ip>``: ``{ip, identity, host_ip, namespace, pod}``, on the owner's lease;
- ``cilium/.heartbeat``: an RFC 3339 time.

``<labels>`` is :func:`~ciliumlite.cluster.store.identity_key` percent-encoded (``/`` becomes
``%2F``), so a label such as ``app.kubernetes.io/name`` cannot add a path level.

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
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import requests
import requests.adapters
from etcd3gw import exceptions as gw_exc
from etcd3gw.client import Etcd3Client

from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.cluster.store import NodeInfo, Watcher, identity_key
from ciliumlite.endpoint import MAX_IDENTITY, MIN_IDENTITY
from ciliumlite.service import Service

__all__ = [
    "HEARTBEAT_KEY",
    "IPIdentity",
    "KvstoreError",
    "KvstoreStatus",
    "EtcdStore",
]

log = logging.getLogger("ciliumlite.kvstore")

STATE = "cilium/state/"
NODES = STATE + "nodes/v1/"
SERVICES = STATE + "services/v1/"
IDENTITY_IDS = STATE + "identities/v1/id/"
IDENTITY_LABELS = STATE + "identities/v1/labels/"
IDENTITY_VALUES = STATE + "identities/v1/value/"
IPS = STATE + "ip/v1/"
HEARTBEAT_KEY = "cilium/.heartbeat"

#: etcd's default ``--max-txn-ops`` is 128; stay below it with room for compares.
TXN_OPS = 100
#: Keys per page when listing a prefix (a relist of 10,000 services is 10 round trips).
PAGE = 1000
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
#: Attempts for the optimistic transactions (put_node's validation, identity allocation).
TXN_ATTEMPTS = 64

T = TypeVar("T")


class KvstoreError(CiliumliteError):
    """A kvstore call failed: etcd was unreachable, timed out, or refused the request.

    Attributes: ``operation`` (what was attempted), ``detail`` (what etcd or the network said),
    ``endpoints``, ``hint`` (what to do about it).
    """

    def __init__(self, operation: str, detail: str, *, endpoints: Sequence[str] = (), hint: str = "") -> None:
        self.operation = operation
        self.detail = detail
        self.endpoints = tuple(endpoints)
        self.hint = hint
        where = f" at {', '.join(self.endpoints)}" if self.endpoints else ""
        super().__init__(f"kvstore: {operation}{where} failed: {detail}" + (f"; hint: {hint}" if hint else ""))


@dataclass(frozen=True)
class KvstoreStatus:
    """What ``ciliumlite status`` shows of the kvstore (like ``cilium status``'s ``KVStore:`` line).

    ``last_heartbeat`` is the wall-clock time (``time.time()``) of the last successful round trip
    to etcd; ``watch_revision`` the newest revision a watch of this store has processed.
    """

    connected: bool
    endpoints: tuple[str, ...]
    last_heartbeat: float | None
    lease_id: int | None
    lease_ttl: int
    last_error: str | None
    watch_revision: int | None

    def summary(self) -> str:
        """One line, e.g. ``Ok etcd: 1/1 connected, lease-ID=7587…, lease-TTL=15s, last heartbeat 0.4s ago``."""
        n = len(self.endpoints)
        state = "Ok" if self.connected else "Failure"
        parts = [f"{state} etcd: {1 if self.connected else 0}/{n} connected"]
        if self.lease_id is not None:
            parts.append(f"lease-ID={self.lease_id:x}")
        parts.append(f"lease-TTL={self.lease_ttl}s")
        parts.append(f"has-quorum={'true' if self.connected else 'false'}")
        if self.last_heartbeat is not None:
            parts.append(f"last heartbeat {max(0.0, time.time() - self.last_heartbeat):.1f}s ago")
        if self.watch_revision is not None:
            parts.append(f"watch revision {self.watch_revision}")
        if not self.connected and self.last_error:
            parts.append(f"error: {self.last_error}")
        return ", ".join(parts)


@dataclass(frozen=True)
class IPIdentity:
    """One ipcache entry (Cilium's ``IPIdentityPair``): an endpoint IP, its security identity and
    the underlay address of the node that hosts it."""

    ip: str
    identity: int
    host_ip: str
    namespace: str = ""
    pod: str = ""

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Address(self.ip)
            ipaddress.IPv4Address(self.host_ip)
        except ValueError as exc:
            raise ValidationError(f"ip identity {self.ip}: {exc}") from exc
        if isinstance(self.identity, bool) or not isinstance(self.identity, int) or self.identity < 0:
            raise ValidationError(f"ip identity {self.ip}: identity {self.identity!r} is not a number")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in etcd."""
        return {"ip": self.ip, "identity": self.identity, "host_ip": self.host_ip,
                "namespace": self.namespace, "pod": self.pod}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IPIdentity:
        """Parse the stored JSON form; raises :class:`ValidationError` on a bad entry."""
        try:
            return cls(str(data["ip"]), int(data["identity"]), str(data["host_ip"]),
                       str(data.get("namespace", "")), str(data.get("pod", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"bad ip identity entry {dict(data)!r}: {exc}") from exc


IpEvent = Literal["ip-upsert", "ip-delete"]
#: Called with ("ip-upsert" | "ip-delete", IPIdentity).
IpWatcher = Callable[[IpEvent, IPIdentity], None]


# -- encoding ----------------------------------------------------------------------------------


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _prefix_end(prefix: str) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # our prefixes end in "/", never in 0xff
    return bytes(raw)


def _label_path(labels_key: str) -> str:
    # Percent-encode so "/" in a label (app.kubernetes.io/name) cannot add a path level.
    return urllib.parse.quote(labels_key, safe="=;:.,-_@+")


def _node_json(node: NodeInfo) -> bytes:
    return json.dumps({"name": node.name, "ip": node.ip, "pod_cidr": node.pod_cidr}, sort_keys=True).encode()


def _decode_node(raw: bytes) -> NodeInfo:
    try:
        data = json.loads(raw)
        return NodeInfo(str(data["name"]), str(data["ip"]), str(data["pod_cidr"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"bad node record {raw[:200]!r}: {exc}") from exc


def _service_json(svc: Service) -> bytes:
    return json.dumps(svc.to_dict(), sort_keys=True).encode()


def _decode_service(raw: bytes) -> Service:
    try:
        return Service.from_dict(json.loads(raw))
    except (TypeError, ValueError) as exc:  # ValidationError is a ValueError
        raise ValidationError(f"bad service record {raw[:200]!r}: {exc}") from exc


def _decode_ip(raw: bytes) -> IPIdentity:
    try:
        return IPIdentity.from_dict(json.loads(raw))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"bad ip identity record {raw[:200]!r}: {exc}") from exc


def _check_name(what: str, name: str) -> None:
    if not name or "/" in name or name != name.strip():
        raise ValidationError(f"{what} name {name!r} cannot be an etcd key segment (empty, '/' or spaces)")


@dataclass(frozen=True)
class _KV:
    key: str
    value: bytes
    mod_revision: int
    lease: int


def _kv(item: Mapping[str, Any]) -> _KV:
    return _KV(_unb64(item["key"]).decode(errors="replace"), _unb64(item.get("value", "")),
               int(item.get("mod_revision", 0)), int(item.get("lease", 0)))


class _Backoff:
    """Exponential backoff, bounded: 0.1 s, 0.2 s, … up to ``maximum``; reset on success."""

    def __init__(self, initial: float = BACKOFF_MIN, maximum: float = BACKOFF_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.maximum, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.initial


@dataclass(frozen=True)
class _Kind:
    """One kind of object a watch follows: a key prefix, its event names and its decoder."""

    prefix: str
    upsert: str
    delete: str
    decode: Callable[[bytes], Any]


@dataclass
class _Entry:
    mod_revision: int
    raw: bytes
    obj: Any


@dataclass
class _Listing:
    """What one list of a kind saw: its revision and every entry (the baseline of a watch)."""

    revision: int
    entries: dict[str, _Entry]


class _Compacted(Exception):
    pass


class _WatchBroken(Exception):
    pass


# -- the store -----------------------------------------------------------------------------------


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
        _check_name("cluster", cluster)
        if owner is not None:
            _check_name("owner node", owner)
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, int) or lease_ttl < 1:
            raise ValidationError(f"lease_ttl must be a whole number of seconds >= 1, not {lease_ttl!r}")
        if request_timeout <= 0 or connect_timeout < 0 or sync_interval <= 0 or watch_idle_timeout <= 0:
            raise ValidationError("request_timeout, sync_interval and watch_idle_timeout must be > 0, "
                                  "connect_timeout >= 0")
        self.endpoints: tuple[str, ...] = tuple(endpoints)
        self.cluster = cluster
        self.owner = owner
        self.lease_ttl = lease_ttl
        self.request_timeout = request_timeout
        self.sync_interval = sync_interval
        self.heartbeat_interval = heartbeat_interval
        self.watch_idle_timeout = watch_idle_timeout
        self._clients = [self._make_client(url) for url in self.endpoints]
        self._current = 0
        self._state_lock = threading.Lock()
        self._last_ok: float | None = None  # time.time() of the last round trip that worked
        self._last_fail: float | None = None
        self._last_error: str | None = None
        self._watch_revision: int | None = None
        # Own keys: key -> value. The lease lock orders lease renewals with writes of own keys.
        self._own: dict[str, bytes] = {}
        self._own_lock = threading.RLock()
        self._lease_id: int | None = None
        self._lease_dirty = False  # the own keys must be re-written (a new lease, a failed re-put)
        self._identities: dict[str, int] = {}
        self._listings = threading.local()
        self._loops: list[_WatchLoop] = []
        self._stop = threading.Event()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._guard: _OwnKeyGuard | None = None

        try:
            self._connect(connect_timeout)
        except BaseException:
            for client in self._clients:
                client.session.close()
            raise
        if owner is not None:
            try:
                self._guard = _OwnKeyGuard(self, self._current_revision())
                self._guard.start()
                keepalive = threading.Thread(target=self._keepalive_loop, name=f"kvstore-keepalive-{owner}",
                                             daemon=True)
                keepalive.start()
                self._threads.append(keepalive)
            except BaseException:
                self.close()  # revokes the lease just granted
                raise

    # -- plumbing ----------------------------------------------------------------------------------

    def _make_client(self, url: str) -> Etcd3Client:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(f"etcd endpoint {url!r} is not an http(s)://host:port URL")
        return Etcd3Client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                           timeout=self.request_timeout, api_path="/v3/", session=self._session())

    @staticmethod
    def _session(pool: int = 32) -> requests.Session:
        session = requests.Session()
        # etcd is reached directly: an HTTP(S)_PROXY from the environment must not apply.
        session.trust_env = False
        adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=pool)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def _current_client(self) -> Etcd3Client:
        return self._clients[self._current % len(self._clients)]

    def _note_ok(self) -> None:
        with self._state_lock:
            self._last_ok = time.time()

    def _note_fail(self, error: str) -> None:
        with self._state_lock:
            self._last_fail = time.time()
            self._last_error = error

    def _call(self, operation: str, fn: Callable[[Etcd3Client], T]) -> T:
        """Run ``fn`` against the current endpoint, failing over to the others on a network
        error. Raises :class:`KvstoreError` (with a hint) when no endpoint answers, or when etcd
        refuses the request."""
        errors: list[str] = []
        start = self._current
        for i in range(len(self._clients)):
            idx = (start + i) % len(self._clients)
            client = self._clients[idx]
            try:
                result = fn(client)
            except gw_exc.ConnectionTimeoutError as exc:
                errors.append(f"{client.base_url}: no answer within {self.request_timeout:g} s ({exc.detail_text})")
            except (gw_exc.ConnectionFailedError, requests.ConnectionError) as exc:
                errors.append(f"{client.base_url}: {getattr(exc, 'detail_text', None) or exc}")
            except gw_exc.Etcd3Exception as exc:
                # etcd answered and said no: another endpoint would say the same.
                self._note_ok()
                detail = _gateway_message(exc)
                raise KvstoreError(operation, detail, endpoints=[client.base_url],
                                   hint=_hint_for(detail)) from exc
            except (requests.RequestException, ValueError, KeyError) as exc:
                errors.append(f"{client.base_url}: unexpected answer ({exc})")
            else:
                self._current = idx
                self._note_ok()
                return result
        detail = "; ".join(errors)
        self._note_fail(f"{operation}: {detail}")
        self._current = start + 1  # the next call starts with another endpoint
        hint = ("is etcd running and reachable? check `etcdctl --endpoints "
                f"{','.join(self.endpoints)} endpoint health`; an agent keeps forwarding with what it "
                "has and retries with backoff")
        raise KvstoreError(operation, detail, endpoints=self.endpoints, hint=hint)

    def _post(self, operation: str, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        def run(client: Etcd3Client) -> dict[str, Any]:
            result: dict[str, Any] = client.post(client.get_url(path), json=payload)
            return result
        return self._call(operation, run)

    def _txn(self, operation: str, compare: list[dict[str, Any]], success: list[dict[str, Any]],
             failure: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        txn = {"compare": compare, "success": success, "failure": failure or []}

        def run(client: Etcd3Client) -> dict[str, Any]:
            return dict(client.transaction(txn))
        return self._call(operation, run)

    def _range(self, operation: str, key: str, end: bytes | None = None, *, revision: int | None = None,
               keys_only: bool = False) -> tuple[int, list[_KV]]:
        """Every key in ``[key, end)`` at one revision (paged). Returns (revision, kvs by key)."""
        out: list[_KV] = []
        start = key.encode()
        rev = revision
        for _ in range(1_000_000 // PAGE):  # bounded: a million keys
            payload: dict[str, Any] = {"key": _b64(start), "limit": PAGE}
            if end is not None:
                payload["range_end"] = _b64(end)
            if rev is not None:
                payload["revision"] = rev
            if keys_only:
                payload["keys_only"] = True
            res = self._post(operation, "/kv/range", payload)
            if rev is None:
                rev = int(res["header"]["revision"])
            kvs = [_kv(item) for item in res.get("kvs", [])]
            out.extend(kvs)
            if not res.get("more") or not kvs or end is None:
                break
            start = kvs[-1].key.encode() + b"\0"
        assert rev is not None
        return rev, out

    def _current_revision(self) -> int:
        res = self._post("read the current revision", "/kv/range", {"key": _b64(HEARTBEAT_KEY), "count_only": True})
        return int(res["header"]["revision"])

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        backoff = _Backoff()
        for attempt in range(10_000):  # bounded by the deadline too
            try:
                self._post("connect (maintenance status)", "/maintenance/status", {})
                if self.owner is not None:
                    # Inside the retry: an etcd that is just starting may answer one request and
                    # reset the next.
                    with self._own_lock:
                        self._lease_id = self._grant_lease()
                return
            except KvstoreError as exc:
                if time.monotonic() + backoff.delay > deadline:
                    raise KvstoreError(
                        "connect", f"{exc.detail} (after {attempt + 1} attempts in {timeout:g} s)",
                        endpoints=self.endpoints,
                        hint="start etcd (or fix the endpoint URL); to wait for an etcd that starts "
                             "later pass connect_timeout=SECONDS") from exc
                time.sleep(backoff.next())

    # -- leases and own keys -----------------------------------------------------------------------

    def _grant_lease(self) -> int:
        res = self._post(f"grant a lease (TTL {self.lease_ttl} s)", "/lease/grant", {"TTL": self.lease_ttl, "ID": 0})
        lease = int(res["ID"])
        log.info("kvstore: %s holds lease %x (TTL %s s)", self.owner, lease, res.get("TTL"))
        return lease

    def _put_op(self, key: str, value: bytes, lease: int | None = None) -> dict[str, Any]:
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = lease
        return {"request_put": put}

    def _renew_lease(self, stale: int | None) -> None:
        """A new lease when ``stale`` is gone (ErrLeaseNotFound, expiry), and every own key on it
        (Cilium's orphaned-session controller and lease manager). Raises :class:`KvstoreError`."""
        with self._own_lock:
            if self._lease_id == stale or self._lease_id is None:
                self._lease_id = self._grant_lease()
                self._lease_dirty = True
                log.warning("kvstore: lease %s of %s was gone; re-writing %d own keys on lease %x",
                            f"{stale:x}" if stale else "-", self.owner, len(self._own), self._lease_id)
            self._flush_own_keys()

    def _flush_own_keys(self) -> None:
        """Re-write every own key on the current lease if a renewal (or a failed re-creation) left
        them behind. Raises :class:`KvstoreError` (they stay marked: the keepalive thread retries)."""
        with self._own_lock:
            if self._lease_dirty:
                self._write_own_keys(list(self._own.items()))
                self._lease_dirty = False

    def _write_own_keys(self, items: list[tuple[str, bytes]]) -> None:
        lease = self._lease_id
        for i in range(0, len(items), TXN_OPS):
            chunk = items[i:i + TXN_OPS]
            self._txn("re-write own keys", [], [self._put_op(k, v, lease) for k, v in chunk])

    def _put_own(self, operation: str, key: str, value: bytes, *, compare: list[dict[str, Any]] | None = None) -> bool:
        """Write an own key on the lease (``compare`` guards it). A missing lease is replaced and
        the write tried again. Returns whether the compares held. Raises :class:`KvstoreError`."""
        for _ in range(3):
            with self._own_lock:
                lease = self._lease_id
                try:
                    res = self._txn(operation, compare or [], [self._put_op(key, value, lease)])
                except KvstoreError as exc:
                    if "lease not found" not in exc.detail:
                        raise
                else:
                    if res.get("succeeded"):
                        self._own[key] = value
                        return True
                    return False
            self._renew_lease(lease)
        raise KvstoreError(operation, "the lease kept vanishing", endpoints=self.endpoints,
                           hint="etcd may be revoking leases (clock jumps, an overloaded leader)")

    def _drop_own(self, key: str) -> None:
        with self._own_lock:
            self._own.pop(key, None)

    def _reassert(self, key: str) -> None:
        """An own key was deleted by someone else (or its lease expired): put it back."""
        with self._own_lock:
            value = self._own.get(key)
            if value is None or self._closed:
                return
        log.info("kvstore: own key %s was deleted; re-creating it", key)
        try:
            self._put_own(f"re-create own key {key}", key, value)
        except KvstoreError as exc:
            log.warning("kvstore: re-creating %s failed (%s); the keepalive thread retries", key, exc)
            with self._own_lock:
                self._lease_dirty = True

    def _sync_own_keys(self) -> None:
        """Re-write own keys whose value or lease differs in etcd (Cilium's UpdateIfDifferent)."""
        with self._own_lock:
            items = list(self._own.items())
            lease = self._lease_id
        stale: list[tuple[str, bytes]] = []
        for i in range(0, len(items), TXN_OPS):
            chunk = items[i:i + TXN_OPS]
            res = self._txn("read own keys", [], [{"request_range": {"key": _b64(k)}} for k, _ in chunk])
            for (key, value), resp in zip(chunk, res.get("responses", []), strict=False):
                kvs = resp.get("response_range", {}).get("kvs", [])
                cur = _kv(kvs[0]) if kvs else None
                if cur is None or cur.value != value or cur.lease != (lease or 0):
                    stale.append((key, value))
        if stale:
            log.info("kvstore: re-writing %d own keys of %s that differed", len(stale), self.owner)
            with self._own_lock:
                current = [(k, self._own[k]) for k, _ in stale if k in self._own]
                self._write_own_keys(current)

    def _keepalive_loop(self) -> None:
        interval = max(0.2, self.lease_ttl / 3)
        backoff = _Backoff(maximum=min(BACKOFF_MAX, interval))
        next_sync = time.monotonic() + self.sync_interval
        next_heartbeat = time.monotonic()
        delay = interval
        while not self._stop.wait(delay):
            try:
                with self._own_lock:
                    lease = self._lease_id
                res = self._post("keep the lease alive", "/lease/keepalive", {"ID": lease})
                if int(res.get("result", {}).get("TTL", -1)) <= 0:
                    self._renew_lease(lease)  # expired (etcd was paused or lost us): new lease, keys
                else:
                    self._flush_own_keys()
                now = time.monotonic()
                if now >= next_sync:
                    self._sync_own_keys()
                    next_sync = now + self.sync_interval
                if self.heartbeat_interval is not None and now >= next_heartbeat:
                    stamp = datetime.datetime.now(datetime.UTC).isoformat()
                    self._post("write the heartbeat", "/kv/put", {"key": _b64(HEARTBEAT_KEY), "value": _b64(stamp)})
                    next_heartbeat = now + self.heartbeat_interval
                backoff.reset()
                delay = interval
            except KvstoreError as exc:
                delay = backoff.next()
                log.debug("kvstore keepalive: %s; retrying in %.1f s", exc, delay)
            except Exception:  # a bug must not end the thread that holds the lease
                log.exception("kvstore keepalive failed")
                delay = backoff.next()

    # -- nodes -------------------------------------------------------------------------------------

    def _node_key(self, name: str) -> str:
        return f"{NODES}{self.cluster}/{name}"

    def _list_kind(self, kind: _Kind, operation: str, *, record: bool = True) -> _Listing:
        rev, kvs = self._range(operation, kind.prefix, _prefix_end(kind.prefix))
        entries: dict[str, _Entry] = {}
        for kv in kvs:
            try:
                entries[kv.key] = _Entry(kv.mod_revision, kv.value, kind.decode(kv.value))
            except ValidationError as exc:
                log.warning("kvstore: skipping %s: %s", kv.key, exc)
        listing = _Listing(rev, entries)
        if record:  # the baseline of this thread's next watch() (see watch)
            if not hasattr(self._listings, "by_prefix"):
                self._listings.by_prefix = {}
            self._listings.by_prefix[kind.prefix] = listing
        return listing

    def _objects(self, kind: _Kind, operation: str, *, key: Callable[[Any], Any]) -> list[Any]:
        """The decoded objects of a kind, sorted; this thread's next watch starts after this list."""
        return sorted((e.obj for e in self._list_kind(kind, operation).entries.values()), key=key)

    @property
    def _node_kind(self) -> _Kind:
        return _Kind(f"{NODES}{self.cluster}/", "upsert", "delete", _decode_node)

    @property
    def _service_kind(self) -> _Kind:
        return _Kind(f"{SERVICES}{self.cluster}/", "service-upsert", "service-delete", _decode_service)

    @property
    def _ip_kind(self) -> _Kind:
        return _Kind(f"{IPS}{self.cluster}/", "ip-upsert", "ip-delete", _decode_ip)

    def put_node(self, node: NodeInfo) -> None:
        """Create or replace a node record. The owner's own node goes on its lease.

        Validated like ``InMemoryStore.put_node`` against the records in etcd, atomically: the
        write is a transaction that holds only if no node record changed since they were read.

        Raises:
            ValidationError: the name is not a key segment, or the node's IP or pod CIDR clashes
                with another node's (nothing is written).
            KvstoreError: etcd is unreachable, or the records kept changing for 64 attempts.
        """
        _check_name("node", node.name)
        kind = self._node_kind
        key = self._node_key(node.name)
        value = _node_json(node)
        net = ipaddress.IPv4Network(node.pod_cidr)
        for _ in range(TXN_ATTEMPTS):
            listing = self._list_kind(kind, f"read the node records to validate {node.name}", record=False)
            for entry in listing.entries.values():
                other: NodeInfo = entry.obj
                if other.name != node.name and (other.ip == node.ip or
                                                ipaddress.IPv4Network(other.pod_cidr).overlaps(net)):
                    raise ValidationError(f"node {node.name} ({node.ip}, {node.pod_cidr}) clashes with "
                                          f"{other.name} ({other.ip}, {other.pod_cidr})")
            # Every node record must be as read: a concurrent writer makes this fail, and we re-check.
            compare = [{"key": _b64(kind.prefix), "range_end": _b64(_prefix_end(kind.prefix)),
                        "target": "MOD", "result": "LESS", "mod_revision": listing.revision + 1}]
            operation = f"put node {node.name}"
            if node.name == self.owner:
                if self._put_own(operation, key, value, compare=compare):
                    return
            elif self._txn(operation, compare, [self._put_op(key, value)]).get("succeeded"):
                return
        raise KvstoreError(f"put node {node.name}", f"the node records kept changing ({TXN_ATTEMPTS} attempts)",
                           endpoints=self.endpoints, hint="retry; many nodes are joining at once")

    def delete_node(self, name: str) -> None:
        """Remove a node record (no-op when absent). Deleting another live agent's own node makes
        that agent re-create it, as in Cilium.

        Raises:
            KvstoreError: etcd is unreachable.
        """
        key = self._node_key(name)
        if name == self.owner:
            self._drop_own(key)  # first: the guard must not re-create it
        self._post(f"delete node {name}", "/kv/deleterange", {"key": _b64(key)})

    def nodes(self) -> list[NodeInfo]:
        """Every node record of the cluster, by name (records that do not parse are skipped, with a
        warning). The revision of this list is the start of this thread's next :meth:`watch`.

        Raises:
            KvstoreError: etcd is unreachable.
        """
        return self._objects(self._node_kind, "list the nodes", key=lambda n: n.name)

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
        self._post(f"put service {service.name}", "/kv/put", {"key": _b64(key), "value": _b64(value)})

    def _service_item(self, service: Any) -> tuple[str, bytes]:
        if not isinstance(service, Service):
            raise ValidationError(f"put_service takes a ciliumlite.Service, not {type(service).__name__}")
        if not service.name or service.name != service.name.strip():
            raise ValidationError(f"service name {service.name!r} cannot be an etcd key")
        return self._service_key(service.name), _service_json(service)

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
                self._txn(f"put services {i + 1}..{i + len(chunk)} of {len(pairs)}", [],
                          [self._put_op(k, v) for k, v in chunk])
            except KvstoreError as exc:
                raise KvstoreError(exc.operation, f"{exc.detail} ({i} of {len(pairs)} written before)",
                                   endpoints=exc.endpoints, hint=exc.hint) from exc
        return len(pairs)

    def delete_service(self, name: str) -> None:
        """Remove a service (no-op when absent).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        self._post(f"delete service {name}", "/kv/deleterange", {"key": _b64(self._service_key(name))})

    def services(self) -> list[Any]:
        """Every service of the cluster, by name (records that do not parse are skipped, with a
        warning). The revision of this list is the start of this thread's next :meth:`watch`.

        Raises:
            KvstoreError: etcd is unreachable.
        """
        return self._objects(self._service_kind, "list the services", key=lambda s: s.name)

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
        value = json.dumps(entry.to_dict(), sort_keys=True).encode()
        if self.owner is not None:
            self._put_own(f"put ip identity {ip}", key, value)
        else:
            self._post(f"put ip identity {ip}", "/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete_ip_identity(self, ip: str) -> None:
        """Remove an ipcache entry (no-op when absent).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        key = self._ip_key(ip)
        self._drop_own(key)
        self._post(f"delete ip identity {ip}", "/kv/deleterange", {"key": _b64(key)})

    def ip_identities(self) -> list[IPIdentity]:
        """Every ipcache entry of the cluster, by IP.

        Raises:
            KvstoreError: etcd is unreachable.
        """
        return self._objects(self._ip_kind, "list the ip identities", key=lambda e: ipaddress.IPv4Address(e.ip))

    def watch_ip_identities(self, callback: IpWatcher, *, replay: bool = True) -> Callable[[], None]:
        """Follow the ipcache: ``callback("ip-upsert" | "ip-delete", IPIdentity)`` on one thread,
        in revision order. ``replay`` (the default here) first delivers every current entry as an
        upsert. Returns a function that stops the watch.

        Raises:
            KvstoreError: etcd is unreachable when the watch starts.
        """
        return self._start_watch([self._ip_kind], callback, replay=replay, name="kvstore-watch-ip")

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
        key = identity_key(labels)
        path = _label_path(key)
        index_key = IDENTITY_LABELS + path
        ident = self._identities.get(key)
        if ident is None:
            ident = self._lookup_or_allocate(key, dict(labels), index_key)
            self._identities[key] = ident
        if self.owner is not None:
            value_key = f"{IDENTITY_VALUES}{path}/{self.owner}"
            with self._own_lock:
                known = self._own.get(value_key) is not None
            if not known:
                self._put_own(f"record the use of identity {ident}", value_key, str(ident).encode())
        return ident

    def _lookup_or_allocate(self, key: str, labels: dict[str, str], index_key: str) -> int:
        what = f"allocate an identity for {key!r}"
        _, found = self._range(what, index_key)
        if found:
            return int(found[0].value)
        _, ids = self._range(what, IDENTITY_IDS, _prefix_end(IDENTITY_IDS), keys_only=True)
        used = set()
        for kv in ids:
            with contextlib.suppress(ValueError):
                used.add(int(kv.key[len(IDENTITY_IDS):]))
        candidate = MIN_IDENTITY
        id_value = json.dumps({"key": key, "labels": labels}, sort_keys=True).encode()
        for _ in range(TXN_ATTEMPTS):
            while candidate in used:
                candidate += 1
            if candidate > MAX_IDENTITY:
                raise ValidationError(f"no security identity left for {key!r} (all of "
                                      f"{MIN_IDENTITY}..{MAX_IDENTITY} are taken)")
            id_key = f"{IDENTITY_IDS}{candidate}"
            res = self._txn(
                what,
                [{"key": _b64(index_key), "target": "CREATE", "result": "EQUAL", "create_revision": 0},
                 {"key": _b64(id_key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
                [self._put_op(id_key, id_value), self._put_op(index_key, str(candidate).encode())],
                [{"request_range": {"key": _b64(index_key)}}],
            )
            if res.get("succeeded"):
                return candidate
            kvs = res.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
            if kvs:  # another node allocated these labels first: theirs is the identity
                return int(_kv(kvs[0]).value)
            used.add(candidate)  # the number went to other labels: try the next
        raise KvstoreError(what, f"{TXN_ATTEMPTS} attempts clashed with other allocations",
                           endpoints=self.endpoints, hint="retry")

    def release_identity(self, labels: Mapping[str, str]) -> None:
        """Stop using an identity here: the owner's value key goes (the number stays allocated).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        if self.owner is None:
            return
        value_key = f"{IDENTITY_VALUES}{_label_path(identity_key(labels))}/{self.owner}"
        self._drop_own(value_key)
        self._post("release an identity", "/kv/deleterange", {"key": _b64(value_key)})

    def identities(self) -> dict[int, dict[str, str]]:
        """Every allocated identity and its labels.

        Raises:
            KvstoreError: etcd is unreachable.
        """
        _, kvs = self._range("list the identities", IDENTITY_IDS, _prefix_end(IDENTITY_IDS))
        out: dict[int, dict[str, str]] = {}
        for kv in kvs:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out[int(kv.key[len(IDENTITY_IDS):])] = dict(json.loads(kv.value)["labels"])
        return dict(sorted(out.items()))

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
        return self._start_watch([self._node_kind, self._service_kind], callback, replay=replay,
                                 name="kvstore-watch")

    def _start_watch(self, kinds: list[_Kind], callback: Callable[[Any, Any], None], *, replay: bool,
                     name: str) -> Callable[[], None]:
        if self._closed:
            raise KvstoreError("watch", "the store is closed", endpoints=self.endpoints)
        listings: dict[str, _Listing] = getattr(self._listings, "by_prefix", {})
        baseline: dict[str, _Listing] = {}
        for kind in kinds:
            # A thread's lists are the baseline of its next watch only: they are used up here.
            listed = listings.pop(kind.prefix, None)
            if replay or listed is None:
                listed = self._list_kind(kind, f"list {kind.prefix} to start a watch", record=False)
            baseline[kind.prefix] = listed
        loop = _WatchLoop(self, kinds, callback, baseline, replay=replay, name=name)
        with self._state_lock:
            self._loops.append(loop)
        loop.start()

        def stop() -> None:
            loop.stop()
            with self._state_lock:
                if loop in self._loops:
                    self._loops.remove(loop)

        return stop

    def _note_revision(self, revision: int) -> None:
        with self._state_lock:
            if self._watch_revision is None or revision > self._watch_revision:
                self._watch_revision = revision

    # -- status and life cycle -----------------------------------------------------------------------

    def status(self) -> KvstoreStatus:
        """The kvstore's health. With an owner it reports the keepalive thread's last round trip
        (no request is made); without one it makes one request (at most ``request_timeout``).
        Never raises for an unreachable etcd: that is ``connected=False`` and ``last_error``."""
        if self.owner is None and not self._closed:
            with contextlib.suppress(KvstoreError):
                self._post("status", "/maintenance/status", {})
        with self._state_lock:
            ok, fail = self._last_ok, self._last_fail
            connected = ok is not None and (fail is None or ok >= fail) and not self._closed
            return KvstoreStatus(connected=connected, endpoints=self.endpoints, last_heartbeat=ok,
                                 lease_id=self._lease_id, lease_ttl=self.lease_ttl,
                                 last_error=self._last_error, watch_revision=self._watch_revision)

    def lease_keys(self) -> list[str]:
        """The keys etcd holds on this store's lease (empty without an owner).

        Raises:
            KvstoreError: etcd is unreachable.
        """
        if self._lease_id is None:
            return []
        res = self._post("list the lease's keys", "/kv/lease/timetolive", {"ID": self._lease_id, "keys": True})
        return sorted(_unb64(k).decode(errors="replace") for k in res.get("keys", []))

    def close(self, delete_own_keys: bool = True) -> None:
        """Stop the watch and keepalive threads; then revoke the lease, so every own key goes at
        once, unless ``delete_own_keys`` is False (they then expire with the lease after
        ``lease_ttl``, like a crashed agent's). Idempotent; an unreachable etcd is logged, not
        raised: the lease then expires by itself."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._state_lock:
            loops = list(self._loops)
            self._loops.clear()
        for loop in loops:
            loop.stop()
        if self._guard is not None:
            self._guard.stop()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=self.request_timeout + 1)
        if delete_own_keys and self._lease_id is not None:
            try:
                self._post("revoke the lease", "/kv/lease/revoke", {"ID": self._lease_id})
            except KvstoreError as exc:
                if "lease not found" not in exc.detail:
                    log.warning("kvstore: could not revoke lease %x (%s); its keys expire in %s s",
                                self._lease_id, exc, self.lease_ttl)
        with self._own_lock:
            self._own.clear()
        for client in self._clients:
            client.session.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EtcdStore({list(self.endpoints)}, cluster={self.cluster!r}, owner={self.owner!r})"


def _gateway_message(exc: gw_exc.Etcd3Exception) -> str:
    text = exc.detail_text or str(exc)
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        body = json.loads(text)
        text = str(body.get("message") or body.get("error") or text)
    return text


def _hint_for(detail: str) -> str:
    if "compacted" in detail:
        return "that revision is gone (compacted): list again"
    if "lease not found" in detail:
        return "the lease expired: the store grants a new one and re-writes its keys"
    if "too many operations" in detail:
        return "fewer operations per transaction (etcd --max-txn-ops)"
    if "space exceeded" in detail:
        return "etcd's database is full: compact and defragment it (etcdctl compact / defrag), or raise --quota-backend-bytes"
    return ""


# -- watch loops ---------------------------------------------------------------------------------


class _Stream:
    """One watch stream over ``[start, end)`` through the gateway's ``/v3/watch``, with the
    list/resync policy left to subclasses.

    etcd3gw's own ``watch_prefix`` takes a ``start_revision`` but drops what this needs: errors
    and the end of the stream are swallowed by its reader thread (the iterator then blocks
    forever), a compaction's ``canceled``/``compact_revision`` answer is ignored, and the stream
    has no timeout. So the request is made here, through an etcd3gw client's URL and a session.
    """

    def __init__(self, store: EtcdStore, start: bytes, end: bytes, *, name: str,
                 filters: list[str] | None = None) -> None:
        self.store = store
        self.start_key = start
        self.end_key = end
        self.filters = filters
        self.name = name
        self.revision = 0  # the newest revision processed
        self._stopped = threading.Event()
        self._resp: requests.Response | None = None
        self._resp_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._abort_stream()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.store.request_timeout + 2)

    def _abort_stream(self) -> None:
        with self._resp_lock:
            resp = self._resp
        if resp is None:
            return
        # Closing the response from another thread does not wake a blocked read: shut the socket.
        with contextlib.suppress(Exception):
            fp = resp.raw._fp  # http.client.HTTPResponse
            sock = socket.fromfd(fp.fileno(), socket.AF_INET, socket.SOCK_STREAM)
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with contextlib.suppress(Exception):
            resp.close()

    # hooks
    def resync(self) -> None:
        """List again; set ``self.revision`` to the list's revision."""
        raise NotImplementedError

    def on_event(self, event: Mapping[str, Any]) -> None:
        """One watch event (a dict with ``type``, ``kv``)."""
        raise NotImplementedError

    def on_start(self) -> None:
        """Once, on the thread, before the first stream."""

    def _run(self) -> None:
        backoff = _Backoff()
        need_resync = False
        with contextlib.suppress(Exception):
            self.on_start()
        for _ in range(100_000_000):  # bounded; ends when stopped
            if self._stopped.is_set():
                return
            try:
                if need_resync:
                    self.resync()
                    need_resync = False
                self._stream()
                backoff.reset()  # an idle timeout: re-open from the revision, no relist
            except _Compacted as exc:
                log.info("kvstore watch %s: %s; relisting", self.name, exc)
                need_resync = True
            except (_WatchBroken, KvstoreError, requests.RequestException, OSError, ValueError) as exc:
                if self._stopped.is_set():
                    return
                need_resync = True
                delay = backoff.next()
                why = exc.detail if isinstance(exc, KvstoreError) else str(exc)
                self.store._note_fail(f"watch: {why}")
                log.info("kvstore watch %s broken (%s); relisting in %.1f s", self.name, why[:300], delay)
                if self._stopped.wait(delay):
                    return
            except Exception:  # a bug must not silently end the watch
                log.exception("kvstore watch %s failed", self.name)
                need_resync = True
                if self._stopped.wait(backoff.next()):
                    return

    def _stream(self) -> None:
        """Watch from ``revision + 1`` until the stream breaks (raises) or idles out (returns)."""
        client = self.store._current_client()
        # progress_notify: etcd then tells a synced watcher the current revision now and then
        # (every 10 min by default), so an idle watch's revision advances past compactions.
        create: dict[str, Any] = {"key": _b64(self.start_key), "range_end": _b64(self.end_key),
                                  "start_revision": self.revision + 1, "progress_notify": True}
        if self.filters:
            create["filters"] = self.filters
        session = EtcdStore._session(pool=1)
        try:
            try:
                resp = session.post(client.get_url("/watch"), json={"create_request": create}, stream=True,
                                    timeout=(self.store.request_timeout, self.store.watch_idle_timeout))
            except requests.RequestException as exc:
                raise _WatchBroken(f"cannot open a watch at {client.base_url}: {exc}") from exc
            with self._resp_lock:
                self._resp = resp
            if self._stopped.is_set():
                return
            if resp.status_code != 200:
                raise _WatchBroken(f"watch refused: HTTP {resp.status_code} {resp.text[:200]}")
            self._read(resp)
        except requests.exceptions.ConnectionError as exc:
            if "Read timed out" in str(exc):
                return  # idle: nothing changed; re-open from the same revision
            raise _WatchBroken(str(exc)) from exc
        finally:
            with self._resp_lock:
                self._resp = None
            with contextlib.suppress(Exception):
                session.close()

    def _read(self, resp: requests.Response) -> None:
        buf = b""
        for chunk in resp.iter_content(chunk_size=None):
            if self._stopped.is_set():
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    self._message(json.loads(line))
        if not self._stopped.is_set():
            raise _WatchBroken("the watch stream ended (etcd restarted or closed it)")

    def _message(self, msg: Mapping[str, Any]) -> None:
        if "error" in msg:
            raise _WatchBroken(f"watch error: {msg['error']}")
        result = msg.get("result", {})
        self.store._note_ok()
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0) or 0)
            if compact:
                raise _Compacted(f"revision {self.revision + 1} is compacted (oldest kept: {compact})")
            raise _WatchBroken(f"watch canceled: {result.get('cancel_reason', 'no reason given')}")
        if result.get("created"):
            self.store._note_revision(self.revision)
            return
        events = result.get("events", [])
        if not events:
            # A progress notification: sent only to a watcher that has every event up to it.
            rev = int(result.get("header", {}).get("revision", 0) or 0)
            self.revision = max(self.revision, rev)
            self.store._note_revision(self.revision)
            return
        for event in events:
            if self._stopped.is_set():
                return
            self.on_event(event)
            rev = int(event.get("kv", {}).get("mod_revision", 0))
            if rev > self.revision:
                self.revision = rev
        self.store._note_revision(self.revision)


class _WatchLoop(_Stream):
    """A subscriber's list-then-watch over some kinds, with a cache to diff relists against."""

    def __init__(self, store: EtcdStore, kinds: list[_Kind], callback: Callable[[Any, Any], None],
                 baseline: Mapping[str, _Listing], *, replay: bool, name: str) -> None:
        prefixes = sorted(k.prefix for k in kinds)
        # One stream over the hull of the prefixes keeps node and service events in one order;
        # keys in between that belong to no kind are ignored.
        super().__init__(store, prefixes[0].encode(), _prefix_end(prefixes[-1]), name=name)
        self.kinds = kinds
        self.callback = callback
        self.cache: dict[str, _Entry] = {}
        # Events at or below a kind's list revision are in the baseline already.
        self.thresholds: dict[str, int] = {}
        for kind in kinds:
            listing = baseline[kind.prefix]
            self.cache.update(listing.entries)
            self.thresholds[kind.prefix] = listing.revision
        self.revision = min(self.thresholds.values())
        self._replay = replay

    def _kind(self, key: str) -> _Kind | None:
        for kind in self.kinds:
            if key.startswith(kind.prefix):
                return kind
        return None

    def _emit(self, event: str, obj: Any) -> None:
        try:
            self.callback(event, obj)
        except Exception:
            log.exception("kvstore watch %s: callback failed on %s %r", self.name, event, obj)

    def on_start(self) -> None:
        if self._replay:
            entries = sorted(self.cache.items(), key=lambda kv: (kv[1].mod_revision, kv[0]))
            for key, entry in entries:
                kind = self._kind(key)
                if kind is not None and not self._stopped.is_set():
                    self._emit(kind.upsert, entry.obj)

    def on_event(self, event: Mapping[str, Any]) -> None:
        kv = event.get("kv", {})
        key = _unb64(kv.get("key", "")).decode(errors="replace")
        kind = self._kind(key)
        rev = int(kv.get("mod_revision", 0))
        if kind is None or rev <= self.thresholds.get(kind.prefix, 0):
            return
        if event.get("type") == "DELETE":
            old = self.cache.pop(key, None)
            if old is not None:
                self._emit(kind.delete, old.obj)
            return
        raw = _unb64(kv.get("value", ""))
        cached = self.cache.get(key)
        if cached is not None and cached.raw == raw:
            cached.mod_revision = rev  # re-written as it was (a re-assert): nothing to tell
            return
        try:
            obj = kind.decode(raw)
        except ValidationError as exc:
            log.warning("kvstore watch %s: skipping %s: %s", self.name, key, exc)
            return
        self.cache[key] = _Entry(rev, raw, obj)
        self._emit(kind.upsert, obj)

    def resync(self) -> None:
        rev, kvs = self.store._range(f"relist {self.name}", self.start_key.decode(), self.end_key)
        current: dict[str, _KV] = {kv.key: kv for kv in kvs if self._kind(kv.key) is not None}
        # Deletes first: a record re-created under another name with the same pod CIDR or IP must
        # not be torn down after its replacement was programmed.
        for key in sorted(set(self.cache) - set(current)):
            kind = self._kind(key)
            old = self.cache.pop(key)
            if kind is not None:
                self._emit(kind.delete, old.obj)
        for kv in sorted(current.values(), key=lambda kv: (kv.mod_revision, kv.key)):
            kind = self._kind(kv.key)
            assert kind is not None
            cached = self.cache.get(kv.key)
            if cached is not None and cached.raw == kv.value:
                cached.mod_revision = kv.mod_revision
                continue
            try:
                obj = kind.decode(kv.value)
            except ValidationError as exc:
                log.warning("kvstore watch %s: skipping %s: %s", self.name, kv.key, exc)
                continue
            self.cache[kv.key] = _Entry(kv.mod_revision, kv.value, obj)
            self._emit(kind.upsert, obj)
        for prefix in self.thresholds:
            self.thresholds[prefix] = rev
        self.revision = rev
        self.store._note_revision(rev)


class _OwnKeyGuard(_Stream):
    """Watches deletes under ``cilium/state/`` and re-creates the owner's keys (Cilium's
    SharedStore answers a delete of a local key by writing it again)."""

    def __init__(self, store: EtcdStore, revision: int) -> None:
        super().__init__(store, STATE.encode(), _prefix_end(STATE), name=f"kvstore-guard-{store.owner}",
                         filters=["NOPUT"])
        self.revision = revision  # deletes after this one

    def on_event(self, event: Mapping[str, Any]) -> None:
        if event.get("type") != "DELETE":
            return
        key = _unb64(event.get("kv", {}).get("key", "")).decode(errors="replace")
        with self.store._own_lock:
            mine = key in self.store._own
        if mine and not self._stopped.is_set():
            self.store._reassert(key)

    def resync(self) -> None:
        # Deletes may have been missed while the stream was down: compare every own key.
        rev = self.store._current_revision()
        self.store._sync_own_keys()
        self.revision = rev

