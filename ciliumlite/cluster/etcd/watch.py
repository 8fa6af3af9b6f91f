"""List-then-watch: the lists a thread makes (the baseline of its next watch), and a subscriber's
watch over some kinds of records that diffs every relist against what it has delivered."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.etcd.client import EtcdClient
from ciliumlite.cluster.etcd.keys import KV, prefix_end, unb64
from ciliumlite.cluster.etcd.stream import Stream

log = logging.getLogger("ciliumlite.kvstore")


@dataclass(frozen=True)
class Kind:
    """One kind of object a watch follows: a key prefix, its event names and its decoder."""

    prefix: str
    upsert: str
    delete: str
    decode: Callable[[bytes], Any]


@dataclass
class Entry:
    """One record as listed or watched: its revision, stored value and decoded object."""

    mod_revision: int
    raw: bytes
    obj: Any


@dataclass
class Listing:
    """What one list of a kind saw: its revision and every entry (the baseline of a watch)."""

    revision: int
    entries: dict[str, Entry]


class WatchLoop(Stream):
    """A subscriber's list-then-watch over some kinds, with a cache to diff relists against."""

    def __init__(self, client: EtcdClient, kinds: list[Kind], callback: Callable[[Any, Any], None],
                 baseline: Mapping[str, Listing], *, replay: bool, name: str, idle_timeout: float) -> None:
        prefixes = sorted(k.prefix for k in kinds)
        # One stream over the hull of the prefixes keeps node and service events in one order;
        # keys in between that belong to no kind are ignored.
        super().__init__(client, prefixes[0].encode(), prefix_end(prefixes[-1]), name=name,
                         idle_timeout=idle_timeout)
        self.kinds = kinds
        self.callback = callback
        self.cache: dict[str, Entry] = {}
        # Events at or below a kind's list revision are in the baseline already.
        self.thresholds: dict[str, int] = {}
        for kind in kinds:
            listing = baseline[kind.prefix]
            self.cache.update(listing.entries)
            self.thresholds[kind.prefix] = listing.revision
        self.revision = min(self.thresholds.values())
        self._replay = replay

    def _kind(self, key: str) -> Kind | None:
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
        """With ``replay``, deliver the baseline as upserts, oldest first."""
        if self._replay:
            entries = sorted(self.cache.items(), key=lambda kv: (kv[1].mod_revision, kv[0]))
            for key, entry in entries:
                kind = self._kind(key)
                if kind is not None and not self._stopped.is_set():
                    self._emit(kind.upsert, entry.obj)

    def on_event(self, event: Mapping[str, Any]) -> None:
        """Deliver a change the baseline does not have yet (identical re-writes are not changes)."""
        kv = event.get("kv", {})
        key = unb64(kv.get("key", "")).decode(errors="replace")
        kind = self._kind(key)
        rev = int(kv.get("mod_revision", 0))
        if kind is None or rev <= self.thresholds.get(kind.prefix, 0):
            return
        if event.get("type") == "DELETE":
            old = self.cache.pop(key, None)
            if old is not None:
                self._emit(kind.delete, old.obj)
            return
        raw = unb64(kv.get("value", ""))
        cached = self.cache.get(key)
        if cached is not None and cached.raw == raw:
            cached.mod_revision = rev  # re-written as it was (a re-assert): nothing to tell
            return
        try:
            obj = kind.decode(raw)
        except ValidationError as exc:
            log.warning("kvstore watch %s: skipping %s: %s", self.name, key, exc)
            return
        self.cache[key] = Entry(rev, raw, obj)
        self._emit(kind.upsert, obj)

    def resync(self) -> None:
        """List again: deletes for what vanished, then upserts for what changed."""
        rev, kvs = self.client.range(f"relist {self.name}", self.start_key.decode(), self.end_key)
        current: dict[str, KV] = {kv.key: kv for kv in kvs if self._kind(kv.key) is not None}
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
            self.cache[kv.key] = Entry(kv.mod_revision, kv.value, obj)
            self._emit(kind.upsert, obj)
        for prefix in self.thresholds:
            self.thresholds[prefix] = rev
        self.revision = rev
        self.client.note_revision(rev)


class Watches:
    """A store's lists and watches: each thread's last list of a kind is the baseline its next
    watch of that kind starts from, so a list followed by a watch loses nothing in between."""

    def __init__(self, client: EtcdClient, *, idle_timeout: float) -> None:
        self.client = client
        self.idle_timeout = idle_timeout
        self._listings = threading.local()
        self._loops: list[WatchLoop] = []
        self._lock = threading.Lock()

    def list_kind(self, kind: Kind, operation: str, *, record: bool = True) -> Listing:
        """Every record of a kind (those that do not parse are skipped, with a warning); with
        ``record``, the baseline of this thread's next watch. Raises ``KvstoreError``."""
        rev, kvs = self.client.range(operation, kind.prefix, prefix_end(kind.prefix))
        entries: dict[str, Entry] = {}
        for kv in kvs:
            try:
                entries[kv.key] = Entry(kv.mod_revision, kv.value, kind.decode(kv.value))
            except ValidationError as exc:
                log.warning("kvstore: skipping %s: %s", kv.key, exc)
        listing = Listing(rev, entries)
        if record:  # the baseline of this thread's next watch() (see watch)
            if not hasattr(self._listings, "by_prefix"):
                self._listings.by_prefix = {}
            self._listings.by_prefix[kind.prefix] = listing
        return listing

    def objects(self, kind: Kind, operation: str, *, key: Callable[[Any], Any]) -> list[Any]:
        """The decoded objects of a kind, sorted; this thread's next watch starts after this list."""
        return sorted((e.obj for e in self.list_kind(kind, operation).entries.values()), key=key)

    def start(self, kinds: list[Kind], callback: Callable[[Any, Any], None], *, replay: bool,
              name: str) -> Callable[[], None]:
        """Start a watch of ``kinds`` from this thread's lists (or from a list made now); returns
        the function that stops it. Raises ``KvstoreError``."""
        listings: dict[str, Listing] = getattr(self._listings, "by_prefix", {})
        baseline: dict[str, Listing] = {}
        for kind in kinds:
            # A thread's lists are the baseline of its next watch only: they are used up here.
            listed = listings.pop(kind.prefix, None)
            if replay or listed is None:
                listed = self.list_kind(kind, f"list {kind.prefix} to start a watch", record=False)
            baseline[kind.prefix] = listed
        loop = WatchLoop(self.client, kinds, callback, baseline, replay=replay, name=name,
                         idle_timeout=self.idle_timeout)
        with self._lock:
            self._loops.append(loop)
        loop.start()

        def stop() -> None:
            loop.stop()
            with self._lock:
                if loop in self._loops:
                    self._loops.remove(loop)

        return stop

    def stop_all(self) -> None:
        """Stop every watch still running."""
        with self._lock:
            loops = list(self._loops)
            self._loops.clear()
        for loop in loops:
            loop.stop()
