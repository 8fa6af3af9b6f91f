"""One watch stream through the gateway's ``/v3/watch``, on a thread of its own: re-opened from its
revision after an idle timeout, and, after a break or a compaction, from a fresh list (the
``resync`` of a subclass) with exponential backoff."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Mapping
from typing import Any

import requests

from ciliumlite.cluster.etcd.client import Backoff, EtcdClient, KvstoreError, new_session
from ciliumlite.cluster.etcd.keys import b64

log = logging.getLogger("ciliumlite.kvstore")


class Compacted(Exception):
    """The revision a watch would start from is compacted: list again."""


class WatchBroken(Exception):
    """The stream failed or ended: list again after a backoff."""


class Stream:
    """One watch stream over ``[start, end)`` through the gateway's ``/v3/watch``, with the
    list/resync policy left to subclasses.

    etcd3gw's own ``watch_prefix`` takes a ``start_revision`` but drops what this needs: errors
    and the end of the stream are swallowed by its reader thread (the iterator then blocks
    forever), a compaction's ``canceled``/``compact_revision`` answer is ignored, and the stream
    has no timeout. So the request is made here, through an etcd3gw client's URL and a session.
    """

    def __init__(self, client: EtcdClient, start: bytes, end: bytes, *, name: str, idle_timeout: float,
                 filters: list[str] | None = None) -> None:
        self.client = client
        self.start_key = start
        self.end_key = end
        self.filters = filters
        self.name = name
        self.idle_timeout = idle_timeout
        self.revision = 0  # the newest revision processed
        self._stopped = threading.Event()
        self._resp: requests.Response | None = None
        self._resp_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (unless called from it)."""
        self._stopped.set()
        self._abort_stream()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.client.request_timeout + 2)

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
        backoff = Backoff()
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
            except Compacted as exc:
                log.info("kvstore watch %s: %s; relisting", self.name, exc)
                need_resync = True
            except (WatchBroken, KvstoreError, requests.RequestException, OSError, ValueError) as exc:
                if self._stopped.is_set():
                    return
                need_resync = True
                delay = backoff.next()
                why = exc.detail if isinstance(exc, KvstoreError) else str(exc)
                self.client.note_fail(f"watch: {why}")
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
        client = self.client.current_client()
        # progress_notify: etcd then tells a synced watcher the current revision now and then
        # (every 10 min by default), so an idle watch's revision advances past compactions.
        create: dict[str, Any] = {"key": b64(self.start_key), "range_end": b64(self.end_key),
                                  "start_revision": self.revision + 1, "progress_notify": True}
        if self.filters:
            create["filters"] = self.filters
        session = new_session(pool=1)
        try:
            try:
                resp = session.post(client.get_url("/watch"), json={"create_request": create}, stream=True,
                                    timeout=(self.client.request_timeout, self.idle_timeout))
            except requests.RequestException as exc:
                raise WatchBroken(f"cannot open a watch at {client.base_url}: {exc}") from exc
            with self._resp_lock:
                self._resp = resp
            if self._stopped.is_set():
                return
            if resp.status_code != 200:
                raise WatchBroken(f"watch refused: HTTP {resp.status_code} {resp.text[:200]}")
            self._read(resp)
        except requests.exceptions.ConnectionError as exc:
            if "Read timed out" in str(exc):
                return  # idle: nothing changed; re-open from the same revision
            raise WatchBroken(str(exc)) from exc
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
            raise WatchBroken("the watch stream ended (etcd restarted or closed it)")

    def _message(self, msg: Mapping[str, Any]) -> None:
        if "error" in msg:
            raise WatchBroken(f"watch error: {msg['error']}")
        result = msg.get("result", {})
        self.client.note_ok()
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0) or 0)
            if compact:
                raise Compacted(f"revision {self.revision + 1} is compacted (oldest kept: {compact})")
            raise WatchBroken(f"watch canceled: {result.get('cancel_reason', 'no reason given')}")
        if result.get("created"):
            self.client.note_revision(self.revision)
            return
        events = result.get("events", [])
        if not events:
            # A progress notification: sent only to a watcher that has every event up to it.
            rev = int(result.get("header", {}).get("revision", 0) or 0)
            self.revision = max(self.revision, rev)
            self.client.note_revision(self.revision)
            return
        for event in events:
            if self._stopped.is_set():
                return
            self.on_event(event)
            rev = int(event.get("kv", {}).get("mod_revision", 0))
            if rev > self.revision:
                self.revision = rev
        self.client.note_revision(self.revision)
