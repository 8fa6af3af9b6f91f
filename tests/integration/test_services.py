"""Services end to end in lab clusters: what ``test_connectivity.py`` (Cilium's connectivity-test
scenarios) does not cover.

Two labs, each shared by one test class (both 2-node VXLAN clusters, SNAT NodePort):

* ``TestSocketLb``: socket LB on (the default), Maglev table size 16381 (Cilium's default) so that
  two Maglev NodePort services nearly fill ``cilium_lb4_maglev`` (65536 entries) -- a real way to make
  a map write fail part-way. Validation through ``Cluster.upsert_service`` (nothing changes on any
  node), backend replacement under traffic, unconnected UDP (sendmsg4/recvmsg4), session affinity,
  externalTrafficPolicy=Local with all backends on one node, Maglev consistency (and eTP=Local with
  Maglev), a service without backends, delete, and MapFullError with rollback.
* ``TestPerPacketLb``: ``socket_lb=False``: ClusterIP is translated per packet in
  ``cil_from_container`` (backends see the client pod's IP), affinity by client IP, no backends,
  delete.

Every request loop is bounded in count and time; only lab namespaces and lab addresses are used.
"""

from __future__ import annotations

import json
import select
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import pytest

from ciliumlite.bpf.errors import BpfError, MapFullError, ValidationError
from ciliumlite.datapath import maglev
from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Host, Lab, LabCluster, Node, Pod
from ciliumlite.service import Backend, Frontend, Service

pytestmark = pytest.mark.integration

ECHO = 8080          # the lab echo server (TCP and UDP, one request per connection)
LINES = 9100         # our line server (threaded, keeps connections open)
MAGLEV_SIZE = 16381
ECONNREFUSED = 111

# One request per connection (or datagram), ``count`` times; JSON list on stdout.
#   argv: mode ip port count timeout [sport,sport,...]
#   mode tcp: connect, send, half-close, read to EOF (the lab echo server's protocol)
#   mode udp: a connected socket per datagram; mode udp-unconnected: ONE socket, sendto()/recvfrom()
MULTI = r"""
import json, socket, sys, time
mode, ip, port, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
sports = [int(p) for p in sys.argv[6].split(",")] if len(sys.argv) > 6 and sys.argv[6] else []
out = []
shared = None
if mode == "udp-unconnected":
    shared = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    shared.settimeout(timeout)
for i in range(count):
    t0 = time.monotonic()
    r = {"t0": t0}
    s = shared or socket.socket(socket.AF_INET, socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if sports and shared is None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", sports[i % len(sports)]))
        msg = b"m%d" % i
        if mode == "tcp":
            s.connect((ip, port))
            src = s.getpeername()
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while len(data) < 65536:
                b = s.recv(65536)
                if not b:
                    break
                data += b
        elif mode == "udp":
            s.connect((ip, port))
            s.send(msg)
            data, src = s.recvfrom(65536)
        else:
            s.sendto(msg, (ip, port))
            data, src = s.recvfrom(65536)
        parts = data.decode(errors="replace").rsplit("|", 2)
        r.update(ok=len(parts) == 3 and parts[0] == msg.decode(), server=parts[1] if len(parts) == 3 else "",
                 seen=parts[2] if len(parts) == 3 else "", src=list(src))
    except OSError as exc:
        r.update(ok=False, errno=exc.errno, error="%s: %s" % (type(exc).__name__, exc))
    finally:
        if shared is None:
            s.close()
    r["secs"] = time.monotonic() - t0
    out.append(r)
print(json.dumps(out), flush=True)
"""

# Threaded line server: every line gets "<line>|<name>" back, connections stay open.
LINE_SERVER = r"""
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(128)
print("ready", flush=True)
def serve(conn):
    with conn:
        for line in conn.makefile("rb"):
            conn.sendall(line.rstrip(b"\n") + b"|" + name.encode() + b"\n")
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# Under-traffic client: first a long-lived connection that lands on backend ``want`` (retried, at most
# 40 connects), prints "ready", then short connections for ``seconds`` (at most 600, 5 ms apart), then
# one more line on the long-lived connection.   argv: ip port want seconds
CHURN_CLIENT = r"""
import json, socket, sys, time
ip, port, want, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
def ask(s, f, text):
    s.sendall(text.encode() + b"\n")
    line = f.readline().decode().strip()
    return line.split("|", 1)[1] if "|" in line else "BAD " + line
long = None
for _ in range(40):
    s = socket.create_connection((ip, port), timeout=2)
    s.settimeout(2)
    f = s.makefile("rb")
    if ask(s, f, "hello") == want:
        long = (s, f)
        break
    s.close()
print("ready" if long else "no-long-connection", flush=True)
reqs = []
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end and n < 600:
    t0 = time.monotonic()
    try:
        c = socket.create_connection((ip, port), timeout=1)
        c.settimeout(1)
        reqs.append([t0, ask(c, c.makefile("rb"), str(n))])
        c.close()
    except OSError as exc:
        reqs.append([t0, "ERR %s" % exc])
    n += 1
    time.sleep(0.005)
after = None
if long:
    try:
        after = ask(long[0], long[1], "after")
    except OSError as exc:
        after = "ERR %s" % exc
print(json.dumps({"reqs": reqs, "long": after}), flush=True)
"""


def py(*args: str, script: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", script, *args]


def requests(src: Host, mode: str, ip: str, port: int, count: int, *, timeout: float = 2.0,
             sports: list[int] | None = None) -> list[dict[str, Any]]:
    """``count`` echo requests from ``src`` (bounded: count * timeout + 10 s)."""
    res = src.run(*py(mode, ip, str(port), str(count), str(timeout), ",".join(map(str, sports or [])), script=MULTI),
                  timeout=count * (timeout + 0.5) + 10)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def servers(results: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["server"] if r["ok"] else f"ERR {r.get('error')}" for r in results)


def snapshot(cl: LabCluster) -> dict[str, Any]:
    """What every node's LB maps hold, and what the cluster store holds."""
    out: dict[str, Any] = {n.name: n.datapath.lb_entries() for n in cl.nodes() if n.datapath is not None}
    out["store"] = [(s.name, s) for s in cl.control.services()]
    return out


def rows_of(node: Node, addr: str, port: int) -> list[dict[str, Any]]:
    assert node.datapath is not None
    return [r for r in node.datapath.lb_entries() if r["frontend"] == f"{addr}:{port}"]


def drop_service(cl: LabCluster, name: str) -> None:
    """Remove ``name`` from the store and from every node that still has it (robust cleanup)."""
    try:
        cl.delete_service(name)
    except Exception:
        pass
    for n in cl.nodes():
        dp = n.datapath
        if dp is not None and name in [s.name for s in dp.services()]:
            try:
                dp.delete_service(name)
            except Exception:  # cleanup must not hide the test's own failure
                pass


@dataclass
class SockLab:
    lab: Lab
    cl: LabCluster
    w1: Node
    w2: Node
    client: Pod        # on w1
    client2: Pod       # on w2
    be1: Pod           # on w1
    be2: Pod           # on w2
    be3: Pod           # on w2
    outside: Host


def _warm_up(cl: LabCluster, backend: Pod) -> None:
    """Load every node's socket LB and LB maps now (the first upsert does it), so that the per-test
    leak check does not count the lab's own objects against the first test."""
    cl.upsert_service(Service("warm-up", Frontend("10.96.0.99", 80), [Backend(backend.ip, ECHO)]))
    cl.delete_service("warm-up")


def _line_server(pod: Pod) -> None:
    proc = pod.popen(*py(pod.name, str(LINES), script=LINE_SERVER))
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    line = proc.stdout.readline() if ready and proc.stdout else ""
    assert line.strip() == "ready", f"line server on {pod.name}: {line!r}"


@pytest.fixture(scope="class")
def sock() -> Iterator[SockLab]:
    with Lab("svc-sock") as lab:
        cl = lab.cluster(["w1", "w2"], routing="vxlan", maglev_table_size=MAGLEV_SIZE)
        w1, w2 = cl.node("w1"), cl.node("w2")
        pods = {name: node.add_pod(name) for node, name in
                [(w1, "client"), (w2, "client2"), (w1, "be1"), (w2, "be2"), (w2, "be3")]}
        for name in ("be1", "be2", "be3"):
            pods[name].ensure_echo_server(ECHO)
            _line_server(pods[name])
        _warm_up(cl, pods["be1"])
        yield SockLab(lab, cl, w1, w2, pods["client"], pods["client2"], pods["be1"], pods["be2"], pods["be3"],
                      lab.outside())


# -- Maglev prediction (csrc/include/ciliumlite/lb.h) ----------------------------------------------------
def _rol32(w: int, s: int) -> int:
    return ((w << s) | (w >> (32 - s))) & 0xFFFFFFFF


def jhash_3words(a: int, b: int, c: int, initval: int) -> int:
    m = 0xFFFFFFFF
    initval = (initval + 0xDEADBEEF + (3 << 2)) & m
    a, b, c = (a + initval) & m, (b + initval) & m, (c + initval) & m
    c ^= b; c = (c - _rol32(b, 14)) & m  # noqa: E702
    a ^= c; a = (a - _rol32(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - _rol32(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - _rol32(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - _rol32(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - _rol32(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - _rol32(b, 24)) & m  # noqa: E702
    return c


def maglev_index(saddr: str, sport: int, dport: int, proto: int, size: int, seed: int = 0) -> int:
    """Index into the Maglev table for a packet (raw network-order values read little-endian)."""
    le16 = lambda v: int.from_bytes(v.to_bytes(2, "big"), "little")  # noqa: E731
    a = int.from_bytes(IPv4Address(saddr).packed, "little")
    return jhash_3words(a, (le16(sport) << 16) | le16(dport), proto, seed) % size


class TestSocketLb:
    # -- validation: nothing changes anywhere -------------------------------------------------------------
    def test_bad_input_changes_no_node(self, sock: SockLab) -> None:
        cl = sock.cl
        base = Service("val-a", Frontend("10.96.10.1", 80), [Backend(sock.be1.ip, ECHO)], type="NodePort",
                       node_port=30010)
        other = Service("val-b", Frontend("10.96.10.2", 80), [Backend(sock.be2.ip, ECHO)], type="NodePort",
                        node_port=30011)
        try:
            cl.upsert_service(base)
            cl.upsert_service(other)
            before = snapshot(cl)
            bad: list[tuple[Any, str]] = [
                (Service("val-c", Frontend("10.96.10.1", 80), [Backend(sock.be3.ip, ECHO)]),
                 r"frontend 10\.96\.10\.1:80/TCP is already used by val-a"),
                (Service("val-c", Frontend("10.96.10.3", 80), [Backend(sock.be3.ip, ECHO)], type="NodePort",
                         node_port=30010), r"node port 30010/TCP is already taken by val-a"),
                # an update of an existing service that would clash: val-b keeps its rows
                (Service("val-b", Frontend("10.96.10.2", 80), [Backend(sock.be3.ip, ECHO)], type="NodePort",
                         node_port=30010), r"node port 30010/TCP is already taken by val-a"),
                (Service("val-b", Frontend("10.96.10.1", 80), [Backend(sock.be3.ip, ECHO)]),
                 r"already used by val-a"),
                ("val-c", r"expected a Service"),
                (None, r"expected a Service"),
            ]
            for svc, match in bad:
                with pytest.raises(ValidationError, match=match):
                    cl.upsert_service(svc)
                assert snapshot(cl) == before, f"rejected {svc!r} changed something"
            # The same frontend address on another protocol, or the same node port on another protocol, is fine.
            udp = Service("val-udp", Frontend("10.96.10.1", 80, "UDP"), [Backend(sock.be3.ip, ECHO)], type="NodePort",
                          node_port=30010)
            cl.upsert_service(udp)
            assert sorted(r["proto"] for r in rows_of(sock.w1, "10.96.10.1", 80) if r["slot"] == 0) == [6, 17]
        finally:
            for name in ("val-a", "val-b", "val-udp"):
                drop_service(cl, name)

    def test_rejected_on_one_node_leaves_every_node_unchanged(self, sock: SockLab) -> None:
        cl = sock.cl
        assert sock.w2.datapath is not None
        # A service only w2 has (programmed on it directly, not through the cluster).
        sock.w2.datapath.upsert_service(Service("w2-only", Frontend("10.96.11.1", 80), [Backend(sock.be2.ip, ECHO)],
                                                type="NodePort", node_port=30020))
        try:
            before = snapshot(cl)
            clash = Service("clash", Frontend("10.96.11.2", 80), [Backend(sock.be1.ip, ECHO)], type="NodePort",
                            node_port=30020)
            with pytest.raises(ValidationError, match="30020"):
                cl.upsert_service(clash)
            assert snapshot(cl) == before
            assert rows_of(sock.w1, "10.96.11.2", 80) == [], "w1 accepted it, but nothing may be written"
            assert "clash" not in [s.name for s in cl.control.services()]
        finally:
            sock.w2.datapath.delete_service("w2-only")

    # -- backends replaced under traffic --------------------------------------------------------------------
    def test_backend_update_under_traffic(self, sock: SockLab) -> None:
        cl, vip = sock.cl, "10.96.12.1"
        old = Service("churn", Frontend(vip, LINES), [Backend(sock.be1.ip, LINES), Backend(sock.be2.ip, LINES)])
        new = Service("churn", Frontend(vip, LINES), [Backend(sock.be2.ip, LINES), Backend(sock.be3.ip, LINES)])
        cl.upsert_service(old)
        proc = sock.client.popen(*py(vip, str(LINES), "be2", "3.0", script=CHURN_CLIENT))
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 15.0)
            first = proc.stdout.readline().strip() if ready and proc.stdout else ""
            assert first == "ready", f"no long-lived connection to be2 through {vip}: {first!r}"
            time.sleep(1.0)
            t_before = time.monotonic()
            cl.upsert_service(new)
            t_after = time.monotonic()
            out, err = proc.communicate(timeout=20)
        finally:
            sock.lab.processes.stop(proc)
            drop_service(cl, "churn")
        assert out.strip(), f"the client printed nothing: {err}"
        doc = json.loads(out.strip().splitlines()[-1])
        reqs = doc["reqs"]
        before = Counter(name for t0, name in reqs if t0 < t_before)
        after = Counter(name for t0, name in reqs if t0 > t_after)
        assert {"be1", "be2"} <= set(before), f"before the update: {dict(before)}"
        assert "be1" not in after, f"new connections reached the removed backend after upsert returned: {dict(after)}"
        assert set(after) == {"be2", "be3"}, f"after the update: {dict(after)}"
        failed = [name for _, name in reqs if name.startswith(("ERR", "BAD"))]
        assert not failed, f"{len(failed)} of {len(reqs)} requests failed: {failed[:3]}"
        assert doc["long"] == "be2", f"the long-lived connection to be2: {doc['long']!r}"
        assert len(reqs) >= 50, f"only {len(reqs)} requests in 3 s"

    # -- UDP through sendmsg4/recvmsg4 -------------------------------------------------------------------------
    def test_unconnected_udp_reply_comes_from_the_service(self, sock: SockLab) -> None:
        cl, vip = sock.cl, "10.96.13.1"
        cl.upsert_service(Service("dns", Frontend(vip, 53, "UDP"),
                                  [Backend(sock.be1.ip, ECHO), Backend(sock.be2.ip, ECHO), Backend(sock.be3.ip, ECHO)]))
        try:
            before = sock.w1.datapath.count(Reason.LB_SOCK_REVXLATE) if sock.w1.datapath else 0
            res = requests(sock.client, "udp-unconnected", vip, 53, 8)
            assert all(r["ok"] for r in res), res
            assert {tuple(r["src"]) for r in res} == {(vip, 53)}, "recvfrom() must report the service address"
            assert len(servers(res)) == 1, f"one socket, one backend (socket cookie): {servers(res)}"
            assert {r["seen"].split(":")[0] for r in res} == {sock.client.ip}
            revx = (sock.w1.datapath.count(Reason.LB_SOCK_REVXLATE) if sock.w1.datapath else 0) - before
            assert revx >= 8, f"recvmsg4 translated {revx} replies"
            # Several sockets spread over the backends.
            spread = Counter()
            for _ in range(3):
                spread.update(servers(requests(sock.client, "udp", vip, 53, 6)))
            assert len(spread) >= 2 and not any(k.startswith("ERR") for k in spread), spread
        finally:
            drop_service(cl, "dns")

    # -- session affinity -------------------------------------------------------------------------------------
    def test_session_affinity_pins_a_client_to_one_backend(self, sock: SockLab) -> None:
        cl = sock.cl
        bes = [Backend(p.ip, ECHO) for p in (sock.be1, sock.be2, sock.be3)]
        cl.upsert_service(Service("aff", Frontend("10.96.14.1", 80), bes, session_affinity=True, affinity_timeout=60))
        cl.upsert_service(Service("noaff", Frontend("10.96.14.2", 80), bes))
        try:
            pinned = servers(requests(sock.client, "tcp", "10.96.14.1", 80, 15))
            assert len(pinned) == 1 and not next(iter(pinned)).startswith("ERR"), pinned
            again = servers(requests(sock.client, "tcp", "10.96.14.1", 80, 5))
            assert again == Counter({next(iter(pinned)): 5}), "a later process in the same pod keeps the backend"
            spread = servers(requests(sock.client, "tcp", "10.96.14.2", 80, 15))
            assert len(spread) >= 2, f"without affinity 15 connections all went to one backend: {spread}"
            other = servers(requests(sock.client2, "tcp", "10.96.14.1", 80, 6))
            assert len(other) == 1, f"client2 is pinned too: {other}"
        finally:
            drop_service(cl, "aff")
            drop_service(cl, "noaff")

    # -- externalTrafficPolicy=Local -------------------------------------------------------------------------
    def test_external_traffic_policy_local(self, sock: SockLab) -> None:
        cl, np_ = sock.cl, 30040
        # Both backends on w2: w2 answers outside clients itself, w1 has none.
        cl.upsert_service(Service("etp", Frontend("10.96.15.1", 80), [Backend(sock.be2.ip, ECHO),
                                                                      Backend(sock.be3.ip, ECHO)],
                                  type="NodePort", node_port=np_, external_traffic_policy="Local"))
        try:
            assert sock.w1.ip and sock.w2.ip
            ok = requests(sock.outside, "tcp", sock.w2.ip, np_, 4)
            assert all(r["ok"] for r in ok), ok
            assert {r["seen"].split(":")[0] for r in ok} == {sock.outside.ip}, "the backend sees the real client"
            assert set(servers(ok)) <= {"be2", "be3"}
            t0 = time.monotonic()
            refused = requests(sock.outside, "tcp", sock.w1.ip, np_, 2, timeout=1.0)
            assert not any(r["ok"] for r in refused), f"w1 has no local backend but answered: {refused}"
            assert time.monotonic() - t0 < 6
            ext = [r for r in rows_of(sock.w1, sock.w1.ip, np_) if r["slot"] == 0 and r["scope"] == 0]
            assert ext and "(0 backends)" in ext[0]["backend"], ext
            # In-cluster clients on w1 reach every backend through w1's NodePort (internal scope).
            inside = Counter()
            for _ in range(4):
                inside.update(servers(requests(sock.client, "tcp", sock.w1.ip, np_, 5)))
                if set(inside) == {"be2", "be3"}:
                    break
            assert set(inside) == {"be2", "be3"}, inside
        finally:
            drop_service(cl, "etp")

    # -- Maglev -----------------------------------------------------------------------------------------------
    def test_maglev_nodeport_hashes_a_client_consistently(self, sock: SockLab) -> None:
        cl, np_ = sock.cl, 30050
        bes = [sock.be1, sock.be2, sock.be3]
        cl.upsert_service(Service("mag", Frontend("10.96.16.1", 80), [Backend(p.ip, ECHO) for p in bes],
                                  type="NodePort", node_port=np_, maglev=True))
        try:
            assert sock.w1.ip and sock.w2.ip
            table = maglev.table([f"{p.ip}:{ECHO}" for p in bes], MAGLEV_SIZE)
            sports = list(range(45001, 45013))
            got: dict[str, list[str]] = {}
            for node_ip in (sock.w1.ip, sock.w2.ip):
                res = requests(sock.outside, "tcp", node_ip, np_, len(sports), sports=sports)
                assert all(r["ok"] for r in res), res
                got[node_ip] = [r["server"] for r in res]
            assert got[sock.w1.ip] == got[sock.w2.ip], f"one client 5-tuple, two nodes, different backends: {got}"
            predicted = [bes[table[maglev_index(sock.outside.ip, sp, np_, 6, MAGLEV_SIZE)]].name for sp in sports]
            assert got[sock.w1.ip] == predicted, "the datapath's choice is the Maglev table's (lb.h hash)"
            assert len(set(predicted)) >= 2
            # The same 5-tuple again, through the same node: the same backend.
            again = requests(sock.outside, "tcp", sock.w1.ip, np_, 4, sports=sports[:4])
            assert [r["server"] for r in again] == got[sock.w1.ip][:4]
        finally:
            drop_service(cl, "mag")

    def test_maglev_with_external_traffic_policy_local_stays_local(self, sock: SockLab) -> None:
        cl, np_ = sock.cl, 30051
        cl.upsert_service(Service("mag-local", Frontend("10.96.16.2", 80),
                                  [Backend(p.ip, ECHO) for p in (sock.be1, sock.be2, sock.be3)], type="NodePort",
                                  node_port=np_, maglev=True, external_traffic_policy="Local"))
        try:
            assert sock.w1.ip
            res = requests(sock.outside, "tcp", sock.w1.ip, np_, 8, timeout=1.0, sports=list(range(45101, 45109)))
            assert servers(res) == Counter({"be1": 8}), \
                f"eTP=Local through w1 must only reach its local backend be1: {servers(res)}"
            assert {r["seen"].split(":")[0] for r in res} == {sock.outside.ip}
        finally:
            drop_service(cl, "mag-local")

    # -- no backends, delete ----------------------------------------------------------------------------------
    @pytest.mark.parametrize("proto", ["tcp", "udp"])
    def test_service_without_backends_refuses_at_once(self, sock: SockLab, proto: str) -> None:
        cl = sock.cl
        cl.upsert_service(Service(f"empty-{proto}", Frontend("10.96.17.1", 80, proto.upper()), []))  # type: ignore[arg-type]
        try:
            res = requests(sock.client, proto, "10.96.17.1", 80, 3, timeout=2.0)
            for r in res:
                assert not r["ok"] and r.get("errno") == ECONNREFUSED, r
                assert r["secs"] < 0.1, f"refused after {r['secs']:.3f} s"
        finally:
            drop_service(cl, f"empty-{proto}")

    def test_delete_service(self, sock: SockLab) -> None:
        cl, vip, np_ = sock.cl, "10.96.18.1", 30060
        cl.upsert_service(Service("gone", Frontend(vip, 80), [Backend(sock.be1.ip, ECHO), Backend(sock.be2.ip, ECHO)],
                                  type="NodePort", node_port=np_))
        assert sock.w1.ip
        assert all(r["ok"] for r in requests(sock.client, "tcp", vip, 80, 2))
        assert all(r["ok"] for r in requests(sock.outside, "tcp", sock.w1.ip, np_, 1))
        revnat_before = {n.name: len(dict(n.datapath.maps.revnat.items())) for n in sock.cl.nodes()
                         if n.datapath and n.datapath.maps}
        cl.delete_service("gone")
        for n in cl.nodes():
            assert n.datapath is not None and n.datapath.maps is not None
            assert rows_of(n, vip, 80) == [] and rows_of(n, n.ip or "", np_) == [] and rows_of(n, "0.0.0.0", np_) == []
            left = {str(v.address) for v in n.datapath.maps.lb_backends.values()}
            assert not left & {sock.be1.ip, sock.be2.ip}, f"{n.name}: backends left behind: {left}"
            assert len(dict(n.datapath.maps.revnat.items())) == revnat_before[n.name] - 3, "3 frontends' revNAT gone"
        assert "gone" not in [s.name for s in cl.control.services()]
        for r in requests(sock.client, "tcp", vip, 80, 2, timeout=1.0):
            assert not r["ok"], f"connection to the deleted ClusterIP succeeded: {r}"
        for r in requests(sock.outside, "tcp", sock.w1.ip, np_, 1, timeout=1.0):
            assert not r["ok"], f"connection to the deleted NodePort succeeded: {r}"

    def test_maglev_service_without_backends_can_be_deleted(self, sock: SockLab) -> None:
        cl = sock.cl
        cl.upsert_service(Service("mag-empty", Frontend("10.96.16.3", 80), [], type="NodePort", node_port=30052,
                                  maglev=True))
        try:
            assert sock.w1.ip
            res = requests(sock.outside, "tcp", sock.w1.ip, 30052, 1, timeout=1.0)
            assert not res[0]["ok"], res
            cl.delete_service("mag-empty")
            for n in cl.nodes():
                assert rows_of(n, "10.96.16.3", 80) == [] and rows_of(n, "0.0.0.0", 30052) == []
        finally:
            drop_service(cl, "mag-empty")

    # -- a map write failing part-way (last: a failed write may leave the Maglev map dirty) --------------------
    # Two Maglev NodePort services take 2 frontends x 16381 slots each = 65524 of the 65536 entries of
    # cilium_lb4_maglev, so the next Maglev table cannot be written: MapFullError part-way through
    # LbMaps.program, after backends, reverse NAT and slots of earlier rows were written.
    def _fill(self, sock: SockLab) -> Service:
        bes1 = [Backend(sock.be1.ip, ECHO)]
        for i in range(2):
            sock.cl.upsert_service(Service(f"fill-{i}", Frontend(f"10.96.19.{i + 1}", 80), bes1, type="NodePort",
                                           node_port=30070 + i, maglev=True))
        grow = Service("grow", Frontend("10.96.19.3", 80), bes1, type="NodePort", node_port=30072)
        sock.cl.upsert_service(grow)
        return grow

    def _bigger(self, sock: SockLab) -> Service:
        return Service("grow", Frontend("10.96.19.3", 80), [Backend(sock.be1.ip, ECHO), Backend(sock.be2.ip, ECHO)],
                       type="NodePort", node_port=30072, maglev=True)

    def _unfill(self, sock: SockLab) -> None:
        for name in ("fill-0", "fill-1", "grow", "brand-new"):
            drop_service(sock.cl, name)

    def test_map_full_update_keeps_the_previous_state(self, sock: SockLab) -> None:
        try:
            grow = self._fill(sock)
            assert servers(requests(sock.client, "tcp", "10.96.19.3", 80, 2)) == Counter({"be1": 2})
            before = snapshot(sock.cl)
            with pytest.raises(MapFullError):
                sock.cl.upsert_service(self._bigger(sock))
            after = snapshot(sock.cl)
            for n in sock.cl.nodes():
                assert n.datapath is not None and n.datapath.service("grow") == grow
                extra = [r for r in after[n.name] if r not in before[n.name]]
                assert not extra, f"{n.name}: the failed update left rows behind: {extra}"
            res = requests(sock.client, "tcp", "10.96.19.3", 80, 6)
            assert servers(res) == Counter({"be1": 6}), "the service still works with its previous backends"
        finally:
            self._unfill(sock)

    def test_map_full_update_leaves_the_cluster_store_unchanged(self, sock: SockLab) -> None:
        try:
            grow = self._fill(sock)
            with pytest.raises(MapFullError):
                sock.cl.upsert_service(self._bigger(sock))
            stored = {s.name: s for s in sock.cl.control.services()}
            assert stored["grow"] == grow, "the store says the update happened, but no node has it"
        finally:
            self._unfill(sock)

    def test_map_full_new_service_raises_map_full_and_leaves_no_trace(self, sock: SockLab) -> None:
        try:
            self._fill(sock)
            before = snapshot(sock.cl)
            fresh = Service("brand-new", Frontend("10.96.19.4", 80), [Backend(sock.be1.ip, ECHO)], type="NodePort",
                            node_port=30073, maglev=True)
            try:
                sock.cl.upsert_service(fresh)
            except MapFullError:
                pass
            except BpfError as exc:
                pytest.fail(f"the rollback itself failed and hid the MapFullError: {exc!r}")
            else:
                pytest.fail("a Maglev service that cannot fit was accepted")
            after = snapshot(sock.cl)
            for n in sock.cl.nodes():
                assert after[n.name] == before[n.name], f"{n.name}: rows of the rejected service"
                assert n.datapath is not None and n.datapath.lb_maps is not None
                assert not [f for f in n.datapath.lb_maps.revnat_ids() if f[1] == 30073 or str(f[0]) == "10.96.19.4"], \
                    f"{n.name}: reverse-NAT ids of the rejected service are still allocated"
            assert "brand-new" not in [s.name for s in sock.cl.control.services()]
        finally:
            self._unfill(sock)


# == per-packet LB (socket_lb=False) ========================================================================
@dataclass
class PpLab:
    lab: Lab
    cl: LabCluster
    w1: Node
    w2: Node
    client: Pod       # on w1
    pb1: Pod          # on w1
    pb2: Pod          # on w2


@pytest.fixture(scope="class")
def pp() -> Iterator[PpLab]:
    with Lab("svc-pp") as lab:
        cl = lab.cluster(["w1", "w2"], routing="vxlan", socket_lb=False)
        w1, w2 = cl.node("w1"), cl.node("w2")
        client, pb1, pb2 = w1.add_pod("client"), w1.add_pod("pb1"), w2.add_pod("pb2")
        for p in (pb1, pb2):
            p.ensure_echo_server(ECHO)
        _warm_up(cl, pb1)
        yield PpLab(lab, cl, w1, w2, client, pb1, pb2)


class TestPerPacketLb:
    def test_socket_lb_is_off(self, pp: PpLab) -> None:
        for n in pp.cl.nodes():
            assert n.datapath is not None and n.datapath.config.socket_lb is False
            assert not [lk for lk in n.datapath.attachments() if lk.program.startswith("cil_sock4")]

    @pytest.mark.parametrize("proto", ["tcp", "udp"])
    def test_pod_to_service_keeps_the_client_ip(self, pp: PpLab, proto: str) -> None:
        cl, vip = pp.cl, "10.96.30.1"
        cl.upsert_service(Service(f"pp-{proto}", Frontend(vip, 80, proto.upper()),  # type: ignore[arg-type]
                                  [Backend(pp.pb1.ip, ECHO), Backend(pp.pb2.ip, ECHO)]))
        try:
            assert pp.w1.datapath is not None
            xlate = pp.w1.datapath.count(Reason.LB_SOCK_XLATE)
            res = requests(pp.client, proto, vip, 80, 12)
            assert all(r["ok"] for r in res), res
            assert set(servers(res)) == {"pb1", "pb2"}, f"both backends (local and remote): {servers(res)}"
            assert {r["seen"].split(":")[0] for r in res} == {pp.client.ip}, "backends see the client pod's IP"
            assert {tuple(r["src"]) for r in res} == {(vip, 80)}, "replies come from the service address"
            assert pp.w1.datapath.count(Reason.LB_SOCK_XLATE) == xlate, "socket LB translated: not per packet"
        finally:
            drop_service(cl, f"pp-{proto}")

    @pytest.mark.parametrize("where", ["local", "remote"])
    @pytest.mark.parametrize("proto", ["tcp", "udp"])
    def test_direct_connection_reusing_a_service_connections_port(self, pp: PpLab, proto: str, where: str) -> None:
        # Through the ClusterIP from port P (DNATed to the backend), then straight to the backend from
        # the same port P: after DNAT both have the same 5-tuple. The direct one's replies must come
        # from the backend (before the fix they were reverse-NATed to the ClusterIP and lost), and
        # the ClusterIP from that port again still works.
        cl, vip = pp.cl, "10.96.30.5"
        backend = pp.pb1 if where == "local" else pp.pb2
        cl.upsert_service(Service(f"pp-reuse-{proto}", Frontend(vip, 80, proto.upper()),  # type: ignore[arg-type]
                                  [Backend(backend.ip, ECHO)]))
        sport = {("tcp", "local"): 45201, ("tcp", "remote"): 45202, ("udp", "local"): 45203,
                 ("udp", "remote"): 45204}[(proto, where)]
        try:
            via_vip = requests(pp.client, proto, vip, 80, 1, sports=[sport])
            direct = requests(pp.client, proto, backend.ip, ECHO, 1, sports=[sport])
            again = requests(pp.client, proto, vip, 80, 1, sports=[sport])
            assert via_vip[0]["ok"] and tuple(via_vip[0]["src"]) == (vip, 80), via_vip
            assert direct[0]["ok"], f"the direct connection from port {sport} failed: {direct}"
            assert tuple(direct[0]["src"]) == (backend.ip, ECHO) and direct[0]["server"] == backend.name, direct
            assert again[0]["ok"] and tuple(again[0]["src"]) == (vip, 80), again
        finally:
            drop_service(cl, f"pp-reuse-{proto}")

    def test_affinity_by_client_ip(self, pp: PpLab) -> None:
        cl = pp.cl
        cl.upsert_service(Service("pp-aff", Frontend("10.96.30.2", 80), [Backend(pp.pb1.ip, ECHO),
                                                                         Backend(pp.pb2.ip, ECHO)],
                                  session_affinity=True, affinity_timeout=60))
        try:
            res = servers(requests(pp.client, "tcp", "10.96.30.2", 80, 12))
            assert len(res) == 1 and not next(iter(res)).startswith("ERR"), res
        finally:
            drop_service(cl, "pp-aff")

    def test_no_backends_refuses_at_once(self, pp: PpLab) -> None:
        cl = pp.cl
        cl.upsert_service(Service("pp-empty", Frontend("10.96.30.3", 80), []))
        try:
            res = pp.client.tcp_echo("10.96.30.3", 80, timeout=2.0)
            assert not res.ok and res.errno == ECONNREFUSED, res
            assert res.seconds < 0.1, f"refused after {res.seconds:.3f} s"
        finally:
            drop_service(cl, "pp-empty")

    def test_delete_service(self, pp: PpLab) -> None:
        cl, vip = pp.cl, "10.96.30.4"
        cl.upsert_service(Service("pp-gone", Frontend(vip, 80), [Backend(pp.pb2.ip, ECHO)]))
        assert pp.client.tcp_echo(vip, 80).ok
        cl.delete_service("pp-gone")
        for n in cl.nodes():
            assert rows_of(n, vip, 80) == []
        res = pp.client.tcp_echo(vip, 80, timeout=1.0)
        assert not res.ok, res
