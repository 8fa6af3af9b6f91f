"""The node's services: which LB rows a Service becomes (pure), and programming them.

:func:`lb_rows` is the policy, with no state and no kernel: a ClusterIP is one row; a NodePort adds
rows for the node's address and for ``0.0.0.0`` (the wildcard that socket LB matches for
connections to any local address, Cilium's surrogate frontend); ``externalTrafficPolicy=Local``
gives each NodePort frontend two scopes, external (local backends only) and internal (every
backend); external IPs and LoadBalancer IPs are frontends at the service port, treated as the node
port is; ``internalTrafficPolicy=Local`` narrows the rows traffic from inside reads to local
backends; terminating backends sit after the selectable slots. :class:`Services` checks a service
against the others and against the LB maps' sizes, then writes its rows through
:class:`~ciliumlite.datapath.lb.LbMaps` (which orders the writes and rolls back on failure), and
runs the ``healthCheckNodePort`` servers (:mod:`ciliumlite.node.healthcheck`).
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciliumlite.bpf import BpfObject
from ciliumlite.bpf.errors import NotSupportedError, ValidationError
from ciliumlite.bpf.link import Link
from ciliumlite.bpf.netns import NetnsRef
from ciliumlite.datapath import loader
from ciliumlite.datapath.config import DatapathConfig, NodeRodata
from ciliumlite.datapath.lb import FrontendRow, LbCapacity, LbMaps, LbUsage, check_fits
from ciliumlite.datapath.records import (
    SCOPE_EXTERNAL,
    SCOPE_INTERNAL,
    SVC_FLAG2_INT_LOCAL_SCOPE,
    SVC_FLAG2_MAGLEV,
    SVC_FLAG2_TWO_SCOPES,
    SVC_FLAG_AFFINITY,
    SVC_FLAG_EXT_LOCAL_SCOPE,
    SVC_FLAG_EXTERNAL_IP,
    SVC_FLAG_LOADBALANCER,
    SVC_FLAG_NODEPORT,
    SVC_FLAG_ROUTABLE,
)
from ciliumlite.node import links
from ciliumlite.node.healthcheck import HealthCheckServer
from ciliumlite.service import Backend, Frontend, Service

log = logging.getLogger(__name__)

#: The cgroup hooks of ``bpf_sock`` (socket LB at connect time and for unconnected UDP).
SOCK_PROGRAMS = ("cil_sock4_connect", "cil_sock4_sendmsg", "cil_sock4_recvmsg", "cil_sock4_getpeername")
#: The address of NodePort rows that socket LB matches for any local address.
WILDCARD = IPv4Address("0.0.0.0")
#: max_entries of cilium_lb4_maglev as built (maps.h LB_MAGLEV_MAP_SIZE; lb_map_max leaves it).
LB_MAGLEV_MAP_SIZE = 65536


Addr = tuple[IPv4Address, int]


def _split(backends: tuple[Backend, ...]) -> tuple[tuple[Addr, ...], tuple[Addr, ...], frozenset[Addr]]:
    """(slots new connections pick from, draining slots after them, the addresses in TERMINATING
    state). Terminating backends are chosen only when a scope has nothing else (Cilium's and
    kube-proxy's fallback); otherwise they sit after ``count``, where no selection reaches them but
    the backend entry, and with it every connection pinned to it, stays."""
    addr = {b: (IPv4Address(b.ip), b.port) for b in backends}
    active = tuple(addr[b] for b in backends if not b.terminating)
    dying = tuple(addr[b] for b in backends if b.terminating)
    if not active:
        return dying, (), frozenset(dying)
    return active, dying, frozenset(dying)


def _row(addr: IPv4Address, port: int, proto: int, scope: int, flags: int, flags2: int,
         backends: tuple[Backend, ...], timeout: int, maglev: bool) -> FrontendRow:
    slots, draining, terminating = _split(backends)
    return FrontendRow(addr, port, proto, scope, flags, flags2, slots, timeout, maglev, draining, terminating)


def lb_rows(svc: Service, node_ip: IPv4Address | str, pod_network: IPv4Network | str) -> list[FrontendRow]:
    """The LB map rows of ``svc`` on a node with address ``node_ip`` whose pods are ``pod_network``.

    Backends inside ``pod_network`` are the node's local ones (the ``Local`` traffic policies).
    Every frontend reached from outside (the node port on the node address and the wildcard,
    each external IP and LoadBalancer IP at the service port) gets the external policy's backends
    in its external scope; when the internal policy gives another set, an internal-scope row with
    that set too (``TWO_SCOPES``), which socket LB and per-packet LB switch to.
    """
    node = IPv4Address(node_ip)
    pods = IPv4Network(pod_network)
    proto = svc.frontend.proto_number
    every = tuple(svc.backends)
    local = tuple(b for b in every if IPv4Address(b.ip) in pods)
    internal = local if svc.internal_traffic_policy == "Local" else every
    external = local if svc.external_traffic_policy == "Local" else every
    aff_flag = SVC_FLAG_AFFINITY if svc.session_affinity else 0
    timeout = svc.affinity_timeout if svc.session_affinity else 0
    int_local = SVC_FLAG2_INT_LOCAL_SCOPE if svc.internal_traffic_policy == "Local" else 0
    rows = [_row(IPv4Address(svc.frontend.ip), svc.frontend.port, proto, SCOPE_EXTERNAL, aff_flag, int_local,
                 internal, timeout, False)]
    fronts: list[tuple[IPv4Address, int, int]] = []
    if svc.type != "ClusterIP" and svc.node_port is not None:
        fronts += [(addr, svc.node_port, SVC_FLAG_NODEPORT) for addr in sorted({node, WILDCARD})]
    fronts += [(IPv4Address(ip), svc.frontend.port, SVC_FLAG_EXTERNAL_IP) for ip in svc.external_ips]
    fronts += [(IPv4Address(ip), svc.frontend.port, SVC_FLAG_LOADBALANCER) for ip in svc.load_balancer_ips]
    ext_local = SVC_FLAG_EXT_LOCAL_SCOPE if svc.external_traffic_policy == "Local" else 0
    flags2 = (SVC_FLAG2_MAGLEV if svc.maglev else 0) | int_local
    # Cilium's rule: two scopes when the policies differ (the same backends would be two equal rows).
    two = svc.external_traffic_policy != svc.internal_traffic_policy
    for addr, port, kind in fronts:
        flags = kind | SVC_FLAG_ROUTABLE | aff_flag | ext_local
        if two:
            rows.append(_row(addr, port, proto, SCOPE_EXTERNAL, flags, flags2 | SVC_FLAG2_TWO_SCOPES, external,
                             timeout, svc.maglev))
            rows.append(_row(addr, port, proto, SCOPE_INTERNAL, flags, flags2 | SVC_FLAG2_TWO_SCOPES, internal,
                             timeout, svc.maglev))
        else:
            rows.append(_row(addr, port, proto, SCOPE_EXTERNAL, flags, flags2, external, timeout, svc.maglev))
    return rows


def check_conflicts(svc: Service, others: dict[str, Service]) -> None:
    """Raise :class:`ValidationError` if ``svc`` takes a frontend or node port of another service.

    O(len(others)): for one check. :class:`Services` keeps indexes instead (O(1) per check).
    """
    index = _Claims()
    for other in others.values():
        index.add(other)
    index.check(svc)


class _Claims:
    """Which service holds each frontend (ClusterIP, external and LoadBalancer IPs, at the service
    port and protocol) and each node port (per protocol; a health check node port is a TCP one):
    conflict checks without a scan of every service (10,000 upserts would otherwise cost 50M
    comparisons)."""

    def __init__(self) -> None:
        self.frontends: dict[Frontend, str] = {}
        self.node_ports: dict[tuple[int, str], str] = {}

    def check(self, svc: Service) -> None:
        if not isinstance(svc, Service):
            raise ValidationError(f"expected a Service, got {type(svc).__name__}")
        for fe in svc.frontends():
            other = self.frontends.get(fe)
            if other is not None and other != svc.name:
                raise ValidationError(f"service {svc.name}: frontend {fe.ip}:{fe.port}/{fe.protocol} is already "
                                      f"used by {other}")
        for port, proto in svc.node_ports():
            other = self.node_ports.get((port, proto))
            if other is not None and other != svc.name:
                raise ValidationError(f"service {svc.name}: node port {port}/{proto} is already taken by {other}")

    def add(self, svc: Service) -> None:
        for fe in svc.frontends():
            self.frontends.setdefault(fe, svc.name)
        for key in svc.node_ports():
            self.node_ports.setdefault(key, svc.name)

    def remove(self, svc: Service) -> None:
        for fe in svc.frontends():
            if self.frontends.get(fe) == svc.name:
                del self.frontends[fe]
        for key in svc.node_ports():
            if self.node_ports.get(key) == svc.name:
                del self.node_ports[key]


class Services:
    """The services of one node. ``bpf_sock`` and the LB maps are opened with the first service.

    Not thread-safe on its own: the :class:`~ciliumlite.node.Datapath` serialises calls.
    """

    def __init__(self, config: DatapathConfig, rodata: NodeRodata | None, pin_dir: str | None,
                 cgroup: str | None, netns: NetnsRef = None) -> None:
        self.config = config
        self._rodata = rodata
        self._pin_dir = pin_dir
        self._cgroup = cgroup
        self._netns = netns
        self._health: dict[str, HealthCheckServer] = {}  # by service name
        self._by_name: dict[str, Service] = {}
        self._claims = _Claims()
        self._lb: LbMaps | None = None
        self._sock: BpfObject | None = None
        self._links: list[Link] = []

    @property
    def lb(self) -> LbMaps | None:
        """The LB maps, once a service was programmed."""
        return self._lb

    @property
    def links(self) -> list[Link]:
        """Socket LB's cgroup attachments."""
        return list(self._links)

    def _ensure_lb(self) -> LbMaps:
        if self._lb is not None:
            return self._lb
        if not self.config.kube_proxy_replacement or self._rodata is None or self._pin_dir is None:
            raise NotSupportedError("services need kube_proxy_replacement=True and host_routing='bpf'",
                                    feature="kube-proxy replacement")
        sock = loader.load_sock(self._rodata, self._pin_dir)
        try:
            if self._cgroup and self.config.socket_lb:
                # Socket LB goes on the node's own cgroup, never the cgroup root.
                for prog in SOCK_PROGRAMS:
                    self._links.append(links.keep(sock.program(prog).attach_cgroup(self._cgroup), self._pin_dir,
                                                  f"sock-{prog}"))
            self._lb = LbMaps(self._pin_dir, self.config.maglev_table_size)
        except BaseException:
            for link in self._links:
                links.drop(link)
            self._links.clear()
            sock.close()
            raise
        self._sock = sock
        return self._lb

    def _rows(self, svc: Service) -> list[FrontendRow]:
        return lb_rows(svc, self.config.node_ip, self.config.network)

    def validate(self, svc: Service) -> None:
        """Raise :class:`ValidationError` if ``svc`` clashes with another service here, and
        :class:`~ciliumlite.datapath.lb.LbMapFullError` (one) if its rows do not fit the LB maps."""
        self._claims.check(svc)
        rows = self._rows(svc)
        if self._lb is not None:
            self._lb.check_fits(svc.name, rows)
        else:  # no map yet: they will be made at the configured size
            size = self.config.lb_map_max
            check_fits(svc.name, rows, LbUsage.empty(), LbCapacity(size, size, size, LB_MAGLEV_MAP_SIZE),
                       self.config.maglev_table_size)

    def upsert(self, svc: Service) -> None:
        """Validate, then write ``svc``'s rows; a map failure keeps the previous state. O(size of
        ``svc``), whatever the number of services. A service that does not fit raises
        :class:`~ciliumlite.datapath.lb.LbMapFullError` with nothing written. Its health check
        server (``health_check_node_port``) starts, moves or stops with it."""
        self.validate(svc)
        old = self._by_name.get(svc.name)
        self._health_for(svc)  # before the maps: a port that cannot be bound changes nothing
        try:
            self._ensure_lb().program(svc.name, self._rows(svc))
        except BaseException:
            self._health_back(svc, old)
            raise
        self._set(svc)

    def _health_for(self, svc: Service) -> None:
        server = self._health.get(svc.name)
        port = svc.health_check_node_port
        if server is not None and server.port == port:
            server.update(svc)
            return
        if port is not None:
            self._health[svc.name] = HealthCheckServer(svc, port, self._netns, self.config.network)
        elif server is not None:
            del self._health[svc.name]
        if server is not None:
            server.close()

    def _health_back(self, svc: Service, old: Service | None) -> None:
        # The upsert failed: the health check answers as before (the old port, the old count).
        server = self._health.pop(svc.name, None)
        if server is not None and (old is None or old.health_check_node_port != server.port):
            server.close()
            server = None
        if old is not None and old.health_check_node_port is not None:
            if server is None:
                try:
                    server = HealthCheckServer(old, old.health_check_node_port, self._netns, self.config.network)
                except ValidationError:
                    return  # the port went meanwhile; the service's rows are what matters here
            server.update(old)
            self._health[svc.name] = server

    def health_checks(self) -> dict[str, HealthCheckServer]:
        """The running health check servers, by service name."""
        return dict(self._health)

    def _set(self, svc: Service) -> None:
        old = self._by_name.get(svc.name)
        if old is not None:
            self._claims.remove(old)
        self._by_name[svc.name] = svc
        self._claims.add(svc)

    def delete(self, name: str) -> None:
        """Remove a service. Raises :class:`ValidationError` when there is none of that name."""
        if name not in self._by_name:
            raise ValidationError(f"no service {name!r} on {self.config.node_name}")
        if self._lb is not None:
            self._lb.remove(name)
        self._claims.remove(self._by_name.pop(name))
        server = self._health.pop(name, None)
        if server is not None:
            server.close()

    def get(self, name: str) -> Service:
        """A programmed service by name. Raises :class:`ValidationError` when there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ValidationError(f"no service {name!r} on {self.config.node_name}") from None

    def all(self) -> list[Service]:
        """Every programmed service, by name."""
        return [self._by_name[n] for n in sorted(self._by_name)]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def entry(self, name: str) -> dict[str, Any]:
        """One service as its state file keeps it (and the CLI reads it): :meth:`Service.to_dict`."""
        return self._by_name[name].to_dict()

    # -- state, restore and reload
    def links_json(self) -> list[dict[str, Any]]:
        """Socket LB's links as the state file keeps them (the services are one :meth:`entry` each)."""
        return [links.describe(lk) for lk in self._links]

    def adopt(self, services: dict[str, Any], sock_links: list[dict[str, Any]], netns: Any) -> None:
        """Carry on with the services a state file lists: the LB maps and socket LB's links as they
        are (nothing is written; the id allocations are read back from the maps). Raises
        :class:`~ciliumlite.node.links.AdoptError`, :class:`ValidationError` for a bad service,
        ``KeyError``/``ValueError`` for a bad entry or rows missing from the maps, and what opening
        the pinned LB maps raises; what was taken over is let go then."""
        try:
            svcs = [Service.from_dict(d) for d in services.values()]
            for desc in sock_links:
                self._links.append(links.adopt(desc, netns))
            if svcs or self._links:
                if self._pin_dir is None:
                    raise ValueError("services without a pin directory")
                self._lb = LbMaps(self._pin_dir, self.config.maglev_table_size)
                self._lb.adopt({s.name: lb_rows(s, self.config.node_ip, self.config.network) for s in svcs})
            self._by_name, self._claims = {}, _Claims()
            for s in svcs:
                self._set(s)
            # The servers were the previous process's threads: this one answers from now on. A
            # port still held (the previous process lingering) must not fail the restore of the
            # datapath itself: the service's rows are what forwards traffic.
            for s in svcs:
                try:
                    self._health_for(s)
                except ValidationError as exc:
                    log.warning("%s: %s", self.config.node_name, exc)
        except BaseException:
            self.release()
            raise

    @property
    def sock(self) -> BpfObject | None:
        """The loaded ``bpf_sock`` (None before the first service, or for an adopted node)."""
        return self._sock

    @property
    def active(self) -> bool:
        """Whether socket LB and the LB maps are in use (a reload must load ``bpf_sock`` then)."""
        return self._lb is not None

    def set_sock(self, sock: BpfObject) -> BpfObject | None:
        """Use the reloaded ``sock`` (its programs already swapped in); returns the old object to close."""
        old, self._sock = self._sock, sock
        return old

    def set_rodata(self, rodata: NodeRodata) -> None:
        """The rodata a later ``bpf_sock`` load uses (a reload with a new config, or a restore)."""
        self._rodata = rodata

    def maps_replaced(self, names: set[str]) -> None:
        """An upgrade put new maps under the pins ``names``: if the LB maps are among them, open
        them again (the id allocations are read back from the new maps, which hold the old rows)."""
        if self._lb is None or self._pin_dir is None or not names & LbMaps.MAP_NAMES:
            return
        fresh = LbMaps(self._pin_dir, self.config.maglev_table_size)
        try:
            fresh.adopt({s.name: lb_rows(s, self.config.node_ip, self.config.network) for s in self._by_name.values()})
        except BaseException:
            fresh.close()
            raise
        old, self._lb = self._lb, fresh
        old.close()

    def release(self) -> None:
        """Let go and leave socket LB and the LB maps as they are."""
        self._shut(keep=True)

    def close(self) -> None:
        """Forget the services, close the LB maps, detach socket LB and close ``bpf_sock``."""
        self._shut(keep=False)

    def _shut(self, *, keep: bool) -> None:
        # Health check servers are this process's threads, whether the datapath stays or goes.
        for server in self._health.values():
            server.close()
        self._health.clear()
        self._by_name.clear()
        self._claims = _Claims()
        if self._lb is not None:
            self._lb.close()
            self._lb = None
        for link in self._links:
            (links.release if keep else links.drop)(link)
        self._links.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
