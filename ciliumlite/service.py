"""Services: the Kubernetes model (frontend, backends, type, traffic policy) validated up front."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath.config import NODEPORT_MAX, NODEPORT_MIN

Protocol = Literal["TCP", "UDP"]
ServiceType = Literal["ClusterIP", "NodePort"]
TrafficPolicy = Literal["Cluster", "Local"]
PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
NODEPORT_RANGE = (NODEPORT_MIN, NODEPORT_MAX)
#: The most backends one service may hold (slots per frontend row).
MAX_BACKENDS = 1024


def _port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError(f"{what}: port {value!r} is outside 1..65535")
    return value


def _ipv4(value: object, what: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.IPv4Address(value)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"{what}: {value!r} is not an IPv4 address") from exc
    if addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"):
        raise ValidationError(f"{what}: {addr} cannot be used")
    return addr


def _proto(value: object, what: str) -> Protocol:
    if value not in PROTO_NUMBERS:
        raise ValidationError(f"{what}: protocol {value!r} is not TCP or UDP")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Frontend:
    """The service address clients use: a ClusterIP, a port and a protocol."""

    ip: str
    port: int
    protocol: Protocol = "TCP"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", str(_ipv4(self.ip, "frontend")))
        _port(self.port, f"frontend {self.ip}")
        _proto(self.protocol, f"frontend {self.ip}:{self.port}")

    @property
    def proto_number(self) -> int:
        """IPPROTO_TCP or IPPROTO_UDP."""
        return PROTO_NUMBERS[self.protocol]


@dataclass(frozen=True)
class Backend:
    """One endpoint of a service (a pod IP and its target port)."""

    ip: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", str(_ipv4(self.ip, "backend")))
        _port(self.port, f"backend {self.ip}")


@dataclass(frozen=True)
class Service:
    """A Kubernetes-style Service and its EndpointSlice, as one validated value.

    ``type="NodePort"`` also exposes ``node_port`` on every node address. ``external_traffic_policy=
    "Local"`` sends traffic from outside only to backends on the receiving node. ``session_affinity``
    pins a client to a backend for ``affinity_timeout`` seconds. ``maglev`` selects NodePort backends
    by consistent hashing instead of at random.
    """

    name: str
    frontend: Frontend
    backends: tuple[Backend, ...] | list[Backend] = ()
    type: ServiceType = "ClusterIP"
    node_port: int | None = None
    external_traffic_policy: TrafficPolicy = "Cluster"
    session_affinity: bool = False
    affinity_timeout: int = 10800
    maglev: bool = False
    labels: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 63:
            raise ValidationError(f"service name {self.name!r} must be 1..63 characters")
        if not isinstance(self.frontend, Frontend):
            raise ValidationError(f"service {self.name}: frontend must be a Frontend")
        backends = tuple(self.backends)
        seen: set[tuple[str, int]] = set()
        for b in backends:
            if not isinstance(b, Backend):
                raise ValidationError(f"service {self.name}: backends must be Backend values, not {b!r}")
            if (b.ip, b.port) in seen:
                raise ValidationError(f"service {self.name}: duplicate backend {b.ip}:{b.port}")
            seen.add((b.ip, b.port))
        if len(backends) > MAX_BACKENDS:
            raise ValidationError(f"service {self.name}: {len(backends)} backends, at most {MAX_BACKENDS}")
        object.__setattr__(self, "backends", backends)
        if self.type not in ("ClusterIP", "NodePort"):
            raise ValidationError(f"service {self.name}: type {self.type!r} is not ClusterIP or NodePort")
        if self.type == "NodePort":
            if self.node_port is None:
                raise ValidationError(f"service {self.name}: a NodePort service needs node_port")
            lo, hi = NODEPORT_RANGE
            if isinstance(self.node_port, bool) or not isinstance(self.node_port, int) or \
                    not lo <= self.node_port <= hi:
                raise ValidationError(f"service {self.name}: node_port {self.node_port!r} is outside {lo}..{hi}")
        elif self.node_port is not None:
            raise ValidationError(f"service {self.name}: node_port is only for type NodePort")
        if self.external_traffic_policy not in ("Cluster", "Local"):
            raise ValidationError(f"service {self.name}: external_traffic_policy must be Cluster or Local")
        if not 1 <= self.affinity_timeout <= 86400:
            raise ValidationError(f"service {self.name}: affinity_timeout must be 1..86400 seconds")
        if self.maglev and self.type != "NodePort":
            raise ValidationError(f"service {self.name}: maglev applies to NodePort services only")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the kvstore value and the agent API's body); :meth:`from_dict` reads it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Service:
        """The service a :meth:`to_dict` dict describes, validated as any Service.

        Raises :class:`ValidationError` naming the field that is missing or wrong; unknown fields
        are refused, so a newer writer's field is never silently dropped.
        """
        if not isinstance(data, Mapping):
            raise ValidationError(f"a service must be a JSON object, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"service {data.get('name')!r}: unknown field(s) {', '.join(unknown)}")
        try:
            fe = data["frontend"]
            fields = {k: v for k, v in data.items() if k not in ("frontend", "backends")}
            return cls(frontend=Frontend(**fe), backends=tuple(Backend(**b) for b in data.get("backends", ())),
                       **fields)
        except KeyError as exc:
            raise ValidationError(f"service {data.get('name')!r}: missing field {exc.args[0]}") from None
        except TypeError as exc:
            raise ValidationError(f"service {data.get('name')!r}: {exc}") from None
