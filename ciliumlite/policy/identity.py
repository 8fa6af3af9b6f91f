"""Security identities: Cilium's reserved numbers and the ranges of allocated ones.

Reserved identities are Cilium's (``pkg/identity/numericidentity.go``), so a user who knows
``cilium identity list`` reads ciliumlite's the same way.
"""

from __future__ import annotations

from enum import IntEnum


class ReservedIdentity(IntEnum):
    """Identities with a fixed meaning on every node."""

    #: In a policy key: any peer (the L4-only wildcard). Never a real peer's identity.
    UNKNOWN = 0
    #: The local node (and every address it owns).
    HOST = 1
    #: Anything outside the cluster: an ipcache miss.
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    #: Another node of the cluster (its node IPs).
    REMOTE_NODE = 6
    KUBE_APISERVER = 7
    INGRESS = 8


#: The first identity allocated for a label set (cluster-wide, through the store).
MIN_IDENTITY = 256
#: The last cluster-wide identity (it must fit the VNI's 24 bits and the wire's 16 of Cilium's).
MAX_IDENTITY = 65535
#: Node-local CIDR identities are ``LOCAL_IDENTITY_FLAG | n``: only ipcache and policy keys hold
#: them, never a packet on the wire.
LOCAL_IDENTITY_FLAG = 1 << 24
