"""Datapath events: the records of the ``cilium_events`` ring buffer, decoded, and a live reader.

Every tc program of a node sends events into one pinned BPF ring buffer, ``cilium_events``
(``csrc/include/ciliumlite/trace.h``, which this module mirrors):

* a **drop event** (:class:`DropEvent`) from every ``send_drop()``: the drop reason, the source
  line that dropped, the device, the packet's IPv4 addresses/ports and its first 64 bytes. On by
  default (``DatapathConfig.monitor_drops``).
* a **trace event** (:class:`TraceEvent`) at every forward decision (``redirect-peer``, ``to-stack``,
  ``to-overlay``, ``fib``, ``to-netdev``, ``arp-reply``) and at every program's entry
  (``from-container``, ``from-overlay``, ``from-netdev``). Off by default: it is .rodata, so it is
  chosen at load time with ``DatapathConfig(monitor_trace=True)``.

Both are rate limited in BPF (``events_per_sec`` per CPU, burst = the rate); events held back are
counted in ``cilium_metrics`` as ``Reason.EVENT_LOST_RATE_LIMIT`` (or ``EVENT_LOST_RING_FULL`` when
no reader keeps up). Monitoring never changes a verdict.

>>> with Monitor("/sys/fs/bpf/ciliumlite/node1", types={"drop"}) as mon:   # doctest: +SKIP
...     for ev in mon.events(max_seconds=3):
...         print(ev.describe())
xx drop (Invalid source ip) flow 0x0 to endpoint 0, ifindex 5, file bpf_lxc.c:248, 10.244.0.99:40000 -> 10.244.0.3:7777 UDP

A ring buffer has a single consumer position: run one reader per datapath at a time (two readers
each see only part of the events).
"""

from __future__ import annotations

import enum
import errno
import os
import select
import struct
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final, Literal

from ciliumlite.bpf.errors import BpfError, CiliumliteError, ValidationError
from ciliumlite.bpf.map import Map
from ciliumlite.bpf.ringbuf import RingBuffer
from ciliumlite.datapath import maps
from ciliumlite.datapath.reasons import Direction, Reason, describe, source_file

__all__ = [
    "CAP_LEN", "EVENTS_MAP", "EVENT_SIZE", "EVENT_TYPES", "NOTIFY_VERSION", "RATELIMIT_MAP",
    "DropEvent", "Event", "EventDecodeError", "EventType", "EventsUnavailable", "Monitor", "PolicyVerdictEvent",
    "TraceEvent",
    "TracePoint", "decode", "watch",
]

EVENTS_MAP: Final = maps.EVENTS_NAME
"""The pinned ring buffer (``maps.h``)."""
RATELIMIT_MAP: Final = maps.EVENTS_RATELIMIT_NAME
"""The per-CPU token buckets of the event rate limit (``maps.h``)."""
EVENT_SIZE: Final = 120
"""Bytes of one ``struct drop_notify`` / ``struct trace_notify``."""
CAP_LEN: Final = 64
"""How many bytes of the frame an event carries at most."""
NOTIFY_VERSION: Final = 1
"""``hdr.version`` this decoder understands."""
FLAG_IPV4: Final = 0x01
FLAG_L4: Final = 0x02

EventKind = Literal["drop", "trace", "policy-verdict"]
EVENT_TYPES: Final[frozenset[str]] = frozenset({"drop", "trace", "policy-verdict"})

# struct cl_notify_hdr (40 bytes, host order = little-endian on every supported machine):
# type subtype version dir | line | file reason | ktime_ns | ifindex dst_ifindex len_orig |
# len_cap flags pad0 | cpu | pad1
_HDR = struct.Struct("<BBBBHBBQIIIHBxI4x")
# struct cl_notify_flow4 (16 bytes, network order): saddr daddr sport dport proto pad[3]
_FLOW = struct.Struct("!4s4sHHB3x")
_DATA_OFF = _HDR.size + _FLOW.size
assert _HDR.size == 40 and _FLOW.size == 16 and _DATA_OFF + CAP_LEN == EVENT_SIZE

PROTOCOLS: Final[Mapping[int, str]] = {1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}
_ETH_P_IP, _ETH_P_ARP, _ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD


class EventType(enum.IntEnum):
    """``hdr.type`` (``enum cl_notify_type``)."""

    DROP = 1
    TRACE = 2
    POLICY_VERDICT = 5


class TracePoint(enum.IntEnum):
    """Where a trace event was observed (``enum cl_trace_point``; Cilium's ``TRACE_*`` numbers)."""

    TO_LXC = 0
    TO_STACK = 3
    TO_OVERLAY = 4
    FROM_LXC = 5
    FROM_OVERLAY = 9
    FROM_NETWORK = 10
    TO_NETWORK = 11
    FIB = 100
    ARP_REPLY = 101

    @property
    def label(self) -> str:
        """The point's name as ``ciliumlite monitor`` prints it (``"redirect-peer"``, ``"to-stack"``, …)."""
        return _POINT_LABELS[self]

    @property
    def inbound(self) -> bool:
        """A program's entry (``from-*``): the packet as it arrived, before any decision."""
        return self in (TracePoint.FROM_LXC, TracePoint.FROM_OVERLAY, TracePoint.FROM_NETWORK)


_POINT_LABELS: Final[Mapping[TracePoint, str]] = {
    TracePoint.TO_LXC: "redirect-peer",
    TracePoint.TO_STACK: "to-stack",
    TracePoint.TO_OVERLAY: "to-overlay",
    TracePoint.FROM_LXC: "from-container",
    TracePoint.FROM_OVERLAY: "from-overlay",
    TracePoint.FROM_NETWORK: "from-netdev",
    TracePoint.TO_NETWORK: "to-netdev",
    TracePoint.FIB: "fib",
    TracePoint.ARP_REPLY: "arp-reply",
}


def point_label(point: int) -> str:
    """Name of a raw observation point number (``"point 42"`` for one this module does not know)."""
    try:
        return TracePoint(point).label
    except ValueError:
        return f"point {point}"


class EventDecodeError(CiliumliteError):
    """A ring buffer record that is not a ciliumlite event this module understands."""


class EventsUnavailable(CiliumliteError):
    """The datapath has no ``cilium_events`` ring buffer (objects built before events existed)."""


@dataclass(frozen=True, slots=True)
class Event:
    """What drop and trace events share (``struct cl_notify_hdr`` + ``struct cl_notify_flow4`` + data).

    ``saddr``/``daddr``/``proto`` are None unless the frame is IPv4; ``sport``/``dport`` are None
    unless it is TCP, UDP or SCTP (and not a later fragment). ``data`` holds the frame's first
    ``len(data)`` bytes (at most 64, Ethernet header included).
    """

    time: float
    """Wall-clock time of the event (seconds since the epoch), from ``ktime_ns``."""
    ktime_ns: int
    """``bpf_ktime_get_ns()`` when it was sent (CLOCK_MONOTONIC)."""
    reason: int
    """Drop: the drop reason (``Reason.DROP_*``); trace: the forward reason (0 at ``from-*`` points)."""
    dir: int
    """``Direction`` of the program that sent it."""
    ifindex: int
    """The device the program ran on (in the node's namespace)."""
    file_id: int
    line: int
    len_orig: int
    """Length of the whole frame."""
    cpu: int
    saddr: IPv4Address | None
    daddr: IPv4Address | None
    sport: int | None
    dport: int | None
    proto: int | None
    data: bytes
    node: str = ""
    """The datapath it came from (set by :class:`Monitor`)."""

    type: Literal["drop", "trace", "policy-verdict"] = "drop"

    @property
    def reason_text(self) -> str:
        """The reason in words (Cilium's wording), e.g. ``"Invalid source ip"``."""
        return describe(self.reason)

    @property
    def reason_name(self) -> str:
        """The reason's symbolic name, e.g. ``"DROP_INVALID_SIP"`` (``"REASON_<n>"`` when unknown)."""
        try:
            return Reason(self.reason).name
        except ValueError:
            return f"REASON_{self.reason}"

    @property
    def direction(self) -> str:
        """``"ingress"``, ``"egress"``, ``"service"`` or ``"unknown"``."""
        try:
            return Direction(self.dir).name.lower()
        except ValueError:
            return "unknown"

    @property
    def file(self) -> str:
        """The C source that sent it (``"bpf_lxc.c"``, ``"l3.h"``, …)."""
        return source_file(self.file_id)

    @property
    def source(self) -> str:
        """``file:line`` of the call site, as Cilium prints it (``"bpf_lxc.c:248"``)."""
        return f"{self.file}:{self.line}"

    @property
    def proto_name(self) -> str | None:
        """``"TCP"``, ``"UDP"``, ``"ICMP"``, ``"SCTP"``, the number for others; None without IPv4."""
        if self.proto is None:
            return None
        return PROTOCOLS.get(self.proto, str(self.proto))

    @property
    def ethertype(self) -> int | None:
        """The frame's ethertype, when the captured bytes hold it."""
        return int.from_bytes(self.data[12:14], "big") if len(self.data) >= 14 else None

    def flow_text(self) -> str:
        """The packet in one phrase: ``10.0.0.1:40000 -> 10.0.0.2:80 TCP``, ``ARP 10.0.0.1 -> 10.0.0.2``, …"""
        if self.saddr is not None and self.daddr is not None:
            if self.sport is not None and self.dport is not None:
                return f"{self.saddr}:{self.sport} -> {self.daddr}:{self.dport} {self.proto_name}"
            return f"{self.saddr} -> {self.daddr} {self.proto_name}"
        et, d = self.ethertype, self.data
        if et == _ETH_P_ARP and len(d) >= 42:
            op = {1: "request", 2: "reply"}.get(int.from_bytes(d[20:22], "big"), "op")
            return f"ARP {op} {IPv4Address(d[28:32])} -> {IPv4Address(d[38:42])}"
        if et == _ETH_P_IPV6 and len(d) >= 54:
            return f"IPv6 {IPv6Address(d[22:38])} -> {IPv6Address(d[38:54])}"
        if et is not None:
            return f"ethertype 0x{et:04x}"
        return f"{self.len_orig}-byte frame"

    def describe(self, ifnames: Mapping[int, str] | None = None) -> str:
        """One line like ``cilium monitor`` prints (``ifnames``: ifindex -> a label to add)."""
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what ``ciliumlite monitor --output json`` prints per event)."""
        return {
            "node": self.node, "type": self.type, "time": self.time, "ktime_ns": self.ktime_ns,
            "reason": self.reason, "reason_name": self.reason_name, "reason_text": self.reason_text,
            "direction": self.direction, "ifindex": self.ifindex, "file": self.file, "line": self.line,
            "source": self.source, "cpu": self.cpu, "len": self.len_orig, "cap_len": len(self.data),
            "saddr": None if self.saddr is None else str(self.saddr),
            "daddr": None if self.daddr is None else str(self.daddr),
            "sport": self.sport, "dport": self.dport, "proto": self.proto_name, "proto_number": self.proto,
            "ethertype": self.ethertype, "flow": self.flow_text(), "summary": self.describe(),
            "data": self.data.hex(),
        }


def _ifindex_text(ifindex: int, ifnames: Mapping[int, str] | None) -> str:
    name = (ifnames or {}).get(ifindex)
    return f"{ifindex} ({name})" if name else str(ifindex)


@dataclass(frozen=True, slots=True)
class DropEvent(Event):
    """A packet the datapath dropped (``struct drop_notify``)."""

    type: Literal["drop", "trace", "policy-verdict"] = "drop"

    def describe(self, ifnames: Mapping[int, str] | None = None) -> str:
        """``xx drop (Invalid source ip) flow 0x0 to endpoint 0, ifindex 5, file bpf_lxc.c:248, …``"""
        return (f"xx drop ({self.reason_text}) flow 0x0 to endpoint 0, ifindex "
                f"{_ifindex_text(self.ifindex, ifnames)}, file {self.source}, {self.flow_text()}")


@dataclass(frozen=True, slots=True)
class TraceEvent(Event):
    """A packet seen at an observation point (``struct trace_notify``)."""

    point: int = 0
    """The observation point (:class:`TracePoint`)."""
    dst_ifindex: int = 0
    """Where the packet was redirected (the pod's lxc, ``cilium_vxlan``, the FIB's device); 0 otherwise."""
    type: Literal["drop", "trace", "policy-verdict"] = "trace"

    @property
    def point_name(self) -> str:
        """The observation point's name: ``"redirect-peer"``, ``"from-container"``, …"""
        return point_label(self.point)

    @property
    def inbound(self) -> bool:
        """Seen at a program's entry (``from-*``)."""
        try:
            return TracePoint(self.point).inbound
        except ValueError:
            return False

    def describe(self, ifnames: Mapping[int, str] | None = None) -> str:
        """``-> redirect-peer (Forwarded) flow 0x0 ifindex 5 to ifindex 7, file l3.h:73, …`` (``<-`` at entries)."""
        if self.inbound:
            head = f"<- {self.point_name} flow 0x0"
        else:
            head = f"-> {self.point_name} ({self.reason_text}) flow 0x0"
        to = f" to ifindex {_ifindex_text(self.dst_ifindex, ifnames)}" if self.dst_ifindex else ""
        return f"{head} ifindex {_ifindex_text(self.ifindex, ifnames)}{to}, file {self.source}, {self.flow_text()}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with the observation point and redirect target."""
        out = Event.as_dict(self)
        out.update(observation_point=self.point_name, point=self.point, dst_ifindex=self.dst_ifindex)
        return out


#: Cilium's match types (``POLICY_MATCH_*``) as ``cilium monitor`` prints them.
MATCH_TYPES: Final[Mapping[int, str]] = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all",
                                          5: "L3-Proto", 6: "Proto-Only"}
# Cilium's PolicyVerdictNotify header (32 bytes), then ciliumlite's ktime_ns, ifindex, cpu, line, file.
_PV = struct.Struct("<BBHIIHHIiHBBBxHQIIHB")
_PV_DATA = 56


@dataclass(frozen=True, slots=True)
class PolicyVerdictEvent(Event):
    """A policy decision (``struct policy_verdict_notify``, Cilium's ``PolicyVerdictNotify``): every denied
    packet and the first packet of every allowed connection. ``reason`` is the drop code (0: allowed)."""

    endpoint: int = 0
    """The local endpoint whose policy decided."""
    remote_identity: int = 0
    verdict: int = 0
    """0 allow, ``-DROP_*`` deny (Cilium's sign)."""
    match: int = 0
    """Cilium's match type (:data:`MATCH_TYPES`)."""
    dst_port: int = 0
    l4_proto: int = 0
    type: Literal["drop", "trace", "policy-verdict"] = "policy-verdict"

    @property
    def action(self) -> str:
        """``"allow"`` or ``"deny"``."""
        return "allow" if self.verdict == 0 else "deny"

    @property
    def match_text(self) -> str:
        """``"L3-L4"``, ``"L4-Only"``, … (Cilium's words)."""
        return MATCH_TYPES.get(self.match, f"match {self.match}")

    def describe(self, ifnames: Mapping[int, str] | None = None) -> str:
        """``Policy verdict log: flow 0x0 local EP ID 3, remote ID 1234, proto 6, ingress, action allow, …``"""
        return (f"Policy verdict log: flow 0x0 local EP ID {self.endpoint}, remote ID {self.remote_identity}, "
                f"proto {self.l4_proto}, {self.direction}, action {self.action}, auth: disabled, "
                f"match {self.match_text}, {self.flow_text()}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with Cilium's verdict fields."""
        out = Event.as_dict(self)
        out.update(endpoint=self.endpoint, remote_identity=self.remote_identity, verdict=self.verdict,
                   action=self.action, match=self.match_text, dst_port=self.dst_port)
        return out


def _flow_from_frame(data: bytes) -> tuple[IPv4Address | None, IPv4Address | None, int | None, int | None, int | None]:
    if len(data) < 34 or data[12:14] != b"\x08\x00" or data[14] >> 4 != 4:
        return None, None, None, None, None
    ihl, proto = (data[14] & 0xF) * 4, data[23]
    saddr, daddr = IPv4Address(data[26:30]), IPv4Address(data[30:34])
    frag = int.from_bytes(data[20:22], "big") & 0x1FFF
    off = 14 + ihl
    if proto in (6, 17, 132) and not frag and len(data) >= off + 4:
        return saddr, daddr, int.from_bytes(data[off:off + 2], "big"), int.from_bytes(data[off + 2:off + 4], "big"), proto
    return saddr, daddr, None, None, proto


def _decode_verdict(raw: bytes | memoryview, node: str, offset: int) -> PolicyVerdictEvent:
    (_t, _sub, source, _hash, orig_len, cap_len, _ver, label, verdict, dport, proto, flags, _auth, _pad,
     ktime_ns, ifindex, cpu, line, file_id) = _PV.unpack_from(raw, 0)
    data = bytes(raw[_PV_DATA:_PV_DATA + min(cap_len, CAP_LEN)])
    saddr, daddr, sport, dp, fproto = _flow_from_frame(data)
    return PolicyVerdictEvent(
        time=(ktime_ns + offset) / 1e9, ktime_ns=ktime_ns, reason=-verdict if verdict < 0 else 0,
        dir=Direction.INGRESS if flags & 1 else Direction.EGRESS, ifindex=ifindex, file_id=file_id, line=line,
        len_orig=orig_len, cpu=cpu, saddr=saddr, daddr=daddr, sport=sport, dport=dp, proto=fproto, data=data,
        node=node, endpoint=source, remote_identity=label, verdict=verdict, match=(flags >> 3) & 7,
        dst_port=dport, l4_proto=proto)


def _clock_offset_ns() -> int:
    """Wall clock minus CLOCK_MONOTONIC (the clock of ``bpf_ktime_get_ns``)."""
    return time.time_ns() - time.monotonic_ns()


def decode(raw: bytes | memoryview, *, node: str = "",
           clock_offset_ns: int | None = None) -> DropEvent | TraceEvent | PolicyVerdictEvent:
    """Decode one ring buffer record. Raises :class:`EventDecodeError` for anything else."""
    if len(raw) < EVENT_SIZE:
        raise EventDecodeError(f"event record of {len(raw)} bytes (expected {EVENT_SIZE})")
    if raw[0] == EventType.POLICY_VERDICT:
        return _decode_verdict(raw, node, _clock_offset_ns() if clock_offset_ns is None else clock_offset_ns)
    (etype, subtype, version, direction, line, file_id, reason, ktime_ns, ifindex, dst_ifindex, len_orig,
     len_cap, flags, cpu) = _HDR.unpack_from(raw, 0)
    if version != NOTIFY_VERSION:
        raise EventDecodeError(f"event version {version} (this decoder reads version {NOTIFY_VERSION})")
    saddr_b, daddr_b, sport, dport, proto = _FLOW.unpack_from(raw, _HDR.size)
    ipv4, l4 = bool(flags & FLAG_IPV4), bool(flags & FLAG_L4)
    offset = _clock_offset_ns() if clock_offset_ns is None else clock_offset_ns
    common: dict[str, Any] = dict(
        time=(ktime_ns + offset) / 1e9, ktime_ns=ktime_ns, dir=direction, ifindex=ifindex, file_id=file_id,
        line=line, len_orig=len_orig, cpu=cpu,
        saddr=IPv4Address(saddr_b) if ipv4 else None, daddr=IPv4Address(daddr_b) if ipv4 else None,
        sport=sport if l4 else None, dport=dport if l4 else None, proto=proto if ipv4 else None,
        data=bytes(raw[_DATA_OFF:_DATA_OFF + min(len_cap, CAP_LEN)]), node=node)
    if etype == EventType.DROP:
        return DropEvent(reason=subtype, **common)
    if etype == EventType.TRACE:
        return TraceEvent(reason=reason, point=subtype, dst_ifindex=dst_ifindex, **common)
    raise EventDecodeError(f"unknown event type {etype}")


def _check_types(types: Collection[str]) -> frozenset[str]:
    chosen = frozenset(types)
    unknown = chosen - EVENT_TYPES
    if unknown or not chosen:
        raise ValidationError(f"event types must be a non-empty subset of {sorted(EVENT_TYPES)}, "
                              f"not {sorted(chosen)}")
    return chosen


class Monitor:
    """Live events of one datapath: its pinned ``cilium_events`` ring buffer, decoded.

    ``pin_dir`` is the datapath's pin directory (``DatapathConfig.pin_dir``, or ``pin_dir`` in its
    registry entry); ``types`` chooses drop and/or trace events. Records that do not decode are
    counted in :attr:`undecodable` and skipped. Needs root (CAP_BPF) like every pinned map.
    """

    def __init__(self, pin_dir: str, types: Collection[str] = EVENT_TYPES, *, node: str = "") -> None:
        self.types = _check_types(types)
        self.node = node
        self.pin_dir = pin_dir
        self.undecodable = 0
        self.received = 0
        path = os.path.join(pin_dir, EVENTS_MAP)
        try:
            self._map: Map[Any, Any] = Map.open_pinned(path)
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                raise EventsUnavailable(
                    f"{node or pin_dir}: no {EVENTS_MAP} ring buffer pinned in {pin_dir} (the datapath was "
                    "loaded from objects without events: rebuild them with `make build` and restart it)") from None
            raise
        try:
            self._ring = RingBuffer(self._map)
        except BaseException:
            self._map.close()
            raise
        self._offset = _clock_offset_ns()

    def fileno(self) -> int:
        """The ring buffer's fd: readable (``select``/``poll``) while records are waiting."""
        return self._map.fd

    def _decode(self, records: list[bytes]) -> list[DropEvent | TraceEvent | PolicyVerdictEvent]:
        out: list[DropEvent | TraceEvent | PolicyVerdictEvent] = []
        for raw in records:
            try:
                ev = decode(raw, node=self.node, clock_offset_ns=self._offset)
            except EventDecodeError:
                self.undecodable += 1
                continue
            self.received += 1
            if ev.type in self.types:
                out.append(ev)
        return out

    def poll(self, timeout_ms: int = 100) -> list[DropEvent | TraceEvent | PolicyVerdictEvent]:
        """Wait up to ``timeout_ms`` for records; the events among them (0 = just take what is there)."""
        return self._decode(self._ring.poll(timeout_ms))

    def events(self, max_seconds: float = 1.0, *, timeout_ms: int = 100) -> Iterator[DropEvent | TraceEvent | PolicyVerdictEvent]:
        """Events arriving within ``max_seconds`` (bounded, for scripts and tests)."""
        deadline = time.monotonic() + max_seconds
        while (left := deadline - time.monotonic()) > 0:
            yield from self.poll(max(0, min(timeout_ms, int(left * 1000))))

    def follow(self, on_event: Callable[[DropEvent | TraceEvent | PolicyVerdictEvent], None], *, stop: Callable[[], bool],
               timeout_ms: int = 100) -> None:
        """Call ``on_event`` for every event until ``stop()`` returns True (checked every ``timeout_ms``)."""
        while not stop():
            for ev in self.poll(timeout_ms):
                on_event(ev)

    def close(self) -> None:
        """Stop reading; the ring buffer stays pinned for the datapath."""
        self._ring.close()
        self._map.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Monitor({self.pin_dir!r}, types={sorted(self.types)}, node={self.node!r})"


def watch(monitors: Sequence[Monitor], *, max_seconds: float | None = None, stop: Callable[[], bool] | None = None,
          timeout_ms: int = 100) -> Iterator[DropEvent | TraceEvent | PolicyVerdictEvent]:
    """Events of several datapaths as they arrive, until ``max_seconds`` pass or ``stop()`` is True.

    One ``poll(2)`` waits on every ring buffer, so a quiet datapath does not delay a busy one.
    """
    if not monitors:
        return
    poller = select.poll()
    by_fd = {m.fileno(): m for m in monitors}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    while not (stop is not None and stop()):
        wait = timeout_ms
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            wait = max(0, min(timeout_ms, int(left * 1000)))
        try:
            ready = poller.poll(wait)
        except InterruptedError:
            continue
        for fd, _ in ready:
            yield from by_fd[fd].poll(0)
