"""Datapath events as Hubble flows: the fields of ``flow.proto`` (``api/v1/flow/flow.proto``), by name.

:func:`to_flow` turns a decoded event (:mod:`ciliumlite.datapath.events`) into the JSON object
``hubble observe -o json`` prints under ``"flow"``: ``time``, ``verdict``, ``drop_reason`` /
``drop_reason_desc``, ``ethernet``, ``IP``, ``l4``, ``source`` / ``destination`` (endpoint ``ID``,
``identity``, ``pod_name``, ``labels``), ``Type``, ``node_name``, ``event_type``,
``traffic_direction``, ``trace_observation_point``, ``interface``, ``Summary``. The event itself
carries addresses, ports, the device and the reason; which endpoint and identity an address is
comes from the caller's :class:`Peers` (the registry's endpoints and the node's ``cilium_ipcache``),
as Hubble fills them from the agent's caches. :func:`compact` is ``hubble observe``'s one-line form.

>>> flow = to_flow(event, Peers(endpoints={"10.244.0.2": {"id": 3, "name": "a", "identity": 300}}))  # doctest: +SKIP
>>> print(compact(flow))                                                                           # doctest: +SKIP
Dec  6 20:30:01.123: 10.244.0.2:40000 (ID:300 a) -> 10.244.0.3:7777 (ID:301 b) to-endpoint FORWARDED (UDP)
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ciliumlite.datapath.events import MATCH_TYPES, DropEvent, PolicyVerdictEvent, TraceEvent, TracePoint
from ciliumlite.datapath.reasons import Reason, describe

__all__ = ["DROP_REASON_DESC", "EVENT_TYPE", "OBSERVATION_POINTS", "Peers", "compact", "drop_reason_desc",
           "lost_events", "tcp_flags", "to_flow"]

#: ``event_type.type``: Cilium's monitor message types (``pkg/monitor/api/types.go``).
EVENT_TYPE: Final[Mapping[str, int]] = {"drop": 1, "trace": 4, "policy-verdict": 5}

#: ``trace_observation_point`` (Hubble's ``TraceObservationPoint``) of each ciliumlite point.
OBSERVATION_POINTS: Final[Mapping[int, str]] = {
    TracePoint.TO_LXC: "TO_ENDPOINT", TracePoint.TO_STACK: "TO_STACK", TracePoint.TO_OVERLAY: "TO_OVERLAY",
    TracePoint.FROM_LXC: "FROM_ENDPOINT", TracePoint.FROM_OVERLAY: "FROM_OVERLAY",
    TracePoint.FROM_NETWORK: "FROM_NETWORK", TracePoint.TO_NETWORK: "TO_NETWORK",
    # ciliumlite's own points, as Hubble would see them: a FIB redirect leaves through a device, a
    # proxy-ARP reply goes back into the pod.
    TracePoint.FIB: "TO_NETWORK", TracePoint.ARP_REPLY: "TO_ENDPOINT",
}

#: Hubble's ``DropReason`` names (flow.proto) of the drop reasons Cilium and ciliumlite share.
DROP_REASON_DESC: Final[Mapping[int, str]] = {
    Reason.DROP_INVALID_SMAC: "INVALID_SOURCE_MAC", Reason.DROP_INVALID_DMAC: "INVALID_DESTINATION_MAC",
    Reason.DROP_INVALID_SIP: "INVALID_SOURCE_IP", Reason.DROP_POLICY: "POLICY_DENIED",
    Reason.DROP_INVALID: "INVALID_PACKET_DROPPED", Reason.DROP_CT_INVALID_HDR: "CT_TRUNCATED_OR_INVALID_HEADER",
    Reason.DROP_CT_UNKNOWN_PROTO: "CT_UNKNOWN_L4_PROTOCOL", Reason.DROP_UNKNOWN_L3: "UNSUPPORTED_L3_PROTOCOL",
    Reason.DROP_MISSED_TAIL_CALL: "MISSED_TAIL_CALL", Reason.DROP_WRITE_ERROR: "ERROR_WRITING_TO_PACKET",
    Reason.DROP_UNKNOWN_L4: "UNKNOWN_L4_PROTOCOL", Reason.DROP_NO_TUNNEL_KEY: "ERROR_RETRIEVING_TUNNEL_KEY",
    Reason.DROP_UNROUTABLE: "STALE_OR_UNROUTABLE_IP", Reason.DROP_CSUM_L3: "ERROR_WHILE_CORRECTING_L3_CHECKSUM",
    Reason.DROP_CSUM_L4: "ERROR_WHILE_CORRECTING_L4_CHECKSUM", Reason.DROP_CT_CREATE_FAILED: "CT_MAP_INSERTION_FAILED",
    Reason.DROP_FRAG_NOSUPPORT: "IP_FRAGMENTATION_NOT_SUPPORTED", Reason.DROP_NO_SERVICE: "SERVICE_BACKEND_NOT_FOUND",
    Reason.DROP_NO_TUNNEL_ENDPOINT: "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT",
}

_TCP_FLAGS: Final = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10), ("URG", 0x20),
                     ("ECE", 0x40), ("CWR", 0x80))
_POINT_TEXT: Final[Mapping[str, str]] = {
    "TO_ENDPOINT": "to-endpoint", "TO_STACK": "to-stack", "TO_OVERLAY": "to-overlay",
    "FROM_ENDPOINT": "from-endpoint", "FROM_OVERLAY": "from-overlay", "FROM_NETWORK": "from-network",
    "TO_NETWORK": "to-network",
}

_ICMP_TYPES: Final[Mapping[int | None, str]] = {0: "EchoReply", 3: "DestinationUnreachable", 5: "Redirect",
                                                8: "EchoRequest", 11: "TimeExceeded"}

Event = DropEvent | TraceEvent | PolicyVerdictEvent


def drop_reason_desc(reason: int) -> str:
    """Hubble's name of a drop reason (``"POLICY_DENIED"``); ciliumlite's name without ``DROP_`` for the others."""
    if reason in DROP_REASON_DESC:
        return DROP_REASON_DESC[reason]
    try:
        return Reason(reason).name.removeprefix("DROP_")
    except ValueError:
        return f"DROP_REASON_{reason}"


@dataclass(frozen=True)
class Peers:
    """What the event does not carry: which endpoint and identity an address is.

    ``endpoints``: IPv4 address -> the registry's endpoint row (``id``, ``name``, ``identity``,
    ``labels``); ``identity``: address -> security identity from the node's ipcache (None when
    unknown); ``ifnames``: ifindex -> device name.
    """

    endpoints: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    identity: Callable[[str], int | None] | None = None
    ifnames: Mapping[int, str] = field(default_factory=dict)

    def endpoint(self, ip: str | None) -> dict[str, Any]:
        """Hubble's ``Endpoint`` of ``ip``: ``ID``, ``identity``, ``pod_name``, ``labels`` (what is known)."""
        if ip is None:
            return {}
        out: dict[str, Any] = {}
        ep = self.endpoints.get(ip)
        if ep is not None:
            out["ID"] = ep.get("id")
            out["pod_name"] = ep.get("name")
            labels = ep.get("labels")
            if isinstance(labels, Mapping):
                out["labels"] = [f"k8s:{k}={v}" for k, v in sorted(labels.items())]
            if ep.get("identity") is not None:
                out["identity"] = ep.get("identity")
        if "identity" not in out and self.identity is not None:
            ident = self.identity(ip)
            if ident is not None:
                out["identity"] = ident
        return out


def tcp_flags(data: bytes) -> dict[str, bool] | None:
    """The TCP flags of a captured IPv4/TCP frame (Hubble's ``TCPFlags``: only the set ones), else None."""
    if len(data) < 34 or data[12:14] != b"\x08\x00" or data[23] != 6:
        return None
    off = 14 + (data[14] & 0xF) * 4 + 13
    if len(data) <= off:
        return None
    return {name: True for name, bit in _TCP_FLAGS if data[off] & bit}


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _l4(ev: Event) -> dict[str, Any] | None:
    if ev.proto == 6 and ev.sport is not None:
        tcp: dict[str, Any] = {"source_port": ev.sport, "destination_port": ev.dport}
        flags = tcp_flags(ev.data)
        if flags:
            tcp["flags"] = flags
        return {"TCP": tcp}
    if ev.proto == 17 and ev.sport is not None:
        return {"UDP": {"source_port": ev.sport, "destination_port": ev.dport}}
    if ev.proto == 132 and ev.sport is not None:
        return {"SCTP": {"source_port": ev.sport, "destination_port": ev.dport}}
    if ev.proto == 1 and ev.saddr is not None:
        d = ev.data
        off = 14 + (d[14] & 0xF) * 4 if len(d) > 14 else len(d)
        return {"ICMPv4": {"type": d[off], "code": d[off + 1]} if len(d) > off + 1 else {}}
    return None


def _verdict(ev: Event) -> str:
    if isinstance(ev, DropEvent):
        return "DROPPED"
    if isinstance(ev, PolicyVerdictEvent):
        return "FORWARDED" if ev.verdict == 0 else "DROPPED"
    return "FORWARDED"


def to_flow(ev: Event, peers: Peers | None = None) -> dict[str, Any]:
    """The Hubble ``Flow`` of one event, as ``hubble observe -o json`` prints it (unknown fields left out)."""
    peers = peers or Peers()
    saddr = None if ev.saddr is None else str(ev.saddr)
    daddr = None if ev.daddr is None else str(ev.daddr)
    flow: dict[str, Any] = {"time": _iso(ev.time), "verdict": _verdict(ev)}
    if ev.reason and _verdict(ev) == "DROPPED":
        flow["drop_reason"] = ev.reason
        flow["drop_reason_desc"] = drop_reason_desc(ev.reason)
    if len(ev.data) >= 12:
        flow["ethernet"] = {"source": _mac(ev.data[6:12]), "destination": _mac(ev.data[0:6])}
    if saddr is not None:
        flow["IP"] = {"source": saddr, "destination": daddr, "ipVersion": "IPv4"}
    l4 = _l4(ev)
    if l4 is not None:
        flow["l4"] = l4
    src, dst = peers.endpoint(saddr), peers.endpoint(daddr)
    if isinstance(ev, PolicyVerdictEvent):  # the verdict names the remote identity itself
        (src if ev.direction == "ingress" else dst).setdefault("identity", ev.remote_identity)
        (dst if ev.direction == "ingress" else src).setdefault("ID", ev.endpoint)
    if src:
        flow["source"] = src
    if dst:
        flow["destination"] = dst
    flow["Type"] = "L3_L4"
    flow["node_name"] = ev.node
    sub = ev.point if isinstance(ev, TraceEvent) else ev.reason
    flow["event_type"] = {"type": EVENT_TYPE[ev.type], "sub_type": sub}
    flow["traffic_direction"] = {"ingress": "INGRESS", "egress": "EGRESS"}.get(ev.direction,
                                                                              "TRAFFIC_DIRECTION_UNKNOWN")
    if isinstance(ev, TraceEvent):
        flow["trace_observation_point"] = OBSERVATION_POINTS.get(ev.point, "UNKNOWN_POINT")
        flow["trace_reason"] = ev.reason_text if not ev.inbound else "UNKNOWN"
    if isinstance(ev, PolicyVerdictEvent):
        flow["policy_match_type"] = ev.match
    iface: dict[str, Any] = {"index": ev.ifindex}
    if peers.ifnames.get(ev.ifindex):
        iface["name"] = peers.ifnames[ev.ifindex]
    flow["interface"] = iface
    flow["Summary"] = ev.describe()
    return flow


def _peer_text(flow: Mapping[str, Any], side: str) -> str:
    ip = (flow.get("IP") or {}).get(side)
    ports: Mapping[str, Any] = next(iter((flow.get("l4") or {}).values()), {})
    port = ports.get(f"{side}_port")
    ep = flow.get(side) or {}
    where = f"{ip}:{port}" if ip and port is not None else str(ip)
    tags = " ".join(str(t) for t in (f"ID:{ep['identity']}" if "identity" in ep else None, ep.get("pod_name")) if t)
    return f"{where} ({tags})" if tags else where


def compact(flow: Mapping[str, Any]) -> str:
    """``hubble observe``'s compact line: ``Dec  6 20:30:01.123: SRC (ID:n pod) -> DST (ID:m pod) POINT VERDICT (L4)``."""
    t = datetime.datetime.fromisoformat(str(flow["time"]).replace("Z", "+00:00"))
    when = t.strftime("%b %e %H:%M:%S.") + f"{t.microsecond // 1000:03d}"
    if "IP" not in flow:
        return f"{when}: {flow.get('Summary', '')}"
    verdict = str(flow["verdict"])
    etype = (flow.get("event_type") or {}).get("type")
    if verdict == "DROPPED" and etype == EVENT_TYPE["drop"]:
        what = f"{_drop_text(flow)} DROPPED"
    elif etype == EVENT_TYPE["policy-verdict"]:
        match = MATCH_TYPES.get(int(flow.get("policy_match_type", 0)), "none")
        what = (f"policy-verdict:{match} {flow.get('traffic_direction')} "
                f"{'ALLOWED' if verdict == 'FORWARDED' else 'DENIED'}")
    else:
        point = str(flow.get("trace_observation_point", ""))
        what = f"{_POINT_TEXT.get(point, point.lower())} {verdict}"
    l4 = flow.get("l4") or {}
    proto = next(iter(l4), "")
    detail = proto
    if proto == "TCP" and l4["TCP"].get("flags"):
        detail = "TCP Flags: " + ", ".join(sorted(l4["TCP"]["flags"]))
    elif proto == "ICMPv4":
        icmp_type = l4["ICMPv4"].get("type")
        detail = f"ICMPv4 {_ICMP_TYPES.get(icmp_type, f'type {icmp_type}')}"
    return f"{when}: {_peer_text(flow, 'source')} -> {_peer_text(flow, 'destination')} {what}" + (
        f" ({detail})" if detail else "")


def _drop_text(flow: Mapping[str, Any]) -> str:
    return describe(int(flow.get("drop_reason", 0)))


def lost_events(source: str, count: int, node: str, at: float) -> dict[str, Any]:
    """Hubble's ``LostEvent`` record (``{"lost_events": {source, num_events_lost}, …}``): events the
    datapath counted as not sent (``source``: ``PERF_EVENT_RING_BUFFER`` or ``BPF_EVENTS_RATE_LIMIT``)."""
    return {"lost_events": {"source": source, "num_events_lost": count}, "node_name": node, "time": _iso(at)}
