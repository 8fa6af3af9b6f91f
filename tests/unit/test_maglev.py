"""Maglev lookup tables (``ciliumlite.datapath.maglev.table``): exact properties of the table Python
fills for BPF -- every slot owned, near-equal shares, what a backend removal moves. No root."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath import maglev

pytestmark = pytest.mark.unit

PRIMES = [7, 251, 1021, 4099]


def names(n: int, port: int = 8080) -> list[str]:
    return [f"10.244.{i // 200}.{i % 200 + 1}:{port}" for i in range(n)]


def owners(backends: list[str], size: int = maglev.DEFAULT_TABLE_SIZE) -> list[str]:
    """The table as backend names (independent of list positions)."""
    return [backends[i] for i in maglev.table(backends, size)]


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (table() is a pure-Python loop; SIGALRM interrupts it)."""
    def expired(*_: object) -> None:
        raise TimeoutError(f"maglev.table did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_default_size_is_prime() -> None:
    size = maglev.DEFAULT_TABLE_SIZE
    assert size > 2 and all(size % d for d in range(2, int(size ** 0.5) + 1))


def test_no_backends_is_an_empty_table() -> None:
    assert maglev.table([], 1021) == []


def test_one_backend_owns_everything() -> None:
    assert maglev.table(["10.244.0.5:80"], 251) == [0] * 251


@pytest.mark.parametrize("size", PRIMES)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 64])
def test_every_slot_is_owned_and_shares_are_within_one(size: int, n: int) -> None:
    backends = names(n)
    table = maglev.table(backends, size)
    assert len(table) == size
    assert all(0 <= i < n for i in table), "every slot names a backend"
    shares = Counter(table)
    if n <= size:
        assert set(shares) == set(range(n)), "every backend owns slots"
    lo, hi = size // n, -(-size // n)
    assert all(lo <= c <= hi for c in shares.values()), (lo, hi, sorted(shares.values()))
    assert sum(shares.values()) == size


@given(st.integers(min_value=1, max_value=40), st.sampled_from([251, 1021]))
@settings(max_examples=40, deadline=None)
def test_shares_within_one_for_any_backend_count(n: int, size: int) -> None:
    shares = Counter(maglev.table(names(n, 9000 + n), size))
    assert max(shares.values()) - min(shares.values()) <= 1
    assert len(shares) == n


@pytest.mark.parametrize("size", [251, 1021])
def test_table_is_deterministic(size: int) -> None:
    # Every node computes the table on its own: the same backends must give the same table.
    assert maglev.table(names(9), size) == maglev.table(names(9), size)


def test_table_depends_on_the_backend_set_not_its_order() -> None:
    # An EndpointSlice is a set: listing the same backends in another order must not move flows
    # (Cilium sorts the backend names before filling).
    backends = names(5)
    assert owners(backends) == owners(list(reversed(backends)))


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_removed_backend_loses_every_slot(n: int) -> None:
    backends = names(n)
    gone = backends[1]
    after = owners([b for b in backends if b != gone])
    assert gone not in after
    assert len(after) == maglev.DEFAULT_TABLE_SIZE


@pytest.mark.parametrize("n", [2, 3, 10])
def test_removal_disruption_is_bounded(n: int) -> None:
    """Maglev's guarantee in practice: fewer surviving slots move than the removed backend freed."""
    backends = names(n)
    before = owners(backends)
    gone = backends[0]
    after = owners(backends[1:])
    freed = before.count(gone)
    moved = sum(1 for b, a in zip(before, after, strict=True) if b != gone and a != b)
    assert moved < freed, f"{moved} surviving slots moved, {freed} freed"


def test_adding_a_backend_only_takes_slots() -> None:
    backends = names(4)
    before = owners(backends)
    new = "10.244.9.9:8080"
    after = owners([*backends, new])
    taken = sum(1 for b, a in zip(before, after, strict=True) if a == new)
    lo = maglev.DEFAULT_TABLE_SIZE // 5
    assert lo <= taken <= lo + 1


@pytest.mark.parametrize("size", [1000, 1024, 0, 1, -7])
def test_non_prime_or_tiny_size_is_refused(size: int) -> None:
    # A composite size lets a backend's permutation cycle without a free slot: table() must refuse it
    # up front (Cilium accepts only primes for --bpf-lb-maglev-table-size), not loop or divide by 0.
    with deadline(2), pytest.raises(ValidationError):
        maglev.table(names(3), size)
