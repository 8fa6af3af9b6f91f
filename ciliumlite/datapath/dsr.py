"""The DSR IPv4 option (Cilium's wire format, byte-exact with ``csrc/include/ciliumlite/dsr.h``).

Eight bytes right after the fixed IPv4 header::

    0      1      2      3      4      5      6      7
    +------+------+------+------+------+------+------+------+
    | 0x9a | 0x08 |  port (LE)  |      address (LE)         |
    +------+------+------+------+------+------+------+------+

Type 0x9a is copied-flag 1, class 0, number 26. Cilium swaps already network-ordered values once
more on little-endian nodes, so port and address travel byte-reversed relative to network order:
service 10.0.0.1:30080 is ``9a 08 80 75 01 00 00 0a``. ciliumlite keeps that quirk so its packets
interoperate with Cilium's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from construct import Const, Int8ub, Int16ul, Int32ul, Struct

from ciliumlite.bpf.errors import ValidationError

OPT_TYPE = 0x9A
OPT_LEN = 8

#: construct definition of the option.
DSR_OPTION = Struct(
    "type" / Const(OPT_TYPE, Int8ub),
    "length" / Const(OPT_LEN, Int8ub),
    "port" / Int16ul,
    "address" / Int32ul,
)


@dataclass(frozen=True)
class DsrOption:
    """The service address and port a DSR packet carries."""

    address: str
    port: int

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "address", str(ipaddress.IPv4Address(self.address)))
        except ValueError as exc:
            raise ValidationError(f"DSR option: {self.address!r} is not an IPv4 address") from exc
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValidationError(f"DSR option: port {self.port!r} is outside 1..65535")

    def encode(self) -> bytes:
        """The 8 option bytes."""
        return bytes(DSR_OPTION.build({"port": self.port, "address": int(ipaddress.IPv4Address(self.address))}))

    @classmethod
    def decode(cls, raw: bytes) -> DsrOption:
        """Parse 8 option bytes (ValidationError on anything else)."""
        try:
            parsed: Any = DSR_OPTION.parse(raw[:OPT_LEN])
        except Exception as exc:  # construct raises several error types
            raise ValidationError(f"not a DSR option: {raw[:OPT_LEN].hex(' ')}") from exc
        return cls(str(ipaddress.IPv4Address(parsed.address)), int(parsed.port))  # port 0: ValidationError

    @classmethod
    def from_ipv4_header(cls, header: bytes) -> DsrOption | None:
        """The DSR option of an IPv4 header (first option slot only, as Cilium reads it), or None."""
        ihl = (header[0] & 0x0F) * 4
        if ihl < 28 or len(header) < 28 or header[20] != OPT_TYPE or header[21] != OPT_LEN:
            return None
        return cls.decode(header[20:28])


