"""The cluster's network policy applied to one node: what Cilium's endpoint regeneration does.

:meth:`PolicyEnforcer.sync` takes every policy and every endpoint record of the cluster (from
the store), builds one :class:`~ciliumlite.policy.PolicyEngine` and then, through the node's
:class:`~ciliumlite.node.policy.PolicyMaps`:

* writes each local endpoint's MapState into its policy map (only the difference from what the
  kernel holds: no program is reloaded, an allow revoked cuts an established flow at its next
  forward packet). An endpoint that no policy selects in either direction is not enforced (its
  map is cleared): one lookup fewer per packet, and the same verdicts as an allow-all map;
* makes the ipcache hold what the node needs to learn a peer's identity from its address: every
  other node's pods (``/32``, identity, hosting node) and every CIDR a policy names (a node-local
  CIDR identity), and nothing else. Entries the Datapath keeps itself (its own endpoints and
  addresses, the remote nodes' addresses: the ``own`` prefixes) are never written or removed here.

A local endpoint the store does not know (made outside the cluster) is left as it is. An
endpoint whose MapState does not fit its map (:class:`~ciliumlite.node.policy.PolicyOverflowError`)
keeps its previous policy (nothing of the new one is written, never a silent allow) and is
reported in :attr:`PolicySync.errors` and :attr:`PolicySync.overflowed`. With ``lockdown`` (Cilium's
``--enable-lockdown-endpoint-on-policy-overflow``) it is locked down instead: its map holds
:data:`LOCKDOWN` (deny any peer, both directions: every forward packet is dropped as ``Policy
denied by denylist``) until a later sync finds its policy fits again, and it is listed in
:attr:`PolicySync.locked_down`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ciliumlite.bpf.errors import CiliumliteError
from ciliumlite.cluster.store import EndpointRecord
from ciliumlite.endpoint import Endpoint
from ciliumlite.node.policy import PolicyMaps, PolicyOverflowError
from ciliumlite.policy import CidrIdentityAllocator, EndpointPolicy, Labels, PolicyEndpoint, PolicyEngine
from ciliumlite.policy.mapstate import MapState, PolicyEntry, PolicyKey

_Target = tuple[int, ipaddress.IPv4Address | None]

#: What a locked-down endpoint's map holds: deny any peer, any protocol, either direction.
LOCKDOWN: MapState = {PolicyKey(0, False): PolicyEntry(deny=True), PolicyKey(0, True): PolicyEntry(deny=True)}


@dataclass(frozen=True)
class PolicySync:
    """What one :meth:`PolicyEnforcer.sync` did."""

    #: Endpoint name -> the engine's answer, for the local endpoints the store knows.
    endpoints: dict[str, EndpointPolicy] = field(default_factory=dict)
    #: Policy map entries written and deleted, over all endpoints.
    written: int = 0
    deleted: int = 0
    #: ipcache prefixes added or changed, and removed.
    ipcache_written: int = 0
    ipcache_deleted: int = 0
    #: ``endpoint: what failed`` (its previous policy stays, unless it was locked down).
    errors: tuple[str, ...] = ()
    #: Endpoint name -> the overflow, for the endpoints whose MapState did not fit their map.
    overflowed: dict[str, PolicyOverflowError] = field(default_factory=dict)
    #: The endpoints locked down by this sync (deny-all, ``lockdown`` on).
    locked_down: tuple[str, ...] = ()


def policy_endpoint(record: EndpointRecord) -> PolicyEndpoint:
    """What the engine needs of an endpoint record."""
    return PolicyEndpoint(record.identity, Labels.from_mapping(record.labels), (ipaddress.IPv4Address(record.ip),),
                          dict(record.named_ports), record.name or record.ip)


class PolicyEnforcer:
    """Keeps one node's policy maps and ipcache in line with the cluster's policies.

    ``node_ip`` is the node's underlay address (an endpoint record hosted there is local);
    ``maps`` returns the node's :class:`PolicyMaps` (opened on first use); ``lockdown`` locks an
    overflowing endpoint down (it may be changed between syncs). Not thread-safe on its own: the
    Datapath serialises calls.
    """

    def __init__(self, node_ip: str, maps: Callable[[], PolicyMaps], *, lockdown: bool = False) -> None:
        self.node_ip = node_ip
        self.lockdown = lockdown
        self._maps = maps
        self._cidr = CidrIdentityAllocator()

    def sync(self, local: Sequence[Endpoint], policies: Iterable[Any], records: Iterable[EndpointRecord],
             own: Iterable[ipaddress.IPv4Network]) -> PolicySync:
        """Apply ``policies`` to the ``local`` endpoints, knowing every endpoint ``records`` lists;
        ``own`` are the ipcache prefixes the Datapath keeps itself (left alone).

        Raises :class:`~ciliumlite.policy.IdentityExhaustedError` (no CIDR identity left) and
        :class:`BpfError` from the maps; a MapState too big for its map is reported, not raised.
        """
        records = list(records)
        engine = PolicyEngine(policies, endpoints=[policy_endpoint(r) for r in records], cidr_allocator=self._cidr)
        maps = self._maps()
        by_ip = {r.ip: r for r in records}
        answers: dict[str, EndpointPolicy] = {}
        errors: list[str] = []
        overflowed: dict[str, PolicyOverflowError] = {}
        locked: list[str] = []
        written = deleted = 0
        for ep in local:
            record = by_ip.get(str(ep.ip))
            if record is None:
                continue
            answer = engine.compute(policy_endpoint(record))
            answers[ep.name] = answer
            try:
                if answer.ingress_enforced or answer.egress_enforced:
                    change = maps.set_endpoint(ep, answer.map_state)
                    written, deleted = written + change.written, deleted + change.deleted
                else:
                    maps.clear(ep)
            except PolicyOverflowError as exc:  # nothing of the new policy was written
                overflowed[ep.name] = exc
                if not self.lockdown:
                    errors.append(f"{ep.name}: {exc}")
                    continue
                try:
                    change = maps.set_endpoint(ep, LOCKDOWN)
                except CiliumliteError as exc2:
                    errors.append(f"{ep.name}: {exc}; lockdown failed: {exc2}")
                    continue
                written, deleted = written + change.written, deleted + change.deleted
                locked.append(ep.name)
                errors.append(f"{ep.name}: {exc}; endpoint locked down (deny-all)")
            except CiliumliteError as exc:
                errors.append(f"{ep.name}: {exc}")
        ipw, ipd = self._sync_ipcache(maps, records, engine.cidr_identities, set(own))
        return PolicySync(answers, written, deleted, ipw, ipd, tuple(errors), overflowed, tuple(locked))

    def _sync_ipcache(self, maps: PolicyMaps, records: list[EndpointRecord], cidrs: dict[ipaddress.IPv4Network, int],
                      own: set[ipaddress.IPv4Network]) -> tuple[int, int]:
        want: dict[ipaddress.IPv4Network, _Target] = {p: (i, None) for p, i in cidrs.items()}
        for r in records:
            if r.node_ip != self.node_ip:
                want[ipaddress.IPv4Network(r.ip)] = (r.identity, ipaddress.IPv4Address(r.node_ip))
        # Compared with what the kernel holds, not with a memory of what was written: a restored
        # node's first sync removes what the cluster forgot while it had no owner.
        have: dict[ipaddress.IPv4Network, _Target] = {e.prefix: (e.identity, e.tunnel_endpoint) for e in maps.list()}
        deleted = 0
        for prefix in have:
            if prefix not in own and prefix not in want:
                maps.delete(prefix)
                deleted += 1
        written = 0
        for prefix, target in want.items():
            if prefix not in own and have.get(prefix) != target:
                maps.upsert(prefix, target[0], tunnel_endpoint=target[1])
                written += 1
        return written, deleted


__all__ = ["LOCKDOWN", "PolicyEnforcer", "PolicySync", "policy_endpoint"]
