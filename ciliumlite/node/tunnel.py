"""Tunnel: the node's VXLAN overlay (Cilium's tunnel mode), as one object.

It owns the collect-metadata VXLAN device (``cilium_vxlan``), ``bpf_overlay.o`` and its link on
that device, ``cilium_tunnel_map`` (remote pod CIDR -> remote node), and for node-to-remote-pod
traffic the kernel's encap route and neighbour entry per remote node. The security identity of the
sender travels in the VNI (``bpf_lxc`` writes it into the tunnel key on encap).
"""

from __future__ import annotations

import html
import ipaddress
import subprocess
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from ciliumlite.bpf import BpfObject, Map
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.bpf.link import Link
from ciliumlite.bpf.netns import NetnsRef
from ciliumlite.bpf.program import TcMode
from ciliumlite.datapath import devices, loader, maps
from ciliumlite.datapath.config import VXLAN_PORT, NodeRodata
from ciliumlite.datapath.records import TunnelKey, TunnelValue
from ciliumlite.node import links
from ciliumlite.policy.identity import ReservedIdentity

if TYPE_CHECKING:
    from ciliumlite.cluster.store import NodeInfo

#: What this node's own traffic to another node's pods carries in the VNI: Cilium's
#: reserved:remote-node (6). A node presents itself to the others as remote-node, so a VNI that
#: claims host (1) can only be forged, and bpf_overlay drops it (with enable_policy).
NODE_TRAFFIC_IDENTITY = int(ReservedIdentity.REMOTE_NODE)
#: The MAC the encap route's neighbour entry uses (the overlay program rewrites it on arrival).
REMOTE_GATEWAY_MAC = "02:00:00:00:ff:ff"


class Tunnel:
    """A node's VXLAN overlay: device, overlay program, tunnel map and encap routes.

    Made in two steps because the device's ifindex goes into every object's ``.rodata``:
    ``Tunnel(netns, ...)`` creates the device (``ifindex``), then :meth:`load` loads and attaches
    ``bpf_overlay`` with the node's :class:`NodeRodata`. :meth:`add` / :meth:`remove` program one
    remote node; :meth:`close` removes everything it made. ``gateway`` (the pods' gateway) must be
    an address of the node: it is the source of node-to-remote-pod traffic (``Datapath`` puts it on
    ``lo``).

    Raises :class:`BpfError` when the device cannot be made (errno kept).
    """

    def __init__(self, netns: NetnsRef, *, device: str = "cilium_vxlan", mtu: int = 1450,
                 gateway: IPv4Address, tc_mode: TcMode = "auto") -> None:
        self.netns = netns
        self.device = device
        self.gateway = gateway
        self.tc_mode = tc_mode
        self.ifindex = devices.create_vxlan(netns, device, VXLAN_PORT, mtu)
        self._obj: BpfObject | None = None
        self._link: Link | None = None
        self._map: Map[TunnelKey, TunnelValue] | None = None
        self._routes: dict[str, NodeInfo] = {}

    def load(self, rodata: NodeRodata, pin_dir: str) -> None:
        """Load ``bpf_overlay`` (sharing the node's pinned maps) and attach it to the device's ingress.

        Raises what :func:`ciliumlite.datapath.loader.load_overlay` and ``attach_tc`` raise.
        """
        self._obj = loader.load_overlay(rodata, pin_dir)
        self._map = maps.TUNNEL.from_object(self._obj)
        self._link = links.keep(self._obj.program("cil_from_overlay").attach_tc(
            self.ifindex, "ingress", netns=self.netns, mode=self.tc_mode), pin_dir, "overlay-ingress")

    @classmethod
    def adopt(cls, netns: NetnsRef, *, device: str, gateway: IPv4Address, tc_mode: TcMode, ifindex: int,
              link: Link, tunnel_map: Map[TunnelKey, TunnelValue]) -> Tunnel:
        """The overlay a previous process made, taken over as it runs (nothing is re-created).

        ``tunnel_map`` is opened from its pin by the caller, who closes it.
        """
        self = cls.__new__(cls)  # the device exists: __init__ would create one
        self.netns, self.device, self.gateway, self.tc_mode, self.ifindex = netns, device, gateway, tc_mode, ifindex
        self._obj, self._link, self._map, self._routes = None, link, tunnel_map, {}
        return self

    @property
    def obj(self) -> BpfObject | None:
        """The loaded ``bpf_overlay`` (None for an adopted overlay until a reload)."""
        return self._obj

    def set_object(self, obj: BpfObject) -> BpfObject | None:
        """Use the reloaded ``obj`` (its program already swapped in); returns the old object to close."""
        old, self._obj = self._obj, obj
        self._map = maps.TUNNEL.from_object(obj)
        return old

    def release(self) -> None:
        """Let go and leave the overlay running: the link stays attached, device and routes stay."""
        if self._link is not None:
            links.release(self._link)
            self._link = None
        self._map = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    @property
    def links(self) -> list[Link]:
        """The overlay program's attachment (empty before :meth:`load`)."""
        return [self._link] if self._link is not None else []

    def add(self, node: NodeInfo) -> None:
        """Reach ``node``'s pods through the tunnel: a tunnel map entry and the encap route.

        Raises :class:`ValidationError` for a bad pod CIDR, :class:`CiliumliteError` if the
        route cannot be installed (the map entry is taken back then).
        """
        net = _network(node.pod_cidr)
        key = TunnelKey(ip4=net.network_address)
        if self._map is not None:
            self._map.set(key, TunnelValue(ip4=IPv4Address(node.ip)))
        try:
            self._route(node, add=True)
        except BaseException:
            if self._map is not None:
                self._map.pop(key, None)
            raise
        self._routes[node.name] = node

    def adopt_route(self, node: NodeInfo) -> None:
        """Know ``node`` as programmed already (its map entry and route exist): nothing is written."""
        self._routes[node.name] = node

    def remove(self, node: NodeInfo) -> None:
        """Forget ``node``: its tunnel map entry and encap route go; other nodes are untouched."""
        known = self._routes.pop(node.name, node)
        if self._map is not None:
            self._map.pop(TunnelKey(ip4=_network(known.pod_cidr).network_address), None)
        self._route(known, add=False)

    def entries(self) -> dict[str, str]:
        """The tunnel map as ``{pod CIDR prefix: remote node IP}`` (like ``cilium bpf tunnel list``)."""
        return maps.tunnel_entries(self._map) if self._map is not None else {}

    def _route(self, node: NodeInfo, *, add: bool) -> None:
        # Node-to-remote-pod traffic: a kernel route that encapsulates through the collect-metadata
        # device, sourced from the gateway address (a HOST entry on the far side hands replies to
        # the stack). pyroute2 cannot build "encap ip" routes, hence iproute2.
        remote_gw = str(_network(node.pod_cidr).network_address + 1)
        ns = ["ip", "-n", str(self.netns)] if isinstance(self.netns, str) and "/" not in self.netns else ["ip"]
        if add:
            cmds = [[*ns, "neigh", "replace", remote_gw, "lladdr", REMOTE_GATEWAY_MAC, "dev", self.device,
                     "nud", "permanent"],
                    [*ns, "route", "replace", node.pod_cidr, "encap", "ip", "id", str(NODE_TRAFFIC_IDENTITY), "dst",
                     node.ip, "ttl", "64", "via", remote_gw, "dev", self.device, "onlink", "src", str(self.gateway)]]
        else:
            cmds = [[*ns, "route", "del", node.pod_cidr, "dev", self.device],
                    [*ns, "neigh", "del", remote_gw, "dev", self.device]]
        for cmd in cmds:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            if add and res.returncode != 0:
                raise CiliumliteError(f"{' '.join(cmd)}: {res.stderr.strip()}")

    def close(self) -> None:
        """Detach the overlay program, close its object and delete the device (and its routes)."""
        if self._link is not None:
            links.drop(self._link)
            self._link = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        self._map = None
        self._routes.clear()
        devices.delete_link(self.netns, self.device)

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Tunnel {self.device} ifindex={self.ifindex} remote_nodes={sorted(self._routes)}>"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                       for k, v in self.entries().items())
        return (f"<b>Tunnel {html.escape(self.device)}</b> (VXLAN, port {VXLAN_PORT}, ifindex {self.ifindex})"
                f"<table><tr><th>pod CIDR</th><th>node</th></tr>{rows}</table>")


def _network(cidr: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(cidr)
    except ValueError as exc:
        raise ValidationError(f"pod CIDR {cidr!r} is not an IPv4 network: {exc}") from exc
