"""Port ranges as LPM prefixes (ciliumlite.policy.ports): exact cover, checked over all 65536 ports."""

from __future__ import annotations

import itertools

import pytest

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.policy.ports import PROTOCOLS, prefix_range, protocol_number, range_prefixes

pytestmark = pytest.mark.unit

RANGES = [(0, 65535), (80, 80), (1, 65535), (1000, 2000), (1024, 65535), (0, 0), (65535, 65535),
          (8080, 8089), (32768, 60999), (443, 444), (1, 1023), (30000, 32767)]


def covered(prefixes: list[tuple[int, int]]) -> list[int]:
    """Every port the prefixes cover, in order, with repeats (an overlap would show twice)."""
    out: list[int] = []
    for port, bits in prefixes:
        first, last = prefix_range(port, bits)
        assert port & ((1 << (16 - bits)) - 1) == 0, f"{port}/{bits} has bits beyond its prefix"
        out += range(first, last + 1)
    return sorted(out)


@pytest.mark.parametrize(("first", "last"), RANGES)
def test_range_is_covered_exactly(first: int, last: int) -> None:
    # Exhaustive: every one of the 65536 ports is inside the range iff some prefix covers it.
    ports = covered(range_prefixes(first, last))
    assert ports == list(range(first, last + 1))
    inside = set(ports)
    assert all((first <= p <= last) == (p in inside) for p in range(65536))


@pytest.mark.parametrize(("first", "last"), RANGES)
def test_prefixes_are_fewest(first: int, last: int) -> None:
    # No two neighbouring prefixes could merge into one aligned block.
    prefixes = range_prefixes(first, last)
    for (p1, b1), (p2, b2) in itertools.pairwise(prefixes):
        if b1 == b2 and b1 > 0:
            size = 1 << (16 - b1)
            assert not (p1 % (2 * size) == 0 and p2 == p1 + size), f"{p1}/{b1} and {p2}/{b2} merge"


def test_known_splits() -> None:
    assert range_prefixes(80, 80) == [(80, 16)]
    assert range_prefixes(0, 65535) == [(0, 0)]
    assert range_prefixes(1024, 65535) == [(1024, 6), (2048, 5), (4096, 4), (8192, 3), (16384, 2), (32768, 1)]
    assert len(range_prefixes(1000, 2000)) == 8
    # The worst case of a 16-bit range is 30 prefixes.
    assert len(range_prefixes(1, 65534)) == 30


@pytest.mark.parametrize(("first", "last"), [(2, 1), (-1, 5), (0, 65536)])
def test_bad_ranges(first: int, last: int) -> None:
    with pytest.raises(ValidationError, match="port range"):
        range_prefixes(first, last)


def test_protocols() -> None:
    assert PROTOCOLS == {"TCP": 6, "UDP": 17, "SCTP": 132}
    assert protocol_number("UDP", "f") == 17
    with pytest.raises(ValidationError, match=r"spec.ports\[0\].protocol: unknown protocol 'ICMP'"):
        protocol_number("ICMP", "spec.ports[0].protocol")
