"""The datapath's maps: each map's name and typed opener defined once (Cilium's ``pkg/maps/<map>``).

Every map of a node is pinned by name under the node's pin directory (``LIBBPF_PIN_BY_NAME`` in
``maps.h``), so :class:`NodeMaps` opens the same typed maps from a loaded object (the datapath that
owns them) or from the pins (the CLI, another process). The readers over them (metrics summed
over CPUs, the LB table joined with its backends, the tunnel table) live here too, once.

>>> with NodeMaps.from_pins("/sys/fs/bpf/ciliumlite/worker1") as maps:   # doctest: +SKIP
...     print(maps.endpoints.items(), sum_metrics(maps.metrics))
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from ciliumlite.bpf import BE32, U8, BpfObject, Map
from ciliumlite.bpf.record import BE16, U32, U64
from ciliumlite.datapath import reasons
from ciliumlite.datapath.records import (
    Cidr4Key,
    Cidr4Value,
    CtEntry,
    EndpointInfo,
    EndpointKey,
    IpcacheKey,
    Ipv4CtTuple,
    Lb4AffinityKey,
    Lb4Backend,
    Lb4Key,
    Lb4MaglevKey,
    Lb4ReverseNat,
    Lb4Service,
    LbAffinityVal,
    MetricsKey,
    MetricsValue,
    NatEntry,
    PolicyStatsKey,
    PolicyStatsValue,
    RemoteEndpointInfo,
    SockKey,
    SockopsConfig,
    SockopsCounter,
    TunnelKey,
    TunnelValue,
)

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class MapSpec(Generic[K, V]):
    """One datapath map: its name (as in ``maps.h`` and on bpffs) and its key and value records."""

    name: str
    key: Any
    value: Any

    def from_object(self, obj: BpfObject) -> Map[K, V]:
        """The map as ``obj`` holds it (owned by the object). Raises :class:`LayoutError` if the
        records differ from the object's BTF, :class:`ValidationError` if ``obj`` has no such map."""
        return obj.map(self.name, self.key, self.value)

    def from_pins(self, pin_dir: str) -> Map[K, V]:
        """The map opened from its pin in ``pin_dir`` (the caller closes it). Raises
        :class:`BpfError` (errno ENOENT when it is not pinned) or :class:`LayoutError`."""
        return Map.open_pinned(os.path.join(pin_dir, self.name), self.key, self.value)


LXC: Final = MapSpec[EndpointKey, EndpointInfo]("cilium_lxc", EndpointKey, EndpointInfo)
METRICS: Final = MapSpec[MetricsKey, Any]("cilium_metrics", MetricsKey, MetricsValue)
TUNNEL: Final = MapSpec[TunnelKey, TunnelValue]("cilium_tunnel_map", TunnelKey, TunnelValue)
NODE: Final = MapSpec[int, int]("cilium_node_map", BE32, U8)
CT_TCP: Final = MapSpec[Ipv4CtTuple, CtEntry]("cilium_ct4_global", Ipv4CtTuple, CtEntry)
CT_ANY: Final = MapSpec[Ipv4CtTuple, CtEntry]("cilium_ct_any4_global", Ipv4CtTuple, CtEntry)
SNAT: Final = MapSpec[Ipv4CtTuple, NatEntry]("cilium_snat_v4_external", Ipv4CtTuple, NatEntry)
LB_SERVICES: Final = MapSpec[Lb4Key, Lb4Service]("cilium_lb4_services_v2", Lb4Key, Lb4Service)
LB_BACKENDS: Final = MapSpec[int, Lb4Backend]("cilium_lb4_backends_v3", U32, Lb4Backend)
LB_REVNAT: Final = MapSpec[int, Lb4ReverseNat]("cilium_lb4_reverse_nat", BE16, Lb4ReverseNat)
LB_MAGLEV: Final = MapSpec[Lb4MaglevKey, int]("cilium_lb4_maglev", Lb4MaglevKey, U32)
LB_AFFINITY: Final = MapSpec[Lb4AffinityKey, LbAffinityVal]("cilium_lb4_affinity", Lb4AffinityKey, LbAffinityVal)
#: Socket acceleration's maps (``sockops.h``), made by ``bpf_sockops.o`` only, so not in :data:`ALL`.
#: A SOCKHASH read from user space gives each socket's cookie as its value.
SOCK_OPS: Final = MapSpec[SockKey, int]("cilium_sock_ops", SockKey, U64)
SOCK_CFG: Final = MapSpec[int, SockopsConfig]("cilium_sock_cfg", U32, SockopsConfig)
SOCK_CTR: Final = MapSpec[int, Any]("cilium_sock_ctr", U32, SockopsCounter)
SOCKOPS_MAPS: Final[tuple[MapSpec[Any, Any], ...]] = (SOCK_OPS, SOCK_CFG, SOCK_CTR)
#: The XDP prefilter's maps (``prefilter.h``), made by ``bpf_xdp.o`` only, so not in :data:`ALL`:
#: denied source /32s in a hash, every other prefix in an LPM trie (Cilium's CIDR4_HMAP / CIDR4_LMAP).
PREFILTER_FIX: Final = MapSpec[Cidr4Key, Cidr4Value]("cilium_cidr_v4_fix", Cidr4Key, Cidr4Value)
PREFILTER_DYN: Final = MapSpec[Cidr4Key, Cidr4Value]("cilium_cidr_v4_dyn", Cidr4Key, Cidr4Value)
#: Network policy's maps (``policy.h``; bpf_lxc, bpf_overlay and bpf_host declare them, so not in
#: :data:`ALL`, whose maps every reader may expect). ``cilium_policy`` is a hash of maps: write an
#: inner map's fd, read back its id (:mod:`ciliumlite.node.policy` holds the inner maps' records).
IPCACHE: Final = MapSpec[IpcacheKey, RemoteEndpointInfo]("cilium_ipcache", IpcacheKey, RemoteEndpointInfo)
POLICY: Final = MapSpec[int, int]("cilium_policy", U32, U32)
POLICY_STATS: Final = MapSpec[PolicyStatsKey, Any]("cilium_policystats", PolicyStatsKey, PolicyStatsValue)
POLICY_MAPS: Final[tuple[MapSpec[Any, Any], ...]] = (IPCACHE, POLICY, POLICY_STATS)
#: Maps without a record here: read with :mod:`ciliumlite.datapath.events`.
EVENTS_NAME: Final = "cilium_events"
EVENTS_RATELIMIT_NAME: Final = "cilium_events_ratelimit"

ALL: Final[tuple[MapSpec[Any, Any], ...]] = (
    LXC, METRICS, TUNNEL, NODE, CT_TCP, CT_ANY, SNAT, LB_SERVICES, LB_BACKENDS, LB_REVNAT, LB_MAGLEV, LB_AFFINITY)


class NodeMaps:
    """The typed maps of one node, opened on first use from an object or from the pins.

    Use :meth:`from_object` in the process that loaded the datapath and :meth:`from_pins` anywhere
    else. Maps opened from pins are closed by :meth:`close`; an object's maps belong to the object.
    """

    def __init__(self, *, obj: BpfObject | None = None, pin_dir: str | None = None) -> None:
        if (obj is None) == (pin_dir is None):
            raise ValueError("NodeMaps needs exactly one of obj= or pin_dir=")
        self._obj = obj
        self.pin_dir = pin_dir if pin_dir is not None else obj.pin_root if obj is not None else None
        self._open: dict[str, Map[Any, Any]] = {}

    @classmethod
    def from_object(cls, obj: BpfObject) -> NodeMaps:
        """The maps of a loaded datapath object (``bpf_lxc`` declares every node map)."""
        return cls(obj=obj)

    @classmethod
    def from_pins(cls, pin_dir: str) -> NodeMaps:
        """The maps pinned under ``pin_dir`` (a node's pin directory)."""
        return cls(pin_dir=pin_dir)

    def has(self, spec: MapSpec[Any, Any]) -> bool:
        """Whether the map exists (the object declares it, or it is pinned)."""
        if self._obj is not None:
            return spec.name in self._obj.map_names
        return self.pin_dir is not None and os.path.exists(os.path.join(self.pin_dir, spec.name))

    def get(self, spec: MapSpec[K, V]) -> Map[K, V]:
        """The map of ``spec`` (opened once, then cached). Raises as :meth:`MapSpec.from_pins` /
        :meth:`MapSpec.from_object`."""
        m = self._open.get(spec.name)
        if m is None:
            if self._obj is not None:
                m = spec.from_object(self._obj)
            else:
                assert self.pin_dir is not None
                m = spec.from_pins(self.pin_dir)
            self._open[spec.name] = m
        return m

    @property
    def endpoints(self) -> Map[EndpointKey, EndpointInfo]:
        """``cilium_lxc``: endpoint IP -> endpoint (local pods and the node's own addresses)."""
        return self.get(LXC)

    @property
    def metrics(self) -> Map[MetricsKey, Any]:
        """``cilium_metrics``: per-CPU packet/byte counters by reason and direction."""
        return self.get(METRICS)

    @property
    def tunnel(self) -> Map[TunnelKey, TunnelValue]:
        """``cilium_tunnel_map``: remote pod CIDR -> remote node's underlay address."""
        return self.get(TUNNEL)

    @property
    def nodes(self) -> Map[int, int]:
        """``cilium_node_map``: addresses of the cluster's nodes (DSR's trust rule)."""
        return self.get(NODE)

    @property
    def revnat(self) -> Map[int, Lb4ReverseNat]:
        """``cilium_lb4_reverse_nat``: rev-NAT index -> frontend."""
        return self.get(LB_REVNAT)

    @property
    def lb_backends(self) -> Map[int, Lb4Backend]:
        """``cilium_lb4_backends_v3``: backend id -> backend."""
        return self.get(LB_BACKENDS)

    @property
    def lb_services(self) -> Map[Lb4Key, Lb4Service]:
        """``cilium_lb4_services_v2``: frontend rows and backend slots."""
        return self.get(LB_SERVICES)

    @property
    def snat(self) -> Map[Ipv4CtTuple, NatEntry] | None:
        """``cilium_snat_v4_external``, or None when the objects have no NAT map."""
        return self.get(SNAT) if self.has(SNAT) else None

    def conntrack_maps(self) -> list[Map[Ipv4CtTuple, CtEntry]]:
        """Both CT maps (TCP and non-TCP) that exist."""
        return [self.get(s) for s in (CT_TCP, CT_ANY) if self.has(s)]

    def close(self) -> None:
        """Close the maps opened from pins (an object's maps stay with the object)."""
        if self._obj is None:
            for m in self._open.values():
                m.close()
        self._open.clear()

    def __enter__(self) -> NodeMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"object {self._obj.name}" if self._obj is not None else f"pins {self.pin_dir}"
        return f"<NodeMaps {where} open={sorted(self._open)}>"


# -- readers -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricRow:
    """Packets and bytes counted for one reason and direction (summed over CPUs and source lines)."""

    reason: int
    direction: int
    packets: int
    bytes: int

    @property
    def reason_text(self) -> str:
        """What the reason means, in words (Cilium's wording)."""
        return reasons.describe(self.reason)

    @property
    def is_drop(self) -> bool:
        """True for drop reasons (Cilium's numbering: 130 and up)."""
        return reasons.is_drop(self.reason)


def sum_metrics(metrics: Map[MetricsKey, Any]) -> list[MetricRow]:
    """``cilium_metrics`` summed over CPUs and source lines, by (reason, direction), sorted."""
    sums: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for key, per_cpu in metrics.items():
        acc = sums[(key.reason, key.dir)]
        for v in per_cpu:
            acc[0] += v.count
            acc[1] += v.bytes
    return [MetricRow(r, d, p, b) for (r, d), (p, b) in sorted(sums.items())]


def tunnel_entries(tunnel: Map[TunnelKey, TunnelValue]) -> dict[str, str]:
    """The tunnel map as ``{pod CIDR prefix: remote node IP}`` (like ``cilium bpf tunnel list``)."""
    return {str(k.ip4): str(v.ip4) for k, v in sorted(tunnel.items(), key=lambda kv: kv[0].ip4)}
