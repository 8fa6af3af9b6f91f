"""The key layout under ``cilium/state/`` and the gateway's wire encoding.

Keys (``<c>`` is the cluster name; every value is JSON, see ``records.py``):

- ``cilium/state/nodes/v1/<c>/<node>``: ``{name, ip, pod_cidr}``, on the owner's lease;
- ``cilium/state/services/v1/<c>/<name>``: ``Service.to_dict()``;
- ``cilium/state/identities/v1/id/<id>``: ``{key, labels}``;
- ``cilium/state/identities/v1/labels/<labels>``: ``<id>`` (the reverse index);
- ``cilium/state/identities/v1/value/<labels>/<node>``: ``<id>``, on that node's lease;
- ``cilium/state/ip/v1/<c>/<ip>``: ``{ip, identity, host_ip, namespace, pod}``, on the owner's lease;
  an endpoint record adds ``node``, ``labels`` (its security labels) and ``named_ports``;
- ``cilium/state/policies/v1/<c>/<Kind>/<namespace>/<name>``: the policy's manifest (JSON);
- ``cilium/state/namespaces/v1/<c>/<name>``: ``{name, labels}``;
- ``cilium/.heartbeat``: an RFC 3339 time.

``<labels>`` is :func:`~ciliumlite.cluster.store.identity_key` percent-encoded (``/`` becomes
``%2F``), so a label such as ``app.kubernetes.io/name`` cannot add a path level. The gateway
(``/v3/...``) carries keys and values base64-encoded.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ciliumlite.bpf.errors import ValidationError

STATE = "cilium/state/"
NODES = STATE + "nodes/v1/"
SERVICES = STATE + "services/v1/"
IDENTITY_IDS = STATE + "identities/v1/id/"
IDENTITY_LABELS = STATE + "identities/v1/labels/"
IDENTITY_VALUES = STATE + "identities/v1/value/"
IPS = STATE + "ip/v1/"
POLICIES = STATE + "policies/v1/"
NAMESPACES = STATE + "namespaces/v1/"
HEARTBEAT_KEY = "cilium/.heartbeat"

#: etcd's default ``--max-txn-ops`` is 128; stay below it with room for compares.
TXN_OPS = 100
#: Keys per page when listing a prefix (a relist of 10,000 services is 10 round trips).
PAGE = 1000
#: Attempts for the optimistic transactions (put_node's validation, identity allocation).
TXN_ATTEMPTS = 64


def b64(data: str | bytes) -> str:
    """A key or value as the gateway's JSON carries it (base64)."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(data: str) -> bytes:
    """The bytes of a base64 key or value from the gateway."""
    return base64.b64decode(data)


def prefix_end(prefix: str) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # our prefixes end in "/", never in 0xff
    return bytes(raw)


def label_path(labels_key: str) -> str:
    """An identity's label key as one key segment."""
    # Percent-encode so "/" in a label (app.kubernetes.io/name) cannot add a path level.
    return urllib.parse.quote(labels_key, safe="=;:.,-_@+")


def check_name(what: str, name: str) -> None:
    """Raise :class:`ValidationError` unless ``name`` can be one key segment."""
    if not name or "/" in name or name != name.strip():
        raise ValidationError(f"{what} name {name!r} cannot be an etcd key segment (empty, '/' or spaces)")


def put_op(key: str, value: bytes, lease: int | None = None) -> dict[str, Any]:
    """A transaction's put of ``key`` (on ``lease`` when one is given)."""
    put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        put["lease"] = lease
    return {"request_put": put}


@dataclass(frozen=True)
class KV:
    """One key as a range read returned it."""

    key: str
    value: bytes
    mod_revision: int
    lease: int


def kv(item: Mapping[str, Any]) -> KV:
    """Decode one ``kvs`` item of a range answer."""
    return KV(unb64(item["key"]).decode(errors="replace"), unb64(item.get("value", "")),
              int(item.get("mod_revision", 0)), int(item.get("lease", 0)))
