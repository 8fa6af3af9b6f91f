"""Python mirrors of the structs in ``csrc/include/ciliumlite/maps.h`` (checked against BTF at open)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Annotated

from ciliumlite.bpf.record import BE16, IPV4, MAC, U8, U16, U32, U64, At, Record

FAMILY_IPV4 = 1
ENDPOINT_F_HOST = 1


@dataclass(frozen=True, slots=True)
class EndpointKey(Record, c_name="endpoint_key", packed=True, size=20):
    """Key of ``cilium_lxc``: the endpoint's IPv4 address (Cilium's 20-byte layout)."""

    ip4: Annotated[IPv4Address, IPV4]
    family: Annotated[int, U8, At(16)] = FAMILY_IPV4
    key: Annotated[int, U8] = 0
    cluster_id: Annotated[int, U16] = 0


@dataclass(frozen=True, slots=True)
class EndpointInfo(Record, c_name="endpoint_info", size=48):
    """Value of ``cilium_lxc``: where the endpoint is and who it is."""

    ifindex: Annotated[int, U32]
    lxc_id: Annotated[int, U16, At(6)]
    flags: Annotated[int, U32]
    mac: Annotated[str, MAC, At(16)]
    node_mac: Annotated[str, MAC]
    sec_id: Annotated[int, U32]


@dataclass(frozen=True, slots=True)
class TunnelKey(Record, c_name="tunnel_key", packed=True, size=20):
    """Key of ``cilium_tunnel_map``: a remote node's pod CIDR (its network address)."""

    ip4: Annotated[IPv4Address, IPV4]
    family: Annotated[int, U8, At(16)] = FAMILY_IPV4
    cluster_id: Annotated[int, U16, At(18)] = 0


@dataclass(frozen=True, slots=True)
class TunnelValue(Record, c_name="tunnel_value", size=20):
    """Value of ``cilium_tunnel_map``: the remote node's underlay address."""

    ip4: Annotated[IPv4Address, IPV4]
    family: Annotated[int, U8, At(16)] = FAMILY_IPV4
    key: Annotated[int, U8] = 0


@dataclass(frozen=True, slots=True)
class MetricsKey(Record, c_name="metrics_key", size=8):
    """Key of ``cilium_metrics``: reason, direction and the source line that counted."""

    reason: Annotated[int, U8]
    dir: Annotated[int, U8]
    line: Annotated[int, U16]
    file: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class MetricsValue(Record, c_name="metrics_value"):
    """Per-CPU value of ``cilium_metrics``."""

    count: Annotated[int, U64]
    bytes: Annotated[int, U64]


# -- load balancing (Cilium's LB4 maps) -------------------------------------------------------------------

SVC_FLAG_EXTERNAL_IP = 0x01
SVC_FLAG_NODEPORT = 0x02
SVC_FLAG_EXT_LOCAL_SCOPE = 0x04
SVC_FLAG_AFFINITY = 0x10
SVC_FLAG_LOADBALANCER = 0x20
SVC_FLAG_ROUTABLE = 0x40
SVC_FLAG2_INT_LOCAL_SCOPE = 0x10
SVC_FLAG2_TWO_SCOPES = 0x20
SVC_FLAG2_MAGLEV = 0x80
SCOPE_EXTERNAL, SCOPE_INTERNAL = 0, 1
#: ``lb4_backend.flags``: Cilium's backend states (maps.h BE_STATE_*).
BE_STATE_ACTIVE, BE_STATE_TERMINATING = 0, 1


@dataclass(frozen=True, slots=True)
class Lb4Key(Record, c_name="lb4_key", size=12):
    """Key of ``cilium_lb4_services_v2``: frontend address, port, slot (0 = the frontend row)."""

    address: Annotated[IPv4Address, IPV4]
    dport: Annotated[int, BE16]
    backend_slot: Annotated[int, U16] = 0
    proto: Annotated[int, U8] = 6
    scope: Annotated[int, U8] = SCOPE_EXTERNAL


@dataclass(frozen=True, slots=True)
class Lb4Service(Record, c_name="lb4_service", size=12):
    """Value of ``cilium_lb4_services_v2``: slot 0 holds count/flags, slots 1..n a backend id each."""

    backend_id: Annotated[int, U32] = 0
    count: Annotated[int, U16] = 0
    rev_nat_index: Annotated[int, BE16] = 0
    flags: Annotated[int, U8] = 0
    flags2: Annotated[int, U8] = 0
    qcount: Annotated[int, U16] = 0


@dataclass(frozen=True, slots=True)
class Lb4Backend(Record, c_name="lb4_backend", size=12):
    """Value of ``cilium_lb4_backends_v3`` (keyed by a u32 backend id)."""

    address: Annotated[IPv4Address, IPV4]
    port: Annotated[int, BE16]
    proto: Annotated[int, U8] = 6
    flags: Annotated[int, U8] = 0
    cluster_id: Annotated[int, U16] = 0
    zone: Annotated[int, U8] = 0


@dataclass(frozen=True, slots=True)
class Lb4ReverseNat(Record, c_name="lb4_reverse_nat", packed=True, size=6):
    """Value of ``cilium_lb4_reverse_nat``: the frontend a reply must appear to come from."""

    address: Annotated[IPv4Address, IPV4]
    port: Annotated[int, BE16]


@dataclass(frozen=True, slots=True)
class Lb4MaglevKey(Record, c_name="lb4_maglev_key", size=8):
    """Key of ciliumlite's flat ``cilium_lb4_maglev``: (service, table index) -> backend id."""

    rev_nat_index: Annotated[int, U16]
    index: Annotated[int, U32, At(4)]


@dataclass(frozen=True, slots=True)
class Ipv4CtTuple(Record, c_name="ipv4_ct_tuple", packed=True, size=14):
    """Conntrack / NAT key (Cilium's field naming quirk applies to CT entries, see ct.h)."""

    daddr: Annotated[IPv4Address, IPV4]
    saddr: Annotated[IPv4Address, IPV4]
    dport: Annotated[int, BE16]
    sport: Annotated[int, BE16]
    nexthdr: Annotated[int, U8]
    flags: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class CtEntry(Record, c_name="ct_entry", size=56):
    """Conntrack value."""

    backend_id: Annotated[int, U64, At(8)]
    packets: Annotated[int, U64]
    bytes: Annotated[int, U64]
    lifetime: Annotated[int, U32]
    flags: Annotated[int, U16]
    rev_nat_index: Annotated[int, BE16]
    ifindex: Annotated[int, U16]
    tx_flags_seen: Annotated[int, U8]
    rx_flags_seen: Annotated[int, U8]
    src_sec_id: Annotated[int, U32]
    last_tx_report: Annotated[int, U32] = 0
    last_rx_report: Annotated[int, U32] = 0


@dataclass(frozen=True, slots=True)
class NatEntry(Record, c_name="ipv4_nat_entry", size=40):
    """SNAT map value: the address and port to translate to."""

    created: Annotated[int, U64]
    needs_ct: Annotated[int, U64]
    to_addr: Annotated[IPv4Address, IPV4, At(32)]
    to_port: Annotated[int, BE16]


@dataclass(frozen=True, slots=True)
class Lb4AffinityKey(Record, c_name="lb4_affinity_key", size=16):
    """Key of ``cilium_lb4_affinity``: a client (IPv4 or netns cookie) and a service."""

    client_id: Annotated[int, U64]
    rev_nat_id: Annotated[int, BE16]
    netns_cookie: Annotated[int, U8] = 0


@dataclass(frozen=True, slots=True)
class LbAffinityVal(Record, c_name="lb_affinity_val", size=16):
    """Value of ``cilium_lb4_affinity``: the backend a client sticks to, and when it was last used."""

    last_used: Annotated[int, U64]
    backend_id: Annotated[int, U32]


# -- socket acceleration (csrc/include/ciliumlite/sockops.h) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class SockKey(Record, c_name="sock_key", size=12):
    """Key of ``cilium_sock_ops``: a socket seen from its own side (ports in host byte order)."""

    local_ip4: Annotated[IPv4Address, IPV4]
    remote_ip4: Annotated[IPv4Address, IPV4]
    local_port: Annotated[int, U16]
    remote_port: Annotated[int, U16]


@dataclass(frozen=True, slots=True)
class SockopsConfig(Record, c_name="sockops_config", size=8):
    """Value of ``cilium_sock_cfg[0]``: the runtime switch of socket acceleration."""

    enabled: Annotated[int, U32]


@dataclass(frozen=True, slots=True)
class SockopsCounter(Record, c_name="sockops_counter", size=16):
    """Per-CPU value of ``cilium_sock_ctr``: events or messages, and their bytes."""

    count: Annotated[int, U64]
    bytes: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class Cidr4Key(Record, c_name="cidr4_key", size=8):
    """Key of the XDP prefilter maps (``prefilter.h``): a prefix length and its network address.

    ``cilium_cidr_v4_fix`` (hash) holds the /32s, ``cilium_cidr_v4_dyn`` (LPM trie) the rest.
    """

    prefixlen: Annotated[int, U32]
    addr: Annotated[IPv4Address, IPV4]


@dataclass(frozen=True, slots=True)
class Cidr4Value(Record, c_name="cidr4_value", size=1):
    """Value of the prefilter maps: only presence matters (Cilium's ``struct lpm_val``)."""

    flags: Annotated[int, U8] = 0


# -- network policy (csrc/include/ciliumlite/policy.h) ----------------------------------------------------

#: ``policy_entry.flags``: bit 0 deny, bits 3..7 the entry's ``lpm_prefix_length``.
POLICY_F_DENY = 0x01
POLICY_LPM_SHIFT = 3
#: Bits of a policy key every entry matches exactly (sec_label + egress), and the full prefix.
POLICY_L3_PREFIX, POLICY_FULL_PREFIX = 40, 64
#: An IPv4 /n in the ipcache is prefixlen 32 + n (the 32 bits before the address always match).
IPCACHE_STATIC_PREFIX = 32
IPCACHE_F_HAS_TUNNEL_EP = 0x01


@dataclass(frozen=True, slots=True)
class IpcacheKey(Record, c_name="ipcache_key", size=12):
    """Key of ``cilium_ipcache``: an IPv4 prefix (``prefixlen`` = 32 + the prefix's length)."""

    prefixlen: Annotated[int, U32]
    family: Annotated[int, U8, At(7)]
    ip4: Annotated[IPv4Address, IPV4, At(8)]


@dataclass(frozen=True, slots=True)
class RemoteEndpointInfo(Record, c_name="remote_endpoint_info", size=12):
    """Value of ``cilium_ipcache``: the prefix's identity and the node that hosts it (0: none)."""

    sec_identity: Annotated[int, U32]
    tunnel_endpoint: Annotated[IPv4Address, IPV4]
    flags: Annotated[int, U8] = 0


@dataclass(frozen=True, slots=True)
class PolicyMapKey(Record, c_name="policy_key", size=12):
    """Key of an endpoint's policy LPM trie (Cilium 1.14+'s layout; ``dport`` host order here)."""

    prefixlen: Annotated[int, U32]
    sec_label: Annotated[int, U32]
    egress: Annotated[int, U8]
    protocol: Annotated[int, U8]
    dport: Annotated[int, BE16]


@dataclass(frozen=True, slots=True)
class PolicyMapEntry(Record, c_name="policy_entry", size=4):
    """Value of an endpoint's policy LPM trie: deny and the entry's proto+port prefix length."""

    flags: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class PolicyStatsKey(Record, c_name="policy_stats_key", size=12):
    """Key of ``cilium_policystats``: the entry that matched, for one endpoint."""

    endpoint_id: Annotated[int, U16]
    prefix_len: Annotated[int, U8, At(3)]
    sec_label: Annotated[int, U32]
    egress: Annotated[int, U8]
    protocol: Annotated[int, U8]
    dport: Annotated[int, BE16]


@dataclass(frozen=True, slots=True)
class PolicyStatsValue(Record, c_name="policy_stats_value", size=16):
    """Per-CPU value of ``cilium_policystats``."""

    packets: Annotated[int, U64]
    bytes: Annotated[int, U64]
