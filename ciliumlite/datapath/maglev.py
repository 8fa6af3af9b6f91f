"""Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table Python fills for BPF."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_TABLE_SIZE = 1021  # prime; Cilium's default 16381 holds ~160 backends, this ~10


def _h(name: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=salt).digest(), "little")


def is_prime(n: int) -> bool:
    """Trial division; table sizes are small."""
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def table(backends: Sequence[str], size: int = DEFAULT_TABLE_SIZE) -> list[int]:
    """For each of ``size`` slots, the index (into ``backends``) of the backend that owns it.

    Each backend fills slots in its own permutation order, round-robin, so every backend owns
    size/len(backends) slots (±1). Removing one backend frees its slots and moves only a few others
    (Maglev's minimal disruption). The result depends on the set of backends, not their order.
    ``size`` must be a prime >= 3 (so every permutation visits every slot).
    """
    from ciliumlite.bpf.errors import ValidationError

    if not isinstance(size, int) or size < 3 or not is_prime(size):
        raise ValidationError(f"Maglev table size {size!r} must be a prime >= 3 (e.g. 1021, 16381)")
    order = sorted(range(len(backends)), key=lambda i: backends[i])
    names = [backends[i] for i in order]
    n = len(names)
    if n == 0:
        return []
    offsets = [_h(b, b"offset") % size for b in names]
    skips = [_h(b, b"skip") % (size - 1) + 1 for b in names]
    nexts = [0] * n
    entry = [-1] * size
    filled = 0
    while True:
        for i in range(n):
            c = (offsets[i] + nexts[i] * skips[i]) % size
            while entry[c] >= 0:
                nexts[i] += 1
                c = (offsets[i] + nexts[i] * skips[i]) % size
            entry[c] = i
            nexts[i] += 1
            filled += 1
            if filled == size:
                return [order[e] for e in entry]
