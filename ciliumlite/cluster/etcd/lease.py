"""An owner's lease and its *own keys* (Cilium's ``pkg/kvstore`` session and SharedStore).

The lease is granted at connect and kept alive by a background thread, which also writes the
heartbeat and, every ``sync_interval``, re-writes own keys that differ in etcd. Own keys live on
the lease; a delete of one (seen by :class:`OwnKeyGuard`) is answered by writing it again, and a
lost lease by a new one with every own key re-written on it.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ciliumlite.cluster.etcd.client import BACKOFF_MAX, Backoff, EtcdClient, KvstoreError
from ciliumlite.cluster.etcd.keys import HEARTBEAT_KEY, STATE, TXN_OPS, b64, kv, prefix_end, put_op, unb64
from ciliumlite.cluster.etcd.stream import Stream

log = logging.getLogger("ciliumlite.kvstore")


class OwnKeys:
    """The lease of ``owner`` and the keys it keeps on it (key -> value).

    Without an owner there is no lease: nothing is granted or started, and :meth:`put` is not
    called. The lock orders lease renewals with writes of own keys.
    """

    def __init__(self, client: EtcdClient, *, owner: str | None, lease_ttl: int, sync_interval: float,
                 heartbeat_interval: float | None) -> None:
        self.client = client
        self.owner = owner
        self.lease_ttl = lease_ttl
        self.sync_interval = sync_interval
        self.heartbeat_interval = heartbeat_interval
        self._own: dict[str, bytes] = {}
        self._lock = threading.RLock()
        self._lease_id: int | None = None
        self._dirty = False  # the own keys must be re-written (a new lease, a failed re-put)
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._guard: OwnKeyGuard | None = None

    @property
    def lease_id(self) -> int | None:
        """The current lease (None without an owner)."""
        return self._lease_id

    def grant(self) -> None:
        """Grant the first lease. Raises :class:`KvstoreError`."""
        with self._lock:
            self._lease_id = self._grant_lease()

    def start(self, *, idle_timeout: float) -> None:
        """Start the guard (deletes from now on) and the keepalive thread. Raises :class:`KvstoreError`."""
        self._guard = OwnKeyGuard(self, self.client.current_revision(), idle_timeout=idle_timeout)
        self._guard.start()
        self._thread = threading.Thread(target=self._keepalive_loop, name=f"kvstore-keepalive-{self.owner}",
                                        daemon=True)
        self._thread.start()

    def holds(self, key: str) -> bool:
        """Whether ``key`` is an own key."""
        with self._lock:
            return key in self._own

    def _grant_lease(self) -> int:
        res = self.client.post(f"grant a lease (TTL {self.lease_ttl} s)", "/lease/grant",
                               {"TTL": self.lease_ttl, "ID": 0})
        lease = int(res["ID"])
        log.info("kvstore: %s holds lease %x (TTL %s s)", self.owner, lease, res.get("TTL"))
        return lease

    def _renew_lease(self, stale: int | None) -> None:
        """A new lease when ``stale`` is gone (ErrLeaseNotFound, expiry), and every own key on it
        (Cilium's orphaned-session controller and lease manager). Raises :class:`KvstoreError`."""
        with self._lock:
            if self._lease_id == stale or self._lease_id is None:
                self._lease_id = self._grant_lease()
                self._dirty = True
                log.warning("kvstore: lease %s of %s was gone; re-writing %d own keys on lease %x",
                            f"{stale:x}" if stale else "-", self.owner, len(self._own), self._lease_id)
            self._flush()

    def _flush(self) -> None:
        """Re-write every own key on the current lease if a renewal (or a failed re-creation) left
        them behind. Raises :class:`KvstoreError` (they stay marked: the keepalive thread retries)."""
        with self._lock:
            if self._dirty:
                self._write(list(self._own.items()))
                self._dirty = False

    def _write(self, items: list[tuple[str, bytes]]) -> None:
        lease = self._lease_id
        for i in range(0, len(items), TXN_OPS):
            chunk = items[i:i + TXN_OPS]
            self.client.txn("re-write own keys", [], [put_op(k, v, lease) for k, v in chunk])

    def put(self, operation: str, key: str, value: bytes, *, compare: list[dict[str, Any]] | None = None) -> bool:
        """Write an own key on the lease (``compare`` guards it). A missing lease is replaced and
        the write tried again. Returns whether the compares held. Raises :class:`KvstoreError`."""
        for _ in range(3):
            with self._lock:
                lease = self._lease_id
                try:
                    res = self.client.txn(operation, compare or [], [put_op(key, value, lease)])
                except KvstoreError as exc:
                    if "lease not found" not in exc.detail:
                        raise
                else:
                    if res.get("succeeded"):
                        self._own[key] = value
                        return True
                    return False
            self._renew_lease(lease)
        raise KvstoreError(operation, "the lease kept vanishing", endpoints=self.client.endpoints,
                           hint="etcd may be revoking leases (clock jumps, an overloaded leader)")

    def drop(self, key: str) -> None:
        """``key`` is no longer an own key (it is about to be deleted)."""
        with self._lock:
            self._own.pop(key, None)

    def reassert(self, key: str) -> None:
        """An own key was deleted by someone else (or its lease expired): put it back."""
        with self._lock:
            value = self._own.get(key)
            if value is None or self._closed:
                return
        log.info("kvstore: own key %s was deleted; re-creating it", key)
        try:
            self.put(f"re-create own key {key}", key, value)
        except KvstoreError as exc:
            log.warning("kvstore: re-creating %s failed (%s); the keepalive thread retries", key, exc)
            with self._lock:
                self._dirty = True

    def sync(self) -> None:
        """Re-write own keys whose value or lease differs in etcd (Cilium's UpdateIfDifferent)."""
        with self._lock:
            items = list(self._own.items())
            lease = self._lease_id
        stale: list[tuple[str, bytes]] = []
        for i in range(0, len(items), TXN_OPS):
            chunk = items[i:i + TXN_OPS]
            res = self.client.txn("read own keys", [], [{"request_range": {"key": b64(k)}} for k, _ in chunk])
            for (key, value), resp in zip(chunk, res.get("responses", []), strict=False):
                kvs = resp.get("response_range", {}).get("kvs", [])
                cur = kv(kvs[0]) if kvs else None
                if cur is None or cur.value != value or cur.lease != (lease or 0):
                    stale.append((key, value))
        if stale:
            log.info("kvstore: re-writing %d own keys of %s that differed", len(stale), self.owner)
            with self._lock:
                current = [(k, self._own[k]) for k, _ in stale if k in self._own]
                self._write(current)

    def _keepalive_loop(self) -> None:
        interval = max(0.2, self.lease_ttl / 3)
        backoff = Backoff(maximum=min(BACKOFF_MAX, interval))
        next_sync = time.monotonic() + self.sync_interval
        next_heartbeat = time.monotonic()
        delay = interval
        while not self._stop.wait(delay):
            try:
                with self._lock:
                    lease = self._lease_id
                res = self.client.post("keep the lease alive", "/lease/keepalive", {"ID": lease})
                if int(res.get("result", {}).get("TTL", -1)) <= 0:
                    self._renew_lease(lease)  # expired (etcd was paused or lost us): new lease, keys
                else:
                    self._flush()
                now = time.monotonic()
                if now >= next_sync:
                    self.sync()
                    next_sync = now + self.sync_interval
                if self.heartbeat_interval is not None and now >= next_heartbeat:
                    stamp = datetime.datetime.now(datetime.UTC).isoformat()
                    self.client.post("write the heartbeat", "/kv/put", {"key": b64(HEARTBEAT_KEY), "value": b64(stamp)})
                    next_heartbeat = now + self.heartbeat_interval
                backoff.reset()
                delay = interval
            except KvstoreError as exc:
                delay = backoff.next()
                log.debug("kvstore keepalive: %s; retrying in %.1f s", exc, delay)
            except Exception:  # a bug must not end the thread that holds the lease
                log.exception("kvstore keepalive failed")
                delay = backoff.next()

    def keys_on_lease(self) -> list[str]:
        """The keys etcd holds on the lease (empty without one). Raises :class:`KvstoreError`."""
        if self._lease_id is None:
            return []
        res = self.client.post("list the lease's keys", "/kv/lease/timetolive", {"ID": self._lease_id, "keys": True})
        return sorted(unb64(k).decode(errors="replace") for k in res.get("keys", []))

    def begin_close(self) -> None:
        """From now on nothing is re-created, and the keepalive thread ends."""
        self._closed = True
        self._stop.set()

    def close(self, *, revoke: bool) -> None:
        """Stop the guard and the keepalive thread; with ``revoke``, revoke the lease so every own
        key goes at once (an unreachable etcd is logged: the lease then expires by itself)."""
        self._closed = True
        self._stop.set()
        if self._guard is not None:
            self._guard.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.client.request_timeout + 1)
        if revoke and self._lease_id is not None:
            try:
                self.client.post("revoke the lease", "/kv/lease/revoke", {"ID": self._lease_id})
            except KvstoreError as exc:
                if "lease not found" not in exc.detail:
                    log.warning("kvstore: could not revoke lease %x (%s); its keys expire in %s s",
                                self._lease_id, exc, self.lease_ttl)
        with self._lock:
            self._own.clear()


class OwnKeyGuard(Stream):
    """Watches deletes under ``cilium/state/`` and re-creates the owner's keys (Cilium's
    SharedStore answers a delete of a local key by writing it again)."""

    def __init__(self, own: OwnKeys, revision: int, *, idle_timeout: float) -> None:
        super().__init__(own.client, STATE.encode(), prefix_end(STATE), name=f"kvstore-guard-{own.owner}",
                         idle_timeout=idle_timeout, filters=["NOPUT"])
        self.own = own
        self.revision = revision  # deletes after this one

    def on_event(self, event: Mapping[str, Any]) -> None:
        """A delete of an own key: write it again."""
        if event.get("type") != "DELETE":
            return
        key = unb64(event.get("kv", {}).get("key", "")).decode(errors="replace")
        mine = self.own.holds(key)
        if mine and not self._stopped.is_set():
            self.own.reassert(key)

    def resync(self) -> None:
        """Deletes may have been missed while the stream was down: compare every own key."""
        rev = self.own.client.current_revision()
        self.own.sync()
        self.revision = rev
