"""What the keys hold: node records, services and ipcache entries (:class:`IPIdentity`) as JSON."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.store import NodeInfo
from ciliumlite.service import Service


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


def node_json(node: NodeInfo) -> bytes:
    """A node record's stored value."""
    return json.dumps({"name": node.name, "ip": node.ip, "pod_cidr": node.pod_cidr}, sort_keys=True).encode()


def decode_node(raw: bytes) -> NodeInfo:
    """Parse a node record; raises :class:`ValidationError` on a bad one."""
    try:
        data = json.loads(raw)
        return NodeInfo(str(data["name"]), str(data["ip"]), str(data["pod_cidr"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"bad node record {raw[:200]!r}: {exc}") from exc


def service_json(svc: Service) -> bytes:
    """A service's stored value (``to_dict()``)."""
    return json.dumps(svc.to_dict(), sort_keys=True).encode()


def decode_service(raw: bytes) -> Service:
    """Parse a service record; raises :class:`ValidationError` on a bad one."""
    try:
        return Service.from_dict(json.loads(raw))
    except (TypeError, ValueError) as exc:  # ValidationError is a ValueError
        raise ValidationError(f"bad service record {raw[:200]!r}: {exc}") from exc


def ip_json(entry: IPIdentity) -> bytes:
    """An ipcache entry's stored value."""
    return json.dumps(entry.to_dict(), sort_keys=True).encode()


def decode_ip(raw: bytes) -> IPIdentity:
    """Parse an ipcache record; raises :class:`ValidationError` on a bad one."""
    try:
        return IPIdentity.from_dict(json.loads(raw))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"bad ip identity record {raw[:200]!r}: {exc}") from exc
