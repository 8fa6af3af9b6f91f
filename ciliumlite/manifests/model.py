"""The values Kubernetes manifests become: which object (:class:`ObjectRef`, with its :class:`Origin`
for errors), a :class:`KubeService`, a :class:`KubeEndpoints`, a :class:`KubeNode`, a
:class:`KubePolicy`; and the labels
under which a ciliumlite service keeps what a later apply needs to merge.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.store import NodeInfo
from ciliumlite.manifests.fields import ManifestError, join
from ciliumlite.policy.rules import Policy
from ciliumlite.service import Protocol, ServiceType, TrafficPolicy

Kind = Literal["Service", "EndpointSlice", "Endpoints", "Node", "NetworkPolicy", "CiliumNetworkPolicy"]
#: (apiVersion, kind) of every object :func:`parse` takes.
SUPPORTED: dict[str, str] = {"Service": "v1", "Endpoints": "v1", "Node": "v1",
                             "EndpointSlice": "discovery.k8s.io/v1", "NetworkPolicy": "networking.k8s.io/v1",
                             "CiliumNetworkPolicy": "cilium.io/v2"}
#: The network policy kinds (:class:`KubePolicy`).
POLICY_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy")
#: kubectl's resource names, for ``service/web created``.
RESOURCE: dict[str, str] = {"Service": "service", "Endpoints": "endpoints", "Node": "node",
                            "EndpointSlice": "endpointslice.discovery.k8s.io",
                            "NetworkPolicy": "networkpolicy.networking.k8s.io",
                            "CiliumNetworkPolicy": "ciliumnetworkpolicy.cilium.io"}
@dataclass(frozen=True)
class Origin:
    """Where an object was read (file, document from 1, kind, name, and ``items[i]`` inside a List),
    so that a check made later, against the store, still names the field."""

    source: str
    document: int | None
    kind: str
    name: str
    prefix: str = ""

    def error(self, path: str, problem: str) -> ManifestError:
        """A :class:`ManifestError` at ``path`` of this object."""
        if self.prefix:
            path = join(self.prefix, path) if path else self.prefix
        return ManifestError(problem, source=self.source, document=self.document, kind=self.kind,
                             name=self.name, path=path)


@dataclass(frozen=True)
class ObjectRef:
    """Which object a document is: enough to delete it. ``namespace`` is empty for a Node;
    ``service`` is the Service an EndpointSlice or Endpoints belongs to."""

    kind: Kind
    namespace: str
    name: str
    origin: Origin
    service: str = ""

    @property
    def resource(self) -> str:
        """kubectl's name for the kind (``endpointslice.discovery.k8s.io``)."""
        return RESOURCE[self.kind]

    @property
    def service_key(self) -> tuple[str, str]:
        """(namespace, Service name) of a Service, EndpointSlice or Endpoints."""
        return (self.namespace, self.service or self.name)

    @property
    def source_label(self) -> str:
        """The label under which a ciliumlite service keeps this EndpointSlice's or Endpoints' content."""
        return f"{LABEL_DOMAIN}{self.kind.lower()}.{self.name}"

    def __str__(self) -> str:
        return f"{self.resource}/{self.name}"


#: The prefix of the labels a ciliumlite service made from a manifest carries.
LABEL_DOMAIN = "k8s.ciliumlite.io/"
#: The Kubernetes Service it came from: namespace, name, port name ("" for an unnamed port) and
#: targetPort as written (a number or a port name).
NAMESPACE_LABEL = LABEL_DOMAIN + "namespace"
SERVICE_LABEL = LABEL_DOMAIN + "service"
PORT_LABEL = LABEL_DOMAIN + "port"
TARGET_PORT_LABEL = LABEL_DOMAIN + "target-port"
#: + the object's name: one EndpointSlice's or Endpoints' ready addresses and ports, as JSON.
SOURCE_PREFIXES = (LABEL_DOMAIN + "endpointslice.", LABEL_DOMAIN + "endpoints.")


@dataclass(frozen=True)
class ServicePort:
    """One entry of ``spec.ports``: ``target_port`` is a number or a port name; ``path`` is its field path."""

    name: str
    protocol: Protocol
    port: int
    target_port: int | str
    node_port: int | None
    path: str


@dataclass(frozen=True)
class KubeService:
    """A Kubernetes Service: one ciliumlite service per port (ciliumlite's Service has one frontend)."""

    ref: ObjectRef
    type: ServiceType
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    external_traffic_policy: TrafficPolicy = "Cluster"
    session_affinity: bool = False
    affinity_timeout: int = 10800
    maglev: bool = False
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    internal_traffic_policy: TrafficPolicy = "Cluster"
    health_check_node_port: int | None = None

    def service_name(self, port: ServicePort) -> str:
        """The ciliumlite name of one port: ``<namespace>/<name>`` for an unnamed port (a Service
        with one port), ``<namespace>/<name>:<port name>`` otherwise, as kube-proxy and Cilium
        name a service port."""
        base = f"{self.ref.namespace}/{self.ref.name}"
        return f"{base}:{port.name}" if port.name else base


@dataclass(frozen=True)
class EndpointPort:
    """A named port of an EndpointSlice or Endpoints subset: the port number backends listen on."""

    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True)
class EndpointGroup:
    """Ready addresses that share one set of ports (an EndpointSlice, or one Endpoints subset), and
    the addresses of endpoints that are terminating but still serving (``terminating``): Cilium's
    terminating backends, kept for the connections they have."""

    addresses: tuple[str, ...]
    ports: tuple[EndpointPort, ...]
    terminating: tuple[str, ...] = ()

    def port_for(self, svc_port: ServicePort) -> int | None:
        """The backend port these addresses serve ``svc_port`` on, or None.

        Kubernetes names an endpoint port after the *Service* port (kube-proxy matches name and
        protocol); a named ``targetPort`` is tried next (the port names of the endpoints resolve
        it); a group that lists no port at all serves a numeric ``targetPort``.
        """
        for p in self.ports:
            if p.name == svc_port.name and p.protocol == svc_port.protocol:
                return p.port
        if isinstance(svc_port.target_port, str):
            for p in self.ports:
                if p.name == svc_port.target_port and p.protocol == svc_port.protocol:
                    return p.port
        elif not self.ports:
            return svc_port.target_port
        return None


@dataclass(frozen=True)
class KubeEndpoints:
    """An EndpointSlice or an Endpoints object: the ready backends of one Service.

    Not-ready endpoints (``conditions.ready: false``, ``notReadyAddresses``) are left out: they are
    not backends, as in kube-proxy and Cilium; terminating ones that still serve are kept apart
    (:attr:`EndpointGroup.terminating`).
    """

    ref: ObjectRef
    groups: tuple[EndpointGroup, ...]
    not_ready: int = 0

    def encode(self) -> str:
        """The groups as compact JSON: the value a ciliumlite service keeps under
        :attr:`ObjectRef.source_label`, so a later apply can merge without the original file."""
        # "terminating" only when there are some: what older builds wrote stays byte-for-byte the same.
        return json.dumps([{"addresses": list(g.addresses), "ports": [[p.name, p.protocol, p.port] for p in g.ports],
                            **({"terminating": list(g.terminating)} if g.terminating else {})}
                           for g in self.groups], separators=(",", ":"))


def decode_groups(value: str, what: str) -> tuple[EndpointGroup, ...]:
    """The groups :meth:`KubeEndpoints.encode` wrote. Raises :class:`ValidationError` (naming
    ``what``) when the stored value is not that."""
    try:
        return tuple(EndpointGroup(tuple(g["addresses"]), tuple(EndpointPort(n, pr, po) for n, pr, po in g["ports"]),
                                   tuple(g.get("terminating", ())))
                     for g in json.loads(value))
    except (ValueError, TypeError, KeyError) as exc:
        raise ValidationError(f"{what}: not the JSON `ciliumlite apply` writes ({exc}); "
                              f"re-apply the EndpointSlice or Endpoints") from None


@dataclass(frozen=True)
class KubeNode:
    """A Kubernetes Node as a ciliumlite :class:`~ciliumlite.cluster.store.NodeInfo`; ``ip_path`` and
    ``cidr_path`` are the fields its address and pod CIDR came from."""

    ref: ObjectRef
    info: NodeInfo
    ip_path: str
    cidr_path: str


@dataclass(frozen=True)
class KubePolicy:
    """A NetworkPolicy or CiliumNetworkPolicy, parsed (a :class:`ciliumlite.policy.Policy`)."""

    ref: ObjectRef
    policy: Policy

    @property
    def key(self) -> str:
        """``Kind/namespace/name``, the policy's key in the store."""
        return self.policy.key


Manifest = KubeService | KubeEndpoints | KubeNode | KubePolicy


@dataclass
class Manifests:
    """The objects of one or more files, in order, and the warnings reading them gave."""

    items: list[Manifest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Manifest]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def extend(self, other: Manifests) -> None:
        """Append another file's objects and warnings."""
        self.items.extend(other.items)
        self.warnings.extend(other.warnings)
