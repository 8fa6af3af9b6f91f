"""DatapathConfig: one node's settings, validated once, and how they become .rodata."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from ciliumlite.bpf.errors import ValidationError

HostRouting = Literal["bpf", "legacy"]
Routing = Literal["none", "vxlan", "native"]
LbMode = Literal["snat", "dsr", "hybrid"]
LB_MODE = {"snat": 0, "dsr": 1, "hybrid": 2}
ROUTING_MODE = {"none": 0, "vxlan": 1, "native": 2}
VXLAN_PORT = 8472
VXLAN_OVERHEAD = 50
TcMode = Literal["auto", "tcx", "clsact"]
PIN_BASE = "/sys/fs/bpf/ciliumlite"


@dataclass(frozen=True)
class DatapathConfig:
    """Settings of one node's datapath (the Helm values of the seed, where they apply).

    ``host_routing="bpf"`` routes pods with BPF (redirect_peer, proxy ARP in BPF);
    ``"legacy"`` uses the kernel stack (per-pod routes and proxy_arp), with no BPF on the path.

    Monitoring (``ciliumlite monitor``, :mod:`ciliumlite.datapath.events`): every object sends drop
    events (``monitor_drops``); ``monitor_trace=True`` adds trace events at every forward decision.
    Both are .rodata, fixed at load: the verifier removes the trace call sites when it is off, so
    turning it on means a new Datapath. ``events_per_sec`` rate-limits events per CPU (burst = the
    rate; 0 = no limit); what the limit or a full ring buffer holds back is counted in
    ``cilium_metrics`` as ``EVENT_LOST_RATE_LIMIT`` / ``EVENT_LOST_RING_FULL``.
    """

    node_name: str = "node"
    pod_cidr: str = "10.244.0.0/24"
    host_routing: HostRouting = "bpf"
    mtu: int = 1500
    tc_mode: TcMode = "auto"
    pin_root: str = ""
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
    monitor_drops: bool = True
    monitor_trace: bool = False
    events_per_sec: int = 1000
    extra_rodata: dict[str, Any] = field(default_factory=dict)

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
                self.maglev_table_size < 3 or not is_prime(self.maglev_table_size):
            raise ValidationError(f"maglev_table_size {self.maglev_table_size!r} must be a prime >= 3")
        if self.routing not in ROUTING_MODE:
            raise ValidationError(f"routing must be none, vxlan or native, not {self.routing!r}")
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
        if not self.node_name or "/" in self.node_name:
            raise ValidationError(f"bad node name {self.node_name!r}")

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The pod CIDR as a network."""
        return ipaddress.IPv4Network(self.pod_cidr)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The pods' default gateway (the first address of the pod CIDR, like cilium_host's)."""
        return self.network.network_address + 1

    @property
    def pin_dir(self) -> str:
        """Where this node's maps are pinned."""
        return self.pin_root or f"{PIN_BASE}/{self.node_name}"

    @property
    def pod_mtu(self) -> int:
        """The pods' MTU: the underlay's, less the VXLAN overhead in tunnel mode."""
        return self.mtu - VXLAN_OVERHEAD if self.routing == "vxlan" else self.mtu

    def rodata(self, *, tunnel_ifindex: int = 0, native_ifindex: int = 0) -> dict[str, Any]:
        """.rodata shared by every datapath object of this node (config.h)."""
        native = ipaddress.IPv4Network(self.native_routing_cidr)
        return {
            "node_ipv4": _be32(ipaddress.IPv4Address(self.node_ip)),
            "routing_mode": ROUTING_MODE[self.routing],
            "tunnel_ifindex": tunnel_ifindex,
            "native_ifindex": native_ifindex,
            "native_cidr": _be32(native.network_address),
            "native_cidr_mask": _be32(native.netmask),
            "tunnel_prefix_mask": _be32(self.network.netmask),
            "pod_cidr": _be32(self.network.network_address),
            "pod_cidr_mask": _be32(self.network.netmask),
            "enable_socket_lb": int(self.kube_proxy_replacement and self.socket_lb),
            "enable_per_packet_lb": int(self.kube_proxy_replacement),
            "lb_mode": LB_MODE[self.load_balancer_mode],
            "enable_masquerade": int(self.bpf_masquerade),
            "maglev_table_size": self.maglev_table_size,
            "native_mtu": self.mtu,
            "drop_events": int(self.monitor_drops),
            "trace_events": int(self.monitor_trace),
            "events_per_sec": self.events_per_sec,
        }

    def lxc_rodata(self, **ifindexes: int) -> dict[str, Any]:
        """.rodata of bpf_lxc.o."""
        return {**self.rodata(**ifindexes), "enable_arp_responder": 1, **self.extra_rodata}


def _be32(addr: ipaddress.IPv4Address) -> int:
    # A __be32 read as a little-endian u32 by the .rodata writer: store the address bytes as they are.
    return int.from_bytes(addr.packed, "little")
