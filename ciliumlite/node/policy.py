"""Network policy's kernel maps for one node: each endpoint's policy map and the ipcache.

``Datapath.policy`` is a :class:`PolicyMaps` (``docs/policy.md``, "Kernel maps"):

* :meth:`PolicyMaps.set_endpoint` writes an endpoint's :data:`~ciliumlite.policy.mapstate.MapState`
  into its LPM trie, only the difference from what the kernel holds. The first call makes the
  endpoint's trie (``DatapathConfig.policy_map_size`` entries), fills it, and only then puts it in
  ``cilium_policy``: the endpoint is enforced from that moment with its whole policy, never half
  of it. A MapState that does not fit raises :class:`MapFullError` before anything is written.
* :meth:`PolicyMaps.clear` takes the endpoint's trie out of ``cilium_policy`` (the kernel frees it):
  the endpoint is no longer enforced. Removing an endpoint does this.
* :meth:`PolicyMaps.get` reads a MapState back from the kernel.
* The ipcache: :meth:`upsert` / :meth:`delete` / :meth:`list` of prefix -> identity (and the node
  hosting it). The Datapath keeps its own endpoints (their identity), its own addresses (``HOST``)
  and remote nodes' addresses (``REMOTE_NODE``) there; pods of other nodes and policy CIDRs are the
  control plane's to add (``docs/policy.md`` says what it calls).

Nothing here reloads a program: a policy change is map updates only, so a revoked allow cuts an
established flow at its next forward packet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from ciliumlite.bpf import Map
from ciliumlite.bpf.errors import MapFullError, ValidationError
from ciliumlite.bpf.map import MapType
from ciliumlite.datapath import maps
from ciliumlite.datapath.records import (
    FAMILY_IPV4,
    IPCACHE_F_HAS_TUNNEL_EP,
    IPCACHE_STATIC_PREFIX,
    POLICY_F_DENY,
    POLICY_L3_PREFIX,
    POLICY_LPM_SHIFT,
    IpcacheKey,
    PolicyMapEntry,
    PolicyMapKey,
    PolicyStatsKey,
    RemoteEndpointInfo,
)
from ciliumlite.endpoint import Endpoint
from ciliumlite.policy.mapstate import MapState, PolicyEntry, PolicyKey

_BPF_F_NO_PREALLOC = 1
_PROTO_BITS = 8


def to_map_key(key: PolicyKey) -> tuple[PolicyMapKey, PolicyMapEntry]:
    """The trie key of ``key`` and the flags its entry carries besides deny (the proto+port length)."""
    lpm = 0 if key.protocol == 0 else _PROTO_BITS + key.port_prefix
    return (PolicyMapKey(prefixlen=POLICY_L3_PREFIX + lpm, sec_label=key.identity, egress=int(key.egress),
                         protocol=key.protocol, dport=key.port),
            PolicyMapEntry(flags=lpm << POLICY_LPM_SHIFT))


def encode(key: PolicyKey, entry: PolicyEntry) -> tuple[PolicyMapKey, PolicyMapEntry]:
    """One MapState item as the kernel stores it."""
    mk, base = to_map_key(key)
    return mk, PolicyMapEntry(flags=base.flags | (POLICY_F_DENY if entry.deny else 0))


def decode(mk: PolicyMapKey, value: PolicyMapEntry) -> tuple[PolicyKey, PolicyEntry]:
    """One trie entry as a MapState item. Raises :class:`ValidationError` for a key no MapState makes."""
    lpm = mk.prefixlen - POLICY_L3_PREFIX
    if not 0 <= lpm <= 24 or 0 < lpm < _PROTO_BITS:
        raise ValidationError(f"policy map key with prefix length {mk.prefixlen} is not one ciliumlite writes")
    proto = mk.protocol if lpm else 0
    port_prefix = max(0, lpm - _PROTO_BITS)
    return (PolicyKey(mk.sec_label, bool(mk.egress), proto, mk.dport if port_prefix else 0, port_prefix),
            PolicyEntry(deny=bool(value.flags & POLICY_F_DENY)))


@dataclass(frozen=True)
class PolicyChange:
    """What :meth:`PolicyMaps.set_endpoint` wrote: entries added or changed, and removed."""

    written: int
    deleted: int
    created: bool


@dataclass(frozen=True)
class IpcacheEntry:
    """One ipcache prefix: its identity and the node hosting it (None: this node, or none)."""

    prefix: ipaddress.IPv4Network
    identity: int
    tunnel_endpoint: ipaddress.IPv4Address | None


def _network(prefix: str | ipaddress.IPv4Network | ipaddress.IPv4Address) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(prefix)
    except ValueError as exc:
        raise ValidationError(f"ipcache prefix {prefix!r} is not an IPv4 network (host bits must be 0): "
                              f"{exc}") from exc


class PolicyOverflowError(MapFullError):
    """An endpoint's MapState has more entries than its policy map holds (nothing was written).

    ``endpoint`` names the endpoint, ``entries`` is the MapState's size and ``map_size`` the map's
    (``DatapathConfig.policy_map_size``). Cilium reports the same as ``E2BIG`` on the policymap update.
    """

    def __init__(self, endpoint: str, endpoint_id: int, entries: int, map_size: int) -> None:
        super().__init__("update policy map", 28, target=(
            f"endpoint {endpoint_id} ({endpoint}): {entries} entries, the map holds {map_size} "
            "(raise DatapathConfig.policy_map_size, at most 65536)"))
        self.endpoint = endpoint
        self.endpoint_id = endpoint_id
        self.entries = entries
        self.map_size = map_size


def _ipcache_key(net: ipaddress.IPv4Network) -> IpcacheKey:
    return IpcacheKey(prefixlen=IPCACHE_STATIC_PREFIX + net.prefixlen, family=FAMILY_IPV4, ip4=net.network_address)


class PolicyMaps:
    """The policy maps of one node, opened from its pins (``cilium_policy``, ``cilium_ipcache``).

    ``map_size`` is each endpoint's trie size (``DatapathConfig.policy_map_size``). Not thread-safe
    on its own: the Datapath serialises calls.
    """

    def __init__(self, pin_dir: str, map_size: int) -> None:
        self.pin_dir = pin_dir
        self.map_size = map_size
        self._outer: Map[int, int] = maps.POLICY.from_pins(pin_dir)
        try:
            self._ipcache: Map[IpcacheKey, RemoteEndpointInfo] = maps.IPCACHE.from_pins(pin_dir)
        except BaseException:
            self._outer.close()
            raise
        self._inner: dict[int, Map[PolicyMapKey, PolicyMapEntry]] = {}

    # -- endpoints' policy maps ------------------------------------------------------------------------
    def _open_inner(self, ep_id: int) -> Map[PolicyMapKey, PolicyMapEntry] | None:
        m = self._inner.get(ep_id)
        if m is not None:
            return m
        map_id = self._outer.get(ep_id)
        if map_id is None:
            return None
        m = Map.from_id(map_id, PolicyMapKey, PolicyMapEntry)
        self._inner[ep_id] = m
        return m

    def set_endpoint(self, endpoint: Endpoint, state: MapState) -> PolicyChange:
        """Make ``endpoint``'s policy map hold exactly ``state``, writing only the difference.

        Raises :class:`ValidationError` for an item that is not a (PolicyKey, PolicyEntry) pair,
        :class:`PolicyOverflowError` when ``state`` has more entries than the map holds (nothing written),
        :class:`BpfError` when the kernel refuses a write (the map may then hold part of the change:
        call again, or :meth:`clear`).
        """
        wanted: dict[PolicyMapKey, PolicyMapEntry] = {}
        for key, entry in state.items():
            if not isinstance(key, PolicyKey) or not isinstance(entry, PolicyEntry):
                raise ValidationError(f"MapState of {endpoint.name}: {key!r}: {entry!r} is not a PolicyKey: "
                                      "PolicyEntry item")
            mk, mv = encode(key, entry)
            wanted[mk] = mv
        if len(wanted) > self.map_size:
            raise PolicyOverflowError(endpoint.name, endpoint.id, len(wanted), self.map_size)
        inner = self._open_inner(endpoint.id)
        if inner is None:
            fresh: Map[Any, Any] = Map.create(MapType.LPM_TRIE, f"cilium_pol{endpoint.id % 100000:05d}",
                                              PolicyMapKey, PolicyMapEntry, self.map_size,
                                              flags=_BPF_F_NO_PREALLOC)
            try:
                for mk, mv in wanted.items():
                    fresh.set(mk, mv)
                self._outer.set(endpoint.id, fresh.fd)  # enforced from here, with the whole state
            except BaseException:
                fresh.close()
                raise
            self._inner[endpoint.id] = fresh
            return PolicyChange(len(wanted), 0, True)
        current = dict(inner.items())
        stale = [k for k in current if k not in wanted]
        changed = [(k, v) for k, v in wanted.items() if current.get(k) != v]
        # New entries first (a key that changes meaning is replaced in place), then the stale ones;
        # when the additions would not fit beside the stale entries, make room first.
        room_first = len(current) + sum(1 for k, _ in changed if k not in current) > inner.max_entries
        for k in stale if room_first else ():
            inner.delete(k)
        for k, v in changed:
            inner.set(k, v)
        for k in () if room_first else stale:
            inner.delete(k)
        deleted = len(stale)
        return PolicyChange(len(changed), deleted, False)

    def get(self, endpoint: Endpoint) -> MapState | None:
        """``endpoint``'s MapState as the kernel holds it (None: not enforced, no map)."""
        return self.get_by_id(endpoint.id)

    def get_by_id(self, endpoint_id: int) -> MapState | None:
        """:meth:`get` by endpoint id, for readers that have only the id (the CLI, from the pins)."""
        inner = self._open_inner(endpoint_id)
        if inner is None:
            return None
        return dict(decode(k, v) for k, v in inner.items())

    def clear(self, endpoint: Endpoint) -> None:
        """Stop enforcing ``endpoint``: its map leaves ``cilium_policy`` and is freed."""
        self._outer.pop(endpoint.id, None)
        m = self._inner.pop(endpoint.id, None)
        if m is not None:
            m.close()

    def enforced(self) -> list[int]:
        """The endpoint ids that have a policy map."""
        return sorted(self._outer.keys())

    def stats(self, endpoint: Endpoint) -> dict[tuple[PolicyKey, bool], tuple[int, int]]:
        """Packets and bytes allowed per matched entry of ``endpoint`` (key, deny=False), summed over
        CPUs (``cilium_policystats``; denied packets are counted in the drop metrics instead)."""
        return self.stats_by_id(endpoint.id)

    def stats_by_id(self, endpoint_id: int) -> dict[tuple[PolicyKey, bool], tuple[int, int]]:
        """:meth:`stats` by endpoint id."""
        out: dict[tuple[PolicyKey, bool], tuple[int, int]] = {}
        with maps.POLICY_STATS.from_pins(self.pin_dir) as m:
            for k, per_cpu in m.items():
                if not isinstance(k, PolicyStatsKey) or k.endpoint_id != endpoint_id:
                    continue
                pk = PolicyKey(k.sec_label, bool(k.egress), k.protocol if k.prefix_len else 0,
                               k.dport if k.prefix_len > _PROTO_BITS else 0, max(0, k.prefix_len - _PROTO_BITS))
                out[(pk, False)] = (sum(v.packets for v in per_cpu), sum(v.bytes for v in per_cpu))
        return out

    # -- ipcache ------------------------------------------------------------------------------------------
    def upsert(self, prefix: str | ipaddress.IPv4Network | ipaddress.IPv4Address, identity: int,
               tunnel_endpoint: str | ipaddress.IPv4Address | None = None) -> None:
        """Map ``prefix`` (an address is a /32) to ``identity``, hosted by ``tunnel_endpoint``.

        Raises :class:`ValidationError` for a bad prefix, identity or address,
        :class:`MapFullError` when the ipcache is full.
        """
        net = _network(prefix)
        if isinstance(identity, bool) or not isinstance(identity, int) or not 0 < identity < 1 << 32:
            raise ValidationError(f"ipcache identity {identity!r} for {net} is not a u32 above 0")
        tun = ipaddress.IPv4Address(0)
        if tunnel_endpoint is not None:
            try:
                tun = ipaddress.IPv4Address(tunnel_endpoint)
            except ValueError as exc:
                raise ValidationError(f"ipcache tunnel endpoint {tunnel_endpoint!r} for {net}: {exc}") from exc
        self._ipcache.set(_ipcache_key(net), RemoteEndpointInfo(
            sec_identity=identity, tunnel_endpoint=tun, flags=IPCACHE_F_HAS_TUNNEL_EP if int(tun) else 0))

    def delete(self, prefix: str | ipaddress.IPv4Network | ipaddress.IPv4Address) -> bool:
        """Forget ``prefix``; False when it was not there."""
        try:
            self._ipcache.delete(_ipcache_key(_network(prefix)))
        except KeyError:
            return False
        return True

    def list(self) -> list[IpcacheEntry]:
        """Every ipcache prefix, by address then length (like ``cilium bpf ipcache list``)."""
        out = [IpcacheEntry(ipaddress.IPv4Network(f"{k.ip4}/{k.prefixlen - IPCACHE_STATIC_PREFIX}"), v.sec_identity,
                            v.tunnel_endpoint if int(v.tunnel_endpoint) else None)
               for k, v in self._ipcache.items()]
        return sorted(out, key=lambda e: (e.prefix.network_address, e.prefix.prefixlen))

    def lookup(self, addr: str | ipaddress.IPv4Address) -> int:
        """The identity the datapath gives ``addr``: its longest prefix's, ``WORLD`` (2) on a miss."""
        v = self._ipcache.get(IpcacheKey(prefixlen=IPCACHE_STATIC_PREFIX + 32, family=FAMILY_IPV4,
                                          ip4=ipaddress.IPv4Address(addr)))
        return v.sec_identity if v is not None else 2

    def close(self) -> None:
        """Close the handles (the maps stay pinned, the endpoints stay enforced)."""
        for m in self._inner.values():
            m.close()
        self._inner.clear()
        self._ipcache.close()
        self._outer.close()
