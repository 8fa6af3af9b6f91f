"""How a node reaches the pods of other nodes: one strategy per routing mode.

Cilium's NodeHandler (``pkg/datapath/linux/node.go``) in three shapes, chosen by
:class:`~ciliumlite.datapath.config.DatapathConfig`:

- :class:`TunnelRouting` (``routing="vxlan"``): the :class:`~ciliumlite.node.tunnel.Tunnel` holds
  a tunnel map entry and an encap route per remote node;
- :class:`StaticRoutes` (``routing="native"``): a kernel route per remote pod CIDR via the remote
  node's underlay address (Cilium's auto-direct-node-routes; nodes share an L2 segment);
- :class:`BgpRoutes` (``routing="native"`` with ``bgp_asn``): the node runs bird, announces its
  pod CIDR to ``bgp_peers`` and learns the others' from them, so nothing is written per node;
- :class:`NoRouting` (``routing="none"``): a single node.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Protocol

from ciliumlite.bgp import BgpConfig, BgpSession, Bird
from ciliumlite.bpf.netns import NetnsRef
from ciliumlite.datapath import devices
from ciliumlite.datapath.config import DatapathConfig

if TYPE_CHECKING:
    from ciliumlite.cluster.store import NodeInfo
    from ciliumlite.node.tunnel import Tunnel


class Routing(Protocol):
    """What every routing strategy offers the datapath."""

    #: The strategy's name as ``status()`` shows it (``tunnel``, ``static``, ``bgp``, ``none``).
    name: str

    def add(self, node: NodeInfo) -> None:
        """Make ``node``'s pods reachable. Raises :class:`CiliumliteError` (nothing half-written)."""

    def remove(self, node: NodeInfo) -> None:
        """Stop routing to ``node``'s pods; other nodes are untouched. Never raises for a gone node."""

    def adopt(self, node: NodeInfo) -> None:
        """Know ``node`` as routed already (a restored datapath): nothing is written."""

    def status(self) -> dict[str, object]:
        """What the strategy reports for ``Datapath.status()``."""

    def close(self) -> None:
        """Release what the strategy made (routes, processes)."""


class NoRouting:
    """A single node: remote nodes are refused by the datapath, so there is nothing to route."""

    name = "none"

    def add(self, node: NodeInfo) -> None:
        """Nothing to do (a node without routing has no remote pods)."""

    def remove(self, node: NodeInfo) -> None:
        """Nothing to do."""

    def adopt(self, node: NodeInfo) -> None:
        """Nothing to do."""

    def status(self) -> dict[str, object]:
        """Empty."""
        return {}

    def close(self) -> None:
        """Nothing to release."""


class TunnelRouting:
    """Remote pods behind the VXLAN :class:`Tunnel` (which does the work)."""

    name = "tunnel"

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def add(self, node: NodeInfo) -> None:
        """A tunnel entry and encap route for ``node`` (see :meth:`Tunnel.add`)."""
        self.tunnel.add(node)

    def remove(self, node: NodeInfo) -> None:
        """The tunnel entry and route of ``node`` go."""
        self.tunnel.remove(node)

    def adopt(self, node: NodeInfo) -> None:
        """The tunnel entry and route of ``node`` exist already (see :meth:`Tunnel.adopt_route`)."""
        self.tunnel.adopt_route(node)

    def status(self) -> dict[str, object]:
        """The tunnel device and its entries."""
        return {"device": self.tunnel.device, "tunnels": self.tunnel.entries()}

    def close(self) -> None:
        """The tunnel is the datapath's: it closes it."""


class StaticRoutes:
    """A kernel route per remote pod CIDR via its node's underlay address."""

    name = "static"

    def __init__(self, netns: NetnsRef) -> None:
        self.netns = netns
        self._routes: dict[str, NodeInfo] = {}

    def add(self, node: NodeInfo) -> None:
        """``ip route replace <pod CIDR> via <node IP>`` in the node's namespace."""
        with devices.iproute(self.netns) as ipr:
            ipr.route("replace", dst=node.pod_cidr, gateway=node.ip)
        self._routes[node.name] = node

    def remove(self, node: NodeInfo) -> None:
        """Delete the route to ``node``'s pods (if it is still there)."""
        known = self._routes.pop(node.name, node)
        with devices.iproute(self.netns) as ipr, contextlib.suppress(Exception):
            ipr.route("del", dst=known.pod_cidr, gateway=known.ip)

    def adopt(self, node: NodeInfo) -> None:
        """The route to ``node``'s pods exists already: only recorded (removed with the node)."""
        self._routes[node.name] = node

    def status(self) -> dict[str, object]:
        """The routes this strategy installed."""
        return {"routes": {n.pod_cidr: n.ip for n in self._routes.values()}}

    def close(self) -> None:
        """Delete every route it installed."""
        for node in list(self._routes.values()):
            self.remove(node)


class BgpRoutes:
    """Routes learnt over BGP: this node's bird announces its pod CIDR and imports the others'.

    Bird runs in the node's namespace as a child of this process, with its files under
    ``<state dir>/bird``; it is started here and stopped by :meth:`close`. Raises
    :class:`~ciliumlite.bgp.BgpError` when bird cannot start (its log tail is in the message).

    With ``adopt=True`` (a restored datapath) the bird an earlier owner started is taken over
    instead, found by the pid in its pidfile and checked against its command line
    (:meth:`Bird.attach`): its sessions and the kernel routes it installed carry on untouched, and
    :meth:`close` stops it like one started here. Only when no bird runs there (it died with its
    owner) is one started, and the routes come back once its sessions are up again.
    """

    name = "bgp"

    def __init__(self, config: DatapathConfig, netns: NetnsRef, *, adopt: bool = False) -> None:
        self.config = self.bgp_config(config)
        ns, workdir = str(netns) if netns is not None else "", os.path.join(config.run_dir, "bird")
        running = Bird.attach(ns, self.config, workdir) if adopt else None
        #: Whether the bird was taken over from an earlier owner (False: started by this process).
        self.adopted = running is not None
        self.bird = running if running is not None else Bird(ns, self.config, workdir)
        if running is None:
            self.bird.start()

    @staticmethod
    def bgp_config(config: DatapathConfig) -> BgpConfig:
        """What the node's bird runs: its AS and peers, announcing the node's pod CIDR."""
        assert config.bgp_asn is not None
        return BgpConfig(router_id=config.node_ip, asn=config.bgp_asn, peers=config.bgp_peers,
                         announce=(config.pod_cidr,))

    def add(self, node: NodeInfo) -> None:
        """Nothing to write: the route to ``node``'s pods arrives over BGP."""

    def remove(self, node: NodeInfo) -> None:
        """Nothing to delete: the route is withdrawn over BGP."""

    def adopt(self, node: NodeInfo) -> None:
        """Nothing to record: the route arrives over BGP."""

    def sessions(self) -> list[BgpSession]:
        """bird's BGP sessions (``birdc show protocols``)."""
        return [s for s in self.bird.status() if s.is_bgp]

    def wait_established(self, timeout: float = 15.0) -> list[BgpSession]:
        """Wait until every BGP session is established. Raises :class:`BgpError` on timeout."""
        return self.bird.wait_established(timeout=timeout)

    def status(self) -> dict[str, object]:
        """The local AS and the peers."""
        return {"asn": self.config.asn, "peers": [f"{p.name} {p.address} AS{p.asn}" for p in self.config.peers]}

    def close(self) -> None:
        """Stop bird (its routes go with it)."""
        self.bird.stop()


def make(config: DatapathConfig, netns: NetnsRef, tunnel: Tunnel | None, *, adopt: bool = False) -> Routing:
    """The strategy ``config`` asks for (the tunnel must exist for ``routing="vxlan"``); ``adopt``
    for a restored datapath (a running bird is taken over, see :class:`BgpRoutes`)."""
    if config.routing == "vxlan":
        assert tunnel is not None
        return TunnelRouting(tunnel)
    if config.routing == "native":
        return BgpRoutes(config, netns, adopt=adopt) if config.bgp_asn is not None else StaticRoutes(netns)
    return NoRouting()
