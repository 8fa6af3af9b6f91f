"""Cluster-wide security identities in etcd: allocation (one number per label set, the same on
every node), the owner's use of one (a value key on its lease) and the list of them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.etcd.client import EtcdClient, KvstoreError
from ciliumlite.cluster.etcd.keys import (
    IDENTITY_IDS,
    IDENTITY_LABELS,
    IDENTITY_VALUES,
    TXN_ATTEMPTS,
    b64,
    kv,
    label_path,
    prefix_end,
    put_op,
)
from ciliumlite.cluster.etcd.lease import OwnKeys
from ciliumlite.cluster.store import identity_key
from ciliumlite.endpoint import MAX_IDENTITY, MIN_IDENTITY


class Identities:
    """The identity allocator of one store (see :meth:`EtcdStore.allocate_identity
    <ciliumlite.cluster.etcd.EtcdStore.allocate_identity>`); what it has allocated or looked up
    is cached by label key."""

    def __init__(self, client: EtcdClient, own: OwnKeys) -> None:
        self.client = client
        self.own = own
        self._identities: dict[str, int] = {}

    def allocate(self, labels: Mapping[str, str]) -> int:
        """The identity of ``labels``, allocated if new; with an owner, its use is recorded.
        Raises :class:`ValidationError` (space exhausted) or :class:`KvstoreError`."""
        key = identity_key(labels)
        path = label_path(key)
        index_key = IDENTITY_LABELS + path
        ident = self._identities.get(key)
        if ident is None:
            ident = self._lookup_or_allocate(key, dict(labels), index_key)
            self._identities[key] = ident
        if self.own.owner is not None:
            value_key = f"{IDENTITY_VALUES}{path}/{self.own.owner}"
            if not self.own.holds(value_key):
                self.own.put(f"record the use of identity {ident}", value_key, str(ident).encode())
        return ident

    def _lookup_or_allocate(self, key: str, labels: dict[str, str], index_key: str) -> int:
        what = f"allocate an identity for {key!r}"
        _, found = self.client.range(what, index_key)
        if found:
            return int(found[0].value)
        _, ids = self.client.range(what, IDENTITY_IDS, prefix_end(IDENTITY_IDS), keys_only=True)
        used = set()
        for item in ids:
            with contextlib.suppress(ValueError):
                used.add(int(item.key[len(IDENTITY_IDS):]))
        candidate = MIN_IDENTITY
        id_value = json.dumps({"key": key, "labels": labels}, sort_keys=True).encode()
        for _ in range(TXN_ATTEMPTS):
            while candidate in used:
                candidate += 1
            if candidate > MAX_IDENTITY:
                raise ValidationError(f"no security identity left for {key!r} (all of "
                                      f"{MIN_IDENTITY}..{MAX_IDENTITY} are taken)")
            id_key = f"{IDENTITY_IDS}{candidate}"
            res = self.client.txn(
                what,
                [{"key": b64(index_key), "target": "CREATE", "result": "EQUAL", "create_revision": 0},
                 {"key": b64(id_key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
                [put_op(id_key, id_value), put_op(index_key, str(candidate).encode())],
                [{"request_range": {"key": b64(index_key)}}],
            )
            if res.get("succeeded"):
                return candidate
            kvs = res.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
            if kvs:  # another node allocated these labels first: theirs is the identity
                return int(kv(kvs[0]).value)
            used.add(candidate)  # the number went to other labels: try the next
        raise KvstoreError(what, f"{TXN_ATTEMPTS} attempts clashed with other allocations",
                           endpoints=self.client.endpoints, hint="retry")

    def release(self, labels: Mapping[str, str]) -> None:
        """The owner stops using the identity of ``labels`` (its value key goes; the number stays
        allocated). Raises :class:`KvstoreError`."""
        if self.own.owner is None:
            return
        value_key = f"{IDENTITY_VALUES}{label_path(identity_key(labels))}/{self.own.owner}"
        self.own.drop(value_key)
        self.client.post("release an identity", "/kv/deleterange", {"key": b64(value_key)})

    def all(self) -> dict[int, dict[str, str]]:
        """Every allocated identity and its labels, by number. Raises :class:`KvstoreError`."""
        _, kvs = self.client.range("list the identities", IDENTITY_IDS, prefix_end(IDENTITY_IDS))
        out: dict[int, dict[str, str]] = {}
        for item in kvs:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out[int(item.key[len(IDENTITY_IDS):])] = dict(json.loads(item.value)["labels"])
        return dict(sorted(out.items()))
