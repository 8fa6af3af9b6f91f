"""Protocols and port ranges as the policy map's LPM keys see them.

A port range becomes the fewest ``(port, prefix)`` pairs that cover exactly its ports (the
policy map's key has 0..16 significant port bits), as Cilium's ``PortRangeToMaskedPorts`` does:
80 is ``(80, 16)``, 0-65535 is ``(0, 0)``, 1000-2000 is eight prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping

from ciliumlite.bpf.errors import ValidationError

#: The protocols a policy port may name, with their IP protocol numbers.
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
#: Protocol numbers back to names.
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}


def protocol_number(name: str, field: str) -> int:
    """``TCP``/``UDP``/``SCTP`` -> 6/17/132. Raises :class:`ValidationError` naming ``field``."""
    number = PROTOCOLS.get(name) if isinstance(name, str) else None
    if number is None:
        raise ValidationError(f"{field}: unknown protocol {name!r} (use one of {', '.join(PROTOCOLS)})")
    return number


def parse_named_ports(ports: Mapping[str, str], what: str) -> dict[tuple[str, int], int]:
    """``{"serve-80-tcp": "80/TCP"}`` (a container's named ports; the protocol defaults to TCP)
    as the engine's ``{(name, protocol number): port}``. Raises :class:`ValidationError` naming
    ``what`` and the port."""
    out: dict[tuple[str, int], int] = {}
    for name, spec in ports.items():
        number, _, proto = str(spec).partition("/")
        field = f"{what}: named port {name!r}"
        if not name or not number.isdigit() or not 1 <= int(number) <= 65535:
            raise ValidationError(f"{field}: {spec!r} is not <port 1..65535>[/TCP|UDP|SCTP]")
        out[(name, protocol_number(proto or "TCP", field))] = int(number)
    return out


def range_prefixes(first: int, last: int) -> list[tuple[int, int]]:
    """The ports ``first..last`` (inclusive) as the fewest ``(port, prefix_bits)`` pairs whose
    union is exactly that range. Raises :class:`ValidationError` for a range that is not in
    0..65535 or is reversed."""
    if not 0 <= first <= last <= 65535:
        raise ValidationError(f"port range {first}-{last} is not an ascending range within 0..65535")
    out = []
    port = first
    while port <= last:
        # The largest aligned block that starts at port and does not run past last.
        size = port & -port if port else 1 << 16
        while port + size - 1 > last:
            size >>= 1
        out.append((port, 16 - (size.bit_length() - 1)))
        port += size
    return out


def prefix_range(port: int, prefix: int) -> tuple[int, int]:
    """The ports one ``(port, prefix_bits)`` pair covers, as ``(first, last)``."""
    return port, port + (1 << (16 - prefix)) - 1
