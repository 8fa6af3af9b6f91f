"""Identity-based network policy: Kubernetes NetworkPolicy and the L3/L4 subset of Cilium's
CiliumNetworkPolicy, turned into a :data:`~ciliumlite.policy.mapstate.MapState` per endpoint
(pure Python, no kernel), which ``ciliumlite.node.policy`` writes into the datapath's maps.

``docs/policy.md`` is the contract between the parts. The modules, each one job, from the bottom:
``labels`` (security labels), ``identity`` (reserved identities, allocators), ``mapstate`` (the
engine's output and its rules), ``ports`` (protocols, port ranges as prefixes), ``selector``
(label, CIDR and entity selectors), ``rules`` (typed policies from manifests), ``engine``
(MapState per endpoint), ``verdict`` (the kernel's lookup order in Python).
"""

from ciliumlite.policy.engine import EndpointPolicy, PolicyEndpoint, PolicyEngine
from ciliumlite.policy.identity import (
    LOCAL_IDENTITY_FLAG,
    MAX_IDENTITY,
    MIN_IDENTITY,
    CidrIdentityAllocator,
    IdentityAllocator,
    IdentityCache,
    IdentityExhaustedError,
    MemoryIdentityAllocator,
    ReservedIdentity,
    reserved_cache,
    reserved_labels,
)
from ciliumlite.policy.labels import Label, Labels, cidr_labels, pod_labels
from ciliumlite.policy.mapstate import (
    MapState,
    PolicyEntry,
    PolicyKey,
    allow_all,
    covers,
    deny_wins,
    diff,
    prefix_length,
)
from ciliumlite.policy.ports import PROTOCOLS, parse_named_ports, protocol_number, range_prefixes
from ciliumlite.policy.rules import Peer, Policy, PolicySpec, PortRule, Rule, parse_policies, parse_policy
from ciliumlite.policy.selector import CidrSelector, LabelSelector, Requirement
from ciliumlite.policy.verdict import (
    DROP_POLICY,
    DROP_POLICY_DENY,
    Verdict,
    flow_allowed,
    flow_verdict,
    lookup,
)

__all__ = [
    "DROP_POLICY", "DROP_POLICY_DENY", "LOCAL_IDENTITY_FLAG", "MAX_IDENTITY", "MIN_IDENTITY", "PROTOCOLS",
    "CidrIdentityAllocator", "CidrSelector", "EndpointPolicy", "IdentityAllocator", "IdentityCache",
    "IdentityExhaustedError", "Label", "LabelSelector", "Labels", "MapState", "MemoryIdentityAllocator", "Peer",
    "Policy", "PolicyEndpoint", "PolicyEngine", "PolicyEntry", "PolicyKey", "PolicySpec", "PortRule",
    "Requirement", "ReservedIdentity", "Rule", "Verdict", "allow_all", "cidr_labels", "covers", "deny_wins",
    "diff", "flow_allowed", "flow_verdict", "lookup", "parse_named_ports", "parse_policies", "parse_policy", "pod_labels",
    "prefix_length", "protocol_number", "range_prefixes", "reserved_cache", "reserved_labels",
]
