"""The lab's underlay: one namespace with a bridge, the leaf router, that joins every node and the world."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.lab import owned
from ciliumlite.lab.hosts import Host

if TYPE_CHECKING:
    from ciliumlite.lab.lab import Lab

UNDERLAY = ipaddress.IPv4Network("10.0.0.0/24")
#: The leaf router's MAC on the underlay (locally administered; each lab's underlay is its own segment).
LEAF_MAC = "02:c1:00:00:00:fe"
LEAF_IP = "10.0.0.254"
FIRST_NODE_HOST = 11  # k8s-master is 10.0.0.11 in the seed
WORLD = ipaddress.IPv4Network("203.0.113.0/24")  # documentation range: "the world"
WORLD_GATEWAY = "203.0.113.1"
WORLD_HOST = "203.0.113.10"


def node_ip(index: int) -> str:
    """The underlay address of lab node ``index``: ``10.0.0.(11+index)``."""
    return str(UNDERLAY.network_address + FIRST_NODE_HOST + index)


def _address(ipr: Any, ifname: str, address: str, prefixlen: int, gateway: str | None = None) -> None:
    """Give ``ifname`` (in ``ipr``'s namespace) an address, bring it up and, with ``gateway``, a default route."""
    idx = ipr.link_lookup(ifname=ifname)[0]
    ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
    ipr.link("set", index=idx, state="up")
    if gateway is not None:
        ipr.route("replace", dst="0.0.0.0/0", gateway=gateway)


@public_methods_off_event_loop
class Fabric:
    """The underlay: a namespace with a bridge (the leaf router at 10.0.0.254) joining every node.

    Made by :meth:`Lab.fabric_or_create`. Creating it raises :class:`ValidationError` if the
    namespace exists already, pyroute2's ``NetlinkError`` or :class:`BpfError` if the kernel refuses
    the bridge or the sysctl; nothing is left behind then.
    """

    def __init__(self, lab: Lab) -> None:
        from pyroute2 import IPRoute

        self.lab = lab
        self.outside_netns: list[str] = []
        self.netns = owned.make_netns(lab.record, f"{lab.prefix}-fabric")
        try:
            with IPRoute(netns=self.netns) as ipr:
                # A fixed address: a bridge without one takes the lowest of its ports' and changes it
                # when a node with a lower one joins, which leaves every node's neighbour entry of the
                # leaf stale (traffic through the leaf stops for about a second).
                ipr.link("add", ifname="br0", kind="bridge", address=LEAF_MAC)
                _address(ipr, "br0", LEAF_IP, UNDERLAY.prefixlen)
            set_sysctl(self.netns, "net.ipv4.ip_forward", "1")
        except BaseException:
            owned.remove_netns(lab.record, self.netns)
            raise

    def connect(self, node_netns: str, index: int, node_ip: str, mtu: int = 1500) -> None:
        """A veth from the node (``eth0``, ``node_ip``/24, default via the leaf) into the bridge.

        Raises pyroute2's ``NetlinkError`` if port ``n<index>`` exists already or the kernel refuses
        the veth or the address.
        """
        from pyroute2 import IPRoute

        port = f"n{index}"
        with IPRoute(netns=self.netns) as ipr:
            ipr.link("add", ifname=port, kind="veth", mtu=mtu, peer={"ifname": "eth0", "net_ns_fd": node_netns,
                                                                   "mtu": mtu})
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname="br0")[0], state="up")
        with IPRoute(netns=node_netns) as ipr:
            _address(ipr, "eth0", node_ip, UNDERLAY.prefixlen, gateway=LEAF_IP)

    def add_outside(self, name: str = "world") -> Host:
        """A host outside the cluster (203.0.113.10, "the world") routed through the leaf.

        Raises :class:`ValidationError` if its namespace exists already, pyroute2's ``NetlinkError``
        if the kernel refuses the veth (the namespace is removed again then).
        """
        from pyroute2 import IPRoute

        ns = owned.make_netns(self.lab.record, f"{self.lab.prefix}-{name}")
        try:
            with IPRoute(netns=self.netns) as ipr:
                ipr.link("add", ifname="world", kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
                _address(ipr, "world", WORLD_GATEWAY, WORLD.prefixlen)
            with IPRoute(netns=ns) as ipr:
                _address(ipr, "eth0", WORLD_HOST, WORLD.prefixlen, gateway=WORLD_GATEWAY)
        except BaseException:
            owned.remove_netns(self.lab.record, ns)
            raise
        self.outside_netns.append(ns)
        return Host(self.lab, name, ns, WORLD_HOST, None)

    def close(self) -> None:
        """Remove the fabric namespace and outside hosts."""
        for ns in self.outside_netns:
            owned.remove_netns(self.lab.record, ns)
        self.outside_netns.clear()
        owned.remove_netns(self.lab.record, self.netns)
