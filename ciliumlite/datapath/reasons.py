"""Metric and drop reasons of the datapath, mirroring ``csrc/include/ciliumlite/reasons.h``.

Every packet the datapath forwards or drops is counted in ``cilium_metrics`` under a key
``{reason, dir, line, file}``. This module names those numbers:

* :class:`Reason` -- the ``reason`` byte. Numbering is Cilium's: ``0..129`` are forward/statistics
  reasons (never drops), ``130..255`` are drops (the positive value of Cilium's ``DROP_*`` error
  codes). ``TO_STACK``, ``ARP_REPLY``, ``ENCAPSULATED``, ``FIB_REDIRECT``, the socket-LB reasons
  ``LB_SOCK_*`` / ``LB_REVNAT_STALE`` (counted per socket operation, 0 bytes), ``TO_NETDEV`` and
  ``NAT_EGRESS`` are ciliumlite additions in ``100..127``, a range Cilium does not use for metrics, and
  so are ``EVENT_LOST_RATE_LIMIT`` / ``EVENT_LOST_RING_FULL``: a datapath event (``ciliumlite monitor``)
  that was not sent, counted besides the packet's own reason (so they are not packets), and
  ``XDP_FORWARDED`` (a NodePort packet sent on by ``bpf_xdp``). ``DROP_PREFILTER`` (220) is a
  ciliumlite drop far above Cilium's numbers: Cilium's XDP prefilter drops without counting.
* :class:`Direction` -- the ``dir`` byte (Cilium's ``enum metric_dir``).
* :data:`SOURCE_FILES` -- the ``file`` byte: which C source counted the packet.

Naming rule between C and Python: C ``REASON_X`` is ``Reason.X``; C ``DROP_X`` is ``Reason.DROP_X``;
C ``METRIC_X`` is ``Direction.X``. Values are stored in pinned maps that outlive a controller, so they
are never renumbered; ``tests/unit/test_reasons.py`` checks this module against the header.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "DROP_MIN",
    "EVENT_LOST",
    "SOURCE_FILES",
    "Direction",
    "Reason",
    "describe",
    "is_drop",
    "source_file",
]

DROP_MIN: Final = 130
"""A reason at or above this value is a drop."""


class Reason(enum.IntEnum):
    """The ``reason`` byte of ``struct metrics_key`` (``enum cl_reason`` in ``reasons.h``)."""

    # Forward / statistics reasons (never drops).
    FORWARDED = 0
    TO_STACK = 100
    ARP_REPLY = 101
    ENCAPSULATED = 102
    FIB_REDIRECT = 103
    LB_SOCK_XLATE = 104
    LB_SOCK_REVXLATE = 105
    LB_SOCK_REFUSED = 106
    LB_REVNAT_STALE = 107
    TO_NETDEV = 108
    NAT_EGRESS = 109
    EVENT_LOST_RATE_LIMIT = 110
    EVENT_LOST_RING_FULL = 111
    XDP_FORWARDED = 120

    # Drop reasons: Cilium's -DROP_* values, made positive.
    DROP_INVALID_SMAC = 130
    DROP_INVALID_DMAC = 131
    DROP_INVALID_SIP = 132
    DROP_POLICY = 133
    DROP_INVALID = 134
    DROP_CT_INVALID_HDR = 135
    DROP_FRAG_NEEDED = 136
    DROP_CT_UNKNOWN_PROTO = 137
    DROP_UNKNOWN_L3 = 139
    DROP_MISSED_TAIL_CALL = 140
    DROP_WRITE_ERROR = 141
    DROP_UNKNOWN_L4 = 142
    DROP_NO_TUNNEL_KEY = 147
    DROP_UNROUTABLE = 151
    DROP_CSUM_L3 = 153
    DROP_CSUM_L4 = 154
    DROP_CT_CREATE_FAILED = 155
    DROP_FRAG_NOSUPPORT = 157
    DROP_NO_SERVICE = 158
    DROP_NO_TUNNEL_ENDPOINT = 160
    DROP_HOST_UNREACHABLE = 164
    DROP_UNSUPPORTED_L2 = 166
    DROP_NAT_NO_MAPPING = 167
    DROP_NAT_UNSUPP_PROTO = 168
    DROP_NO_FIB = 169
    DROP_ENCAP_PROHIBITED = 170
    DROP_INVALID_IDENTITY = 171
    DROP_IS_CLUSTER_IP = 174
    DROP_NOT_IN_SRC_RANGE = 177
    DROP_POLICY_DENY = 181
    DROP_INVALID_VNI = 183
    DROP_DSR_ENCAP_UNSUPP_PROTO = 193
    DROP_TTL_EXCEEDED = 196
    # ciliumlite's own drops (Cilium's XDP prefilter drops without counting).
    DROP_PREFILTER = 220

    @property
    def is_drop(self) -> bool:
        """True for drop reasons (``>= 130``), False for forward/statistics reasons."""
        return self.value >= DROP_MIN

    @property
    def text(self) -> str:
        """Human-readable description (Cilium's wording where Cilium has the reason)."""
        return _TEXT[self]


EVENT_LOST: Final = frozenset({Reason.EVENT_LOST_RATE_LIMIT, Reason.EVENT_LOST_RING_FULL})
"""Reasons that count datapath events not sent (not packets: a metrics consumer should not add them
to the forwarded totals)."""


class Direction(enum.IntEnum):
    """The ``dir`` byte of ``struct metrics_key`` (``enum cl_metric_dir`` in ``reasons.h``)."""

    INGRESS = 1
    """Towards an endpoint or the node (from-overlay, from-netdev, delivery into a pod)."""
    EGRESS = 2
    """Leaving an endpoint (everything counted by ``cil_from_container``)."""
    SERVICE = 3
    """Service translation."""


_TEXT: Final[Mapping[Reason, str]] = MappingProxyType({
    Reason.FORWARDED: "Forwarded",
    Reason.TO_STACK: "Passed to the kernel stack",
    Reason.ARP_REPLY: "Proxy-ARP reply sent",
    Reason.ENCAPSULATED: "Encapsulated to a remote node",
    Reason.FIB_REDIRECT: "Routed by FIB lookup",
    Reason.LB_SOCK_XLATE: "Socket LB: translated to a backend",
    Reason.LB_SOCK_REVXLATE: "Socket LB: peer translated back to the service",
    Reason.LB_SOCK_REFUSED: "Socket LB: service without backends, refused",
    Reason.LB_REVNAT_STALE: "Socket LB: stale reverse entry removed",
    Reason.TO_NETDEV: "Passed to the network device",
    Reason.NAT_EGRESS: "Source translated on egress",
    Reason.EVENT_LOST_RATE_LIMIT: "Event lost (rate limit)",
    Reason.EVENT_LOST_RING_FULL: "Event lost (ring buffer full)",
    Reason.XDP_FORWARDED: "Forwarded by XDP (NodePort acceleration)",
    Reason.DROP_INVALID_SMAC: "Invalid source mac",
    Reason.DROP_INVALID_DMAC: "Invalid destination mac",
    Reason.DROP_INVALID_SIP: "Invalid source ip",
    Reason.DROP_POLICY: "Policy denied",
    Reason.DROP_INVALID: "Invalid packet",
    Reason.DROP_CT_INVALID_HDR: "CT: Truncated or invalid header",
    Reason.DROP_FRAG_NEEDED: "Fragmentation needed",
    Reason.DROP_CT_UNKNOWN_PROTO: "CT: Unknown L4 protocol",
    Reason.DROP_UNKNOWN_L3: "Unsupported L3 protocol",
    Reason.DROP_MISSED_TAIL_CALL: "Missed tail call",
    Reason.DROP_WRITE_ERROR: "Error writing to packet",
    Reason.DROP_UNKNOWN_L4: "Unknown L4 protocol",
    Reason.DROP_NO_TUNNEL_KEY: "Error retrieving tunnel key",
    Reason.DROP_UNROUTABLE: "Stale or unroutable IP",
    Reason.DROP_CSUM_L3: "Error while correcting L3 checksum",
    Reason.DROP_CSUM_L4: "Error while correcting L4 checksum",
    Reason.DROP_CT_CREATE_FAILED: "CT: Map insertion failed",
    Reason.DROP_FRAG_NOSUPPORT: "IP fragmentation not supported",
    Reason.DROP_NO_SERVICE: "Service backend not found",
    Reason.DROP_NO_TUNNEL_ENDPOINT: "No tunnel/encapsulation endpoint (datapath BUG!)",
    Reason.DROP_HOST_UNREACHABLE: "Local host is unreachable",
    Reason.DROP_UNSUPPORTED_L2: "Unsupported L2 protocol",
    Reason.DROP_NAT_NO_MAPPING: "No mapping for NAT masquerade",
    Reason.DROP_NAT_UNSUPP_PROTO: "Unsupported protocol for NAT masquerade",
    Reason.DROP_NO_FIB: "FIB lookup failed",
    Reason.DROP_ENCAP_PROHIBITED: "Encapsulation traffic is prohibited",
    Reason.DROP_INVALID_IDENTITY: "Invalid identity",
    Reason.DROP_IS_CLUSTER_IP: "Is a ClusterIP",
    Reason.DROP_NOT_IN_SRC_RANGE: "Denied by LB src range check",
    Reason.DROP_POLICY_DENY: "Policy denied by denylist",
    Reason.DROP_INVALID_VNI: "Incorrect VNI from VTEP",
    Reason.DROP_DSR_ENCAP_UNSUPP_PROTO: "Unsupported packet protocol for DSR encapsulation",
    Reason.DROP_TTL_EXCEEDED: "TTL exceeded",
    Reason.DROP_PREFILTER: "Denied by the XDP prefilter",
})

SOURCE_FILES: Final[Mapping[int, str]] = MappingProxyType({
    1: "bpf_lxc.c",
    2: "bpf_overlay.c",
    3: "bpf_host.c",
    4: "bpf_sock.c",
    5: "bpf_xdp.c",
    101: "eth.h",
    102: "ipv4.h",
    103: "arp.h",
    104: "l3.h",
    105: "csum.h",
    106: "drop.h",
    107: "lb.h",
    108: "ct.h",
    109: "nat.h",
    110: "dsr.h",
    111: "encap.h",
    112: "trace.h",
    113: "fib.h",
    114: "l4.h",
    115: "icmp.h",
    116: "policy.h",
})
"""The ``file`` byte of ``struct metrics_key`` -> C source name (``__cl_file_id`` in ``metrics.h``)."""


def is_drop(reason: int) -> bool:
    """Whether the raw ``reason`` byte (known to this module or not) denotes a drop."""
    return reason >= DROP_MIN


def describe(reason: int) -> str:
    """Human-readable text for a raw ``reason`` byte, e.g. ``describe(132) == "Invalid source ip"``.

    Numbers this module does not know (a newer object, or a Cilium reason ciliumlite never emits)
    give ``"Unknown drop reason N"`` / ``"Unknown reason N"`` rather than an error, so metrics dumps
    never fail on them.
    """
    try:
        return _TEXT[Reason(reason)]
    except ValueError:
        return f"Unknown drop reason {reason}" if is_drop(reason) else f"Unknown reason {reason}"


def source_file(file_id: int) -> str:
    """C source name for the ``file`` byte of a metrics key (``"unknown"`` for 0 or unknown ids)."""
    return SOURCE_FILES.get(file_id, "unknown")
