"""Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table Python fills for BPF."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_TABLE_SIZE = 1021  # prime; Cilium's default 16381 holds ~160 backends, this ~10


def _h(name: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=salt).digest(), "little")


def table(backends: Sequence[str], size: int = DEFAULT_TABLE_SIZE) -> list[int]:
    """For each of ``size`` slots, the index of the backend that owns it (empty list: no backends).

    Each backend fills slots in its own permutation order, round-robin, so every backend owns
    size/len(backends) slots (±1) and removing one backend moves only that backend's slots.
    """
    n = len(backends)
    if n == 0:
        return []
    offsets = [_h(b, b"offset") % size for b in backends]
    skips = [_h(b, b"skip") % (size - 1) + 1 for b in backends]
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
                return entry
