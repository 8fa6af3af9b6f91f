"""Reading live datapaths from another process: the registry and the pinned maps (what the CLI shows).

Every running :class:`~ciliumlite.node.Datapath` describes itself in the registry
(``$CILIUMLITE_RUN_DIR`` or ``/run/ciliumlite/datapaths``, one JSON file per node); the BPF state is
read from its pinned maps. Nothing here writes to a map or to the registry.

>>> reg = load()                                              # doctest: +SKIP
>>> for dp in select(reg.entries, lab="cl3f2a1-demo"):       # doctest: +SKIP
...     print(dp.node, tunnels(dp))
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

from ciliumlite.bpf import Map, MapType, fs
from ciliumlite.bpf.errors import BpfError, CiliumliteError, LayoutError
from ciliumlite.datapath import maps, registry
from ciliumlite.datapath.maps import MetricRow
from ciliumlite.datapath.records import (
    FAMILY_IPV4,
    IPCACHE_STATIC_PREFIX,
    CtEntry,
    EndpointInfo,
    EndpointKey,
    IpcacheKey,
    Ipv4CtTuple,
    Lb4Backend,
    Lb4Key,
    Lb4Service,
    NatEntry,
    TunnelKey,
    TunnelValue,
)

K = TypeVar("K")
V = TypeVar("V")

__all__ = [
    "CT_ANY_MAP", "CT_TCP_MAP", "LXC_MAP", "METRICS_MAP", "SNAT_MAP", "TUNNEL_MAP",
    "CtRow", "InspectError", "LbEntry", "MapAbsent", "MapPressure", "PinsGone", "Registry",
    "RegisteredDatapath", "bpf_endpoints", "ct_entries", "lb_entries", "load", "map_pressure", "metrics",
    "monotonic_seconds", "nat_entries", "require_bpffs", "require_root", "revnat_ids", "select", "tunnels",
    "IdentityLookup",
]

LXC_MAP = maps.LXC.name
METRICS_MAP = maps.METRICS.name
TUNNEL_MAP = maps.TUNNEL.name
CT_TCP_MAP = maps.CT_TCP.name
CT_ANY_MAP = maps.CT_ANY.name
SNAT_MAP = maps.SNAT.name
#: Maps bigger than this are counted with batch lookups (a key walk is one syscall per entry).
BATCH_COUNT_THRESHOLD = 4096
_HASHES = {MapType.HASH, MapType.LRU_HASH, MapType.PERCPU_HASH, MapType.LRU_PERCPU_HASH}
#: Maps without keys to count, shown with 0 entries: cilium_events (the datapath's ring buffer) and
#: socket-local storage (cilium_sock_sk: its entries live in the sockets; walking it is ENOTSUPP).
_KEYLESS = {MapType.RINGBUF, MapType.SK_STORAGE}


class InspectError(CiliumliteError):
    """There is nothing to show, and this says why (the CLI prints it and exits 1)."""


class MapAbsent(InspectError):
    """The datapath has no such pinned map (an older object build, or legacy host routing)."""

    def __init__(self, node: str, map_name: str, why: str = "") -> None:
        self.node = node
        self.map_name = map_name
        super().__init__(f"{node}: map {map_name} not present in this datapath" + (f" ({why})" if why else ""))


class PinsGone(InspectError):
    """The datapath's pin directory vanished (it stopped while we were reading)."""

    def __init__(self, node: str, pin_dir: str) -> None:
        self.node = node
        self.pin_dir = pin_dir
        super().__init__(f"{node}: pin directory {pin_dir} is gone (the datapath stopped?); skipped")


# -- the registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredDatapath:
    """One registry entry: a datapath as it described itself (``Datapath._publish``)."""

    node: str
    netns: str | None = None
    pin_dir: str | None = None
    cgroup: str | None = None
    pid: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    remote_nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The network policies the node enforces, described (``Policy.describe()``), by key.
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    attachments: list[dict[str, str]] = field(default_factory=list)
    source: str = ""

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str = "") -> RegisteredDatapath:
        """From the JSON a datapath published (unknown keys are ignored, missing ones default)."""
        node = state.get("node")
        if not isinstance(node, str) or not node:
            raise ValueError("entry has no node name")
        pid = state.get("pid")
        return cls(node=node, netns=state.get("netns"), pin_dir=state.get("pin_dir"), cgroup=state.get("cgroup"),
                   pid=pid if isinstance(pid, int) else None, config=dict(state.get("config") or {}),
                   endpoints=list(state.get("endpoints") or []), services=dict(state.get("services") or {}),
                   remote_nodes=dict(state.get("remote_nodes") or {}),
                   policies=dict(state.get("policies") or {}),
                   attachments=list(state.get("attachments") or []), source=source)

    @property
    def process_alive(self) -> bool:
        """The process that published the entry still runs (False when unknown)."""
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass(frozen=True)
class Registry:
    """What :func:`load` found: the usable entries, and notes on the ones it skipped."""

    directory: str
    entries: list[RegisteredDatapath]
    notes: list[str]


def load(directory: str | Path | None = None) -> Registry:
    """Read every registry entry. Entries whose pin directory is gone are skipped with a note."""
    d = Path(directory) if directory is not None else registry.run_dir()
    entries: list[RegisteredDatapath] = []
    notes: list[str] = []
    if not d.is_dir():
        return Registry(str(d), entries, notes)
    try:
        paths = sorted(d.glob("*.json"))
    except PermissionError as exc:
        raise InspectError(f"needs root (the datapath registry {d} is readable by root only)") from exc
    for path in paths:
        try:
            state = registry.with_items(json.loads(path.read_text()))  # its items: the state directory
            dp = RegisteredDatapath.from_state(state, str(path))
        except PermissionError as exc:
            raise InspectError(f"needs root (the datapath registry {d} is readable by root only)") from exc
        except FileNotFoundError:
            continue  # withdrawn while we listed the directory
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            notes.append(f"registry entry {path} is unreadable ({exc}); skipped")
            continue
        if dp.pin_dir and not os.path.isdir(dp.pin_dir):
            notes.append(f"{dp.node}: pin directory {dp.pin_dir} is gone (the datapath stopped?); skipped")
            continue
        entries.append(dp)
    return Registry(str(d), entries, notes)


def _lab_of(node: str, lab: str) -> bool:
    return node == lab or node.startswith(lab + "-")


def select(entries: list[RegisteredDatapath], *, lab: str | None = None, node: str | None = None,
           directory: str = "") -> list[RegisteredDatapath]:
    """The entries of ``lab`` (a lab prefix: node names are ``<prefix>-<node>``) and ``node``.

    ``node`` is a full node name, or the part after the lab prefix (``--lab cl3f2a1-demo --node a``),
    or any ``-``-separated suffix of node names. Raises :class:`InspectError` when nothing matches.
    """
    where = f" in {directory}" if directory else ""
    if not entries:
        raise InspectError(f"no datapath registered{where}: start one (a Lab, `ciliumlite demo --keep`, or a "
                           f"Datapath in your controller), or point {registry.RUN_DIR_ENV} at its registry")
    names = ", ".join(e.node for e in entries[:12]) + (", …" if len(entries) > 12 else "")
    chosen = entries
    if lab:
        chosen = [e for e in chosen if _lab_of(e.node, lab)]
        if not chosen:
            raise InspectError(f"no datapath of lab {lab!r} is registered{where} (registered nodes: {names})")
    if node:
        exact = [e for e in chosen if e.node == node or (lab is not None and e.node == f"{lab}-{node}")]
        chosen = exact or [e for e in chosen if e.node.endswith("-" + node)]
        if not chosen:
            scope = f" in lab {lab!r}" if lab else ""
            raise InspectError(f"no node {node!r}{scope} is registered{where} (registered nodes: {names})")
    return chosen


def require_root() -> None:
    """Reading pinned maps needs root (CAP_BPF and access to bpffs)."""
    if os.geteuid() != 0:
        raise InspectError("needs root (reads pinned BPF maps): run it with sudo")


def require_bpffs() -> None:
    """The pins live on bpffs at /sys/fs/bpf."""
    if not fs.bpffs_mounted():
        raise InspectError(f"bpffs is not mounted at {fs.BPFFS}, so no datapath's pinned maps can be read "
                           f"(mount it: mount -t bpf bpf {fs.BPFFS})")


# -- pinned maps -----------------------------------------------------------------------------------------


@contextmanager
def _pinned(dp: RegisteredDatapath, spec: maps.MapSpec[K, V]) -> Iterator[Map[K, V]]:
    name = spec.name
    if not dp.pin_dir:
        raise MapAbsent(dp.node, name, "no pinned maps: legacy host routing")
    try:
        m = spec.from_pins(dp.pin_dir)
    except BpfError as exc:
        if exc.errno != errno.ENOENT:
            raise
        if not os.path.isdir(dp.pin_dir):
            raise PinsGone(dp.node, dp.pin_dir) from None
        raise MapAbsent(dp.node, name) from None
    except LayoutError as exc:
        raise InspectError(f"{name}: the pinned map's layout differs from ciliumlite's records ({exc}); "
                           "ciliumlite.datapath.records is out of step with the object that made this map") from None
    try:
        yield m
    finally:
        m.close()


def bpf_endpoints(dp: RegisteredDatapath) -> list[tuple[EndpointKey, EndpointInfo]]:
    """``cilium_lxc`` as the kernel has it, sorted by address."""
    with _pinned(dp, maps.LXC) as m:
        return sorted(m.items(), key=lambda kv: kv[0].ip4)


def tunnels(dp: RegisteredDatapath) -> list[tuple[TunnelKey, TunnelValue]]:
    """``cilium_tunnel_map``: remote pod CIDR -> remote node address, sorted by prefix."""
    with _pinned(dp, maps.TUNNEL) as m:
        return sorted(m.items(), key=lambda kv: kv[0].ip4)


def metrics(dp: RegisteredDatapath) -> list[MetricRow]:
    """``cilium_metrics`` summed over CPUs and source lines, by (reason, direction)."""
    with _pinned(dp, maps.METRICS) as m:
        return maps.sum_metrics(m)


@dataclass(frozen=True)
class LbEntry:
    """One row of the service map and, for a backend slot, the backend it points at."""

    key: Lb4Key
    service: Lb4Service
    backend: Lb4Backend | None = None


def lb_entries(dp: RegisteredDatapath) -> list[LbEntry]:
    """The LB4 service map joined with the backend map, like ``cilium bpf lb list``."""
    with _pinned(dp, maps.LB_SERVICES) as svcs, _pinned(dp, maps.LB_BACKENDS) as bes:
        backends: dict[int, Lb4Backend] = dict(bes.items())
        rows = [LbEntry(k, v, backends.get(v.backend_id) if k.backend_slot else None) for k, v in svcs.items()]
    return sorted(rows, key=lambda r: (r.key.address, r.key.dport, r.key.proto, r.key.scope, r.key.backend_slot))


def revnat_ids(dp: RegisteredDatapath) -> dict[tuple[str, int], int]:
    """``cilium_lb4_reverse_nat`` inverted: frontend (address, port) -> reverse-NAT index (Cilium's service ID)."""
    with _pinned(dp, maps.LB_REVNAT) as m:
        return {(str(v.address), v.port): k for k, v in m.items()}


@dataclass(frozen=True)
class CtRow:
    """One conntrack entry and the map it is in."""

    map: str
    key: Ipv4CtTuple
    entry: CtEntry


def ct_entries(dp: RegisteredDatapath, map_name: str = CT_TCP_MAP) -> list[CtRow]:
    """A conntrack map (``cilium_ct4_global`` for TCP, ``cilium_ct_any4_global`` for the rest)."""
    spec = {maps.CT_TCP.name: maps.CT_TCP, maps.CT_ANY.name: maps.CT_ANY}.get(map_name)
    if spec is None:
        raise InspectError(f"{map_name} is not a conntrack map (use {CT_TCP_MAP} or {CT_ANY_MAP})")
    with _pinned(dp, spec) as m:
        return [CtRow(map_name, k, v) for k, v in m.items()]


def nat_entries(dp: RegisteredDatapath) -> list[tuple[Ipv4CtTuple, NatEntry]]:
    """``cilium_snat_v4_external``: both halves (OUT and IN) of every source-NAT mapping."""
    with _pinned(dp, maps.SNAT) as m:
        return list(m.items())


@dataclass(frozen=True)
class MapPressure:
    """How full one pinned map is."""

    name: str
    type: str
    entries: int
    max_entries: int

    @property
    def ratio(self) -> float:
        """entries / max_entries (0 for a map without capacity)."""
        return self.entries / self.max_entries if self.max_entries else 0.0


def _count(m: Map[Any, Any]) -> int:
    if m.type in _KEYLESS:
        return 0
    if m.type in _HASHES and m.max_entries > BATCH_COUNT_THRESHOLD:
        try:
            return m.lookup_batch_raw()[2]
        except BpfError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524):
                raise
    return len(m)


def _is_map_fd(fd: int) -> bool:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            return any(line.startswith("map_type:") for line in f)
    except OSError:
        return True


def map_pressure(dp: RegisteredDatapath) -> list[MapPressure]:
    """Entries and capacity of every map pinned in the datapath's pin directory, by name."""
    if not dp.pin_dir:
        return []
    try:
        names = sorted(os.listdir(dp.pin_dir))
    except FileNotFoundError:
        raise PinsGone(dp.node, dp.pin_dir) from None
    out = []
    for name in names:
        path = os.path.join(dp.pin_dir, name)
        if os.path.isdir(path):
            continue
        try:
            m = Map.open_pinned(path)
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                continue  # unpinned while we listed
            raise
        with m:
            if not _is_map_fd(m.fd):
                continue
            out.append(MapPressure(name, m.type.name, _count(m), m.max_entries))
    return out


class IdentityLookup:
    """Security identity of an address from a datapath's pinned ``cilium_ipcache`` (longest prefix),
    as ``cilium bpf ipcache get`` answers; None when the map is absent (no policy) or has no match.
    Holds the map open until :meth:`close`."""

    def __init__(self, dp: RegisteredDatapath) -> None:
        self._map: Map[IpcacheKey, Any] | None = None
        if dp.pin_dir:
            try:
                self._map = maps.IPCACHE.from_pins(dp.pin_dir)
            except (BpfError, LayoutError):
                self._map = None

    def __call__(self, ip: str) -> int | None:
        """The identity of ``ip`` (an IPv4 address), or None."""
        if self._map is None:
            return None
        try:
            key = IpcacheKey(prefixlen=IPCACHE_STATIC_PREFIX + 32, family=FAMILY_IPV4, ip4=IPv4Address(ip))
            v = self._map.get(key)
        except (BpfError, ValueError):
            return None
        return None if v is None else int(v.sec_identity)

    def close(self) -> None:
        """Close the map."""
        if self._map is not None:
            self._map.close()
            self._map = None


def monotonic_seconds() -> int:
    """Seconds of CLOCK_MONOTONIC: the clock of ``bpf_ktime_get_ns()`` (CT lifetimes, NAT creation)."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC))
