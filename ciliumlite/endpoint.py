"""Endpoint: one pod as the datapath sees it (a value), its identity and its lxc device name.

The work of adding and removing one is :mod:`ciliumlite.node.endpoints`.
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ciliumlite.bpf.link import Link
from ciliumlite.datapath.records import EndpointInfo, EndpointKey

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

    @property
    def key(self) -> EndpointKey:
        """This endpoint's key in ``cilium_lxc``."""
        return EndpointKey(ip4=self.ip)

    @property
    def info(self) -> EndpointInfo:
        """This endpoint's value in ``cilium_lxc``."""
        return EndpointInfo(ifindex=self.ifindex, lxc_id=self.id, flags=0, mac=self.mac,
                            node_mac=self.node_mac, sec_id=self.identity)

    def as_row(self) -> dict[str, Any]:
        """A flat dict for tables and JSON."""
        return {"id": self.id, "name": self.name, "ipv4": str(self.ip), "identity": self.identity,
                "ifname": self.ifname, "ifindex": self.ifindex, "mac": self.mac, "node_mac": self.node_mac,
                "netns": self.pod_netns, "program": "attached" if self.link else "none"}

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.as_row().items())
        return f"<table><caption>Endpoint {html.escape(self.name)}</caption>{rows}</table>"
