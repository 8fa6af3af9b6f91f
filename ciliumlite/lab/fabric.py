"""The lab's underlay: one namespace with a bridge, the leaf router, that joins every node and the world."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from ciliumlite.bpf.link import FdLink
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.bpf.program import ProgType, XdpAction
from ciliumlite.bpf.raw import RawProgram
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
#: The name of the XDP program on accelerated nodes' fabric ports (it passes everything).
XDP_PASS_NAME = "cl_fabric_pass"


def node_ip(index: int) -> str:
    """The underlay address of lab node ``index``: ``10.0.0.(11+index)``."""
    return str(UNDERLAY.network_address + FIRST_NODE_HOST + index)


def _set_features(netns: str, ifname: str, want: dict[str, bool]) -> None:
    """Turn ethtool features of ``ifname`` in ``netns`` on or off (pyroute2's ethtool ioctl, run in
    the namespace)."""
    from pyroute2.ethtool import Ethtool

    from ciliumlite.bpf.netns import entered

    with entered(netns):
        eth = Ethtool()
        try:
            features = eth.get_features(ifname)
            for name, on in want.items():
                features.features[name].enable = on
            eth.set_features(ifname, features)
        finally:
            eth.close()


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
        #: Whether outside hosts send full checksums (TX checksum offload off): :meth:`prepare_xdp`.
        self.full_checksums = False
        #: The pass-everything XDP link on each accelerated node's port (:meth:`prepare_xdp`), by port.
        self.xdp_ports: dict[str, FdLink] = {}
        self._xdp_pass: RawProgram | None = None
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

    def prepare_xdp(self, node_netns: str, index: int, *, peer_program: bool = True) -> None:
        """Let the node in ``node_netns`` (port ``n<index>``) run NodePort in XDP on its ``eth0``.

        Two things a real NIC has and a veth has not:

        * NAPI on the far end. A veth's XDP_TX and XDP_REDIRECT put frames on the *peer's* receive
          queue, which only NAPI drains (``veth_xdp_xmit``), and a veth has NAPI only while an XDP
          program runs on it. With ``peer_program`` (the default) the node's fabric port gets one
          that passes everything, in driver mode, so the node's ``acceleration="native"`` works;
          without, the node's datapath refuses ``"native"`` and ``"best-effort"`` runs generic XDP
          (``ciliumlite.node.xdp``). The program goes with :meth:`release_port` or :meth:`close`.
        * Full checksums on the wire. A veth sender with TX checksum offload hands the receiver a
          *partial* TCP/UDP checksum, which only an skb can say; XDP rewrites addresses as if the
          checksum were complete, and the far end drops the segment (TcpInCsumErrors). A NIC never
          puts a partial checksum on the wire, so TX checksum offload goes off on this node's
          ``eth0`` and, from now on, on every outside host (the world) of the lab.

        Raises ``OSError`` if a feature cannot be set, :class:`BpfError` if the kernel refuses the
        program or its attachment (nothing of it is left then).
        """
        _set_features(node_netns, "eth0", {"tx-checksum-ip-generic": False})
        if not self.full_checksums:
            self.full_checksums = True
            for ns in self.outside_netns:
                _set_features(ns, "eth0", {"tx-checksum-ip-generic": False})
        port = f"n{index}"
        if peer_program and port not in self.xdp_ports:
            if self._xdp_pass is None:
                self._xdp_pass = RawProgram.returning(ProgType.XDP, XdpAction.PASS, XDP_PASS_NAME)
            self.xdp_ports[port] = self._xdp_pass.attach_xdp(port, netns=self.netns, mode="native")

    def release_port(self, index: int) -> None:
        """Detach what :meth:`prepare_xdp` put on port ``n<index>`` (nothing if it put nothing)."""
        link = self.xdp_ports.pop(f"n{index}", None)
        if link is not None:
            link.close()  # an unpinned link: closing its fd detaches it (or frees it, its device gone)
        if not self.xdp_ports and self._xdp_pass is not None:
            self._xdp_pass.close()
            self._xdp_pass = None

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
        if self.full_checksums:
            _set_features(ns, "eth0", {"tx-checksum-ip-generic": False})
        return Host(self.lab, name, ns, WORLD_HOST, None)

    def close(self) -> None:
        """Detach the fabric ports' XDP programs, remove the fabric namespace and outside hosts."""
        for port in list(self.xdp_ports):
            self.release_port(int(port[1:]))
        for ns in self.outside_netns:
            owned.remove_netns(self.lab.record, ns)
        self.outside_netns.clear()
        owned.remove_netns(self.lab.record, self.netns)
