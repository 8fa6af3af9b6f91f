"""The node's endpoints: address management, the veth connector, ``cilium_lxc`` rows and the attach.

Like Cilium's ``pkg/endpoint`` with its veth connector (``pkg/endpoint/connector/veth.go``): adding
a pod creates (or adopts) its veth pair, configures the pod side (a /32, a link route to the gateway,
the default route), routes the /32 to the host side, writes the endpoint's ``cilium_lxc`` row and
attaches ``cil_from_container`` to the host side's ingress. Each step is undone when a later one
fails, so a failed add leaves the node as it was.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any

from ciliumlite.bpf import BpfObject, Map
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.bpf.netns import NetnsRef
from ciliumlite.datapath import devices
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.records import ENDPOINT_F_HOST, EndpointInfo, EndpointKey
from ciliumlite.endpoint import MAX_IDENTITY, Endpoint, identity_for, lxc_name
from ciliumlite.node import links

#: Cilium's reserved:host identity, carried by the node's own addresses in ``cilium_lxc``.
HOST_IDENTITY = 1
_NO_MAC = "00:00:00:00:00:00"


def configure_pod_side(pod_netns: str, ifname: str, ip: ipaddress.IPv4Address, gateway: ipaddress.IPv4Address,
                       mtu: int) -> str:
    """Address /32, link-scope route to the gateway, default via it; IPv6 off. Returns the pod MAC.

    Raises :class:`ValidationError` when ``ifname`` is not in ``pod_netns``.
    """
    devices.set_sysctl(pod_netns, "net.ipv6.conf.all.disable_ipv6", "1")
    devices.set_sysctl(pod_netns, "net.ipv6.conf.default.disable_ipv6", "1")
    with devices.iproute(pod_netns) as ipr:
        idx = devices.ifindex(ipr, ifname)
        if idx is None:
            raise ValidationError(f"no {ifname} in pod namespace {pod_netns}")
        ipr.link("set", index=idx, state="up", mtu=mtu)
        lo = devices.ifindex(ipr, "lo")
        if lo is not None:
            ipr.link("set", index=lo, state="up")
        if not any(a.get_attr("IFA_ADDRESS") == str(ip) for a in ipr.get_addr(index=idx)):
            ipr.addr("add", index=idx, address=str(ip), prefixlen=32)
        ipr.route("replace", dst=f"{gateway}/32", oif=idx, scope=253)
        ipr.route("replace", dst="0.0.0.0/0", gateway=str(gateway), oif=idx)
        return devices.link_mac(ipr, idx)


def host_entry(ip: ipaddress.IPv4Address) -> tuple[EndpointKey, EndpointInfo]:
    """A ``cilium_lxc`` row for one of the node's own addresses: traffic to it goes to the stack."""
    return EndpointKey(ip4=ip), EndpointInfo(ifindex=0, lxc_id=0, flags=ENDPOINT_F_HOST, mac=_NO_MAC,
                                             node_mac=_NO_MAC, sec_id=HOST_IDENTITY)



def _checked_identity(ident: object) -> int:
    if isinstance(ident, bool) or not isinstance(ident, int) or not 1 <= ident <= MAX_IDENTITY:
        raise ValidationError(f"identity {ident} is outside 1..{MAX_IDENTITY} (it travels in the VXLAN VNI)")
    return ident

class Endpoints:
    """The endpoints of one node, by IP; ``lxc`` is the loaded ``bpf_lxc`` (None: legacy routing).

    Not thread-safe on its own: the :class:`~ciliumlite.node.Datapath` serialises calls.
    """

    def __init__(self, config: DatapathConfig, netns: NetnsRef, lxc: BpfObject | None,
                 lxc_map: Map[EndpointKey, EndpointInfo] | None, *, pin_dir: str | None = None,
                 load_lxc: Callable[[], BpfObject] | None = None) -> None:
        self.config = config
        self.netns = netns
        self._lxc = lxc
        self._map = lxc_map
        self._pin_dir = pin_dir
        # A restored node loads bpf_lxc only when a new endpoint needs its program: adopting the
        # running endpoints must not cost a verifier run.
        self._load_lxc = load_lxc
        self._by_ip: dict[ipaddress.IPv4Address, Endpoint] = {}
        self._next_id = 1

    @property
    def lxc(self) -> BpfObject | None:
        """The loaded ``bpf_lxc`` whose program new endpoints get (None until one is needed)."""
        return self._lxc

    def set_object(self, lxc: BpfObject, lxc_map: Map[EndpointKey, EndpointInfo]) -> None:
        """Use ``lxc`` for new endpoints from now on (a reload); the caller closes the old object."""
        self._lxc, self._map = lxc, lxc_map

    # -- address management
    def allocate_ip(self) -> ipaddress.IPv4Address:
        """The first free address of the pod CIDR. Raises :class:`ValidationError` when none is."""
        used = set(self._by_ip) | {self.config.gateway}
        for host in self.config.network.hosts():
            if host not in used:
                return host
        raise ValidationError(f"pod CIDR {self.config.pod_cidr} of {self.config.node_name} has no free address")

    def check_ip(self, ip: str | ipaddress.IPv4Address | None) -> ipaddress.IPv4Address:
        """``ip`` validated for a new endpoint (or a free one for None). Raises :class:`ValidationError`."""
        if ip is None:
            return self.allocate_ip()
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError as exc:
            raise ValidationError(f"endpoint IP {ip!r} is not an IPv4 address") from exc
        net = self.config.network
        if addr not in net:
            raise ValidationError(f"endpoint IP {addr} is outside {self.config.node_name}'s pod CIDR {net}")
        if addr in (net.network_address, net.broadcast_address, self.config.gateway):
            raise ValidationError(f"endpoint IP {addr} is reserved in {net} (network, broadcast or gateway)")
        if addr in self._by_ip:
            raise ValidationError(f"endpoint IP {addr} is already used by {self._by_ip[addr].name}")
        return addr

    # -- add / remove
    def add(self, pod_netns: str, *, name: str | None = None, ip: str | ipaddress.IPv4Address | None = None,
            labels: Mapping[str, str] | None = None, identity: int | None = None, ifname: str | None = None,
            pod_ifname: str = "eth0", adopt: bool = False) -> Endpoint:
        """Connect ``pod_netns`` to the node (see :meth:`Datapath.add_endpoint`)."""
        addr = self.check_ip(ip)
        labels = dict(labels or {"name": name or pod_netns})
        ident = _checked_identity(identity_for(labels) if identity is None else identity)
        if adopt and not ifname:
            raise ValidationError("adopt=True needs the host-side ifname of the existing veth")
        host_if = ifname or lxc_name(pod_netns, addr)
        if not os.path.exists(f"/var/run/netns/{pod_netns}") and "/" not in pod_netns:
            raise ValidationError(f"pod network namespace {pod_netns!r} does not exist")
        if adopt:
            self._check_adoptable(host_if, pod_netns, pod_ifname)
        created = False
        ep: Endpoint | None = None
        try:
            if not adopt:
                devices.create_veth(self.netns, host_if, pod_netns, pod_ifname, self.config.pod_mtu)
                created = True
            pod_mac = configure_pod_side(pod_netns, pod_ifname, addr, self.config.gateway, self.config.pod_mtu)
            idx, node_mac = self._configure_host_side(host_if, addr)
            ep = Endpoint(self._next_id, name or pod_netns, addr, pod_netns, host_if, idx, pod_mac, node_mac,
                          ident, labels, adopted=adopt)
            self._program(ep)
        except BaseException:
            if ep is not None:
                self._unprogram(ep)
            if created:
                devices.delete_link(self.netns, host_if)
            raise
        self._by_ip[addr] = ep
        self._next_id += 1
        return ep

    def _check_adoptable(self, host_if: str, pod_netns: str, pod_ifname: str) -> None:
        with devices.iproute(self.netns) as ipr:
            if devices.ifindex(ipr, host_if) is None:
                raise ValidationError(f"no device {host_if!r} in the node namespace to adopt")
        with devices.iproute(pod_netns) as ipr:
            if devices.ifindex(ipr, pod_ifname) is None:
                raise ValidationError(f"no device {pod_ifname!r} in pod namespace {pod_netns} to adopt")

    def _configure_host_side(self, host_if: str, addr: ipaddress.IPv4Address) -> tuple[int, str]:
        with devices.iproute(self.netns) as ipr:
            idx = devices.ifindex(ipr, host_if)
            if idx is None:
                raise ValidationError(f"no device {host_if!r} in the node namespace to adopt")
            ipr.link("set", index=idx, state="up")
            node_mac = devices.link_mac(ipr, idx)
            ipr.link("set", index=idx, mtu=self.config.pod_mtu)
            ipr.route("replace", dst=f"{addr}/32", oif=idx, scope=253)
        # ciliumlite's datapath is IPv4-only: keep the host side quiet (no RS/MLD/NS into pods).
        devices.set_sysctl(self.netns, f"net.ipv6.conf.{host_if}.disable_ipv6", "1")
        if self.config.host_routing == "legacy":
            devices.set_sysctl(self.netns, f"net.ipv4.conf.{host_if}.proxy_arp", "1")
        return idx, node_mac

    def _program(self, ep: Endpoint) -> None:
        if self._lxc is None and self._load_lxc is not None:
            self._lxc = self._load_lxc()
        if self._lxc is not None and self._map is not None:
            self._map.set(ep.key, ep.info)
            link = self._lxc.program("cil_from_container").attach_tc(
                ep.ifindex, "ingress", netns=self.netns, mode=self.config.tc_mode)
            ep.link = links.keep(link, self._pin_dir, f"ep-{ep.ifname}")

    def _unprogram(self, ep: Endpoint) -> None:
        if ep.link is not None:
            links.drop(ep.link)
            ep.link = None
        if self._map is not None:
            self._map.pop(ep.key, None)

    def relabel(self, ep: Endpoint | str | ipaddress.IPv4Address, identity: int,
                labels: Mapping[str, str] | None = None) -> Endpoint:
        """Give an endpoint of this node a new security identity (and labels): its ``cilium_lxc``
        row, the source identity of everything it sends, is rewritten in place. Raises
        :class:`ValidationError` for an endpoint this node does not have or an identity out of range."""
        target = ep if isinstance(ep, Endpoint) else self.get(ep)
        if self._by_ip.get(target.ip) is not target:
            raise ValidationError(f"no endpoint {ep!r} on {self.config.node_name}")
        target.identity = _checked_identity(identity)
        if labels is not None:
            target.labels = dict(labels)
        if self._map is not None:
            self._map.set(target.key, target.info)
        return target

    def remove(self, ep: Endpoint | str | ipaddress.IPv4Address) -> Endpoint:
        """Detach, delete the map entry, the route and (unless adopted) the veth; returns the endpoint.

        Raises :class:`ValidationError` for an endpoint this node does not have.
        """
        target = ep if isinstance(ep, Endpoint) else self.get(ep)
        if self._by_ip.get(target.ip) is not target:
            raise ValidationError(f"no endpoint {ep!r} on {self.config.node_name}")
        self._unprogram(target)
        if target.adopted:
            with devices.iproute(self.netns) as ipr:
                try:
                    ipr.route("del", dst=f"{target.ip}/32", scope=253)
                except Exception:
                    pass  # already gone with the device
        else:
            devices.delete_link(self.netns, target.ifname)
        del self._by_ip[target.ip]
        return target

    # -- state
    @staticmethod
    def entry(e: Endpoint) -> dict[str, Any]:
        """One endpoint as its state file keeps it: what a restore needs (with its link's
        description), plus the CLI's row and attachment (``row``, ``attachment``)."""
        return {"id": e.id, "name": e.name, "ip": str(e.ip), "pod_netns": e.pod_netns, "ifname": e.ifname,
                "ifindex": e.ifindex, "mac": e.mac, "node_mac": e.node_mac, "identity": e.identity,
                "labels": e.labels, "adopted": e.adopted,
                "link": links.describe(e.link) if e.link is not None else None, "row": e.as_row(),
                "attachment": {"program": e.link.program, "where": str(e.link.point)} if e.link else None}

    def to_json(self) -> list[dict[str, Any]]:
        """Every endpoint as :meth:`entry` describes it, by id."""
        return [self.entry(e) for e in self.all()]

    @property
    def next_id(self) -> int:
        """The id the next endpoint gets."""
        return self._next_id

    def adopt(self, rows: list[dict[str, Any]], next_id: int) -> None:
        """Take over the endpoints a state file lists, and their links, touching nothing.

        Raises :class:`~ciliumlite.node.links.AdoptError` for a link that is missing or not the
        one named, ``KeyError``/``ValueError`` for a malformed row (the adopted links are let go).
        """
        try:
            for row in rows:
                link = links.adopt(row["link"], self.netns) if row.get("link") else None
                ep = Endpoint(int(row["id"]), str(row["name"]), ipaddress.IPv4Address(row["ip"]),
                              str(row["pod_netns"]), str(row["ifname"]), int(row["ifindex"]), str(row["mac"]),
                              str(row["node_mac"]), int(row["identity"]), dict(row["labels"]),
                              adopted=bool(row["adopted"]), link=link)
                self._by_ip[ep.ip] = ep
        except BaseException:
            self.release()
            raise
        self._next_id = max([next_id, *(e.id + 1 for e in self._by_ip.values())])

    def release(self) -> None:
        """Let go of every endpoint and leave it running (links stay attached, rows stay)."""
        for ep in self._by_ip.values():
            if ep.link is not None:
                links.release(ep.link)
                ep.link = None
        self._by_ip.clear()

    # -- reading
    def get(self, ip: str | ipaddress.IPv4Address) -> Endpoint:
        """The endpoint with this IP. Raises :class:`ValidationError` when there is none."""
        try:
            return self._by_ip[ipaddress.IPv4Address(ip)]
        except (KeyError, ValueError):
            raise ValidationError(f"no endpoint {ip} on {self.config.node_name}") from None

    def all(self) -> list[Endpoint]:
        """Every endpoint, by id."""
        return sorted(self._by_ip.values(), key=lambda e: e.id)

    def __len__(self) -> int:
        return len(self._by_ip)
