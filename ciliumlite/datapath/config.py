"""DatapathConfig: one node's settings, validated once, and NodeRodata: how they become .rodata."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ciliumlite.bgp.config import ASN_MAX, BgpPeer
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.bpf.program import TcMode

HostRouting = Literal["bpf", "legacy"]
Routing = Literal["none", "vxlan", "native"]
LbMode = Literal["snat", "dsr", "hybrid"]
LB_MODE = {"snat": 0, "dsr": 1, "hybrid": 2}
ROUTING_MODE = {"none": 0, "vxlan": 1, "native": 2}
#: Helm's ``loadBalancer.acceleration``: XDP NodePort in driver mode, driver mode where possible
#: (else generic XDP), or none.
Acceleration = Literal["native", "best-effort", "disabled"]
ACCELERATION = ("native", "best-effort", "disabled")
VXLAN_PORT = 8472
VXLAN_OVERHEAD = 50
PIN_BASE = "/sys/fs/bpf/ciliumlite"
RUN_BASE = "/run/ciliumlite"
#: config.h's defaults for the NodePort range and the SNAT source ports (lab nodes keep their
#: ephemeral ports below SNAT_PORT_MIN so a masqueraded flow never collides with a local socket).
NODEPORT_MIN, NODEPORT_MAX = 30000, 32767
#: The largest Maglev table Cilium supports (``--bpf-lb-maglev-table-size``).
MAGLEV_MAX = 131071
SNAT_PORT_MIN, SNAT_PORT_MAX = 32768, 65535
#: Entries of one endpoint's policy map: Cilium's default and bounds (``bpf-policy-map-max``).
POLICY_MAP_SIZE, POLICY_MAP_MIN, POLICY_MAP_MAX = 16384, 1 << 8, 1 << 16
#: Cilium's ``bpf-lb-map-max``: default, and the range ciliumlite takes (entries per LB map).
LB_MAP_MAX, LB_MAP_MIN, LB_MAP_LIMIT = 65536, 16, 1 << 24
#: The LB maps ``lb_map_max`` sizes (Cilium's flag sizes these and the affinity map); the Maglev map
#: keeps its build size (maps.h LB_MAGLEV_MAP_SIZE), the socket-LB reverse map Cilium's own flag's.
LB_SIZED_MAPS = ("cilium_lb4_services_v2", "cilium_lb4_backends_v3", "cilium_lb4_reverse_nat", "cilium_lb4_affinity")
#: The size of ``cilium_sock_exc`` (sockops.h): ports socket acceleration leaves alone.
SOCKOPS_EXCLUDE_MAX = 64


@dataclass(frozen=True)
class DatapathConfig:
    """Settings of one node's datapath (the Helm values of the seed, where they apply).

    ``host_routing="bpf"`` routes pods with BPF (redirect_peer, proxy ARP in BPF);
    ``"legacy"`` uses the kernel stack (per-pod routes and proxy_arp), with no BPF on the path.
    ``objects_dir`` is the build the node runs (a directory of ``bpf_*.o``; "" for the package's or
    ``$CILIUMLITE_OBJECTS``): ``Datapath.reload`` with another one upgrades the node, migrating the
    maps whose layout changed (:mod:`ciliumlite.datapath.migrate`).

    Monitoring (``ciliumlite monitor``, :mod:`ciliumlite.datapath.events`): every object sends drop
    events (``monitor_drops``); ``monitor_trace=True`` adds trace events at every forward decision.
    Both are .rodata, fixed at load: the verifier removes the trace call sites when it is off, so
    turning it on means a new Datapath. ``events_per_sec`` rate-limits events per CPU (burst = the
    rate; 0 = no limit); what the limit or a full ring buffer holds back is counted in
    ``cilium_metrics`` as ``EVENT_LOST_RATE_LIMIT`` / ``EVENT_LOST_RING_FULL``.

    ``enable_policy`` turns on network policy enforcement (``docs/policy.md``; .rodata, so it is fixed
    at load): each endpoint given a MapState (``Datapath.policy``) is enforced at egress and ingress,
    in an LPM trie of ``policy_map_size`` entries (Cilium's ``bpf-policy-map-max``, 256..65536).
    Off, the verifier prunes the policy code: nothing is checked and nothing costs. An endpoint
    whose MapState does not fit keeps its previous policy and is reported
    (:class:`~ciliumlite.node.policy.PolicyOverflowError` in ``Datapath.last_policy_sync``); with
    ``policy_lockdown_on_overflow`` (Cilium's ``--enable-lockdown-endpoint-on-policy-overflow``)
    it is locked down instead: deny-all both ways until its policy fits again.

    Services (``docs/services.md``): ``lb_map_max`` (Cilium's ``bpf-lb-map-max``, 16..16777216) is
    ``max_entries`` of the service, backend, reverse-NAT and affinity maps, fixed when the node's
    maps are made; a service that would not fit is refused before anything is written
    (:class:`~ciliumlite.datapath.lb.LbMapFullError`). ``per_packet_lb`` (.rodata
    ``enable_per_packet_lb``) lets ``cil_from_container`` DNAT pod packets that still carry a
    frontend address (raw sockets, sockets connected before the service existed, or every packet
    when ``socket_lb`` is off); ``False`` leaves pod service traffic to socket LB alone, as Cilium
    builds ``bpf_lxc`` without ``ENABLE_PER_PACKET_LB`` when socket LB covers every namespace, and
    needs ``socket_lb``.

    ``acceleration`` (Helm's ``loadBalancer.acceleration``) runs NodePort for remote backends in XDP
    on ``underlay_device`` (``bpf_xdp.o``, :mod:`ciliumlite.node.xdp`, ``docs/xdp.md``): ``"native"``
    needs driver-mode XDP (a :class:`NotSupportedError` where the device cannot), ``"best-effort"``
    falls back to generic XDP, ``"disabled"`` (the default) leaves NodePort to tc. The XDP
    prefilter (``Datapath.prefilter``) works in every mode.

    How remote pods are reached (:mod:`ciliumlite.node.routing`) follows ``routing``:
    ``"vxlan"`` tunnels through ``tunnel_device``; ``"native"`` routes the underlay, with a static
    route per remote node (Cilium's auto-direct-node-routes) or, when ``bgp_asn`` is set, routes
    learnt over BGP: the datapath runs the node's bird, announcing its pod CIDR to ``bgp_peers``.
    ``sockops_enable`` (Cilium's ``--sockops-enable``; experimental, off by default) hands
    ``sendmsg`` between two pods of this node straight to the peer socket
    (:mod:`ciliumlite.node.sockops`, ``docs/sockops.md``); connections on a port of
    ``sockops_exclude_ports`` are never accelerated (applications that read with ``splice``).
    ``extra_rodata`` overrides config.h globals or sets an object's own knobs by name; a name no
    object of the node declares is refused when the datapath loads.
    """

    node_name: str = "node"
    pod_cidr: str = "10.244.0.0/24"
    host_routing: HostRouting = "bpf"
    mtu: int = 1500
    tc_mode: TcMode = "auto"
    pin_root: str = ""
    state_dir: str = ""
    objects_dir: str = ""
    node_ip: str = "0.0.0.0"
    routing: Routing = "none"
    underlay_device: str = "eth0"
    native_routing_cidr: str = "10.244.0.0/16"
    tunnel_device: str = "cilium_vxlan"
    kube_proxy_replacement: bool = True
    socket_lb: bool = True
    bpf_masquerade: bool = False
    load_balancer_mode: LbMode = "snat"
    maglev_table_size: int = 1021
    lb_map_max: int = LB_MAP_MAX
    per_packet_lb: bool = True
    acceleration: Acceleration = "disabled"
    monitor_drops: bool = True
    monitor_trace: bool = False
    events_per_sec: int = 1000
    enable_policy: bool = False
    policy_map_size: int = POLICY_MAP_SIZE
    policy_lockdown_on_overflow: bool = False
    bgp_asn: int | None = None
    bgp_peers: tuple[BgpPeer, ...] = ()
    extra_rodata: dict[str, Any] = field(default_factory=dict)
    sockops_enable: bool = False
    sockops_exclude_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        try:
            net = ipaddress.IPv4Network(self.pod_cidr)
        except ValueError as exc:
            raise ValidationError(f"pod_cidr {self.pod_cidr!r} is not an IPv4 network: {exc}") from exc
        if net.prefixlen > 30:
            raise ValidationError(f"pod_cidr {self.pod_cidr} is too small (needs at least a /30)")
        if self.host_routing not in ("bpf", "legacy"):
            raise ValidationError(f"host_routing must be 'bpf' or 'legacy', not {self.host_routing!r}")
        if self.tc_mode not in ("auto", "tcx", "clsact"):
            raise ValidationError(f"tc_mode must be auto, tcx or clsact, not {self.tc_mode!r}")
        if not isinstance(self.objects_dir, str):
            raise ValidationError(f"objects_dir must be a directory path (str), not {self.objects_dir!r}")
        if not 576 <= self.mtu <= 65535:
            raise ValidationError(f"mtu {self.mtu} is outside 576..65535")
        try:
            ipaddress.IPv4Address(self.node_ip)
        except ValueError as exc:
            raise ValidationError(f"node_ip {self.node_ip!r} is not an IPv4 address") from exc
        if self.load_balancer_mode not in LB_MODE:
            raise ValidationError(f"load_balancer_mode must be snat, dsr or hybrid, not {self.load_balancer_mode!r}")
        if self.load_balancer_mode != "snat" and self.routing == "vxlan":
            raise ValidationError("DSR needs native routing (as in Cilium: the IP-option dispatch cannot ride VXLAN)")
        from ciliumlite.datapath.maglev import is_prime

        if isinstance(self.maglev_table_size, bool) or not isinstance(self.maglev_table_size, int) or \
                not 3 <= self.maglev_table_size <= MAGLEV_MAX or not is_prime(self.maglev_table_size):
            raise ValidationError(f"maglev_table_size {self.maglev_table_size!r} must be a prime in 3..{MAGLEV_MAX}")
        if isinstance(self.lb_map_max, bool) or not isinstance(self.lb_map_max, int) or \
                not LB_MAP_MIN <= self.lb_map_max <= LB_MAP_LIMIT:
            raise ValidationError(f"lb_map_max {self.lb_map_max!r} must be an int in {LB_MAP_MIN}..{LB_MAP_LIMIT} "
                                  "(entries per LB map, Cilium's bpf-lb-map-max)")
        if not isinstance(self.per_packet_lb, bool):
            raise ValidationError(f"per_packet_lb must be a bool, not {self.per_packet_lb!r}")
        if self.kube_proxy_replacement and not self.per_packet_lb and not self.socket_lb:
            raise ValidationError("per_packet_lb=False needs socket_lb: with neither, nothing translates a pod's "
                                  "service traffic")
        if self.routing not in ROUTING_MODE:
            raise ValidationError(f"routing must be none, vxlan or native, not {self.routing!r}")
        if self.acceleration not in ACCELERATION:
            raise ValidationError(f"acceleration must be native, best-effort or disabled, not {self.acceleration!r}")
        if self.acceleration != "disabled" and (self.routing != "native" or self.host_routing != "bpf"
                                                 or not self.kube_proxy_replacement):
            raise ValidationError(f"acceleration={self.acceleration!r} (XDP NodePort) needs routing='native', "
                                  "host_routing='bpf' and kube_proxy_replacement, as Cilium's needs direct "
                                  "routing: leave it 'disabled' here")
        try:
            ipaddress.IPv4Network(self.native_routing_cidr)
        except ValueError as exc:
            raise ValidationError(f"native_routing_cidr {self.native_routing_cidr!r}: {exc}") from exc
        if self.routing != "none" and self.node_ip == "0.0.0.0":
            raise ValidationError(f"routing={self.routing!r} needs the node's underlay address (node_ip)")
        if isinstance(self.events_per_sec, bool) or not isinstance(self.events_per_sec, int) \
                or not 0 <= self.events_per_sec <= 0xFFFFFFFF:
            raise ValidationError(f"events_per_sec must be an int in 0..4294967295 (0 = no limit), "
                                  f"not {self.events_per_sec!r}")
        if not isinstance(self.enable_policy, bool):
            raise ValidationError(f"enable_policy must be a bool, not {self.enable_policy!r}")
        if not isinstance(self.policy_lockdown_on_overflow, bool):
            raise ValidationError(f"policy_lockdown_on_overflow must be a bool, not {self.policy_lockdown_on_overflow!r}")
        if isinstance(self.policy_map_size, bool) or not isinstance(self.policy_map_size, int) or \
                not POLICY_MAP_MIN <= self.policy_map_size <= POLICY_MAP_MAX:
            raise ValidationError(f"policy_map_size must be an int in {POLICY_MAP_MIN}..{POLICY_MAP_MAX} "
                                  f"(entries per endpoint), not {self.policy_map_size!r}")
        if self.bgp_asn is not None:
            if self.routing != "native":
                raise ValidationError(f"bgp_asn needs routing='native' (routes learnt over BGP), not {self.routing!r}")
            if isinstance(self.bgp_asn, bool) or not isinstance(self.bgp_asn, int) or not 1 <= self.bgp_asn <= ASN_MAX:
                raise ValidationError(f"bgp_asn {self.bgp_asn!r} is outside 1..{ASN_MAX}")
            if not self.bgp_peers:
                raise ValidationError("bgp_asn is set but bgp_peers is empty: name the router(s) to peer with")
        elif self.bgp_peers:
            raise ValidationError("bgp_peers needs bgp_asn (this node's AS number)")
        if not all(isinstance(p, BgpPeer) for p in self.bgp_peers):
            raise ValidationError("bgp_peers must be a tuple of ciliumlite.bgp.BgpPeer")
        if not isinstance(self.sockops_enable, bool):
            raise ValidationError(f"sockops_enable must be a bool, not {self.sockops_enable!r}")
        ports: Any = self.sockops_exclude_ports
        if isinstance(ports, list):  # from JSON (a state file, the agent's config)
            ports = tuple(ports)
            object.__setattr__(self, "sockops_exclude_ports", ports)
        if not isinstance(ports, tuple) or len(ports) > SOCKOPS_EXCLUDE_MAX or \
                not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports):
            raise ValidationError(f"sockops_exclude_ports must be a tuple of at most {SOCKOPS_EXCLUDE_MAX} ports "
                                  f"in 1..65535, not {ports!r}")
        if not self.node_name or "/" in self.node_name:
            raise ValidationError(f"bad node name {self.node_name!r}")

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The pod CIDR as a network."""
        return ipaddress.IPv4Network(self.pod_cidr)

    @property
    def lb_map_sizes(self) -> dict[str, int]:
        """``max_entries`` by map name for the loader (empty at the default: the build's sizes)."""
        return {} if self.lb_map_max == LB_MAP_MAX else dict.fromkeys(LB_SIZED_MAPS, self.lb_map_max)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The pods' default gateway (the first address of the pod CIDR, like cilium_host's)."""
        return self.network.network_address + 1

    @property
    def pin_dir(self) -> str:
        """Where this node's maps are pinned."""
        return self.pin_root or f"{PIN_BASE}/{self.node_name}"

    @property
    def run_dir(self) -> str:
        """Where this node's runtime files live (bird's config and socket; later the agent's)."""
        return self.state_dir or f"{RUN_BASE}/{self.node_name}"

    @property
    def pod_mtu(self) -> int:
        """The pods' MTU: the underlay's, less the VXLAN overhead in tunnel mode."""
        return self.mtu - VXLAN_OVERHEAD if self.routing == "vxlan" else self.mtu

    def node_rodata(self, *, tunnel_ifindex: int = 0, native_ifindex: int = 0,
                    host_netns_cookie: int = 0) -> NodeRodata:
        """The .rodata every object of this node shares, once the node's devices are known.

        ``tunnel_ifindex``/``native_ifindex`` are the VXLAN and underlay devices (0: none) and
        ``host_netns_cookie`` the node namespace's cookie (socket LB's loopback NodePort). Raises
        :class:`ValidationError` if an ifindex or the cookie is out of range.
        """
        native = ipaddress.IPv4Network(self.native_routing_cidr)
        for what, value, bits in (("tunnel_ifindex", tunnel_ifindex, 32), ("native_ifindex", native_ifindex, 32),
                                  ("host_netns_cookie", host_netns_cookie, 64)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
                raise ValidationError(f"{what} {value!r} is not a u{bits}")
        return NodeRodata(
            node_ipv4=_be32(ipaddress.IPv4Address(self.node_ip)),
            routing_mode=ROUTING_MODE[self.routing],
            tunnel_ifindex=tunnel_ifindex,
            native_ifindex=native_ifindex,
            native_cidr=_be32(native.network_address),
            native_cidr_mask=_be32(native.netmask),
            tunnel_prefix_mask=_be32(self.network.netmask),
            pod_cidr=_be32(self.network.network_address),
            pod_cidr_mask=_be32(self.network.netmask),
            enable_socket_lb=int(self.kube_proxy_replacement and self.socket_lb),
            enable_per_packet_lb=int(self.kube_proxy_replacement and self.per_packet_lb),
            lb_mode=LB_MODE[self.load_balancer_mode],
            enable_masquerade=int(self.bpf_masquerade),
            maglev_table_size=self.maglev_table_size,
            native_mtu=self.mtu,
            host_netns_cookie=host_netns_cookie,
            drop_events=int(self.monitor_drops),
            trace_events=int(self.monitor_trace),
            events_per_sec=self.events_per_sec,
            enable_policy=int(self.enable_policy),
            overrides=tuple(sorted(self.extra_rodata.items())),
        )


@dataclass(frozen=True)
class NodeRodata:
    """The ``.rodata`` shared by every datapath object of one node: config.h's globals, by name.

    Built once per node by :meth:`DatapathConfig.node_rodata` (after the node's ifindexes and netns
    cookie are known) and applied to each object by :mod:`ciliumlite.datapath.loader`, so every
    object of a node sees the same values (config.h's rule). Each field is a ``const volatile``
    global that every object declares; ``tests/unit/test_node_rodata.py`` checks that against the
    objects' BTF. ``overrides`` (from ``DatapathConfig.extra_rodata``) are applied last, to the
    objects that declare each name.
    """

    node_ipv4: int
    routing_mode: int
    tunnel_ifindex: int
    native_ifindex: int
    native_cidr: int
    native_cidr_mask: int
    tunnel_prefix_mask: int
    pod_cidr: int
    pod_cidr_mask: int
    enable_socket_lb: int
    enable_per_packet_lb: int
    lb_mode: int
    enable_masquerade: int
    maglev_table_size: int
    native_mtu: int
    host_netns_cookie: int
    drop_events: int
    trace_events: int
    events_per_sec: int
    nodeport_min: int = NODEPORT_MIN
    nodeport_max: int = NODEPORT_MAX
    snat_port_min: int = SNAT_PORT_MIN
    snat_port_max: int = SNAT_PORT_MAX
    maglev_seed: int = 0
    enable_policy: int = 0
    overrides: tuple[tuple[str, Any], ...] = ()

    def globals(self) -> dict[str, Any]:
        """The config.h globals by name (without the overrides)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "overrides"}


def _be32(addr: ipaddress.IPv4Address) -> int:
    # A __be32 read as a little-endian u32 by the .rodata writer: store the address bytes as they are.
    return int.from_bytes(addr.packed, "little")
