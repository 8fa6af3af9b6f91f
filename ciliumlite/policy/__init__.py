"""Identity-based network policy: Kubernetes NetworkPolicy and the L3/L4 subset of Cilium's
CiliumNetworkPolicy, turned into a :data:`~ciliumlite.policy.mapstate.MapState` per endpoint
(pure Python, no kernel), which ``ciliumlite.node.policy`` writes into the datapath's maps.

``docs/policy.md`` is the contract between the parts.
"""

from ciliumlite.policy.identity import ReservedIdentity
from ciliumlite.policy.mapstate import MapState, PolicyEntry, PolicyKey, allow_all

__all__ = ["MapState", "PolicyEntry", "PolicyKey", "ReservedIdentity", "allow_all"]
