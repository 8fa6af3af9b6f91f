"""Python mirrors of the structs in ``csrc/include/ciliumlite/maps.h`` (checked against BTF at open)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Annotated

from ciliumlite.bpf.record import IPV4, MAC, U8, U16, U32, U64, At, Record

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
