"""``ciliumlite monitor`` against a live lab: real packets, a real ring buffer, the CLI as its own process.

One lab for the module, two nodes without a tunnel (each node is a datapath of its own):

* ``drops``: default config (drop events on, trace events off), pods ``a`` and ``b``;
* ``traces``: ``monitor_trace=True``, pods ``c`` and ``d``.

A pod sends packets with a spoofed source address through a raw socket (as the anti-spoofing test in
test_host_routing.py does); ``cil_from_container`` drops them with ``DROP_INVALID_SIP``, and the
monitor, started as ``python -m ciliumlite.cli monitor …`` before the traffic, must print that drop.
The monitor announces itself on stderr once its ring buffers are open; records written before a
reader attaches stay in the ring anyway, so the wait only keeps the test short.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Lab, Pod
from ciliumlite.testing.packets import IPPROTO_UDP, icmp_echo, ipv4, pod_python, udp

pytestmark = pytest.mark.integration

SPOOFED = "10.244.0.99"    # in the drops node's pod CIDR, owned by nobody
SPOOFED_T = "10.244.1.99"  # same in the traces node's CIDR


@dataclass
class Topo:
    lab: Lab
    a: Pod
    b: Pod
    c: Pod
    d: Pod

    @property
    def prefix(self) -> str:
        return self.lab.prefix


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with Lab("mon") as lab:
        drops = lab.add_node("drops")
        traces = lab.add_node("traces", monitor_trace=True)
        a, b = drops.add_pod("a"), drops.add_pod("b")
        c, d = traces.add_pod("c"), traces.add_pod("d")
        # Neighbours resolved: from now on every packet of a pod reaches its lxc at once.
        assert a.ping(b, count=1).ok and c.ping(d, count=1).ok
        yield Topo(lab, a, b, c, d)


class MonitorProc:
    """``ciliumlite monitor`` running in the background."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ciliumlite.cli", "monitor", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.stderr_head = ""

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Until it printed its ``Listening for …`` line (its ring buffers are open)."""
        assert self.proc.stderr is not None
        while True:
            ready, _, _ = select.select([self.proc.stderr], [], [], timeout)
            line = self.proc.stderr.readline() if ready else ""
            self.stderr_head += line
            if line.startswith("Listening for"):
                return
            if not line:
                _, err = self.finish(timeout=5)
                raise AssertionError(f"monitor did not start (rc={self.proc.returncode}): {self.stderr_head}{err}")

    def finish(self, timeout: float = 30.0) -> tuple[str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"monitor did not stop within {timeout}s: {err}") from None
        return out, self.stderr_head + err


def json_events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def send_spoofed_udp(pod: Pod, src: str, dst: Pod, dport: int, n: int = 1) -> None:
    pkt = ipv4(src, dst.ip, udp(src, dst.ip, 40000, dport, b"spoofed"), proto=IPPROTO_UDP)
    assert pod_python(pod, f"packets.send_raw_ipv4([bytes.fromhex({pkt.hex()!r})] * {n}, {dst.ip!r})") == n


def send_spoofed_icmp(pod: Pod, src: str, dst: Pod) -> None:
    pkt = ipv4(src, dst.ip, icmp_echo())
    assert pod_python(pod, f"packets.send_raw_ipv4([bytes.fromhex({pkt.hex()!r})], {dst.ip!r})") == 1


def test_monitor_json_shows_the_spoofed_drop(topo: Topo) -> None:
    a, b = topo.a, topo.b
    assert a.node.datapath is not None
    before = a.node.datapath.count(Reason.DROP_INVALID_SIP)
    mon = MonitorProc("--type", "drop", "--lab", topo.prefix, "--output", "json", "--duration", "3")
    mon.wait_listening()
    send_spoofed_udp(a, SPOOFED, b, 7101)
    out, err = mon.finish()
    assert mon.proc.returncode == 0, err
    events = json_events(out)
    assert all(e["type"] == "drop" for e in events), events
    mine = [e for e in events if e["saddr"] == SPOOFED and e["dport"] == 7101]
    assert len(mine) == 1, f"expected one drop of {SPOOFED}: {events}\n{err}"
    (e,) = mine
    assert (e["reason"], e["reason_name"], e["reason_text"]) == (int(Reason.DROP_INVALID_SIP), "DROP_INVALID_SIP",
                                                                 "Invalid source ip")
    assert (e["node"], e["daddr"], e["sport"], e["proto"], e["direction"]) == (
        f"{topo.prefix}-drops", b.ip, 40000, "UDP", "egress")
    # Dropped at ingress of a's host-side veth, which the registry names.
    assert e["ifindex"] == a.endpoint.ifindex and e["ifname"] == a.endpoint.ifname
    assert e["endpoint"]["name"] == "a" and e["endpoint"]["ipv4"] == a.ip
    assert re.fullmatch(r"bpf_lxc\.c:\d+", e["source"])
    assert e["summary"] == (f"xx drop (Invalid source ip) flow 0x0 to endpoint 0, ifindex {a.endpoint.ifindex}, "
                            f"file {e['source']}, {SPOOFED}:40000 -> {b.ip}:7101 UDP")
    assert a.node.datapath.count(Reason.DROP_INVALID_SIP) - before == 1


def test_monitor_prints_cilium_style_lines(topo: Topo) -> None:
    a, b = topo.a, topo.b
    mon = MonitorProc("--lab", topo.prefix, "--node", "drops", "--duration", "2")
    mon.wait_listening()
    assert "Listening for drop, policy-verdict and trace events on 1 datapath" in mon.stderr_head
    send_spoofed_icmp(a, SPOOFED, b)
    out, err = mon.finish()
    assert mon.proc.returncode == 0, err
    want = re.compile(rf"xx drop \(Invalid source ip\) flow 0x0 to endpoint 0, ifindex {a.endpoint.ifindex}, "
                      rf"file bpf_lxc\.c:\d+, {re.escape(SPOOFED)} -> {re.escape(b.ip)} ICMP")
    assert any(want.fullmatch(line) for line in out.splitlines()), out
    # --type trace asked implicitly: this node loaded without trace events, and says so.
    assert "trace events are off" in err


def test_trace_events_follow_a_packet(topo: Topo) -> None:
    c, d = topo.c, topo.d
    mon = MonitorProc("--type", "trace", "--lab", topo.prefix, "--node", "traces", "-o", "json", "--duration", "3")
    mon.wait_listening()
    port = 7102
    pkt = ipv4(c.ip, d.ip, udp(c.ip, d.ip, 40001, port, b"honest"), proto=IPPROTO_UDP)
    assert pod_python(c, f"packets.send_raw_ipv4([bytes.fromhex({pkt.hex()!r})], {d.ip!r})") == 1
    send_spoofed_udp(c, SPOOFED_T, d, port)  # a drop: not shown with --type trace
    out, err = mon.finish()
    assert mon.proc.returncode == 0, err
    events = json_events(out)
    assert all(e["type"] == "trace" for e in events)
    flow = [e for e in events if e["dport"] == port and e["sport"] == 40001]
    points = [e["observation_point"] for e in flow]
    assert points == ["from-container", "redirect-peer"], flow
    entry, delivered = flow
    assert entry["ifindex"] == c.endpoint.ifindex and entry["endpoint"]["name"] == "c"
    assert (delivered["reason_name"], delivered["dst_ifindex"], delivered["dst_endpoint"]["name"]) == (
        "FORWARDED", d.endpoint.ifindex, "d")
    assert delivered["summary"].startswith(f"-> redirect-peer (Forwarded) flow 0x0 ifindex {c.endpoint.ifindex} "
                                           f"to ifindex {d.endpoint.ifindex}, file l3.h:")
    assert [e for e in events if e["saddr"] == SPOOFED_T and e["dport"] == port] == [
        e for e in events if e["saddr"] == SPOOFED_T and e["observation_point"] == "from-container"]


def test_several_datapaths_are_watched_at_once(topo: Topo) -> None:
    mon = MonitorProc("--type", "drop", "--lab", topo.prefix, "--duration", "3")
    mon.wait_listening()
    assert "on 2 datapaths" in mon.stderr_head
    send_spoofed_udp(topo.a, SPOOFED, topo.b, 7103)
    send_spoofed_udp(topo.c, SPOOFED_T, topo.d, 7103)
    out, err = mon.finish()
    assert mon.proc.returncode == 0, err
    lines = [line for line in out.splitlines() if ":7103 UDP" in line]
    assert sorted(line.split("]")[0] + "]" for line in lines) == [f"[{topo.prefix}-drops]",
                                                                   f"[{topo.prefix}-traces]"], out


def test_sigterm_ends_the_monitor_cleanly(topo: Topo) -> None:
    mon = MonitorProc("--lab", topo.prefix, "--node", "drops", "-o", "json")
    mon.wait_listening()
    assert "press Ctrl-C to quit" in mon.stderr_head
    send_spoofed_udp(topo.a, SPOOFED, topo.b, 7104)
    mon.proc.send_signal(signal.SIGTERM)
    out, err = mon.finish()
    assert mon.proc.returncode == 0, err
    assert any(e["dport"] == 7104 for e in json_events(out))


def test_a_flood_is_rate_limited_and_reported(topo: Topo) -> None:
    # More drops than one CPU's burst (1000 events): the rest are counted as lost, and the monitor
    # says so at the end; the packets are dropped (and counted) all the same. The sender is pinned
    # to one CPU, and so is the veth's receive path, hence the program and its token bucket.
    a, b = topo.a, topo.b
    assert a.node.datapath is not None
    dp = a.node.datapath
    before = dp.count(Reason.DROP_INVALID_SIP), dp.count(Reason.EVENT_LOST_RATE_LIMIT)
    mon = MonitorProc("--type", "drop", "--lab", topo.prefix, "--node", "drops", "-o", "json", "--duration", "4")
    mon.wait_listening()
    n = 3000
    pkt = ipv4(SPOOFED, b.ip, udp(SPOOFED, b.ip, 40000, 7105, b"flood"), proto=IPPROTO_UDP)
    cpu = min(os.sched_getaffinity(0))
    sent = pod_python(a, f"(__import__('os').sched_setaffinity(0, {{{cpu}}}), "
                         f"packets.send_raw_ipv4([bytes.fromhex({pkt.hex()!r})] * {n}, {b.ip!r}))[1]", timeout=60)
    assert sent == n
    out, err = mon.finish()
    assert mon.proc.returncode == 0, err
    events = json_events(out)
    shown = [e for e in events if e.get("dport") == 7105]
    assert dp.count(Reason.DROP_INVALID_SIP) - before[0] == n  # monitoring never changes a verdict
    lost = dp.count(Reason.EVENT_LOST_RATE_LIMIT) - before[1]
    assert 900 <= len(shown) <= 1500, len(shown)  # the burst, plus what refilled while the flood lasted
    assert lost >= n - len(shown), (len(shown), lost)  # (other drops may have lost events too)
    # Shown while it ran, not only at the end: lost-event records, as many as the datapath counted.
    records = [e for e in events if e["type"] == "lost"]
    assert {e["source"] for e in records} == {"BPF_EVENTS_RATE_LIMIT"}, records
    reported = sum(e["count"] for e in records)
    assert n - len(shown) <= reported <= lost, (reported, lost, len(shown))
    assert all(e["hubble"]["lost_events"]["num_events_lost"] == e["count"] for e in records)
    note = re.search(r"(\d+) events were not sent while monitoring \(rate limit: (\d+), ring buffer full: 0\)",
                     err)
    assert note and int(note[2]) >= n - len(shown), err


def test_lost_events_are_shown_as_they_happen() -> None:
    # A node that may send 5 events a second per CPU: 50 drops at once, at most 10 events; the rest
    # is shown as lost in the stream itself, as many as the datapath counted.
    with Lab("monlost") as lab:
        node = lab.add_node("n", events_per_sec=5)
        a, b = node.add_pod("a"), node.add_pod("b")
        assert a.ping(b, count=1).ok
        dp = node.datapath
        assert dp is not None
        before = dp.count(Reason.EVENT_LOST_RATE_LIMIT)
        mon = MonitorProc("--type", "drop", "--lab", lab.prefix, "--duration", "3")
        mon.wait_listening()
        send_spoofed_udp(a, "10.244.0.99", b, 7109, n=50)
        out, err = mon.finish()
        assert mon.proc.returncode == 0, err
        lost = dp.count(Reason.EVENT_LOST_RATE_LIMIT) - before
    shown = [ln for ln in out.splitlines() if ":7109 UDP" in ln]
    reported = [int(m[1]) for m in re.finditer(r"^EVENTS LOST: BPF_EVENTS_RATE_LIMIT (\d+) \(Event lost \(rate limit\)\)$",
                                               out, re.MULTILINE)]
    assert 1 <= len(shown) <= 10 and reported, out
    assert sum(reported) == lost and len(shown) + sum(reported) >= 50, (len(shown), reported, lost)
    assert f"{lost} events were not sent while monitoring (rate limit: {lost}" in err


def test_flows_carry_hubble_fields(topo: Topo) -> None:
    a, b = topo.a, topo.b
    mon = MonitorProc("--type", "drop", "--lab", topo.prefix, "--node", "drops", "--flows", "-o", "json",
                      "--duration", "3")
    mon.wait_listening()
    send_spoofed_udp(a, SPOOFED, b, 7106)
    out, err = mon.finish()
    assert mon.proc.returncode == 0, err
    recs = [r for r in json_events(out) if "flow" in r]
    mine = [r["flow"] for r in recs if r["flow"].get("l4", {}).get("UDP", {}).get("destination_port") == 7106]
    assert len(mine) == 1, recs
    (f,) = mine
    assert (f["verdict"], f["drop_reason"], f["drop_reason_desc"]) == ("DROPPED", 132, "INVALID_SOURCE_IP")
    assert f["IP"] == {"source": SPOOFED, "destination": b.ip, "ipVersion": "IPv4"}
    assert f["l4"] == {"UDP": {"source_port": 40000, "destination_port": 7106}}
    # The destination is a known endpoint: its id, pod name and identity (the source is nobody).
    assert f["destination"]["ID"] == b.endpoint.id and f["destination"]["pod_name"] == "b"
    assert f["destination"]["identity"] == b.endpoint.identity
    assert "ID" not in f.get("source", {})
    assert f["interface"] == {"index": a.endpoint.ifindex, "name": a.endpoint.ifname}
    assert f["event_type"] == {"type": 1, "sub_type": 132}
    assert (f["traffic_direction"], f["node_name"], f["Type"]) == ("EGRESS", f"{topo.prefix}-drops", "L3_L4")
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", f["ethernet"]["source"])
    assert f["ethernet"]["destination"] == a.endpoint.node_mac  # the host side of a's veth
    assert f["time"].endswith("Z") and f["Summary"].startswith("xx drop (Invalid source ip)")


def test_trace_flows_name_both_endpoints_and_the_point(topo: Topo) -> None:
    c, d = topo.c, topo.d
    mon = MonitorProc("--type", "trace", "--lab", topo.prefix, "--node", "traces", "--flows", "--duration", "3")
    mon.wait_listening()
    pkt = ipv4(c.ip, d.ip, udp(c.ip, d.ip, 40002, 7107, b"honest"), proto=IPPROTO_UDP)
    assert pod_python(c, f"packets.send_raw_ipv4([bytes.fromhex({pkt.hex()!r})], {d.ip!r})") == 1
    out, err = mon.finish()
    assert mon.proc.returncode == 0, err
    lines = [ln for ln in out.splitlines() if f"{d.ip}:7107" in ln]
    ids = c.endpoint.identity, d.endpoint.identity
    src = re.escape(f"{c.ip}:40002 (ID:{ids[0]} c) -> {d.ip}:7107 (ID:{ids[1]} d)")
    assert len(lines) == 2, out
    assert re.fullmatch(rf"\w{{3}} [ \d]\d \d\d:\d\d:\d\d\.\d{{3}}: {src} from-endpoint FORWARDED \(UDP\)", lines[0]), lines
    assert re.fullmatch(rf"\w{{3}} [ \d]\d \d\d:\d\d:\d\d\.\d{{3}}: {src} to-endpoint FORWARDED \(UDP\)", lines[1]), lines


def test_monitor_json_rows_carry_the_hubble_flow(topo: Topo) -> None:
    mon = MonitorProc("--type", "drop", "--lab", topo.prefix, "--node", "drops", "-o", "json", "--duration", "3")
    mon.wait_listening()
    send_spoofed_udp(topo.a, SPOOFED, topo.b, 7108)
    out, err = mon.finish()
    assert mon.proc.returncode == 0, err
    (row,) = [e for e in json_events(out) if e.get("dport") == 7108]
    assert row["hubble"]["verdict"] == "DROPPED" and row["hubble"]["destination"]["pod_name"] == "b"


def test_monitor_errors_name_what_is_missing(topo: Topo) -> None:
    res = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "monitor", "--lab", "no-such-lab", "--duration", "1"],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert res.returncode == 1 and "no-such-lab" in res.stderr
