"""The node's services: which LB rows a Service becomes (pure), and programming them.

:func:`lb_rows` is the policy, with no state and no kernel: a ClusterIP is one row; a NodePort adds
rows for the node's address and for ``0.0.0.0`` (the wildcard that socket LB matches for
connections to any local address, Cilium's surrogate frontend); ``externalTrafficPolicy=Local``
gives each NodePort frontend two scopes, external (local backends only) and internal (every
backend). :class:`Services` checks a service against the others, then writes its rows through
:class:`~ciliumlite.datapath.lb.LbMaps` (which orders the writes and rolls back on failure).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciliumlite.bpf import BpfObject
from ciliumlite.bpf.errors import NotSupportedError, ValidationError
from ciliumlite.bpf.link import Link
from ciliumlite.datapath import loader
from ciliumlite.datapath.config import DatapathConfig, NodeRodata
from ciliumlite.datapath.lb import FrontendRow, LbMaps
from ciliumlite.datapath.records import (
    SCOPE_EXTERNAL,
    SCOPE_INTERNAL,
    SVC_FLAG2_MAGLEV,
    SVC_FLAG2_TWO_SCOPES,
    SVC_FLAG_AFFINITY,
    SVC_FLAG_EXT_LOCAL_SCOPE,
    SVC_FLAG_NODEPORT,
    SVC_FLAG_ROUTABLE,
)
from ciliumlite.node import links
from ciliumlite.service import Frontend, Service

#: The cgroup hooks of ``bpf_sock`` (socket LB at connect time and for unconnected UDP).
SOCK_PROGRAMS = ("cil_sock4_connect", "cil_sock4_sendmsg", "cil_sock4_recvmsg", "cil_sock4_getpeername")
#: The address of NodePort rows that socket LB matches for any local address.
WILDCARD = IPv4Address("0.0.0.0")


def lb_rows(svc: Service, node_ip: IPv4Address | str, pod_network: IPv4Network | str) -> list[FrontendRow]:
    """The LB map rows of ``svc`` on a node with address ``node_ip`` whose pods are ``pod_network``.

    Backends inside ``pod_network`` are the node's local ones (``externalTrafficPolicy=Local``).
    """
    node = IPv4Address(node_ip)
    pods = IPv4Network(pod_network)
    proto = svc.frontend.proto_number
    every = tuple((IPv4Address(b.ip), b.port) for b in svc.backends)
    local = tuple(b for b in every if b[0] in pods)
    aff_flag = SVC_FLAG_AFFINITY if svc.session_affinity else 0
    timeout = svc.affinity_timeout if svc.session_affinity else 0
    rows = [FrontendRow(IPv4Address(svc.frontend.ip), svc.frontend.port, proto, SCOPE_EXTERNAL, aff_flag, 0,
                        every, timeout)]
    if svc.type != "NodePort" or svc.node_port is None:
        return rows
    flags = SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE | aff_flag
    flags2 = SVC_FLAG2_MAGLEV if svc.maglev else 0
    for addr in sorted({node, WILDCARD}):
        if svc.external_traffic_policy == "Local":
            two = flags2 | SVC_FLAG2_TWO_SCOPES
            local_flags = flags | SVC_FLAG_EXT_LOCAL_SCOPE
            rows.append(FrontendRow(addr, svc.node_port, proto, SCOPE_EXTERNAL, local_flags, two, local, timeout,
                                    svc.maglev))
            rows.append(FrontendRow(addr, svc.node_port, proto, SCOPE_INTERNAL, local_flags, two, every, timeout,
                                    svc.maglev))
        else:
            rows.append(FrontendRow(addr, svc.node_port, proto, SCOPE_EXTERNAL, flags, flags2, every, timeout,
                                    svc.maglev))
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
    """Which service holds each frontend and each node port (per protocol): conflict checks
    without a scan of every service (10,000 upserts would otherwise cost 50M comparisons)."""

    def __init__(self) -> None:
        self.frontends: dict[Frontend, str] = {}
        self.node_ports: dict[tuple[int, str], str] = {}

    def check(self, svc: Service) -> None:
        if not isinstance(svc, Service):
            raise ValidationError(f"expected a Service, got {type(svc).__name__}")
        other = self.frontends.get(svc.frontend)
        if other is not None and other != svc.name:
            raise ValidationError(f"service {svc.name}: frontend {svc.frontend.ip}:{svc.frontend.port}/"
                                  f"{svc.frontend.protocol} is already used by {other}")
        if svc.node_port is not None:
            other = self.node_ports.get((svc.node_port, svc.frontend.protocol))
            if other is not None and other != svc.name:
                raise ValidationError(f"service {svc.name}: node port {svc.node_port}/{svc.frontend.protocol} "
                                      f"is already taken by {other}")

    def add(self, svc: Service) -> None:
        self.frontends.setdefault(svc.frontend, svc.name)
        if svc.node_port is not None:
            self.node_ports.setdefault((svc.node_port, svc.frontend.protocol), svc.name)

    def remove(self, svc: Service) -> None:
        if self.frontends.get(svc.frontend) == svc.name:
            del self.frontends[svc.frontend]
        if svc.node_port is not None and self.node_ports.get((svc.node_port, svc.frontend.protocol)) == svc.name:
            del self.node_ports[(svc.node_port, svc.frontend.protocol)]


class Services:
    """The services of one node. ``bpf_sock`` and the LB maps are opened with the first service.

    Not thread-safe on its own: the :class:`~ciliumlite.node.Datapath` serialises calls.
    """

    def __init__(self, config: DatapathConfig, rodata: NodeRodata | None, pin_dir: str | None,
                 cgroup: str | None) -> None:
        self.config = config
        self._rodata = rodata
        self._pin_dir = pin_dir
        self._cgroup = cgroup
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

    def validate(self, svc: Service) -> None:
        """Raise :class:`ValidationError` if ``svc`` clashes with another service here."""
        self._claims.check(svc)

    def upsert(self, svc: Service) -> None:
        """Validate, then write ``svc``'s rows; a map failure keeps the previous state. O(size of
        ``svc``), whatever the number of services."""
        self._claims.check(svc)
        self._ensure_lb().program(svc.name, lb_rows(svc, self.config.node_ip, self.config.network))
        self._set(svc)

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
