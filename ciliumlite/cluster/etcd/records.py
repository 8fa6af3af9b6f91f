"""What the keys hold: node records, services, ipcache entries (:class:`IPIdentity`, or a whole
:class:`~ciliumlite.cluster.store.EndpointRecord`), policies and namespaces, as JSON."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.store import EndpointRecord, NodeInfo
from ciliumlite.policy.rules import Policy, parse_policy
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


def endpoint_json(record: EndpointRecord) -> bytes:
    """An endpoint record's stored value: its ipcache entry plus ``node``, ``labels`` and
    ``named_ports`` (``[[name, protocol, port], ...]``), so an ipcache reader reads it too."""
    namespace, _, pod = record.name.rpartition("/")
    data = IPIdentity(record.ip, record.identity, record.node_ip, namespace, pod).to_dict()
    data.update(node=record.node, labels=dict(record.labels),
                named_ports=[[n, proto, port] for (n, proto), port in sorted(record.named_ports.items())])
    return json.dumps(data, sort_keys=True).encode()


def decode_endpoint(raw: bytes) -> EndpointRecord:
    """Parse an ipcache key's value as an endpoint record (an entry written without labels has
    none); raises :class:`ValidationError` on a bad one or an identity no pod can have."""
    try:
        data = json.loads(raw)
        ip = IPIdentity.from_dict(data)
        labels = {str(k): str(v) for k, v in dict(data.get("labels") or {}).items()}
        ports = {(str(n), int(proto)): int(port) for n, proto, port in data.get("named_ports") or []}
        name = f"{ip.namespace}/{ip.pod}" if ip.namespace else ip.pod
        return EndpointRecord(ip.ip, str(data.get("node", "")), ip.host_ip, ip.identity, labels, ports, name)
    except (KeyError, TypeError, ValueError) as exc:  # ValidationError is a ValueError
        raise ValidationError(f"bad endpoint record {raw[:200]!r}: {exc}") from exc


def policy_json(policy: Policy) -> bytes:
    """A policy's stored value: the manifest it was parsed from. Raises :class:`ValidationError`
    for a policy built in Python (it has no manifest a store could keep)."""
    if policy.source is None:
        raise ValidationError(f"{policy.key}: a store keeps a policy as its manifest, and this one has none "
                              "(parse it from YAML or a mapping: ciliumlite.policy.parse_policy)")
    return json.dumps(policy.source, sort_keys=True).encode()


def decode_policy(raw: bytes) -> Policy:
    """Parse a stored policy manifest; raises :class:`ValidationError` naming the bad field."""
    try:
        return parse_policy(json.loads(raw))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"bad policy record {raw[:200]!r}: {exc}") from exc


@dataclass(frozen=True)
class NamespaceRecord:
    """A Kubernetes namespace and its labels (what a pod's identity takes from it)."""

    name: str
    labels: Mapping[str, str]


def namespace_json(ns: NamespaceRecord) -> bytes:
    """A namespace's stored value."""
    return json.dumps({"name": ns.name, "labels": dict(ns.labels)}, sort_keys=True).encode()


def decode_namespace(raw: bytes) -> NamespaceRecord:
    """Parse a namespace record; raises :class:`ValidationError` on a bad one."""
    try:
        data = json.loads(raw)
        return NamespaceRecord(str(data["name"]), {str(k): str(v) for k, v in dict(data.get("labels") or {}).items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"bad namespace record {raw[:200]!r}: {exc}") from exc

