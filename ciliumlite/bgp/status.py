"""Parsing ``birdc`` output: the protocol table (``parse_protocols``) and the prefixes of
``show route`` (``parse_routes``).

Text in, values out: nothing here runs birdc, so the CLI and tests parse captured output with it.
``_explain`` adds to an error bird printed the config line it points at.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["BgpSession", "parse_protocols", "parse_routes"]


@dataclass(frozen=True)
class BgpSession:
    """One row of ``birdc show protocols`` (every protocol, not only BGP)."""

    name: str
    proto: str
    table: str
    state: str
    since: str
    info: str = ""

    @property
    def is_bgp(self) -> bool:
        """A BGP session (not device, kernel, static...)."""
        return self.proto == "BGP"

    @property
    def established(self) -> bool:
        """The BGP session is up."""
        return self.is_bgp and self.info.startswith("Established")


# Name Proto Table State Since [Info]. Since is a date and time with the rendered configs'
# ``timeformat protocol iso long ms``; a single token (bird's default format) is accepted too, so
# that a config bird was started with elsewhere still parses. Info may hold spaces.
_PROTO_ROW = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d{4}-\d{2}-\d{2} \d{1,2}:\d{2}:\d{2}(?:\.\d+)?|\S+)"
                        r"(?:\s+(.*?))?\s*$")
# A route line starts with its prefix; the lines of further routes and next hops start with blanks.
_ROUTE_ROW = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}/\d{1,2})\s")


def parse_protocols(text: str) -> list[BgpSession]:
    """The rows of ``birdc show protocols`` output (the banner and header are skipped).

    Raises nothing: lines that are not a table row are skipped."""
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Name ")) or line[0].isspace():
            continue
        m = _PROTO_ROW.match(line)
        if m:
            rows.append(BgpSession(m[1], m[2], m[3], m[4], m[5], m[6] or ""))
    return rows


def parse_routes(text: str) -> list[str]:
    """The distinct IPv4 prefixes of ``birdc show route`` output, sorted.

    Only lines that start with a prefix count: continuation lines (a further route to the same
    prefix, a next hop) do not. Raises ``ValueError`` only for a prefix bird never prints (an
    octet above 255, host bits set)."""
    found = {m[1] for m in map(_ROUTE_ROW.match, text.splitlines()) if m}
    return sorted(found, key=ipaddress.IPv4Network)


def _explain(output: str, config_text: str) -> str:
    """bird's message, plus the config line it points at (``file:LINE:COL message``)."""
    out = output.strip()
    m = re.search(r"\.conf:(\d+):(\d+)", out)
    if m:
        lines = config_text.splitlines()
        n = int(m[1])
        if 1 <= n <= len(lines):
            out += f"\n(config line {n}: {lines[n - 1].strip()})"
    return out
