"""services: ClusterIP connection setup vs number of services, programming time, NodePort DSR vs SNAT.

perf.md §1.5 (KPR vs kube-proxy: connection cost vs services), §1.6 (socket LB vs per-packet DNAT),
§1.8 (DSR), §2 (kube-proxy iptables/nftables scaling), §5 and §7.6 (programming), §7.4 (S1–S4, S9).
Three parts, one run:

**A. Connection setup vs number of services** (S1–S4). A pod connects to a ClusterIP service whose
backend is another pod on the same node, with the ``crr`` tool (``benchmarks/tools/crr.c``: connect,
1-byte request, 1-byte response, close; serially, one client). Datapaths × service counts
(1, 1k, 10k, 100k), each its own lab (one node, pods ``a`` and ``b``), interleaved round-robin:

- ``sock``: ciliumlite default, socket LB (cgroup ``connect4`` rewrites the address once);
- ``tc``: ciliumlite with ``socket_lb=False``: per-packet DNAT in ``cil_from_container`` + BPF CT;
- ``ipt``: ``host_routing="legacy"`` plus kube-proxy in iptables mode in the node namespace
  (``_netbench.kube_proxy_rules``: ``KUBE-SERVICES`` one rule per service, ``KUBE-SVC-*``
  ``statistic random`` -> ``KUBE-SEP-*`` DNAT; one ``iptables-restore``), so conntrack is on;
- ``nft``: the same lab with kube-proxy's nftables design instead (``_netbench.kube_proxy_nft_rules``:
  ``service-ips`` verdict map on ``ip daddr . meta l4proto . th dport`` -> ``goto service-…`` ->
  ``numgen random mod N vmap`` -> ``dnat to``; one ``nft -f``).

Every service has one endpoint. The measured service is the **last** one: for iptables that is the
end of ``KUBE-SERVICES`` (the whole chain is walked: the worst case; a uniformly random service walks
half of it on average); for the BPF maps and the nftables verdict map the position does not matter.
Headline: the per-connection p50 of the crr tool (connect + request/response + close, µs), and the
connection rate.

*Programming 100k services into ciliumlite.* ``Datapath.upsert_service`` is per service and its
per-call cost grows with the number of services (part B), so the suite writes the 1…N−1 filler services
straight into the LB maps: one ``Map.update_batch`` per map (``cilium_lb4_backends_v3``,
``cilium_lb4_reverse_nat``, ``cilium_lb4_services_v2``) of packed buffers built with ``struct``
(layout checked against the SDK records ``Lb4Backend``/``Lb4ReverseNat``/``Lb4Key``/``Lb4Service``),
the same rows ``LbMaps`` writes for a ClusterIP service with one backend. The measured service is
programmed first with ``upsert_service`` (it gets reverse-NAT index 1 and backend id 1); fillers use
backend ids 2… and reverse-NAT indices 2…65535, reused past 65,534 services (``rev_nat_index`` is
16 bits, as in Cilium, whose ``bpf-lb-map-max`` default of 65,536 also caps a real cluster; filler
services receive no traffic, so a shared index changes nothing measured). The compiled LB maps hold
65,536 entries, and 100k ClusterIP services need 200k service rows: the suite resizes
``cilium_lb4_services_v2`` to 262,144 and ``cilium_lb4_backends_v3`` to 131,072 entries before the
objects load (ciliumlite has no map-size setting yet; the suite swaps ``loader.BpfObject`` for a
subclass that calls ``BpfObject.resize`` before ``load`` while its labs are built).

**B. Programming time** (C3, C6-like). Interleaved rounds, state emptied (untimed) before each:
10k and 100k services into the (resized) LB maps of a spare node, as (i) packed buffers built and
written (``struct`` + three ``update_batch`` calls) and (ii) ``update_batch`` of pre-packed buffers
only; 1k services through ``Datapath.upsert_service`` one by one; ``iptables-restore`` and ``nft -f``
of the 10k-service rule sets into an empty node namespace. The 100k ``iptables-restore`` and
``nft -f`` (tens of seconds) are timed once, while part A's labs are set up (sequentially, bounded).

**C. NodePort DSR vs SNAT** (S9). Two labs, ``lab.cluster(["n1", "n2"], routing="native",
bgp=False, load_balancer_mode="snat" | "dsr")``; a NodePort service (31000) whose backend pod is on
n2; the client is ``lab.outside()`` (203.0.113.10) connecting to n1 (10.0.0.11:31000). Per round:
the crr tool for ``SECONDS``, then ``RR_TRANSACTIONS`` 1-byte request/response round trips over one
connection (a small Python client and echo server), reading n1's ``eth0`` rx+tx packet counters
(pyroute2, ``IFLA_STATS64``) before and after each: packets through n1 per connection and per
request/response round trip (SNAT ≈ 4: request in and out, reply in and out; DSR ≈ 2: the reply
goes from n2 straight back to the client).

Goals: socket LB at 100k ≤ 1.2× its cost at 1 (the brief; S1 also wants 10k ≤ 1.1×); iptables at
10k ≥ 1.5× its cost at 1 (S2: otherwise the harness is not sensitive); S3 (iptables ÷ socket LB at
10k ≥ 1.3); S4 (socket LB ÷ per-packet LB: connection rate ≥ 1.10, here at 1k services); S9 (DSR ÷
SNAT: connection rate ≥ 1.10, packets through n1 per transaction ≤ 0.60); C3 (100k ÷ 10k
programming time ≤ 11).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from benchmarks.harness import Arm, Context, Measurement, Summary, fmt_ci, fmt_value, interleave, ratio
from benchmarks.suites._netbench import (
    CRR,
    CRR_P50,
    CRR_P99,
    CRR_PORT,
    QUIET_BUSY,
    Bench,
    NetArm,
    check_run,
    client_server_cpus,
    cluster_ip,
    conntrack_stats,
    count_rules,
    cpu_busy,
    crr_binary,
    cv_text,
    info,
    kube_proxy_nft_rules,
    kube_proxy_rules,
    mname,
    rname,
    softnet_drops,
    tcp_snapshot,
    verdict,
    wait_quiet,
)
from ciliumlite import Backend, Frontend, Service
from ciliumlite.bpf import BpfObject, Map
from ciliumlite.datapath import devices, loader
from ciliumlite.datapath.lb import BACKENDS_MAP, SERVICES_MAP, LbMaps
from ciliumlite.datapath.records import Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service
from ciliumlite.lab import Lab, Node
from ciliumlite.node import Datapath

DESCRIPTION = ("services: ClusterIP connection setup at 1/1k/10k/100k services (socket LB, per-packet BPF LB, "
               "kube-proxy iptables, nftables); programming time; NodePort DSR vs SNAT")
NEEDS_ROOT = True
DEFAULT_REPEATS = 5          # timed rounds (+1 warmup); ~4–5 min in all, see benchmarks/README.md

# -- parameters ------------------------------------------------------------------------------------
COUNTS = (1, 1_000, 10_000, 100_000)
QUICK_COUNTS = (1, 1_000, 10_000)
SECONDS = 1.0                # per CRR measurement in timed rounds
WARMUP_SECONDS = 0.5
QUICK_SECONDS = 0.5
NICE_ENV = "CILIUMLITE_BENCH_SVC_NICE"  # niceness of clients and servers (default -10; 0 = as started)
DEFAULT_NICE = -10
SVC_PORT = 80                # ClusterIP port of every service
RR_PORT = 12866              # the request/response echo server in part C
NODE_PORT_CRR = 31000
NODE_PORT_RR = 31001
RR_TRANSACTIONS = 2_000      # request/response round trips over one connection, per round (part C)
IPT_TIMEOUT_S = 120.0        # bound on one iptables-restore / nft -f (100k iptables: ~50 s here)
IPT_PRACTICAL_S = 60.0       # the brief: slower than this to load is "impractical" (reported as such)
QUIET_WAIT_START_S = 30.0    # wait at most this long for a quiet machine before the first round,
QUIET_WAIT_ROUND_S = 5.0     # ... this long before each further round,
QUIET_WAIT_TOTAL_S = 45.0    # ... and this long in all
BUSY_SAMPLE_S = 0.3
PROG_COUNTS = (10_000, 100_000)
QUICK_PROG_COUNTS = (1_000, 10_000)
UPSERT_COUNT = 1_000
UPSERT_MAX_S = 60.0        # bound on the upsert_service run (O(n²) in all)
QUICK_UPSERT_COUNT = 200
SERVICES_MAP_SIZE = 262_144  # 2 rows per ClusterIP service with one backend, + headroom
BACKENDS_MAP_SIZE = 131_072
MAX_REVNAT = 0xFFFF

DATAPATHS = ("sock", "tc", "ipt", "nft")
SOCK, TC, IPT, NFT = DATAPATHS
DP_TITLES = {
    SOCK: "ciliumlite socket LB (default)",
    TC: "ciliumlite per-packet LB (socket_lb=False)",
    IPT: "kube-proxy iptables (+ conntrack)",
    NFT: "kube-proxy nftables (+ conntrack)",
}
DSR_ARMS = ("nodeport-snat", "nodeport-dsr")
SNAT, DSR = DSR_ARMS

# Part C metrics
PKTS_CONN = "packets through n1 per CRR connection"
PKTS_RR = "packets through n1 per request/response"
RR_US = "request/response round trip (Python client)"

# Part B arm names
def prog_name(what: str, n: int) -> str:
    """Name of a programming-time measurement."""
    return f"program {label(n)} services: {what}"


BATCH = "LB maps, struct-packed + update_batch"
BATCH_RAW = "LB maps, update_batch of pre-packed buffers"
UPSERT = "Datapath.upsert_service per service"
C3_RATIO = "program: 100k ÷ 10k services, LB maps batch, total time"
RESTORE = "iptables-restore"
NFT_F = "nft -f"


def label(n: int) -> str:
    """1, 1k, 10k, 100k."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def akey(dp: str, n: int) -> str:
    """Arm key of datapath ``dp`` at ``n`` services."""
    return f"{dp}@{label(n)}"


# -- LB map sizes (benchmark-only: ciliumlite has no setting for them) -------------------------------
@contextlib.contextmanager
def lb_map_sizes(sizes: dict[str, int]) -> Iterator[None]:
    """While active, every datapath object the loader opens gets these map sizes before ``load``.

    ``ciliumlite.datapath.loader`` builds ``BpfObject``s by that module-level name, so a
    subclass that calls ``BpfObject.resize`` for the maps it declares stands in for it. All objects of
    a node must agree on a pinned map's size (libbpf refuses to reuse a pin otherwise): keep this
    active while a node is built and until its first service is programmed (``bpf_sock`` is loaded
    then).
    """
    base: type[BpfObject] = getattr(loader, "BpfObject")  # noqa: B009 (not re-exported by loader)

    class Sized(base):  # type: ignore[misc, valid-type]
        def load(self) -> BpfObject:
            if not self.loaded:
                for name, n in sizes.items():
                    if name in self.map_names:
                        self.resize(name, n)
            return super().load()  # type: ignore[no-any-return]

    setattr(loader, "BpfObject", Sized)  # noqa: B010
    try:
        yield
    finally:
        setattr(loader, "BpfObject", base)  # noqa: B010


# -- the fast path: LB map rows as packed buffers -------------------------------------------------
_BE_KEY = struct.Struct("<4s2sHBB2x")     # lb4_key: address, dport (be16), backend_slot, proto, scope
_SVC_VAL = struct.Struct("<IH2sBBH")      # lb4_service: backend_id, count, rev_nat_index (be16), flags, flags2, qcount
_BACKEND = struct.Struct("<4s2sBBHBx")    # lb4_backend: address, port (be16), proto, flags, cluster_id, zone
_REVNAT = struct.Struct("<4s2s")          # lb4_reverse_nat (packed): address, port (be16)
_U32 = struct.Struct("<I")
_BE16 = struct.Struct(">H")


def _check_layouts() -> None:
    """The struct formats above must produce exactly what the SDK records pack (else: fail loudly)."""
    ip, port = ipaddress.IPv4Address("10.96.1.2"), 8080
    cases = [
        (Lb4Key(address=ip, dport=80, backend_slot=1, proto=6, scope=0).pack(),
         _BE_KEY.pack(ip.packed, _BE16.pack(80), 1, 6, 0)),
        (Lb4Service(backend_id=7, count=0, rev_nat_index=513).pack(),
         _SVC_VAL.pack(7, 0, _BE16.pack(513), 0, 0, 0)),
        (Lb4Service(backend_id=0, count=1, rev_nat_index=2).pack(), _SVC_VAL.pack(0, 1, _BE16.pack(2), 0, 0, 0)),
        (Lb4Backend(address=ip, port=port, proto=6).pack(), _BACKEND.pack(ip.packed, _BE16.pack(port), 6, 0, 0, 0)),
        (Lb4ReverseNat(address=ip, port=80).pack(), _REVNAT.pack(ip.packed, _BE16.pack(80))),
    ]
    for sdk, ours in cases:
        if sdk != ours:
            raise RuntimeError(f"LB record layout changed: SDK packs {sdk.hex()}, the suite {ours.hex()}")


@dataclass
class LbBuffers:
    """Packed keys and values for the three LB maps (ClusterIP services with one backend each)."""

    n: int
    backend_keys: bytearray
    backend_values: bytearray
    revnat_keys: bytearray
    revnat_values: bytearray
    service_keys: bytearray      # slot rows first, then frontend rows (LbMaps' write order)
    service_values: bytearray


def filler_rev_nat(i: int) -> int:
    """Reverse-NAT index of filler ``i``: 2..65535, reused past 65,534 (index 1 is the measured service's)."""
    return 2 + i % (MAX_REVNAT - 1)


def pack_services(indices: range, *, first_backend_id: int = 2, port: int = SVC_PORT) -> LbBuffers:
    """LB rows of ClusterIP services ``cluster_ip(i):port`` -> one synthetic backend ``…:8080`` each."""
    n = len(indices)
    bk, bv = bytearray(4 * n), bytearray(_BACKEND.size * n)
    rk, rv = bytearray(2 * n), bytearray(_REVNAT.size * n)
    sk, sv = bytearray(_BE_KEY.size * 2 * n), bytearray(_SVC_VAL.size * 2 * n)
    dport = _BE16.pack(port)
    ep_port = _BE16.pack(8080)
    first_ip = int(ipaddress.IPv4Address(cluster_ip(0)))
    first_ep, n_eps = int(ipaddress.IPv4Address("10.244.128.2")), 32_764
    ks, vs = _BE_KEY.size, _SVC_VAL.size
    for j, i in enumerate(indices):
        bid = first_backend_id + j
        rid = _BE16.pack(filler_rev_nat(i))
        addr = (first_ip + i).to_bytes(4, "big")
        _U32.pack_into(bk, 4 * j, bid)
        _BACKEND.pack_into(bv, _BACKEND.size * j, (first_ep + i % n_eps).to_bytes(4, "big"), ep_port, 6, 0, 0, 0)
        rk[2 * j:2 * j + 2] = rid
        _REVNAT.pack_into(rv, _REVNAT.size * j, addr, dport)
        _BE_KEY.pack_into(sk, ks * j, addr, dport, 1, 6, 0)                      # slot 1 -> the backend
        _SVC_VAL.pack_into(sv, vs * j, bid, 0, rid, 0, 0, 0)
        _BE_KEY.pack_into(sk, ks * (n + j), addr, dport, 0, 6, 0)                # slot 0: count 1
        _SVC_VAL.pack_into(sv, vs * (n + j), 0, 1, rid, 0, 0, 0)
    return LbBuffers(n, bk, bv, rk, rv, sk, sv)


def write_services(lb: LbMaps, buf: LbBuffers) -> None:
    """Three ``update_batch`` calls, in LbMaps' order: backends, reverse NAT, service rows (slots, then
    frontends, so a reader never sees a frontend whose slot is missing)."""
    if buf.n == 0:
        return
    for m, k, v, want in ((lb.backends, buf.backend_keys, buf.backend_values, buf.n),
                          (lb.revnat, buf.revnat_keys, buf.revnat_values, buf.n),
                          (lb.services, buf.service_keys, buf.service_values, 2 * buf.n)):
        got = m.update_batch(k, v)
        if got != want:
            raise RuntimeError(f"update_batch wrote {got} of {want} entries")


def service_rows(lb: LbMaps) -> int:
    """Entries of the service map (one batch dump)."""
    return lb.services.lookup_batch_raw()[2]


def delete_services(lb: LbMaps, buf: LbBuffers) -> None:
    """Undo ``write_services`` (frontend rows first)."""
    if buf.n == 0:
        return
    lb.services.delete_batch(buf.service_keys[_BE_KEY.size * buf.n:])
    lb.services.delete_batch(buf.service_keys[:_BE_KEY.size * buf.n])
    # fillers past 65,534 share reverse-NAT indices: delete each key once
    lb.revnat.delete_batch(b"".join(dict.fromkeys(bytes(buf.revnat_keys[k:k + 2])
                                                 for k in range(0, len(buf.revnat_keys), 2))))
    lb.backends.delete_batch(buf.backend_keys)


# -- part A: the arms ------------------------------------------------------------------------------
@dataclass
class SvcArm:
    """One datapath at one service count: a lab with a node, a client pod and a server pod."""

    dp: str
    n: int
    lab: Lab
    node: Node
    arm: NetArm
    setup: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _nice() -> int:
    return int(os.environ.get(NICE_ENV, str(DEFAULT_NICE)))


def _build_arm(stack: contextlib.ExitStack, dp: str, n: int, tag: str) -> SvcArm:
    """The lab of one arm (no services yet)."""
    bpf = dp in (SOCK, TC)
    lab = Lab(f"s{tag}{dp}{label(n)}", host_routing="bpf" if bpf else "legacy")  # ≤ 16 chars
    stack.callback(lab.close)
    node = lab.add_node("n", socket_lb=dp == SOCK) if bpf else lab.add_node("n")
    a, b = node.add_pod("a"), node.add_pod("b")
    arm = NetArm(akey(dp, n), b.ip, a.run, b.run, b.popen, lab.processes.stop, a.netns, b.netns, node=node,
                 target_ip=cluster_ip(n - 1), target_port=SVC_PORT)
    return SvcArm(dp, n, lab, node, arm)


def _program_bpf(sa: SvcArm) -> None:
    """The measured service through the SDK, then N−1 fillers through the fast path."""
    dp = sa.node.datapath
    assert dp is not None
    t0 = time.perf_counter()
    dp.upsert_service(Service(name="measured", frontend=Frontend(cluster_ip(sa.n - 1), SVC_PORT),
                              backends=[Backend(sa.arm.server_ip, CRR_PORT)]))
    assert dp.lb_maps is not None
    buf = pack_services(range(sa.n - 1))
    write_services(dp.lb_maps, buf)
    sa.setup["program"] = time.perf_counter() - t0
    rows = service_rows(dp.lb_maps)
    if rows != 2 * sa.n:
        raise RuntimeError(f"{sa.arm.key}: {rows} service rows, expected {2 * sa.n}")


def _restore(node: Node, argv: list[str], text: str, what: str, timeout: float = IPT_TIMEOUT_S) -> float:
    """Write ``text`` to a temporary file, run ``argv + [file]`` in the node namespace; seconds taken."""
    with tempfile.NamedTemporaryFile("w", prefix="cl-bench-svc-", suffix=".rules") as f:
        f.write(text)
        f.flush()
        t0 = time.perf_counter()
        check_run(node.run(*argv, f.name, timeout=timeout), what)
        return time.perf_counter() - t0


def _program_kube_proxy(sa: SvcArm) -> None:
    real = {sa.n - 1: [(sa.arm.server_ip, CRR_PORT)]}
    if sa.dp == IPT:
        text = kube_proxy_rules(sa.n, 1, real=real, port=SVC_PORT)
        sa.notes["rules"] = f"{count_rules(text)} rules"
        sa.setup["program"] = _restore(sa.node, ["iptables-restore"], text, f"{sa.arm.key}: iptables-restore")
    else:
        text = kube_proxy_nft_rules(sa.n, 1, real=real, port=SVC_PORT)
        sa.notes["rules"] = f"{text.count(chr(10))} nft commands"
        sa.setup["program"] = _restore(sa.node, ["nft", "-f"], text, f"{sa.arm.key}: nft -f")


def _rule_hits(sa: SvcArm) -> int:
    """Packets that reached the kube-proxy rules (≈ connections: only first packets take the nat hooks)."""
    if sa.dp == IPT:
        out = sa.node.run("iptables", "-t", "nat", "-L", "PREROUTING", "-n", "-v", "-x", timeout=60).stdout
        return next((int(line.split()[0]) for line in out.splitlines() if "KUBE-SERVICES" in line), -1)
    return -1


# -- part C: NodePort DSR vs SNAT -------------------------------------------------------------------
RR_SCRIPT = r"""
import json, signal, socket, sys, time
mode = sys.argv[1]
if mode == "server":
    port, max_s = int(sys.argv[2]), int(sys.argv[3])
    signal.alarm(max_s)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            d = c.recv(64)
            if not d:
                break
            c.sendall(d)
        c.close()
else:
    ip, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = socket.create_connection((ip, port), timeout=5)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.perf_counter()
    for _ in range(n):
        c.sendall(b"x")
        if not c.recv(1):
            raise SystemExit("connection closed")
    el = time.perf_counter() - t0
    c.close()
    print(json.dumps({"n": n, "seconds": el}))
"""


@dataclass
class DsrArm:
    """One NodePort lab: n1 (the node the client talks to), the backend pod on n2, the outside client."""

    key: str
    lab: Lab
    n1: Node
    arm: NetArm
    samples: dict[str, list[float]] = field(default_factory=dict)


def _link_packets(node: Node, dev: str = "eth0") -> int:
    """rx + tx packets of ``dev`` in the node namespace (pyroute2, IFLA_STATS64)."""
    with devices.iproute(node.netns) as ipr:
        links = ipr.get_links(ifname=dev)
        stats = links[0].get_attr("IFLA_STATS64")
        return int(stats["rx_packets"]) + int(stats["tx_packets"])


def _build_dsr(stack: contextlib.ExitStack, key: str, mode: str, bench: Bench, tag: str) -> DsrArm:
    lab = Lab(f"s{tag}{mode}")
    stack.callback(lab.close)
    cl = lab.cluster(["n1", "n2"], routing="native", bgp=False, load_balancer_mode=mode)
    n1, n2 = cl.node("n1"), cl.node("n2")
    be = n2.add_pod("be")
    world = lab.outside()
    assert n1.ip is not None
    cl.upsert_service(Service(name="crr", frontend=Frontend("10.96.0.10", SVC_PORT),
                              backends=[Backend(be.ip, CRR_PORT)], type="NodePort", node_port=NODE_PORT_CRR))
    cl.upsert_service(Service(name="rr", frontend=Frontend("10.96.0.11", SVC_PORT),
                              backends=[Backend(be.ip, RR_PORT)], type="NodePort", node_port=NODE_PORT_RR))
    arm = NetArm(key, be.ip, world.run, be.run, be.popen, lab.processes.stop, world.netns, be.netns, node=n1,
                 target_ip=n1.ip, target_port=NODE_PORT_CRR)
    bench.start_crr_server(arm, "0.0.0.0")
    rr = arm.server_popen(*bench.server_argv([sys.executable, "-I", "-S", "-c", RR_SCRIPT, "server", str(RR_PORT),
                                          "900"]))
    arm.servers.append(rr)
    line = rr.stdout.readline() if rr.stdout else ""
    if line.strip() != "ready":
        raise RuntimeError(f"{key}: RR server did not start: {line!r}")
    stack.callback(bench.stop_servers, arm)
    return DsrArm(key, lab, n1, arm)


def _rr(bench: Bench, d: DsrArm, n: int) -> float:
    """``n`` request/response round trips over one connection to n1's NodePort; seconds taken."""
    ip = d.arm.target_ip
    assert ip is not None
    res = d.arm.client_run(*bench.client_argv([sys.executable, "-I", "-S", "-c", RR_SCRIPT, "client", ip,
                                           str(NODE_PORT_RR), str(n)]), timeout=60)
    return float(json.loads(check_run(res, f"{d.key}: RR client").strip().splitlines()[-1])["seconds"])


def _measure_dsr(bench: Bench, d: DsrArm, secs: float, warm: bool) -> str:
    p0 = _link_packets(d.n1)
    out = bench.crr_raw(d.arm, secs)
    time.sleep(0.05)  # the last FIN/ACKs
    p1 = _link_packets(d.n1)
    rr_s = _rr(bench, d, RR_TRANSACTIONS)
    time.sleep(0.05)
    p2 = _link_packets(d.n1)
    got = {CRR: out["rate"], CRR_P50: out["p50_us"], CRR_P99: out["p99_us"],
           PKTS_CONN: (p1 - p0) / max(1.0, out["conns"]), PKTS_RR: (p2 - p1) / RR_TRANSACTIONS,
           RR_US: rr_s / RR_TRANSACTIONS * 1e6}
    if not warm:
        for k, v in got.items():
            d.samples.setdefault(k, []).append(v)
    return (f"CRR {got[CRR]:,.0f}/s (p50 {got[CRR_P50]:.0f} µs), {got[PKTS_CONN]:.1f} pkts/conn, "
            f"{got[PKTS_RR]:.2f} pkts/RR")


# -- part B: programming time -----------------------------------------------------------------------
def _programming(ctx: Context, stack: contextlib.ExitStack, tag: str, prog_counts: tuple[int, ...],
                 upsert_n: int) -> list[Measurement]:
    """Interleaved rounds: LB map batches (10k, 100k), upsert_service (1k), iptables-restore and nft -f (10k)."""
    lab = Lab(f"s{tag}prog")
    stack.callback(lab.close)
    with lb_map_sizes({SERVICES_MAP: SERVICES_MAP_SIZE, BACKENDS_MAP: BACKENDS_MAP_SIZE}):
        node = lab.add_node("bpf")
        dp = node.datapath
        assert dp is not None
        # a throwaway service loads bpf_sock (resized) and opens the LB maps; removed again
        dp.upsert_service(Service(name="warm", frontend=Frontend("10.111.0.1", SVC_PORT),
                                  backends=[Backend("10.244.0.9", 8080)]))
        dp.delete_service("warm")
    kp = lab.add_node("kp", host_routing="legacy")
    lb = dp.lb_maps
    assert lb is not None
    arms: list[Arm] = []
    bufs = {n: pack_services(range(n)) for n in prog_counts}

    written: list[LbBuffers] = []     # what the fast path wrote last (deleted before every arm)

    def clear_all() -> None:
        while written:
            delete_services(lb, written.pop())
        if service_rows(lb) != 0:
            raise RuntimeError(f"LB service map not empty before a programming run: {service_rows(lb)} rows")

    def batch(n: int) -> Callable[[], object]:
        def go() -> None:
            buf = pack_services(range(n))
            write_services(lb, buf)
            written.append(buf)
        return go

    def batch_raw(n: int) -> Callable[[], object]:
        def go() -> None:
            write_services(lb, bufs[n])
            written.append(bufs[n])
        return go

    def rows_check(n: int) -> Callable[[], object]:
        def check() -> None:
            rows = service_rows(lb)
            if rows != 2 * n:
                raise RuntimeError(f"program {n}: {rows} service rows, expected {2 * n}")
        return check

    for n in prog_counts:
        arms.append(Arm(prog_name(BATCH, n), batch(n), per=n, setup=clear_all, check=rows_check(n)))
        arms.append(Arm(prog_name(BATCH_RAW, n), batch_raw(n), per=n, setup=clear_all, check=rows_check(n)))

    n_kp = prog_counts[0]
    ipt_text, nft_text = kube_proxy_rules(n_kp, 1), kube_proxy_nft_rules(n_kp, 1)
    empty_ipt = "*nat\nCOMMIT\n*filter\nCOMMIT\n"
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="cl-bench-svc-"))
    files = {}
    for name, text in (("ipt", ipt_text), ("nft", nft_text), ("empty", empty_ipt)):
        files[name] = os.path.join(tmp, f"{name}.rules")
        with open(files[name], "w") as f:
            f.write(text)

    def ipt_restore() -> None:
        check_run(kp.run("iptables-restore", files["ipt"], timeout=IPT_TIMEOUT_S), "iptables-restore")

    def ipt_clear() -> None:
        check_run(kp.run("iptables-restore", files["empty"], timeout=IPT_TIMEOUT_S), "iptables-restore (empty)")

    def nft_load() -> None:
        check_run(kp.run("nft", "-f", files["nft"], timeout=IPT_TIMEOUT_S), "nft -f")

    def nft_clear() -> None:
        kp.run("nft", "delete", "table", "ip", "kube-proxy", timeout=IPT_TIMEOUT_S)

    arms.append(Arm(prog_name(RESTORE, n_kp), ipt_restore, per=n_kp, setup=ipt_clear))
    arms.append(Arm(prog_name(NFT_F, n_kp), nft_load, per=n_kp, setup=nft_clear))

    t0 = time.perf_counter()
    s = interleave(arms, repeats=ctx.repeats, warmup=ctx.warmup)
    ipt_clear()
    nft_clear()
    clear_all()
    ctx.log(f"programming rounds in {time.perf_counter() - t0:.0f} s")
    ms = [Measurement.from_samples(a.name, s[a.name], "ns/service", group="programming") for a in arms]
    lo, hi = prog_counts
    ms.append(ratio(C3_RATIO if (lo, hi) == PROG_COUNTS else f"program: {label(hi)} ÷ {label(lo)} services, "
                    "LB maps batch, total time",
                    [x * hi for x in s[prog_name(BATCH, hi)]], [x * lo for x in s[prog_name(BATCH, lo)]],
                    group="programming", note="perf.md C3: ≤ 11 (linear)"))
    ms.append(ratio(f"program {label(lo)}: iptables-restore ÷ LB maps batch (per service)",
                    s[prog_name(RESTORE, lo)], s[prog_name(BATCH, lo)], group="programming"))
    ms.append(ratio(f"program {label(lo)}: nft -f ÷ LB maps batch (per service)",
                    s[prog_name(NFT_F, lo)], s[prog_name(BATCH, lo)], group="programming"))
    ms.append(ratio(f"program {label(hi)}: struct packing + update_batch ÷ update_batch only",
                    s[prog_name(BATCH, hi)], s[prog_name(BATCH_RAW, hi)], group="programming"))
    ms += _upsert_once(ctx, dp, upsert_n, statistics.median(s[prog_name(BATCH, lo)]), lo)
    return ms


def _upsert_once(ctx: Context, dp: Datapath, n: int, batch_ns: float, batch_n: int) -> list[Measurement]:
    """``n`` services through ``Datapath.upsert_service``, one by one, once (last: nothing is cleaned up,
    the lab goes at the end). A call costs more the more services exist (at the time of writing
    ``Datapath._publish`` rewrites the registry with every service and the conflict check compares
    with every service), so this is timed once, with a deadline, and reported per service: over all
    calls, the first 10 % and the last 10 %."""
    svcs = [Service(name=f"svc-{i}", frontend=Frontend(cluster_ip(i), SVC_PORT),
                    backends=[Backend(str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.244.128.2")) + i)),
                                      8080)])
            for i in range(n)]
    per: list[float] = []
    t_end = time.perf_counter() + UPSERT_MAX_S
    for svc in svcs:
        if time.perf_counter() > t_end:
            break
        t = time.perf_counter_ns()
        dp.upsert_service(svc)
        per.append(time.perf_counter_ns() - t)
    done = len(per)
    total = sum(per)
    tenth = max(1, done // 10)
    note = f"one run of {done} calls" + ("" if done == n else f" (stopped after {UPSERT_MAX_S:.0f} s, of {n})")
    ctx.log(f"upsert_service: {done} services in {total / 1e9:.1f} s")
    name = prog_name(UPSERT, n)
    ms = [Measurement.from_samples(name, [total / done], "ns/service", group="programming", note=note),
          Measurement.from_samples(f"{name}, first {tenth} calls", [sum(per[:tenth]) / tenth], "ns/service",
                                   group="programming", note="calls 1.., when few services exist"),
          Measurement.from_samples(f"{name}, last {tenth} calls", [sum(per[-tenth:]) / tenth], "ns/service",
                                   group="programming", note=f"calls ..{done}, when {done - tenth} or more exist")]
    r = Measurement.from_samples(f"per service: upsert_service ({label(n)}) ÷ LB maps batch ({label(batch_n)})",
                                 [total / done / batch_ns], "x", group="programming", kind="ratio",
                                 note="one upsert run ÷ the batch median")
    return [*ms, r]


# -- the suite ---------------------------------------------------------------------------------------
class _Quiet:
    """Bounded waits for other work on the machine to pass (perf.md §7.1 wants an idle machine)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.left = QUIET_WAIT_TOTAL_S
        self.busy: list[float] = []

    def wait(self, first: bool = False) -> None:
        if self.left <= 0:
            self.busy.append(cpu_busy(BUSY_SAMPLE_S))
            return
        t0 = time.monotonic()
        bound = QUIET_WAIT_START_S if first else min(QUIET_WAIT_ROUND_S, self.left)
        self.busy.append(wait_quiet(self.ctx, bound, 1.0 if first else BUSY_SAMPLE_S))
        if not first:
            self.left -= time.monotonic() - t0


def run(ctx: Context) -> list[Measurement]:
    """Parts B (programming), A (connection setup vs services) and C (DSR vs SNAT); see the module doc."""
    for tool in ("iptables-restore", "iptables", "nft", "taskset", "ss"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"services needs {tool} (scripts/install-system-deps.sh)")
    _check_layouts()
    rounds = max(1, ctx.repeats)
    counts = QUICK_COUNTS if ctx.quick else COUNTS
    prog_counts = QUICK_PROG_COUNTS if ctx.quick else PROG_COUNTS
    upsert_n = QUICK_UPSERT_COUNT if ctx.quick else UPSERT_COUNT
    secs = QUICK_SECONDS if ctx.quick else SECONDS
    client_cpu, server_cpu = client_server_cpus()
    versions = {t: subprocess.run([t, "--version"], capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip() for t in ("iptables-restore", "nft")}
    tag = f"{os.getpid() % 1000:03d}"
    ctx.params.update(counts=",".join(label(n) for n in counts), rounds=rounds, warmup_rounds=ctx.warmup,
                      seconds=secs, warmup_seconds=WARMUP_SECONDS, endpoints_per_service=1,
                      measured_service="the last (iptables: end of KUBE-SERVICES)",
                      programming_counts=",".join(label(n) for n in prog_counts), upsert_count=upsert_n,
                      rr_transactions=RR_TRANSACTIONS, client_cpu=client_cpu, server_cpu=server_cpu, nice=_nice(),
                      lb_services_map=SERVICES_MAP_SIZE, lb_backends_map=BACKENDS_MAP_SIZE, **versions)
    setup: list[Measurement] = []
    ms: list[Measurement] = []
    t_all = time.perf_counter()

    with contextlib.ExitStack() as stack:  # unwinds on any error: servers, labs, namespaces, temp files
        bench = Bench(stack.enter_context(crr_binary()), client_cpu, server_cpu, _nice())
        quiet = _Quiet(ctx)

        # -- B: programming time (first: the machine is not yet holding 100k-rule tables) ---------
        quiet.wait(first=True)
        ms += _programming(ctx, stack, tag, prog_counts, upsert_n)

        # -- A: build the arms --------------------------------------------------------------------
        t_build = time.perf_counter()
        arms: dict[str, SvcArm] = {}
        skipped: dict[str, str] = {}
        with lb_map_sizes({SERVICES_MAP: SERVICES_MAP_SIZE, BACKENDS_MAP: BACKENDS_MAP_SIZE}):
            for dp in (SOCK, TC):
                for n in counts:
                    sa = _build_arm(stack, dp, n, tag)
                    _program_bpf(sa)
                    arms[sa.arm.key] = sa
        for dp in (IPT, NFT):
            for n in counts:
                sa = _build_arm(stack, dp, n, tag)
                try:
                    _program_kube_proxy(sa)
                except subprocess.TimeoutExpired:
                    skipped[sa.arm.key] = f"loading took more than {IPT_TIMEOUT_S:.0f} s"
                    ctx.log(f"[yellow]{sa.arm.key}: {skipped[sa.arm.key]}: arm dropped[/yellow]")
                    continue
                if dp == IPT and sa.setup["program"] > IPT_PRACTICAL_S:
                    skipped[sa.arm.key] = (f"iptables-restore took {sa.setup['program']:.0f} s "
                                           f"(> {IPT_PRACTICAL_S:.0f} s: impractical)")
                    ctx.log(f"[yellow]{sa.arm.key}: {skipped[sa.arm.key]}: arm dropped[/yellow]")
                arms[sa.arm.key] = sa
        for key, sa in arms.items():
            what = ("upsert_service + update_batch" if sa.dp in (SOCK, TC)
                    else "iptables-restore" if sa.dp == IPT else "nft -f")
            note = "; ".join(x for x in (sa.notes.get("rules", ""),
                                         "one sample, labs otherwise idle" if sa.n >= 100_000 else "") if x)
            setup.append(info(f"{key}: program {label(sa.n)} services ({what})", sa.setup["program"], "s",
                              group="setup", note=note))
        for key in skipped:
            arms.pop(key, None)
        ctx.log(f"built and programmed {len(arms)} arms in {time.perf_counter() - t_build:.0f} s"
                + (f"; dropped: {', '.join(skipped)}" if skipped else ""))

        for sa in arms.values():
            arm = sa.arm
            # CRR hygiene (perf.md §7.1): the client closes first and keeps TIME_WAIT
            devices.set_sysctl(arm.client_ns, "net.ipv4.tcp_tw_reuse", "1")
            devices.set_sysctl(arm.client_ns, "net.ipv4.ip_local_port_range", "1024 65535")
            bench.start_crr_server(arm)
            stack.callback(bench.stop_servers, arm)
            probe = bench.crr_raw(arm, 0.1, 10)
            if probe["conns"] < 1:
                raise RuntimeError(f"{arm.key}: no connection to {arm.crr_target}: {probe}")
            arm.counters.clear()

        # -- C: the NodePort labs -----------------------------------------------------------------
        dsr = {SNAT: _build_dsr(stack, SNAT, "snat", bench, tag), DSR: _build_dsr(stack, DSR, "dsr", bench, tag)}
        for d in dsr.values():
            devices.set_sysctl(d.arm.client_ns, "net.ipv4.tcp_tw_reuse", "1")
            devices.set_sysctl(d.arm.client_ns, "net.ipv4.ip_local_port_range", "1024 65535")
            probe = bench.crr_raw(d.arm, 0.1, 10)
            if probe["conns"] < 1:
                raise RuntimeError(f"{d.key}: no connection to {d.arm.crr_target}: {probe}")
            _rr(bench, d, 10)
            d.arm.counters.clear()

        # -- A and C: interleaved rounds ------------------------------------------------------------
        before = {k: tcp_snapshot(sa.arm) for k, sa in arms.items()}
        ct_before = {k: conntrack_stats(sa.node) for k, sa in arms.items() if sa.dp in (IPT, NFT)}
        softnet0 = softnet_drops()
        order = list(arms)
        t_meas = time.perf_counter()
        for rnd in range(ctx.warmup + rounds):
            warm = rnd < ctx.warmup
            if rnd:
                quiet.wait()
            for key in order[rnd % len(order):] + order[:rnd % len(order)]:  # start arm rotated
                arm = arms[key].arm
                out = bench.crr_raw(arm, WARMUP_SECONDS if warm else secs)
                if not warm:
                    for m, v in ((CRR, out["rate"]), (CRR_P50, out["p50_us"]), (CRR_P99, out["p99_us"])):
                        arm.samples.setdefault(m, []).append(v)
            if warm:
                ctx.log(f"round {rnd + 1}/{ctx.warmup + rounds} (warmup): {len(order)} arms")
            else:
                ctx.log(f"round {rnd + 1}/{ctx.warmup + rounds}, connection p50 µs: "
                        + ", ".join(f"{k} {arms[k].arm.samples[CRR_P50][-1]:.0f}" for k in order))
            for key in (DSR_ARMS if rnd % 2 == 0 else DSR_ARMS[::-1]):
                got = _measure_dsr(bench, dsr[key], WARMUP_SECONDS if warm else secs, warm)
                ctx.log(f"round {rnd + 1} {key}: {got}")
        ctx.log(f"measured in {time.perf_counter() - t_meas:.0f} s")

        # -- counters -------------------------------------------------------------------------------
        for key, sa in arms.items():
            after = tcp_snapshot(sa.arm)
            for label_, side, counter in (("client TCP retransmitted segments", "client", "Tcp.RetransSegs"),
                                          ("server listen drops", "server", "TcpExt.ListenDrops")):
                setup.append(info(f"{key}: {label_}", after[side].get(counter, 0) - before[key][side].get(counter, 0)))
            setup.append(info(f"{key}: crr connections", sa.arm.counters.get("crr connections", 0)))
            setup.append(info(f"{key}: crr errors", sa.arm.counters.get("crr errors", 0),
                              note=f"last error: {sa.arm.errors[-1]}" if sa.arm.errors else ""))
            if key in ct_before:
                ct = conntrack_stats(sa.node)
                for k in ("drop", "early_drop", "insert_failed"):
                    if k in ct:
                        setup.append(info(f"{key}: conntrack {k}", ct[k] - ct_before[key].get(k, 0)))
                if sa.dp == IPT:
                    setup.append(info(f"{key}: packets jumping PREROUTING -> KUBE-SERVICES", _rule_hits(sa),
                                      note="≈ connections: the rule walk happened"))
            dpath = sa.node.datapath
            if dpath is not None and sa.dp in (SOCK, TC):
                setup.append(info(f"{key}: entries in {EVIDENCE[sa.dp][1]}", _entries(dpath, *EVIDENCE[sa.dp]),
                                  note=EVIDENCE[sa.dp][2]))
                rows = dpath.metrics()
                setup.append(info(f"{key}: datapath drops", sum(r.packets for r in rows if r.is_drop)))
                setup.append(info(f"{key}: datapath forwarded packets", sum(r.packets for r in rows if not r.is_drop)))
        for key, d in dsr.items():
            setup.append(info(f"{key}: crr errors", d.arm.counters.get("crr errors", 0),
                              note=f"last error: {d.arm.errors[-1]}" if d.arm.errors else ""))
            for lab_node in d.lab.nodes.values():
                if lab_node.datapath is not None:
                    rows = lab_node.datapath.metrics()
                    setup.append(info(f"{key}: {lab_node.name} datapath drops",
                                      sum(r.packets for r in rows if r.is_drop)))
        setup.append(info("host: softnet backlog drops", softnet_drops() - softnet0))
        for key, why in skipped.items():
            setup.append(info(f"{key}: dropped", 1, note=why))
        setup.append(info("background CPU busy before rounds, max", max(quiet.busy) * 100, "%", group="setup",
                          note=f"waited for < {QUIET_BUSY:.0%}, at most {QUIET_WAIT_START_S:.0f} s at the start and "
                               f"{QUIET_WAIT_TOTAL_S:.0f} s in all; per wait: "
                               + ", ".join(f"{b * 100:.0f}" for b in quiet.busy)))
        setup.append(info("suite wall time", time.perf_counter() - t_all, "s", group="setup"))

    return ms + _conn_measurements(arms, counts) + _dsr_measurements(dsr) + setup


# Which LB ran: socket LB leaves a reverse-socket entry per connect(), per-packet LB a CT entry per flow.
EVIDENCE = {
    SOCK: ("bpf_sock", "cilium_lb4_reverse_sk", "written by connect4 (socket LB at work)"),
    TC: ("bpf_lxc", "cilium_ct4_global", "per-packet LB connection tracking (the tc path at work)"),
}


def _entries(dpath: Datapath, obj: str, name: str, _note: str = "") -> int:
    """Live entries of one of the node's pinned maps (a batch dump), -1 if it is not there.

    ``obj`` names the object that writes the map (for the table); every map is pinned by name.
    """
    path = os.path.join(dpath.config.pin_dir, name)
    if not os.path.exists(path):
        return -1
    with Map.open_pinned(path) as m:
        return int(m.lookup_batch_raw()[2])


# -- measurements and tables ------------------------------------------------------------------------
def _conn_measurements(arms: dict[str, SvcArm], counts: tuple[int, ...]) -> list[Measurement]:
    ms: list[Measurement] = []
    for key, sa in arms.items():
        for metric, unit, kind in ((CRR_P50, "us", "time"), (CRR_P99, "us", "time"), (CRR, "conn/s", "info")):
            ms.append(Measurement.from_samples(mname(key, metric), sa.arm.samples[metric], unit, group=key, kind=kind))
    one = counts[0]
    for dp in DATAPATHS:
        base = arms.get(akey(dp, one))
        for n in counts[1:]:
            other = arms.get(akey(dp, n))
            if base is None or other is None:
                continue
            ms.append(ratio(rname(other.arm.key, base.arm.key, CRR_P50), other.arm.samples[CRR_P50],
                            base.arm.samples[CRR_P50], group="ratios"))
            ms.append(ratio(rname(other.arm.key, base.arm.key, CRR), other.arm.samples[CRR], base.arm.samples[CRR],
                            group="ratios"))
    for n in counts:
        for num, den, metric in ((IPT, SOCK, CRR_P50), (NFT, SOCK, CRR_P50), (TC, SOCK, CRR_P50), (SOCK, TC, CRR),
                                 (IPT, NFT, CRR_P50)):
            a, b = arms.get(akey(num, n)), arms.get(akey(den, n))
            if a is not None and b is not None:
                ms.append(ratio(rname(a.arm.key, b.arm.key, metric), a.arm.samples[metric], b.arm.samples[metric],
                                group="ratios"))
    return ms


def _dsr_measurements(dsr: dict[str, DsrArm]) -> list[Measurement]:
    units = {CRR: ("conn/s", "info"), CRR_P50: ("us", "time"), CRR_P99: ("us", "time"), PKTS_CONN: ("packets", "info"),
             PKTS_RR: ("packets", "info"), RR_US: ("us", "time")}
    ms = [Measurement.from_samples(mname(k, m), d.samples[m], u, group=k, kind=kind)
          for k, d in dsr.items() for m, (u, kind) in units.items()]
    s, d = dsr[SNAT].samples, dsr[DSR].samples
    for metric in (CRR, CRR_P50, PKTS_CONN, PKTS_RR, RR_US):
        ms.append(ratio(rname(DSR, SNAT, metric), d[metric], s[metric], group="ratios"))
    return ms


# Goals: (ratio name, op, threshold, source)
def _goals(counts: list[int]) -> list[tuple[str, str, float, str]]:
    one = counts[0]
    g: list[tuple[str, str, float, str]] = []
    if 100_000 in counts:
        g.append((rname(akey(SOCK, 100_000), akey(SOCK, one), CRR_P50), "<=", 1.20,
                  "brief + perf.md S1: socket LB at 100k ≤ 1.2× its cost at 1"))
    if 10_000 in counts:
        g += [(rname(akey(SOCK, 10_000), akey(SOCK, one), CRR_P50), "<=", 1.10, "perf.md S1: socket LB at 10k ≤ 1.1×"),
              (rname(akey(IPT, 10_000), akey(IPT, one), CRR_P50), ">=", 1.50,
               "brief + perf.md S2: iptables at 10k ≥ 1.5× (else the harness is not sensitive)"),
              (rname(akey(IPT, 10_000), akey(SOCK, 10_000), CRR_P50), ">=", 1.30,
               "perf.md S3: iptables ÷ socket LB at 10k")]
    if 1_000 in counts:
        g += [(rname(akey(SOCK, 1_000), akey(TC, 1_000), CRR), ">=", 1.10,
               "perf.md S4: socket LB ÷ per-packet LB, connection rate (S4 says 100 services; here 1k)"),
              (rname(akey(TC, 1_000), akey(SOCK, 1_000), CRR_P50), ">=", 1.10,
               "robust variant of S4: per-packet ÷ socket LB, connection p50")]
    g += [(rname(DSR, SNAT, CRR), ">=", 1.10, "perf.md S9: DSR ÷ SNAT connection rate"),
          (rname(DSR, SNAT, CRR_P50), "<=", 0.91, "robust variant of S9: DSR ÷ SNAT connection p50"),
          (rname(DSR, SNAT, PKTS_RR), "<=", 0.60, "perf.md S9: packets through n1 per transaction"),
          (C3_RATIO, "<=", 11.0, "perf.md C3: programming 100k ÷ 10k services (linear: 10)")]
    return g


def summarize(ms: list[Measurement]) -> list[Summary]:
    """Connection setup per datapath and count, ratios to 1 service, goals, programming, DSR vs SNAT, counters."""
    by = {m.name: m for m in ms}
    counts = sorted({_count(m.group.split("@", 1)[1]) for m in ms if m.group.count("@") == 1})

    def cell(name: str) -> str:
        m = by.get(name)
        return "" if m is None else f"{fmt_value(m.median, m.unit)} ({cv_text(m) or '-'})"

    def rcell(name: str) -> str:
        m = by.get(name)
        return "" if m is None else f"{fmt_value(m.median, 'x')} {fmt_ci(m)}"

    out: list[Summary] = []
    if counts:
        heads = [label(n) for n in counts]
        out.append(Summary("A. connection setup p50 (µs) vs number of services (median of rounds, CV)",
                           ["datapath", *heads],
                           [[DP_TITLES[dp], *(cell(mname(akey(dp, n), CRR_P50)) for n in counts)] for dp in DATAPATHS],
                           note="crr tool: connect + 1-byte request + 1-byte response + close, one client in pod a, "
                                "server in pod b (same node), target the last of N ClusterIP services."))
        out.append(Summary("A. connection rate (conn/s) vs number of services",
                           ["datapath", *heads],
                           [[DP_TITLES[dp], *(cell(mname(akey(dp, n), CRR)) for n in counts)] for dp in DATAPATHS]))
        out.append(Summary(f"A. connection setup p50 at N ÷ at {label(counts[0])} (paired per round, 95 % CI)",
                           ["datapath", *(f"{label(n)} ÷ {label(counts[0])}" for n in counts[1:])],
                           [[DP_TITLES[dp], *(rcell(rname(akey(dp, n), akey(dp, counts[0]), CRR_P50))
                                              for n in counts[1:])] for dp in DATAPATHS]))
        out.append(Summary("A. datapaths against socket LB at the same N (connection setup p50)",
                           ["ratio", *heads],
                           [[f"{DP_TITLES[num]} ÷ {DP_TITLES[den]}",
                             *(rcell(rname(akey(num, n), akey(den, n), CRR_P50)) for n in counts)]
                            for num, den in ((TC, SOCK), (IPT, SOCK), (NFT, SOCK), (IPT, NFT))]))
    goal_rows = []
    for name, op, thr, src in _goals(counts or [1]):
        m = by.get(name)
        if m is not None:
            goal_rows.append([name, f"{fmt_value(m.median, 'x')} {fmt_ci(m)}", f"{op} {thr:g}", verdict(m, op, thr), src])
    out.append(Summary("goals", ["ratio", "median [95% CI]", "goal", "verdict", "source"], goal_rows,
                       note="verdict on the median of the paired ratios; 'CI' says whether the whole bootstrap interval "
                            "is on the right side (with 5 rounds it spans about min to max)."))
    prog = [m for m in ms if m.group == "programming" and m.kind != "ratio"]
    if prog:
        out.append(Summary("B. programming time (median of rounds)",
                           ["what", "per service", "total", "CV"],
                           [[m.name, f"{m.median / 1000:,.2f} µs",
                             "" if " calls" in m.name else f"{m.median * _n_of(m.name) / 1e9:,.3f} s",
                             cv_text(m) or "one run" if m.repeats == 1 else cv_text(m)]
                            for m in prog]
                           + [[m.name, "", f"{m.median:,.1f} s", "one sample"] for m in ms
                              if m.group == "setup" and ": program 100k" in m.name and ("@" in m.name)
                              and m.name.split("@")[0] in (IPT, NFT)],
                           note="into empty maps / an empty namespace; LB maps resized to "
                                f"{SERVICES_MAP_SIZE:,}/{BACKENDS_MAP_SIZE:,} entries (services/backends)."))
        out.append(Summary("B. programming ratios (paired per round)", ["ratio", "median [95% CI]"],
                           [[m.name, rcell(m.name)] for m in ms if m.group == "programming" and m.kind == "ratio"]))
    if mname(SNAT, CRR) in by:
        rows = [[k, cell(mname(k, CRR)), cell(mname(k, CRR_P50)), cell(mname(k, PKTS_CONN)), cell(mname(k, PKTS_RR)),
                 cell(mname(k, RR_US))] for k in DSR_ARMS]
        rows.append(["dsr ÷ snat", rcell(rname(DSR, SNAT, CRR)), rcell(rname(DSR, SNAT, CRR_P50)),
                     rcell(rname(DSR, SNAT, PKTS_CONN)), rcell(rname(DSR, SNAT, PKTS_RR)), rcell(rname(DSR, SNAT, RR_US))])
        out.append(Summary("C. NodePort from outside, backend on the other node: SNAT vs DSR",
                           ["arm", "CRR conn/s", "conn p50 µs", "pkts via n1 / conn", "pkts via n1 / RR", "RR µs"], rows,
                           note="client 203.0.113.10 (lab.outside()) -> 10.0.0.11:31000 -> backend pod on n2; packets: "
                                "rx+tx of n1's eth0 (IFLA_STATS64) over the CRR run and over "
                                f"{RR_TRANSACTIONS} request/response round trips on one connection."))
    counters = [m for m in ms if m.group in ("counters", "setup")]
    if counters:
        out.append(Summary("counters over the timed and warmup rounds, and setup", ["counter", "value", "note"],
                           [[m.name, fmt_value(m.median, m.unit) + ("" if m.unit == "count" else f" {m.unit}")
                             if m.unit != "count" else f"{m.median:,.0f}", m.note] for m in counters]))
    return out


def _count(lbl: str) -> int:
    """Inverse of label(): '10k' -> 10000."""
    return int(lbl[:-1]) * 1000 if lbl.endswith("k") else int(lbl)


def _n_of(name: str) -> int:
    """The service count in a programming measurement's name ('program 10k services: …')."""
    word = name.split()[1]
    return int(word[:-1]) * 1000 if word.endswith("k") else int(word)

