"""Services: the Kubernetes model (frontend, backends, type, traffic policies, external addresses)
validated up front."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath.config import NODEPORT_MAX, NODEPORT_MIN

Protocol = Literal["TCP", "UDP"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
TrafficPolicy = Literal["Cluster", "Local"]
PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
NODEPORT_RANGE = (NODEPORT_MIN, NODEPORT_MAX)
#: The most backends one service may hold (slots per frontend row).
MAX_BACKENDS = 1024
#: The most external addresses (``externalIPs`` plus LoadBalancer ingress IPs) one service may hold.
MAX_EXTERNAL_ADDRESSES = 64


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
    """One endpoint of a service (a pod IP and its target port).

    ``terminating=True`` is Cilium's ``BE_STATE_TERMINATING`` (an EndpointSlice endpoint with
    ``conditions.terminating``): connections already pinned to it go on, new ones go to the active
    backends. A service whose backends are all terminating uses them for new connections too, as
    kube-proxy and Cilium do, rather than refusing traffic while its pods shut down.
    """

    ip: str
    port: int
    terminating: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", str(_ipv4(self.ip, "backend")))
        _port(self.port, f"backend {self.ip}")
        if not isinstance(self.terminating, bool):
            raise ValidationError(f"backend {self.ip}:{self.port}: terminating must be a bool, "
                                  f"not {self.terminating!r}")


@dataclass(frozen=True)
class Service:
    """A Kubernetes-style Service and its EndpointSlice, as one validated value.

    ``type="NodePort"`` also exposes ``node_port`` on every node address; ``"LoadBalancer"`` is a
    NodePort service (``node_port`` optional, as with ``allocateLoadBalancerNodePorts: false``)
    whose ``load_balancer_ips`` (``status.loadBalancer.ingress``) are served too. ``external_ips``
    (``spec.externalIPs``, any type) are served at the service port like a NodePort frontend.
    ``external_traffic_policy="Local"`` sends traffic from outside (NodePort, external and
    LoadBalancer IPs) only to backends on the receiving node; ``internal_traffic_policy="Local"``
    does the same for traffic from the cluster's pods and nodes (ClusterIP, and in-cluster use of
    the other frontends). ``health_check_node_port`` (LoadBalancer with ``Local`` only) is where
    each node answers an external balancer's HTTP health check. ``session_affinity`` pins a client
    to a backend for ``affinity_timeout`` seconds. ``maglev`` selects backends of traffic from
    outside by consistent hashing instead of at random.
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
    external_ips: tuple[str, ...] | list[str] = ()
    load_balancer_ips: tuple[str, ...] | list[str] = ()
    internal_traffic_policy: TrafficPolicy = "Cluster"
    health_check_node_port: int | None = None

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
        if self.type not in ("ClusterIP", "NodePort", "LoadBalancer"):
            raise ValidationError(f"service {self.name}: type {self.type!r} is not ClusterIP, NodePort or "
                                  "LoadBalancer")
        if self.type == "NodePort" and self.node_port is None:
            raise ValidationError(f"service {self.name}: a NodePort service needs node_port")
        if self.type != "ClusterIP":
            if self.node_port is not None:
                self._node_range_port(self.node_port, "node_port")
        elif self.node_port is not None:
            raise ValidationError(f"service {self.name}: node_port is only for type NodePort or LoadBalancer")
        for what in ("external_traffic_policy", "internal_traffic_policy"):
            if getattr(self, what) not in ("Cluster", "Local"):
                raise ValidationError(f"service {self.name}: {what} must be Cluster or Local")
        if not 1 <= self.affinity_timeout <= 86400:
            raise ValidationError(f"service {self.name}: affinity_timeout must be 1..86400 seconds")
        if self.maglev and self.type == "ClusterIP" and not self.external_ips:
            raise ValidationError(f"service {self.name}: maglev applies to traffic from outside (NodePort, "
                                  "LoadBalancer, external IPs) only")
        self._check_external_addresses()
        if self.health_check_node_port is not None:
            if self.type != "LoadBalancer" or self.external_traffic_policy != "Local":
                raise ValidationError(f"service {self.name}: health_check_node_port is only for a LoadBalancer "
                                      "service with external_traffic_policy Local")
            self._node_range_port(self.health_check_node_port, "health_check_node_port")
            if self.health_check_node_port == self.node_port:
                raise ValidationError(f"service {self.name}: health_check_node_port {self.node_port} is also "
                                      "its node_port")

    def _node_range_port(self, value: object, what: str) -> None:
        lo, hi = NODEPORT_RANGE
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValidationError(f"service {self.name}: {what} {value!r} is outside {lo}..{hi}")

    def _check_external_addresses(self) -> None:
        # Normalised to tuples of canonical strings, so two spellings of one address compare equal
        # (and a duplicate is caught whichever way it is written).
        seen: dict[str, str] = {self.frontend.ip: "the ClusterIP"}
        for what in ("external_ips", "load_balancer_ips"):
            raw = getattr(self, what)
            if isinstance(raw, str) or not isinstance(raw, (tuple, list)):
                raise ValidationError(f"service {self.name}: {what} must be a list of IPv4 addresses, not {raw!r}")
            out = []
            for value in raw:
                ip = str(_ipv4(value, f"service {self.name}: {what}"))
                if ip in seen:
                    raise ValidationError(f"service {self.name}: {what} {ip} is already {seen[ip]}")
                seen[ip] = f"in {what}"
                out.append(ip)
            object.__setattr__(self, what, tuple(out))
        if self.load_balancer_ips and self.type != "LoadBalancer":
            raise ValidationError(f"service {self.name}: load_balancer_ips are only for type LoadBalancer")
        if len(seen) - 1 > MAX_EXTERNAL_ADDRESSES:
            raise ValidationError(f"service {self.name}: {len(seen) - 1} external addresses, at most "
                                  f"{MAX_EXTERNAL_ADDRESSES}")

    @property
    def active_backends(self) -> tuple[Backend, ...]:
        """The backends new connections may go to (``terminating`` ones only when there is no other)."""
        backends: tuple[Backend, ...] = tuple(self.backends)
        active = tuple(b for b in backends if not b.terminating)
        return active or backends

    @property
    def external_addresses(self) -> tuple[str, ...]:
        """``external_ips`` then ``load_balancer_ips``: the addresses served like a NodePort frontend."""
        return tuple(self.external_ips) + tuple(self.load_balancer_ips)

    def frontends(self) -> list[Frontend]:
        """Every address:port/protocol the service claims: the ClusterIP and each external address.
        No two services may share one (the datapath has one row per address, port and protocol)."""
        fe = self.frontend
        return [fe, *(Frontend(ip, fe.port, fe.protocol) for ip in self.external_addresses)]

    def node_ports(self) -> list[tuple[int, str]]:
        """Every (port, protocol) the service takes on the nodes: its node port, and its health check
        node port (TCP, an HTTP server)."""
        out: list[tuple[int, str]] = [(self.node_port, self.frontend.protocol)] if self.node_port is not None else []
        if self.health_check_node_port is not None:
            out.append((self.health_check_node_port, "TCP"))
        return out

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
            for name in ("external_ips", "load_balancer_ips"):  # JSON has lists; the value keeps tuples
                if isinstance(fields.get(name), list):
                    fields[name] = tuple(fields[name])
            return cls(frontend=Frontend(**fe), backends=tuple(Backend(**b) for b in data.get("backends", ())),
                       **fields)
        except KeyError as exc:
            raise ValidationError(f"service {data.get('name')!r}: missing field {exc.args[0]}") from None
        except TypeError as exc:
            raise ValidationError(f"service {data.get('name')!r}: {exc}") from None
