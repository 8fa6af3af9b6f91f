"""Endpoints: a pod's veth, addresses, routes, endpoint-map entry and attached program."""

from __future__ import annotations

import hashlib
import html
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.bpf.link import Link
from ciliumlite.datapath import devices
from ciliumlite.datapath.records import EndpointInfo, EndpointKey

if TYPE_CHECKING:
    from ciliumlite.node import Datapath

#: Cilium's first cluster-local identity; identities below it are reserved (host, world, ...).
MIN_IDENTITY = 256
MAX_IDENTITY = 0xFFFFFF  # it travels in the 24-bit VXLAN VNI


def identity_for(labels: dict[str, str]) -> int:
    """A stable security identity for a label set (same labels, same identity, on every node)."""
    text = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
    return MIN_IDENTITY + digest % (0xFFFF - MIN_IDENTITY)


def lxc_name(pod_netns: str, ip: ipaddress.IPv4Address) -> str:
    """Host-side veth name in Cilium's style: ``lxc`` + a short hash."""
    return "lxc" + hashlib.sha1(f"{pod_netns}/{ip}".encode()).hexdigest()[:11]


ENDPOINT_COLUMNS = ("id", "name", "ipv4", "identity", "ifname", "ifindex", "mac", "node_mac", "netns", "program")


@dataclass
class Endpoint:
    """One pod as the datapath sees it (like a row of ``cilium endpoint list``)."""

    id: int
    name: str
    ip: ipaddress.IPv4Address
    pod_netns: str
    ifname: str
    ifindex: int
    mac: str
    node_mac: str
    identity: int
    labels: dict[str, str] = field(default_factory=dict)
    adopted: bool = False
    link: Link | None = field(default=None, repr=False)
    _datapath: Datapath | None = field(default=None, repr=False)

    @property
    def key(self) -> EndpointKey:
        """This endpoint's key in ``cilium_lxc``."""
        return EndpointKey(ip4=self.ip)

    @property
    def info(self) -> EndpointInfo:
        """This endpoint's value in ``cilium_lxc``."""
        return EndpointInfo(ifindex=self.ifindex, lxc_id=self.id, flags=0, mac=self.mac,
                            node_mac=self.node_mac, sec_id=self.identity)

    def remove(self) -> None:
        """Undo everything adding the endpoint did (program, map entry, routes, veth unless adopted)."""
        if self._datapath is not None:
            self._datapath.remove_endpoint(self)

    def as_row(self) -> dict[str, Any]:
        """A flat dict for tables and JSON."""
        return {"id": self.id, "name": self.name, "ipv4": str(self.ip), "identity": self.identity,
                "ifname": self.ifname, "ifindex": self.ifindex, "mac": self.mac, "node_mac": self.node_mac,
                "netns": self.pod_netns, "program": "attached" if self.link else "none"}

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.as_row().items())
        return f"<table><caption>Endpoint {html.escape(self.name)}</caption>{rows}</table>"


def configure_pod_side(pod_netns: str, ifname: str, ip: ipaddress.IPv4Address, gateway: ipaddress.IPv4Address,
                       mtu: int) -> str:
    """Address /32, link-scope route to the gateway, default via it; IPv6 off. Returns the pod MAC."""
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
