"""The policy engine: policies + the identity cache + an endpoint -> that endpoint's MapState.

Pure Python, no kernel. For each local endpoint the agent asks :meth:`PolicyEngine.compute`,
diffs the MapState with the one in the kernel (:func:`~ciliumlite.policy.mapstate.diff`) and
writes the difference; it programs ``cilium_ipcache`` with :attr:`PolicyEngine.cidr_identities`
(every prefix a policy names, with its node-local CIDR identity) besides the pod and node
addresses.

How a MapState is made (the rules of ``docs/policy.md``):

1. the policies whose subject selects the endpoint's labels apply; a direction is enforced
   (default deny) if one of them isolates it, and holds the allow-all key otherwise;
2. each rule adds, for every peer identity it selects (0 for "any peer") and every port prefix
   of its ports, an allow (``ingress``/``egress``) or a deny (``ingressDeny``/``egressDeny``);
   on one key a deny replaces an allow;
3. an enforced ingress gets an allow for ``HOST``: a pod cannot block its own node;
4. :func:`~ciliumlite.policy.mapstate.deny_wins`: no more specific allow shadows a deny.

Peers: a label selector selects the identities (reserved ones included) whose labels match; an
entity selects reserved identities (``world`` also every CIDR identity, ``all`` is identity 0);
a CIDR selects the CIDR identities whose prefix lies in it and outside its excepts
(``0.0.0.0/0`` is also ``WORLD``, what an ipcache miss resolves to); a NetworkPolicy ``ipBlock``
also selects the identities of endpoints whose addresses all lie in it. Named ports resolve
against the endpoint's own ports on ingress and against the peer's ports on egress (per peer
identity, so an egress rule with a named port and every peer expands to each identity serving
that name).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.policy.identity import CidrIdentityAllocator, IdentityCache, ReservedIdentity, reserved_cache
from ciliumlite.policy.labels import Labels, cidr_labels
from ciliumlite.policy.mapstate import MapState, PolicyEntry, PolicyKey, allow_all, deny_wins
from ciliumlite.policy.ports import range_prefixes
from ciliumlite.policy.rules import Peer, Policy, PortRule, Rule
from ciliumlite.policy.selector import ENTITIES

#: A named port: (name, protocol number).
PortName = tuple[str, int]


@dataclass(frozen=True)
class PolicyEndpoint:
    """What the engine needs of an endpoint (a local one to compute a MapState for, or any of
    the cluster's, for ``ipBlock`` against pod addresses and egress named ports): its identity,
    security labels, addresses and named ports (``{(name, protocol): port}``)."""

    identity: int
    labels: Labels
    ips: tuple[IPv4Address, ...] = ()
    named_ports: Mapping[PortName, int] = field(default_factory=dict)
    #: For messages: ``namespace/name``.
    name: str = ""


@dataclass(frozen=True)
class EndpointPolicy:
    """The engine's answer for one endpoint."""

    map_state: MapState
    #: Whether a policy isolates the direction (default deny).
    ingress_enforced: bool
    egress_enforced: bool
    #: ``Kind/namespace/name`` of each policy that selects the endpoint.
    policies: tuple[str, ...]
    #: What the engine could not express exactly (an ipBlock covering only some addresses of an
    #: identity, which it then does not select: never a silent allow).
    warnings: tuple[str, ...] = ()


class PolicyEngine:
    """One consistent view: policies, identities, the cluster's endpoints and the CIDR
    identities the policies need. Build a new one when any of them changes (pass the same
    :class:`CidrIdentityAllocator` so CIDR identities stay stable); selections are cached per
    engine."""

    def __init__(self, policies: Iterable[Policy] = (), identities: IdentityCache | None = None,
                 endpoints: Iterable[PolicyEndpoint] = (), cidr_allocator: CidrIdentityAllocator | None = None,
                 allow_localhost: bool = True) -> None:
        self.policies = list(policies)
        self.endpoints = list(endpoints)
        self.allow_localhost = allow_localhost
        self.cidr_allocator = cidr_allocator or CidrIdentityAllocator()
        prefixes = {p for pol in self.policies for spec in pol.specs for rule in spec.rules
                    for peer in rule.peers or () if peer.cidr is not None for p in peer.cidr.prefixes()}
        allocated = self.cidr_allocator.sync(prefixes)
        endpoint_hosts = {IPv4Network(ip) for ep in self.endpoints for ip in ep.ips}
        #: Prefix -> CIDR identity for ``cilium_ipcache`` (``0.0.0.0/0``, which is ``WORLD`` and
        #: needs no entry, and a /32 that is an endpoint's address, where the endpoint's entry
        #: holds, as Cilium's ipcache prefers it, are left out).
        self.cidr_identities = {p: i for p, i in sorted(allocated.items(), key=lambda kv: str(kv[0]))
                                if p.prefixlen and p not in endpoint_hosts}
        self._cidr_table = {p: i for p, i in allocated.items() if p not in endpoint_hosts}
        cache: dict[int, Labels] = reserved_cache()
        cache.update({i: cidr_labels(str(p)) for p, i in self.cidr_identities.items()})
        cache.update({ep.identity: ep.labels for ep in self.endpoints})
        cache.update(identities or {})
        #: Every identity a selector may select: reserved, CIDR, and the cluster's.
        self.identity_cache: dict[int, Labels] = cache
        self._ips: dict[int, list[IPv4Address]] = {}
        self._ports: dict[int, dict[PortName, set[int]]] = {}
        for ep in self.endpoints:
            self._ips.setdefault(ep.identity, []).extend(ep.ips)
            for pname, number in ep.named_ports.items():
                self._ports.setdefault(ep.identity, {}).setdefault(pname, set()).add(number)
        self._peer_cache: dict[Peer, tuple[frozenset[int] | None, tuple[str, ...]]] = {}
        # (key, value) -> identities with such a label (any source): a selector with an In term
        # looks only at those, not at the whole cache (1,000 rules over 1,000 identities: 1 s -> ms).
        self._by_label: dict[tuple[str, str], set[int]] = {}
        for ident, labels in cache.items():
            for label in labels:
                self._by_label.setdefault((label.key, label.value), set()).add(ident)

    # --- peers --------------------------------------------------------------------------------

    def select(self, peer: Peer) -> tuple[frozenset[int] | None, tuple[str, ...]]:
        """The identities ``peer`` selects (None: every peer, identity 0) and any warning."""
        cached = self._peer_cache.get(peer)
        if cached is None:
            cached = self._select(peer)
            self._peer_cache[peer] = cached
        return cached

    def _select(self, peer: Peer) -> tuple[frozenset[int] | None, tuple[str, ...]]:
        if peer.selector is not None:
            sel = peer.selector
            candidates: Collection[int] = self.identity_cache.keys()
            for req in sel.requirements:
                if req.operator == "In":
                    found = set().union(*(self._by_label.get((req.key, v), set()) for v in req.values))
                    if len(found) < len(candidates):
                        candidates = found
            cache = self.identity_cache
            return frozenset(i for i in candidates if sel.matches(cache[i])), ()
        if peer.entity is not None:
            if peer.entity == "all":
                return None, ()
            pick = ENTITIES[peer.entity]
            return frozenset(i for i, lb in self.identity_cache.items() if pick(i, lb)), ()
        cidr = peer.cidr
        if cidr is None:
            raise ValidationError(f"peer {peer} names no selector, entity or CIDR")
        if cidr.cidr.prefixlen == 0 and not cidr.excepts and peer.match_pods:
            return None, ()  # a NetworkPolicy ipBlock of every address: every peer
        out = {i for p, i in self._cidr_table.items() if cidr.selects_prefix(p)}
        warnings = []
        if peer.match_pods:
            # A NetworkPolicy ipBlock matches pod addresses too (the Kubernetes text, cyclonus).
            for ident, ips in self._ips.items():
                inside = [cidr.contains(ip) for ip in ips]
                if inside and all(inside):
                    out.add(ident)
                elif any(inside):
                    warnings.append(f"ipBlock {cidr} covers only some addresses of identity {ident} "
                                    f"({', '.join(str(ip) for ip, y in zip(ips, inside, strict=True) if y)}): "
                                    "not selected (give those endpoints distinct labels)")
        return frozenset(out), tuple(warnings)

    # --- ports --------------------------------------------------------------------------------

    def _port_keys(self, port: PortRule, egress: bool, peer: int, own: PolicyEndpoint) -> list[PolicyKey]:
        if port.protocol == 0:
            return [PolicyKey(peer, egress)]
        if port.name is not None:
            numbers: set[int] = set()
            if not egress:
                n = own.named_ports.get((port.name, port.protocol))
                numbers = {n} if n is not None else set()
            else:
                numbers = self._ports.get(peer, {}).get((port.name, port.protocol), set())
            return [PolicyKey(peer, egress, port.protocol, n, 16) for n in sorted(numbers)]
        if port.first is None or port.last is None:
            return [PolicyKey(peer, egress, port.protocol)]
        return [PolicyKey(peer, egress, port.protocol, p, bits) for p, bits in range_prefixes(port.first, port.last)]

    def _rule_keys(self, rule: Rule, own: PolicyEndpoint, warnings: list[str]) -> list[PolicyKey]:
        peers: set[int] = set()
        wildcard = rule.peers is None
        for peer in rule.peers or ():
            ids, warn = self.select(peer)
            warnings.extend(warn)
            if ids is None:
                wildcard = True
            else:
                peers |= ids
        if wildcard:
            peers = {int(ReservedIdentity.UNKNOWN)}
        if not rule.ports:
            return [PolicyKey(i, rule.egress) for i in sorted(peers)]
        out = []
        for port in rule.ports:
            if wildcard and rule.egress and port.name is not None:
                # Any peer, a named port: each identity that serves that name, on its number.
                out += [k for ident in sorted(self._ports) for k in self._port_keys(port, True, ident, own)]
                continue
            for ident in sorted(peers):
                out += self._port_keys(port, rule.egress, ident, own)
        return out

    # --- endpoints ----------------------------------------------------------------------------

    def compute(self, endpoint: PolicyEndpoint) -> EndpointPolicy:
        """The MapState of ``endpoint`` (a local endpoint), with what selected it."""
        specs = [(pol, spec) for pol in self.policies for spec in pol.specs if spec.subject.matches(endpoint.labels)]
        ingress = any(spec.isolates_ingress for _, spec in specs)
        egress = any(spec.isolates_egress for _, spec in specs)
        state: MapState = {}
        warnings: list[str] = []

        def put(key: PolicyKey, deny: bool) -> None:
            if deny or key not in state:  # on one key a deny replaces an allow, never the reverse
                state[key] = PolicyEntry(deny=deny)

        if not ingress:
            put(allow_all(False), False)
        elif self.allow_localhost:
            put(PolicyKey(int(ReservedIdentity.HOST), False), False)
        if not egress:
            put(allow_all(True), False)
        for _, spec in specs:
            for rule in spec.rules:
                for key in self._rule_keys(rule, endpoint, warnings):
                    put(key, rule.deny)
        names = tuple(dict.fromkeys(pol.key for pol, _ in specs))
        return EndpointPolicy(deny_wins(state), ingress, egress, names, tuple(dict.fromkeys(warnings)))

    def map_state(self, endpoint: PolicyEndpoint) -> MapState:
        """Only the MapState of ``endpoint``."""
        return self.compute(endpoint).map_state
