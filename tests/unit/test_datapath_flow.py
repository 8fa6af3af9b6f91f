"""Events as Hubble flows (ciliumlite.datapath.flow), without a kernel: hand-built events."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from ciliumlite.datapath.events import DropEvent, PolicyVerdictEvent, TraceEvent, TracePoint
from ciliumlite.datapath.flow import Peers, compact, drop_reason_desc, lost_events, tcp_flags, to_flow
from ciliumlite.datapath.reasons import Direction, Reason

pytestmark = pytest.mark.unit

SRC, DST = "10.244.0.2", "10.244.0.3"


def frame(proto: int, l4: bytes) -> bytes:
    eth = bytes.fromhex("0a0000000003" "0a0000000002" "0800")
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, proto, 0, 0]) + IPv4Address(SRC).packed + IPv4Address(DST).packed
    return (eth + ip + l4)[:64]


def common(**kw: object) -> dict[str, object]:
    base: dict[str, object] = dict(time=1_765_000_000.25, ktime_ns=1, reason=0, dir=Direction.EGRESS, ifindex=5,
                                   file_id=1, line=248, len_orig=98, cpu=0, saddr=IPv4Address(SRC),
                                   daddr=IPv4Address(DST), sport=40000, dport=80, proto=6,
                                   data=frame(6, (40000).to_bytes(2, "big") + (80).to_bytes(2, "big") + bytes(9)
                                              + b"\x02" + bytes(6)),
                                   node="n1")
    base.update(kw)
    return base


PEERS = Peers(endpoints={SRC: {"id": 7, "name": "a", "identity": 300, "labels": {"app": "a"}},
                         DST: {"id": 9, "name": "b", "identity": 301}},
              identity=lambda ip: 2 if ip == "203.0.113.1" else None, ifnames={5: "lxc1"})


def test_a_drop_is_a_dropped_flow_with_hubbles_reason_name() -> None:
    ev = DropEvent(**common(reason=int(Reason.DROP_POLICY)))  # type: ignore[arg-type]
    f = to_flow(ev, PEERS)
    assert (f["verdict"], f["drop_reason"], f["drop_reason_desc"]) == ("DROPPED", 133, "POLICY_DENIED")
    assert f["IP"] == {"source": SRC, "destination": DST, "ipVersion": "IPv4"}
    assert f["l4"] == {"TCP": {"source_port": 40000, "destination_port": 80, "flags": {"SYN": True}}}
    assert f["source"] == {"ID": 7, "pod_name": "a", "labels": ["k8s:app=a"], "identity": 300}
    assert f["destination"] == {"ID": 9, "pod_name": "b", "identity": 301}
    assert f["event_type"] == {"type": 1, "sub_type": 133}
    assert f["traffic_direction"] == "EGRESS" and f["interface"] == {"index": 5, "name": "lxc1"}
    assert f["ethernet"] == {"source": "0a:00:00:00:00:02", "destination": "0a:00:00:00:00:03"}
    assert f["time"] == "2025-12-06T05:46:40.250000Z" and f["node_name"] == "n1"
    assert compact(f) == ("Dec  6 05:46:40.250: 10.244.0.2:40000 (ID:300 a) -> 10.244.0.3:80 (ID:301 b) "
                          "Policy denied DROPPED (TCP Flags: SYN)")


def test_a_trace_is_forwarded_at_its_observation_point() -> None:
    data = frame(17, (5353).to_bytes(2, "big") + (53).to_bytes(2, "big") + bytes(4))
    ev = TraceEvent(**common(reason=int(Reason.FORWARDED), proto=17, sport=5353, dport=53, data=data,  # type: ignore[arg-type]
                             daddr=IPv4Address("203.0.113.1")), point=TracePoint.TO_OVERLAY, dst_ifindex=3)
    f = to_flow(ev, PEERS)
    assert f["verdict"] == "FORWARDED" and "drop_reason" not in f
    assert f["trace_observation_point"] == "TO_OVERLAY" and f["event_type"] == {"type": 4, "sub_type": 4}
    assert f["destination"] == {"identity": 2}  # from the ipcache: not a local endpoint
    assert compact(f).endswith("10.244.0.2:5353 (ID:300 a) -> 203.0.113.1:53 (ID:2) to-overlay FORWARDED (UDP)")


def test_a_policy_verdict_names_the_remote_identity() -> None:
    ev = PolicyVerdictEvent(**common(dir=Direction.INGRESS, reason=133),  # type: ignore[arg-type]
                            endpoint=9, remote_identity=4242, verdict=-133, match=2, dst_port=80, l4_proto=6)
    f = to_flow(ev, Peers())
    assert f["verdict"] == "DROPPED" and f["source"] == {"identity": 4242} and f["destination"] == {"ID": 9}
    assert "policy-verdict:L3-L4 INGRESS DENIED" in compact(f)


def test_reason_names_and_tcp_flags() -> None:
    assert drop_reason_desc(int(Reason.DROP_INVALID_SIP)) == "INVALID_SOURCE_IP"
    assert drop_reason_desc(int(Reason.DROP_PREFILTER)) == "PREFILTER"  # ciliumlite's own
    assert drop_reason_desc(250) == "DROP_REASON_250"
    assert tcp_flags(frame(6, bytes(13) + b"\x12" + bytes(6))) == {"SYN": True, "ACK": True}
    assert tcp_flags(frame(17, bytes(8))) is None


def test_lost_events_record() -> None:
    rec = lost_events("BPF_EVENTS_RATE_LIMIT", 12, "n1", 0.0)
    assert rec == {"lost_events": {"source": "BPF_EVENTS_RATE_LIMIT", "num_events_lost": 12}, "node_name": "n1",
                   "time": "1970-01-01T00:00:00.000000Z"}
