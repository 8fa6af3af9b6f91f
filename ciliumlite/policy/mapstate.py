"""What the policy engine hands the datapath: a :data:`MapState` per endpoint.

The rules a MapState obeys (the engine guarantees them, ``ciliumlite.node.policy`` relies on them):

- a direction with no policy selecting the endpoint holds one allow-all key
  ``PolicyKey(0, egress, 0, 0, 0)``; an isolated direction holds only what is allowed (and, for
  ingress, the allow for ``HOST``: a pod cannot block its own node);
- deny wins: no more specific allow shadows a broader deny (the engine adds deny entries at every
  more specific key an allow would win on, as Cilium's MapState does);
- no key with ``protocol == 0`` and ``port_prefix > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ciliumlite.bpf.errors import ValidationError


@dataclass(frozen=True, order=True)
class PolicyKey:
    """One entry's key: a peer, a direction, a protocol and a port prefix.

    ``port_prefix`` is how many high bits of ``port`` count: 16 for one port, 0 for any; a range
    is several keys (1000-2000 is a handful of prefixes).
    """

    #: The peer's identity; 0 (``ReservedIdentity.UNKNOWN``) = any peer.
    identity: int
    #: The direction, from the endpoint's point of view.
    egress: bool
    #: The IP protocol number; 0 = any (then ``port_prefix`` is 0).
    protocol: int = 0
    #: The destination port, host byte order.
    port: int = 0
    #: 0..16 significant high bits of ``port``.
    port_prefix: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.identity < 1 << 32:
            raise ValidationError(f"policy key identity {self.identity!r} is not a u32")
        if not 0 <= self.protocol <= 255:
            raise ValidationError(f"policy key protocol {self.protocol!r} is not 0..255")
        if not 0 <= self.port <= 65535 or not 0 <= self.port_prefix <= 16:
            raise ValidationError(f"policy key port {self.port!r}/{self.port_prefix!r} is not a port and 0..16 bits")
        if self.protocol == 0 and self.port_prefix:
            raise ValidationError("a policy key for any protocol cannot name a port")
        if self.port & ((1 << (16 - self.port_prefix)) - 1):
            raise ValidationError(f"policy key port {self.port} has bits beyond its /{self.port_prefix} prefix")


@dataclass(frozen=True)
class PolicyEntry:
    """One entry's verdict."""

    deny: bool = False


#: Every entry of one endpoint.
MapState = dict[PolicyKey, PolicyEntry]


def allow_all(egress: bool) -> PolicyKey:
    """The key of a direction no policy selects: any peer, any protocol, any port."""
    return PolicyKey(0, egress, 0, 0, 0)


def prefix_length(key: PolicyKey) -> int:
    """The key's protocol+port prefix bits, the value's ``lpm_prefix_length``: 0 (any protocol),
    8 (a protocol, any port) or 8 + ``port_prefix``."""
    return 0 if key.protocol == 0 else 8 + key.port_prefix


def covers(broad: PolicyKey, narrow: PolicyKey) -> bool:
    """Whether every packet ``narrow`` matches also matches ``broad`` (same identity and
    direction; the protocol/port prefix of ``broad`` contains ``narrow``'s)."""
    if broad.identity != narrow.identity or broad.egress != narrow.egress:
        return False
    if broad.protocol == 0:
        return True
    if broad.protocol != narrow.protocol or broad.port_prefix > narrow.port_prefix:
        return False
    shift = 16 - broad.port_prefix
    return broad.port >> shift == narrow.port >> shift


def deny_wins(state: MapState) -> MapState:
    """``state`` with every allow that a deny of the same peer and direction covers turned into a
    deny: within one identity's entries the longest prefix wins, so an allow more specific than a
    deny would otherwise let through what the deny forbids. (Across identities the lookup rule
    already prefers a deny: an exact-peer deny stops the lookup, a wildcard-peer deny beats any
    exact-peer allow.) This is Cilium's deny-preferred insertion, done once over the result."""
    denies: dict[tuple[int, bool], list[PolicyKey]] = {}
    for key, entry in state.items():
        if entry.deny:
            denies.setdefault((key.identity, key.egress), []).append(key)
    if not denies:
        return dict(state)
    out: MapState = {}
    for key, entry in state.items():
        if not entry.deny and any(covers(d, key) for d in denies.get((key.identity, key.egress), ())):
            entry = PolicyEntry(deny=True)
        out[key] = entry
    return out


def diff(old: MapState, new: MapState) -> tuple[MapState, list[PolicyKey]]:
    """What turns ``old`` into ``new``: the entries to write (new or changed) and the keys to
    delete, so a policy change is applied incrementally."""
    writes = {k: v for k, v in new.items() if old.get(k) != v}
    deletes = sorted(k for k in old if k not in new)
    return writes, deletes
