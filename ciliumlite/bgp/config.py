"""The BGP model and the bird2 config renderer: what a node (or the leaf) announces, to whom, and the
bird.conf text for it.

Pure: no processes, no namespaces, no files, because the datapath config imports ``BgpPeer``
from here. The checks run when an object is built and raise ``ValidationError``; bird can still
refuse a config that passes them (a peer named after a bird keyword), which
``ciliumlite.bgp.Bird`` reports as ``BgpError``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ciliumlite.bpf.errors import ValidationError

__all__ = ["ASN_MAX", "INTERNAL_PROTOCOLS", "BgpConfig", "BgpPeer", "leaf_config", "render_bird_config"]

#: The largest 4-byte AS number.
ASN_MAX = 4294967295

#: Names of the protocols every rendered config defines; a peer cannot use them.
INTERNAL_PROTOCOLS = frozenset({"device1", "direct1", "kernel1", "static1"})

# What bird accepts as a symbol (a protocol name), within bird's 64-character limit on symbols.
# Bird.routes checks a protocol name with it too.
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _ipv4(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what}: expected an IPv4 address as a string, not {value!r}")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValidationError(f"{what}: {value!r} is not an IPv4 address") from None


def _unicast(value: object, what: str) -> str:
    addr = _ipv4(value, what)
    ip = ipaddress.IPv4Address(addr)
    if ip.is_unspecified or ip.is_multicast or addr == "255.255.255.255":
        raise ValidationError(f"{what}: {addr} is not a unicast address")
    return addr


def _asn(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ASN_MAX:
        raise ValidationError(f"{what}: AS number must be an integer in 1..{ASN_MAX}, not {value!r}")
    return value


def _cidr(value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"announce: expected an IPv4 CIDR string, not {value!r}")
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError as exc:
        raise ValidationError(f"announce: {value!r} is not an IPv4 network ({exc})") from None


def _seconds(value: object, what: str, low: int, high: int = 65535) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValidationError(f"{what} must be an integer number of seconds in {low}..{high}, not {value!r}")
    return value


@dataclass(frozen=True)
class BgpPeer:
    """One BGP neighbour: ``name`` becomes the bird protocol name (a bird symbol, e.g. ``leaf``).

    Raises ``ValidationError`` if ``name`` is not a bird symbol or is one of
    ``INTERNAL_PROTOCOLS``, ``address`` is not a unicast IPv4 address, or ``asn`` is outside
    1..``ASN_MAX``.
    """

    name: str
    address: str
    asn: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SYMBOL.fullmatch(self.name):
            raise ValidationError(f"BGP peer name {self.name!r}: use a letter or '_' then letters, digits, '_' "
                                  "(at most 64; it becomes a bird protocol name)")
        if self.name in INTERNAL_PROTOCOLS:
            raise ValidationError(f"BGP peer name {self.name!r} is taken by the rendered config "
                                  f"({', '.join(sorted(INTERNAL_PROTOCOLS))})")
        object.__setattr__(self, "address", _unicast(self.address, f"BGP peer {self.name} address"))
        _asn(self.asn, f"BGP peer {self.name}")


@dataclass(frozen=True)
class BgpConfig:
    """What one BGP speaker (a node or the leaf) does.

    ``announce`` are the CIDRs this router originates (a node's pod CIDR). ``import_routes`` installs
    the routes learned over BGP in the kernel. Timers are in seconds; the defaults converge in about
    a second and notice a silent peer within ``hold_time`` (bird's own defaults: 240/80/5/120).
    ``route_reflect_like`` makes the router re-advertise everything it learned to every peer (the
    leaf); otherwise only ``announce`` is exported. ``local_address`` pins the session's source
    address (``local <ip> as <asn>``); by default bird picks it from the route to the peer.

    Raises ``ValidationError`` for a router id that is not IPv4 or is 0.0.0.0, an AS number outside
    1..``ASN_MAX``, ``peers`` that are not ``BgpPeer`` or repeat a name or address, an ``announce``
    entry that is not an IPv4 network (host bits set included), a timer out of range or a
    ``keepalive`` above ``hold_time``, or a ``local_address`` that is not unicast IPv4.
    """

    router_id: str
    asn: int
    peers: tuple[BgpPeer, ...]
    announce: tuple[str, ...] = ()
    import_routes: bool = True
    hold_time: int = 9
    keepalive: int = 3
    connect_delay: int = 1
    connect_retry: int = 2
    route_reflect_like: bool = False
    local_address: str | None = None

    def __post_init__(self) -> None:
        router_id = _ipv4(self.router_id, "router_id")
        if router_id == "0.0.0.0":
            raise ValidationError("router_id must not be 0.0.0.0")
        object.__setattr__(self, "router_id", router_id)
        _asn(self.asn, "asn")
        raw_peers: object = self.peers
        if isinstance(raw_peers, (str, bytes)) or not isinstance(raw_peers, Iterable):
            raise ValidationError(f"peers: expected a sequence of BgpPeer, not {raw_peers!r}")
        peers = tuple(raw_peers)
        for p in peers:
            if not isinstance(p, BgpPeer):
                raise ValidationError(f"peers: expected BgpPeer, not {p!r}")
        for attr in ("name", "address"):
            values = [getattr(p, attr) for p in peers]
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValidationError(f"peers: duplicate {attr} {', '.join(dup)}")
        object.__setattr__(self, "peers", peers)
        raw_announce: object = self.announce
        if isinstance(raw_announce, (str, bytes)) or not isinstance(raw_announce, Iterable):
            raise ValidationError(f"announce: expected a sequence of CIDRs, not {raw_announce!r}")
        object.__setattr__(self, "announce", tuple(dict.fromkeys(_cidr(c) for c in raw_announce)))
        hold = _seconds(self.hold_time, "hold_time", 3)
        keep = _seconds(self.keepalive, "keepalive", 1)
        if keep > hold:
            raise ValidationError(f"keepalive ({keep}) must be at most hold_time ({hold})")
        _seconds(self.connect_delay, "connect_delay", 0)
        _seconds(self.connect_retry, "connect_retry", 1)
        if self.local_address is not None:
            object.__setattr__(self, "local_address", _unicast(self.local_address, "local_address"))


def leaf_config(router_id: str, asn: int, peers: Iterable[BgpPeer], *, hold_time: int = 9,
                keepalive: int = 3, connect_delay: int = 1, connect_retry: int = 2) -> BgpConfig:
    """The leaf router's config: one eBGP session per node, every learned route re-advertised to every
    node (and installed in the leaf's kernel so it can forward), nothing originated.

    Raises ``ValidationError`` as ``BgpConfig`` does."""
    return BgpConfig(router_id=router_id, asn=asn, peers=tuple(peers), announce=(), import_routes=True,
                     hold_time=hold_time, keepalive=keepalive, connect_delay=connect_delay,
                     connect_retry=connect_retry, route_reflect_like=True)


def _quoted(path: str, what: str) -> str:
    # bird's string literals have no escapes; Bird checks its file paths with this too, at construction.
    if any(c in path for c in '"\\\n\r'):
        raise ValidationError(f"{what} {path!r}: bird strings cannot hold quotes, backslashes or newlines")
    return f'"{path}"'


def render_bird_config(cfg: BgpConfig, *, log_path: str | None) -> str:
    """The bird2 config text for ``cfg`` (logging everything to ``log_path``; None: no log file).

    Shape (as in the seed's native-routing notes, with the kernel export restricted to BGP routes):
    ``router id``; ``protocol device``; ``protocol direct`` (disabled); ``protocol kernel`` exporting
    only ``RTS_BGP`` routes; ``protocol static`` with ``route <cidr> blackhole;`` per announced CIDR
    (how bird originates a prefix; never exported to the kernel, where the node has the more
    specific per-pod routes); one ``protocol bgp`` per peer.

    Raises ``ValidationError`` if ``cfg`` is not a ``BgpConfig`` or ``log_path`` holds a quote,
    backslash or newline (bird strings cannot).
    """
    if not isinstance(cfg, BgpConfig):
        raise ValidationError(f"expected a BgpConfig, not {cfg!r}")
    role = "leaf: re-advertises every learned route" if cfg.route_reflect_like else "announces its own CIDRs"
    out = [
        f"# Rendered by ciliumlite.bgp for router {cfg.router_id} (AS {cfg.asn}; {role}). Do not edit:",
        "# Bird.reload() rewrites this file and runs `birdc configure`.",
        f"router id {cfg.router_id};",
    ]
    if log_path is not None:
        out.append(f"log {_quoted(log_path, 'log path')} all;")
    out += [
        "# Dates in `show protocols` / `show route` so that they parse the same on every day.",
        "timeformat protocol iso long ms;",
        "timeformat route iso long ms;",
        "",
        "# Interface state, needed to resolve the next hop of directly connected peers.",
        "protocol device device1 { scan time 5; }",
        "",
        "# Connected routes are not announced (as in the seed).",
        "protocol direct direct1 { disabled; ipv4; }",
        "",
    ]
    kernel_export = "where source = RTS_BGP" if cfg.import_routes else "none"
    out += [
        "# Only routes learned over BGP go to the kernel (proto bird); the static blackholes never do.",
        "# persist off: bird removes its kernel routes when it stops.",
        "protocol kernel kernel1 {",
        "  learn off;",
        "  persist off;",
        "  merge paths on;",
        f"  ipv4 {{ import none; export {kernel_export}; }};",
        "}",
        "",
    ]
    if cfg.announce:
        out += ["# What this router originates: one blackhole per CIDR (more specific kernel routes win).",
                "protocol static static1 {", "  ipv4;"]
        out += [f"  route {cidr} blackhole;" for cidr in cfg.announce]
        out += ["}", ""]
    export = "all" if cfg.route_reflect_like else "where source = RTS_STATIC"
    local = f"local {cfg.local_address} as {cfg.asn};" if cfg.local_address else f"local as {cfg.asn};"
    for peer in cfg.peers:
        out += [
            f"protocol bgp {peer.name} {{",
            f"  {local}",
            f"  neighbor {peer.address} as {peer.asn};",
            f"  hold time {cfg.hold_time}; keepalive time {cfg.keepalive};",
            f"  connect delay time {cfg.connect_delay}; connect retry time {cfg.connect_retry};",
            "  error wait time 1, 5;",
            f"  ipv4 {{ import all; export {export}; }};",
            "}",
            "",
        ]
    return "\n".join(out)
