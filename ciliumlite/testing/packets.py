"""Frame builders and parsers for datapath tests.

Used two ways:

* imported by tests (``from ciliumlite.testing.packets import ...``), to build golden frames for
  :meth:`ciliumlite.testing.datapath.DatapathObjects.run` (or ``Program.run``) and to check what
  comes back;
* imported *inside a pod* by :func:`pod_python`, which runs a short Python snippet in the pod's
  network namespace with this module imported as ``packets``: raw AF_PACKET / IPPROTO_RAW senders
  and ARP sniffers live here so each test does not carry its own script.

Builders raise :class:`ValueError` for a malformed MAC or IPv4 address; every socket operation here
is bounded by a timeout.
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ciliumlite.bpf.record import mac_from_bytes, mac_to_bytes

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_ALL = 0x0003
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
BROADCAST = "ff:ff:ff:ff:ff:ff"
PACKET_OUTGOING = 4  # sll_pkttype of frames this host sent (packet(7))


# -- addresses ---------------------------------------------------------------------------------------
#: 'aa:bb:cc:dd:ee:ff' -> 6 bytes; :class:`ValidationError` (a ValueError) for anything else.
mac = mac_to_bytes
#: 6 bytes -> 'aa:bb:cc:dd:ee:ff'.
mac_str = mac_from_bytes


def ip(text: str) -> bytes:
    """'10.0.0.1' -> 4 bytes (network order). Raises :class:`ValueError` for a bad address."""
    return ipaddress.IPv4Address(text).packed


def ip_str(raw: bytes) -> str:
    """4 bytes -> '10.0.0.1'."""
    return str(ipaddress.IPv4Address(bytes(raw[:4])))


# -- checksums ---------------------------------------------------------------------------------------
def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``: 0 when ``data`` includes a correct checksum field."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# -- builders ----------------------------------------------------------------------------------------
def eth(dst: str, src: str, ethertype: int) -> bytes:
    """A 14-byte Ethernet header."""
    return mac(dst) + mac(src) + struct.pack("!H", ethertype)


def ipv4(src: str, dst: str, payload: bytes = b"", *, proto: int = IPPROTO_ICMP, ttl: int = 64,
         options: bytes = b"", ihl: int | None = None, tot_len: int | None = None, version: int = 4,
         ident: int = 0x1234, frag: int = 0x4000, tos: int = 0, csum: int | None = None) -> bytes:
    """An IPv4 header (+ ``options``, padded to 4 bytes) followed by ``payload``; checksum computed
    unless ``csum`` is given. ``ihl``/``tot_len``/``version`` override the honest values (malformed
    headers)."""
    options += b"\0" * (-len(options) % 4)
    hlen = 20 + len(options)
    real_ihl = hlen // 4 if ihl is None else ihl
    total = hlen + len(payload) if tot_len is None else tot_len
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | (real_ihl & 0xF), tos, total, ident, frag, ttl, proto,
                      0, ip(src), ip(dst)) + options
    if csum is None:
        csum = checksum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + payload


def icmp_echo(ident: int = 0x4242, seq: int = 1, payload: bytes = b"ciliumlite-golden", *,
              reply: bool = False) -> bytes:
    """An ICMP echo request (or reply) with a correct checksum."""
    body = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header + payload with the checksum over the IPv4 pseudo header."""
    length = 8 + len(payload)
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    pseudo = ip(src) + ip(dst) + struct.pack("!BBH", 0, IPPROTO_UDP, length)
    csum = checksum(pseudo + hdr + payload) or 0xFFFF
    return hdr[:6] + struct.pack("!H", csum) + payload


def tcp(src: str, dst: str, sport: int, dport: int, flags: int, payload: bytes = b"", *, seq: int = 1000,
        ack: int = 0, options: bytes = b"") -> bytes:
    """A TCP segment (``options`` padded to 4 bytes) with the checksum over the IPv4 pseudo header."""
    options += b"\0" * (-len(options) % 4)
    off = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 64240, 0, 0) + options
    seg = hdr + payload
    pseudo = ip(src) + ip(dst) + struct.pack("!BBH", 0, IPPROTO_TCP, len(seg))
    csum = checksum(pseudo + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def arp(op: int, sha: str, sip: str, tha: str, tip: str, *, hrd: int = 1, pro: int = ETH_P_IP,
        hln: int = 6, pln: int = 4) -> bytes:
    """A 28-byte Ethernet/IPv4 ARP body (RFC 826)."""
    return struct.pack("!HHBBH6s4s6s4s", hrd, pro, hln, pln, op, mac(sha), ip(sip), mac(tha), ip(tip))


def arp_frame(op: int, src_mac: str, sip: str, tip: str, *, dst_mac: str = BROADCAST,
              sha: str | None = None, tha: str = "00:00:00:00:00:00", pad: int = 0) -> bytes:
    """Ethernet + ARP (+ ``pad`` zero bytes of Ethernet padding)."""
    return eth(dst_mac, src_mac, ETH_P_ARP) + arp(op, sha or src_mac, sip, tha, tip) + b"\0" * pad


def routed(frame: bytes, dmac: str | None = None, smac: str | None = None) -> bytes:
    """What forwarding makes of an Ethernet + IPv4 ``frame``: TTL-1 with the header checksum
    recomputed and, when given, new MACs; the rest unchanged."""
    e = parse_eth(frame)
    ihl = (frame[ETH_HLEN] & 0xF) * 4
    hdr = bytearray(frame[ETH_HLEN:ETH_HLEN + ihl])
    hdr[8] -= 1
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    return eth(dmac or e.dst, smac or e.src, e.ethertype) + bytes(hdr) + frame[ETH_HLEN + ihl:]


# -- parsers -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Eth:
    """An Ethernet header, MACs as 'aa:bb:..' text."""

    dst: str
    src: str
    ethertype: int


@dataclass(frozen=True)
class Ipv4:
    """The fields of an IPv4 header the tests check, and the raw header (with options)."""

    version: int
    ihl: int
    tot_len: int
    ttl: int
    proto: int
    csum: int
    src: str
    dst: str
    header: bytes

    @property
    def csum_ok(self) -> bool:
        """The header checksum verifies (the one's-complement sum over the header is 0)."""
        return checksum(self.header) == 0


@dataclass(frozen=True)
class Arp:
    """An Ethernet/IPv4 ARP body."""

    op: int
    sha: str
    sip: str
    tha: str
    tip: str


def parse_eth(frame: bytes) -> Eth:
    """The Ethernet header of ``frame``. Raises :class:`struct.error` if it is shorter than 14 bytes."""
    d, s, t = struct.unpack_from("!6s6sH", frame)
    return Eth(mac_str(d), mac_str(s), t)


def parse_ipv4(frame: bytes, off: int = ETH_HLEN) -> Ipv4:
    """The IPv4 header at ``off`` (no checks: malformed headers are parsed as they are).

    Raises :class:`struct.error` if fewer than 20 bytes follow ``off``.
    """
    vi, _tos, tot, _id, _frag, ttl, proto, csum, s, d = struct.unpack_from("!BBHHHBBH4s4s", frame, off)
    ihl = vi & 0xF
    return Ipv4(vi >> 4, ihl, tot, ttl, proto, csum, ip_str(s), ip_str(d), bytes(frame[off:off + ihl * 4]))


def parse_arp(frame: bytes, off: int = ETH_HLEN) -> Arp:
    """The ARP body at ``off``. Raises :class:`struct.error` if fewer than 28 bytes follow ``off``."""
    _h, _p, _hl, _pl, op, sha, sip, tha, tip = struct.unpack_from("!HHBBH6s4s6s4s", frame, off)
    return Arp(op, mac_str(sha), ip_str(sip), mac_str(tha), ip_str(tip))


# -- inside a pod ------------------------------------------------------------------------------------
def if_mac(ifname: str) -> str:
    """MAC of a device in the current namespace (via SIOCGIFHWADDR)."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", ifname.encode()[:15]))
    return mac_str(info[18:24])


def send_frames(ifname: str, frames: Sequence[bytes]) -> int:
    """Send raw Ethernet frames on ``ifname`` (AF_PACKET); returns how many were sent."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        for f in frames:
            s.send(f)
    return len(frames)


def send_udp(dst: str, port: int, payloads: Sequence[bytes]) -> int:
    """Send each of ``payloads`` as one UDP datagram to ``dst``:``port`` (a plain socket, the
    kernel's own headers); returns how many were sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for payload in payloads:
            s.sendto(payload, (dst, port))
    return len(payloads)


def send_raw_ipv4(packets: Sequence[bytes], dst: str) -> int:
    """Send complete IPv4 packets (our own header, any source address) with IPPROTO_RAW/IP_HDRINCL."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        for p in packets:
            s.sendto(p, (dst, 0))
    return len(packets)


def arping(ifname: str, target: str, timeout: float = 2.0, sip: str | None = None) -> dict[str, Any]:
    """Broadcast one ARP request for ``target`` from ``ifname`` and wait for the reply.

    Returns {"mac": <target's MAC or None>, "eth_src": ..., "eth_dst": ..., "reply": {...}}.
    """
    own_mac = if_mac(ifname)
    if sip is None:
        import fcntl

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            info = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname.encode()[:15]))
        sip = socket.inet_ntoa(info[20:24])
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        s.send(arp_frame(ARPOP_REQUEST, own_mac, sip, target))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            frame, addr = s.recvfrom(2048)
            if addr[2] == PACKET_OUTGOING or len(frame) < 42:
                continue
            a = parse_arp(frame)
            if a.op == ARPOP_REPLY and a.sip == target and a.tip == sip:
                e = parse_eth(frame)
                return {"mac": a.sha, "eth_src": e.src, "eth_dst": e.dst, "tha": a.tha}
    return {"mac": None}


def sniff(ifname: str, ethertype: int, seconds: float, *, max_frames: int = 64,
          stop_after: int | None = None, until: str | None = None) -> list[dict[str, Any]]:
    """Capture received frames of ``ethertype`` on ``ifname`` for at most ``seconds``.

    Prints ``ready`` (flushed) once the socket is bound, so a caller can start the traffic then.
    Frames this host sent itself are skipped. Stops early after ``stop_after`` frames, or after a
    frame whose hex contains ``until``. Returns [{"hex": frame, "pkttype": n}].
    """
    out: list[dict[str, Any]] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype)) as s:
        s.bind((ifname, ethertype))
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while len(out) < max_frames and (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            frame, addr = s.recvfrom(65535)
            if addr[2] == PACKET_OUTGOING:
                continue
            out.append({"hex": frame.hex(), "pkttype": addr[2]})
            if stop_after is not None and len(out) >= stop_after:
                break
            if until is not None and until in out[-1]["hex"]:
                break
    return out


def udp_listen(port: int, seconds: float, until: str | None = None) -> list[dict[str, Any]]:
    """Receive UDP datagrams on ``port`` for ``seconds``, or until one whose text is ``until``
    (prints ``ready`` first)."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            data, peer = s.recvfrom(2048)
            out.append({"data": data.decode(errors="replace"), "peer": list(peer)})
            if until is not None and out[-1]["data"] == until:
                break
    return out


# -- running snippets in a pod -------------------------------------------------------------------------
def _snippet_argv(expr: str) -> list[str]:
    # The pod runs this interpreter, so ciliumlite is importable there as it is here.
    code = f"import json; from ciliumlite.testing import packets; print(json.dumps({expr}), flush=True)"
    return [sys.executable, "-c", code]


def pod_python(pod: Any, expr: str, timeout: float = 15.0) -> Any:
    """Evaluate ``expr`` (with ``packets`` imported) inside ``pod``; return its JSON-decoded value.

    ``pod`` is a lab pod (``.run``/``.popen`` in its namespace). Raises :class:`AssertionError` if
    the snippet fails, :class:`subprocess.TimeoutExpired` after ``timeout`` seconds.
    """
    res = pod.run(*_snippet_argv(expr), timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"snippet failed in {pod.name}: {expr}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def pod_python_bg(pod: Any, expr: str) -> subprocess.Popen[str]:
    """Start ``expr`` in ``pod`` in the background (the lab stops it); waits for its ``ready`` line.

    Raises :class:`AssertionError` (the process stopped) if no ``ready`` comes within 10 s.
    """
    proc: subprocess.Popen[str] = pod.popen(*_snippet_argv(expr))
    line = ""
    if proc.stdout is not None and select.select([proc.stdout], [], [], 10.0)[0]:
        line = proc.stdout.readline()
    if line.strip() != "ready":
        try:
            err = proc.communicate(timeout=2)[1]
        except subprocess.TimeoutExpired:
            err = "(still running)"
        finally:
            pod.node.lab.processes.stop(proc)
        raise AssertionError(f"background snippet in {pod.name} did not start: {line!r} {err}")
    return proc


def collect_bg(pod: Any, proc: subprocess.Popen[str], timeout: float = 15.0) -> Any:
    """The JSON value a background snippet printed last (waits for it to end).

    Raises :class:`AssertionError` if it failed or printed nothing, :class:`subprocess.TimeoutExpired`.
    """
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        pod.node.lab.processes.stop(proc)
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"background snippet in {pod.name} failed (rc={proc.returncode}): {err}")
    return json.loads(lines[-1])
