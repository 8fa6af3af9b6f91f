"""The connection to etcd: requests through the ``etcd3gw`` client with failover between the
endpoints, paged ranges, bounded retries with backoff, the errors (:class:`KvstoreError`) and the
health that :class:`KvstoreStatus` reports."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
import requests.adapters
from etcd3gw import exceptions as gw_exc
from etcd3gw.client import Etcd3Client

from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.cluster.etcd.keys import HEARTBEAT_KEY, KV, PAGE, b64, kv

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0

T = TypeVar("T")

#: Called after every etcd round trip as ``observer(path, operation, ok, seconds)`` (``path`` is the
#: gateway path, ``/kv/put``…): how :class:`ciliumlite.prometheus.KvstoreMetrics` times them.
OBSERVERS: list[Callable[[str, str, bool, float], None]] = []


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


class Backoff:
    """Exponential backoff, bounded: 0.1 s, 0.2 s, … up to ``maximum``; reset on success."""

    def __init__(self, initial: float = BACKOFF_MIN, maximum: float = BACKOFF_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self) -> float:
        """The delay to wait now; the one after doubles."""
        delay = self.delay
        self.delay = min(self.maximum, self.delay * 2)
        return delay

    def reset(self) -> None:
        """Back to the initial delay (after a success)."""
        self.delay = self.initial


def new_session(pool: int = 32) -> requests.Session:
    """An HTTP session for etcd: up to ``pool`` connections, no proxy from the environment."""
    session = requests.Session()
    # etcd is reached directly: an HTTP(S)_PROXY from the environment must not apply.
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def gateway_message(exc: gw_exc.Etcd3Exception) -> str:
    """What etcd said, from the gateway's JSON error body when there is one."""
    text = exc.detail_text or str(exc)
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        body = json.loads(text)
        text = str(body.get("message") or body.get("error") or text)
    return text


def hint_for(detail: str) -> str:
    """What to do about an error etcd answered with ("" when there is nothing to say)."""
    if "compacted" in detail:
        return "that revision is gone (compacted): list again"
    if "lease not found" in detail:
        return "the lease expired: the store grants a new one and re-writes its keys"
    if "too many operations" in detail:
        return "fewer operations per transaction (etcd --max-txn-ops)"
    if "space exceeded" in detail:
        return "etcd's database is full: compact and defragment it (etcdctl compact / defrag), or raise --quota-backend-bytes"
    return ""


class EtcdClient:
    """The endpoints of one store and the requests made to them.

    Every call goes to the current endpoint and fails over to the others on a network error; the
    time of the last round trip that worked or failed, the last error and the newest revision a
    watch processed are kept for :class:`KvstoreStatus`.

    Raises:
        ValidationError: an endpoint is not an ``http(s)://host:port`` URL.
    """

    def __init__(self, endpoints: tuple[str, ...], request_timeout: float) -> None:
        self.endpoints = endpoints
        self.request_timeout = request_timeout
        self._clients = [self._make_client(url) for url in self.endpoints]
        self._current = 0
        self._lock = threading.Lock()
        self._last_ok: float | None = None  # time.time() of the last round trip that worked
        self._last_fail: float | None = None
        self._last_error: str | None = None
        self._watch_revision: int | None = None

    def _make_client(self, url: str) -> Etcd3Client:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(f"etcd endpoint {url!r} is not an http(s)://host:port URL")
        return Etcd3Client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                           timeout=self.request_timeout, api_path="/v3/", session=new_session())

    def current_client(self) -> Etcd3Client:
        """The endpoint the next call goes to first."""
        return self._clients[self._current % len(self._clients)]

    def note_ok(self) -> None:
        """A round trip worked."""
        with self._lock:
            self._last_ok = time.time()

    def note_fail(self, error: str) -> None:
        """A round trip failed with ``error``."""
        with self._lock:
            self._last_fail = time.time()
            self._last_error = error

    def note_revision(self, revision: int) -> None:
        """A watch has processed everything up to ``revision``."""
        with self._lock:
            if self._watch_revision is None or revision > self._watch_revision:
                self._watch_revision = revision

    def health(self) -> tuple[float | None, float | None, str | None, int | None]:
        """(last ok, last failure, last error, watch revision), read together."""
        with self._lock:
            return self._last_ok, self._last_fail, self._last_error, self._watch_revision

    def call(self, operation: str, fn: Callable[[Etcd3Client], T]) -> T:
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
                self.note_ok()
                detail = gateway_message(exc)
                raise KvstoreError(operation, detail, endpoints=[client.base_url],
                                   hint=hint_for(detail)) from exc
            except (requests.RequestException, ValueError, KeyError) as exc:
                errors.append(f"{client.base_url}: unexpected answer ({exc})")
            else:
                self._current = idx
                self.note_ok()
                return result
        detail = "; ".join(errors)
        self.note_fail(f"{operation}: {detail}")
        self._current = start + 1  # the next call starts with another endpoint
        hint = ("is etcd running and reachable? check `etcdctl --endpoints "
                f"{','.join(self.endpoints)} endpoint health`; an agent keeps forwarding with what it "
                "has and retries with backoff")
        raise KvstoreError(operation, detail, endpoints=self.endpoints, hint=hint)

    def post(self, operation: str, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to ``/v3<path>``; the JSON answer. Raises :class:`KvstoreError`."""
        def run(client: Etcd3Client) -> dict[str, Any]:
            result: dict[str, Any] = client.post(client.get_url(path), json=payload)
            return result
        return self._timed(path, operation, run)

    def _timed(self, path: str, operation: str, fn: Callable[[Etcd3Client], T]) -> T:
        if not OBSERVERS:
            return self.call(operation, fn)
        t0, ok = time.monotonic(), False
        try:
            result = self.call(operation, fn)
            ok = True
            return result
        finally:
            seconds = time.monotonic() - t0
            for observe in list(OBSERVERS):
                with contextlib.suppress(Exception):  # a metric never fails a kvstore call
                    observe(path, operation, ok, seconds)

    def txn(self, operation: str, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """One transaction; its answer (``succeeded``, ``responses``). Raises :class:`KvstoreError`."""
        txn = {"compare": compare, "success": success, "failure": failure or []}

        def run(client: Etcd3Client) -> dict[str, Any]:
            return dict(client.transaction(txn))
        return self._timed("/kv/txn", operation, run)

    def range(self, operation: str, key: str, end: bytes | None = None, *, revision: int | None = None,
              keys_only: bool = False) -> tuple[int, list[KV]]:
        """Every key in ``[key, end)`` at one revision (paged). Returns (revision, kvs by key)."""
        out: list[KV] = []
        start = key.encode()
        rev = revision
        for _ in range(1_000_000 // PAGE):  # bounded: a million keys
            payload: dict[str, Any] = {"key": b64(start), "limit": PAGE}
            if end is not None:
                payload["range_end"] = b64(end)
            if rev is not None:
                payload["revision"] = rev
            if keys_only:
                payload["keys_only"] = True
            res = self.post(operation, "/kv/range", payload)
            if rev is None:
                rev = int(res["header"]["revision"])
            kvs = [kv(item) for item in res.get("kvs", [])]
            out.extend(kvs)
            if not res.get("more") or not kvs or end is None:
                break
            start = kvs[-1].key.encode() + b"\0"
        assert rev is not None
        return rev, out

    def current_revision(self) -> int:
        """etcd's revision now. Raises :class:`KvstoreError`."""
        res = self.post("read the current revision", "/kv/range", {"key": b64(HEARTBEAT_KEY), "count_only": True})
        return int(res["header"]["revision"])

    def connect(self, timeout: float, *, then: Callable[[], None] | None = None) -> None:
        """Reach etcd (and run ``then``), retrying with backoff for up to ``timeout`` seconds.

        Raises:
            KvstoreError: etcd did not answer (or ``then`` kept failing) within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        backoff = Backoff()
        for attempt in range(10_000):  # bounded by the deadline too
            try:
                self.post("connect (maintenance status)", "/maintenance/status", {})
                if then is not None:
                    # Inside the retry: an etcd that is just starting may answer one request and
                    # reset the next.
                    then()
                return
            except KvstoreError as exc:
                if time.monotonic() + backoff.delay > deadline:
                    raise KvstoreError(
                        "connect", f"{exc.detail} (after {attempt + 1} attempts in {timeout:g} s)",
                        endpoints=self.endpoints,
                        hint="start etcd (or fix the endpoint URL); to wait for an etcd that starts "
                             "later pass connect_timeout=SECONDS") from exc
                time.sleep(backoff.next())

    def close(self) -> None:
        """Close every endpoint's HTTP session."""
        for client in self._clients:
            client.session.close()
