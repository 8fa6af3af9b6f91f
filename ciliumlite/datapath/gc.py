"""Conntrack and NAT garbage collection (Cilium's agent does this; the BPF side never deletes).

CT entries carry their expiry in CLOCK_MONOTONIC seconds (``ct.h``); expired ones go. NAT entries
carry only their creation time (``nat.h``): one goes when it is older than the longest CT lifetime
*and* no live CT entry shares either of its endpoints (address and port) — so a long-lived DSR or
masqueraded connection keeps its translation. LRU maps also evict on their own under pressure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ciliumlite.bpf import Map

#: The longest CT lifetime in ct.h (established TCP), in seconds.
MAX_CT_LIFETIME = 8000


@dataclass(frozen=True)
class GcResult:
    """What one GC pass removed."""

    ct_deleted: int
    ct_kept: int
    nat_deleted: int
    nat_kept: int


def now() -> int:
    """Seconds of CLOCK_MONOTONIC, the clock the datapath stamps entries with."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC))


def collect(ct_maps: list[Map[Any, Any]], nat_map: Map[Any, Any] | None, *, at: int | None = None,
            nat_max_age: int = MAX_CT_LIFETIME) -> GcResult:
    """Delete expired CT entries and stale NAT entries; ``at`` overrides the current time."""
    t = now() if at is None else at
    ct_deleted = ct_kept = 0
    live: set[tuple[Any, int]] = set()
    for ct in ct_maps:
        entries = list(ct.items())
        stale = [k for k, v in entries if v.lifetime < t]
        ct_deleted += ct.delete_batch(stale) if stale else 0
        for k, v in entries:
            if v.lifetime >= t:
                live.update(((k.daddr, k.sport), (k.saddr, k.dport), (k.daddr, k.dport), (k.saddr, k.sport)))
        ct_kept += len(ct)
    nat_deleted = nat_kept = 0
    if nat_map is not None:
        stale = [k for k, v in nat_map.items() if v.created + nat_max_age < t
                 and (k.saddr, k.sport) not in live and (k.daddr, k.dport) not in live]
        nat_deleted = nat_map.delete_batch(stale) if stale else 0
        nat_kept = len(nat_map)
    return GcResult(ct_deleted, ct_kept, nat_deleted, nat_kept)
