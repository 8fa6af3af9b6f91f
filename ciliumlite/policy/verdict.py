"""The datapath's verdict, computed from MapStates in Python: the kernel's lookup order
(``docs/policy.md``, Cilium's ``__policy_can_access``), so tests can hold the engine's output
against an independent model without a kernel, and tools can explain a drop.

Lookup of one direction of one endpoint: A = the longest-prefix entry for ``{peer identity, dir,
proto, dport}``, B = the longest for ``{0 (any peer), dir, proto, dport}``. A deny in A: denied.
Otherwise B is chosen if B is a deny, or A missed, or B's protocol/port prefix is longer; else A
(the L3 match beats the L4-only one on a tie). Neither: ``DROP_POLICY``; a deny chosen:
``DROP_POLICY_DENY``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ciliumlite.policy.mapstate import MapState, PolicyKey, prefix_length

#: ``Reason.DROP_POLICY`` of ``ciliumlite.datapath.reasons`` (Cilium's "Policy denied"): no entry.
DROP_POLICY = 133
#: ``Reason.DROP_POLICY_DENY`` (Cilium's "Policy denied by denylist"): a deny entry was chosen.
DROP_POLICY_DENY = 181

#: Cilium's policy-verdict match types.
MATCH_NONE, MATCH_L3_ONLY, MATCH_L3_L4, MATCH_L4_ONLY, MATCH_ALL, MATCH_L3_PROTO, MATCH_PROTO_ONLY = range(7)


@dataclass(frozen=True)
class Verdict:
    """One direction's verdict: allowed, or the drop reason; the entry chosen, if any."""

    allowed: bool
    reason: int = 0
    key: PolicyKey | None = None

    @property
    def match_type(self) -> int:
        """Cilium's match type of the chosen entry (``MATCH_*``)."""
        k = self.key
        if k is None:
            return MATCH_NONE
        if k.identity:
            return MATCH_L3_ONLY if k.protocol == 0 else MATCH_L3_PROTO if k.port_prefix == 0 else MATCH_L3_L4
        return MATCH_ALL if k.protocol == 0 else MATCH_PROTO_ONLY if k.port_prefix == 0 else MATCH_L4_ONLY


ALLOWED = Verdict(True)


def longest_match(state: MapState, identity: int, egress: bool, protocol: int, port: int) -> PolicyKey | None:
    """The LPM trie's answer for a full-prefix key: the entry of ``identity`` and direction with
    the longest protocol/port prefix that covers ``protocol``/``port``."""
    for bits in range(16, -1, -1):
        key = PolicyKey(identity, egress, protocol, port & ~((1 << (16 - bits)) - 1) & 0xFFFF, bits)
        if key in state:
            return key
    key = PolicyKey(identity, egress, 0, 0, 0)
    return key if key in state else None


def lookup(state: MapState, peer: int, egress: bool, protocol: int, port: int) -> Verdict:
    """One direction of one endpoint: the verdict for a packet to or from ``peer`` (its
    identity) on ``protocol``/``port`` (the destination port)."""
    a = longest_match(state, peer, egress, protocol, port) if peer else None
    if a is not None and state[a].deny:
        return Verdict(False, DROP_POLICY_DENY, a)
    b = longest_match(state, 0, egress, protocol, port)
    chosen = a
    if b is not None and (state[b].deny or a is None or prefix_length(b) > prefix_length(a)):
        chosen = b
    if chosen is None:
        return Verdict(False, DROP_POLICY)
    if state[chosen].deny:
        return Verdict(False, DROP_POLICY_DENY, chosen)
    return Verdict(True, 0, chosen)


def flow_verdict(src_state: MapState | None, src_identity: int, dst_state: MapState | None,
                 dst_identity: int, protocol: int, port: int) -> tuple[Verdict, Verdict]:
    """A new connection from ``src`` to ``dst``: the sender's egress verdict and the receiver's
    ingress verdict (``None`` for a side with no endpoint, e.g. an outside address: that side
    allows). The connection is allowed when both are."""
    egress = ALLOWED if src_state is None else lookup(src_state, dst_identity, True, protocol, port)
    ingress = ALLOWED if dst_state is None else lookup(dst_state, src_identity, False, protocol, port)
    return egress, ingress


def flow_allowed(src_state: MapState | None, src_identity: int, dst_state: MapState | None,
                 dst_identity: int, protocol: int, port: int) -> bool:
    """Whether the datapath lets a new connection from ``src`` to ``dst`` through (both sides)."""
    eg, ing = flow_verdict(src_state, src_identity, dst_state, dst_identity, protocol, port)
    return eg.allowed and ing.allowed
