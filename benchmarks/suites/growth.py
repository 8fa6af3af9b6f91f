"""growth: the per-packet path as the work grows (issue 16, "cost as the work grows"; perf.md §7.4).

Each part compares the same arm at a big and at a small size, built the same way (same map sizes,
same config, same services; only the filled state differs), so the ratio big ÷ small says what the
extra state costs a packet. Flat (≤ 1.10) is the goal.

- ``ct``: 1,000,000 conntrack entries vs 1,000 (the issue's "per-packet LB at 1M CT entries ÷ at
  1k"). ``cilium_ct4_global`` is resized to 2,097,152 entries in both arms (its build size, 524,288,
  cannot hold 1M; LRU maps also evict before they are full, so the map gets 2× headroom) and filled
  with one ``Map.update_batch`` of numpy arrays (``Map.key_dtype``/``value_dtype``): established
  connections pod b → pod a, ports varied, lifetime a week ahead (the node's GC runs only on demand).
- ``svc``: 100,000 ClusterIP services with 10 backends each (1.1M service rows, 1M backends) vs
  only the suite's own services. ``cilium_lb4_services_v2`` → 2,097,152 and
  ``cilium_lb4_backends_v3`` → 1,048,576 entries in both arms; fillers are written straight into
  the LB maps (``update_batch`` of arrays, in ``LbMaps``' order), reverse-NAT indices shared past
  65,535 as in ``services``.
- ``ep``: 1,000 endpoints on the node vs 2: the two real pods, and 998 ``cilium_lxc`` rows
  (addresses in 10.245.0.0/16, which nothing routes; the per-packet path looks up ``cilium_lxc``
  for the source and the destination, so those rows are what 1,000 pods add to it).
- ``mag``: Maglev at 100,000 services vs 1: NodePort from outside (Maglev is for north-south
  traffic, ``cil_from_netdev``), ``maglev_table_size=251`` (Cilium's smallest, for 10 backends),
  every filler service with 10 backends and the Maglev flag, and a Maglev table per reverse-NAT
  index: 65,532 tables × 251 = 16.4M entries in ``cilium_lb4_maglev`` (resized to 16,777,216 in
  both arms; ciliumlite's Maglev map is one flat hash keyed by the 16-bit reverse-NAT index, so
  that is as many distinct tables as 100k services can have).

The connection, ``ct``/``svc``/``ep``: one node with per-packet LB (``socket_lb=False``: every pod
packet goes through ``cil_from_container``'s service and CT lookups), pods ``a`` (client) and
``b`` (server), ClusterIP services for the CRR server and the echo server; ``mag``: a one-node
cluster (native routing, no BGP) and the lab's outside client, NodePort services with
``maglev=True``. Per round, every arm (start arm rotated): the ``crr`` tool for ``SECONDS``
(connect, 1-byte request and response, close; the rate and the per-connection p50), then one
``crr rrmix`` over all arms at once (TCP ping-pong through the service, ``RRMIX_BLOCK`` round trips
per arm per rotation, paired per rotation), then ``BPF_PROG_TEST_RUN`` of the arm's program
(``cil_from_container``; ``cil_from_netdev`` for Maglev) in the node's namespace, on packets that
hit the filled maps: ``FLOWS`` different flows once each (the kernel's ns of each run, median:
the entries are spread over the table, so the big arm's lookups miss the CPU caches as real flows
would), and one flow ``WARM_REPEAT`` times (the cache-warm floor).

- ``ct``: replies a → b of connections among the filled entries (the reply-tuple lookup hits);
- ``svc``: established flows a → a probe ClusterIP (frontend, CT service entry and backend
  lookups; SYN + ACK once at setup so the entries exist);
- ``ep``: a → b direct (both ``cilium_lxc`` lookups);
- ``mag``: a new SYN from outside to a probe NodePort (a Maglev lookup each; new source ports
  every round so no CT entry pins the backend), no warm variant.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.harness import Context, Measurement, Summary, ratio
from benchmarks.suites._netbench import (
    CRR,
    CRR_P50,
    CRR_PORT,
    ECHO_PORT,
    RRMIX_BLOCK,
    RRMIX_SKIP,
    Bench,
    Cells,
    Goal,
    NetArm,
    check_run,
    client_server_cpus,
    cpu_busy,
    crr_binary,
    env_nice,
    goal_summary,
    info,
    mname,
    require_tools,
    rname,
    tail_summaries,
    wait_listening,
    wait_quiet,
)
from benchmarks.suites.services import lb_map_sizes
from ciliumlite import Backend, Frontend, Service
from ciliumlite.bpf import Map, Program, SkbContext, TcAction
from ciliumlite.bpf.errors import BpfError
from ciliumlite.bpf.netns import entered
from ciliumlite.datapath import devices
from ciliumlite.datapath.lb import BACKENDS_MAP, MAGLEV_MAP, SERVICES_MAP, LbMaps
from ciliumlite.datapath.maps import CT_TCP
from ciliumlite.datapath.records import EndpointInfo, EndpointKey
from ciliumlite.lab import Lab, Node
from ciliumlite.node import Datapath
from ciliumlite.testing.packets import ETH_P_IP, IPPROTO_TCP, eth, ipv4, tcp

DESCRIPTION = ("growth: per-packet cost with 1M conntrack entries, 100k services × 10 backends, 1,000 "
               "endpoints, Maglev at 100k services, each ÷ the same arm at a small size (CRR, RR, test_run)")
NEEDS_ROOT = True
DEFAULT_REPEATS = 7          # timed rounds (+1 warmup); ~15 s a round, ~5 min in all with the fills

# -- parameters ------------------------------------------------------------------------------------
PARTS = ("ct", "svc", "ep", "mag")
SIZES: dict[str, tuple[int, int]] = {"ct": (1_000, 1_000_000), "svc": (1, 100_000), "ep": (2, 1_000),
                                     "mag": (1, 100_000)}
QUICK_SIZES: dict[str, tuple[int, int]] = {"ct": (1_000, 100_000), "svc": (1, 10_000), "ep": (2, 200),
                                           "mag": (1, 2_000)}
TITLES = {"ct": "conntrack entries (per-packet LB)", "svc": "services × 10 backends (per-packet LB)",
          "ep": "endpoints on the node", "mag": "Maglev, NodePort from outside, services with tables"}
PARTS_ENV = "CILIUMLITE_BENCH_GROWTH_PARTS"   # e.g. "ct,svc": a subset
NICE_ENV = "CILIUMLITE_BENCH_GROWTH_NICE"
SECONDS, QUICK_SECONDS, WARMUP_SECONDS = 1.0, 0.5, 0.5     # per CRR measurement
RR_SECONDS, QUICK_RR_SECONDS = 4.0, 2.0                     # per rrmix (all arms together)
FLOWS, QUICK_FLOWS = 1_000, 200                             # test_run: distinct flows, one run each
WARM_REPEAT = 50_000                                        # test_run: one flow, this many runs in one call
MAX_ROUNDS = 40              # the Maglev probe uses fresh source ports each round (FLOWS × rounds ≤ 64k)
SERVER_MAX_S = 1800          # the echo servers exit by themselves after this (also killed by pid)

CT_MAP_SIZE = 1 << 21
SERVICES_MAP_SIZE = 1 << 21  # 100k × (1 frontend + 10 slots) = 1.1M rows
BACKENDS_MAP_SIZE = 1 << 20  # 1M filler backends
MAGLEV_MAP_SIZE = 1 << 24    # 65,532 tables × 251
MAGLEV_TABLE = 251
BACKENDS_PER_SERVICE = 10
MAX_REVNAT = 0xFFFF

CLUSTER_IP, PROBE_IP = "10.96.0.10", "10.96.0.11"
SVC_PORT, ECHO_SVC_PORT = 80, 81
NODE_PORT_CRR, NODE_PORT_ECHO, NODE_PORT_PROBE = 31000, 31001, 31002
FILLER_FIRST_IP = int(ipaddress.IPv4Address("10.100.0.1"))       # filler frontends: 10.100.0.1 …
FILLER_FIRST_BACKEND = int(ipaddress.IPv4Address("10.244.128.2"))  # synthetic endpoints, outside pod CIDRs
FILLER_EP_FIRST = int(ipaddress.IPv4Address("10.245.0.10"))      # filler cilium_lxc rows
CT_DPORT0, CT_SPORT0, CT_SPORTS = 20_000, 1024, 64_512           # filled conntrack tuples
OUTSIDE_MAC = "0e:00:00:00:00:fe"

CT_F_SEEN_NON_SYN = 0x0010
TCP_SYN, TCP_ACK, TCP_PSH = 0x02, 0x10, 0x08
SVC_FLAG2_MAGLEV = 0x80

RR_P50 = "RR p50 (rrmix, per rotation)"
TR_FLOWS = "test_run ns/run, distinct flows (median)"
TR_WARM = "test_run ns/run, one flow (warm)"
METRICS = (CRR, CRR_P50, RR_P50, TR_FLOWS, TR_WARM)
UNITS = {CRR: "conn/s", CRR_P50: "us", RR_P50: "us", TR_FLOWS: "ns", TR_WARM: "ns", "CT entries at test_run": "count"}


def label(n: int) -> str:
    """1, 2, 1k, 100k, 1M."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def akey(part: str, n: int) -> str:
    """Arm key: ``ct@1M``."""
    return f"{part}@{label(n)}"


def _u32(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


# -- one arm ---------------------------------------------------------------------------------------
@dataclass
class GrowthArm:
    """One part at one size: its lab, the NetArm the crr tool measures, and the test_run inputs."""

    part: str
    n: int
    lab: Lab
    node: Node
    arm: NetArm
    echo: tuple[str, str, int]            # rrmix target: (client netns, address, port)
    prog: Program | None = None
    ifindex: int = 0                      # test_run ctx: the device the packets arrive on
    flows: list[bytes] = field(default_factory=list)
    warm: bytes | None = None
    probe_syn: Any = None                 # mag: round -> fresh SYN frames
    verdicts: dict[str, int] = field(default_factory=dict)
    setup: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.arm.key


def _datapath(node: Node) -> Datapath:
    assert node.datapath is not None
    return node.datapath


def _lb(node: Node) -> LbMaps:
    lb = _datapath(node).lb_maps
    if lb is None:
        raise RuntimeError(f"{node.name}: no LB maps (no service programmed?)")
    return lb


def _program(dp: Datapath, part: str) -> Program:
    """The node's own loaded program (the object ``Datapath`` attached), so test_run sees the node's
    pinned, filled maps. ``Datapath`` does not expose its objects; these attributes are private."""
    if part == "mag":
        netdev = getattr(dp, "_netdev", None)
        obj = getattr(netdev, "_obj", None)
        name = "cil_from_netdev"
    else:
        obj = getattr(dp, "_lxc", None)
        name = "cil_from_container"
    if obj is None or name not in obj.programs:
        raise RuntimeError(f"cannot reach the node's {name} (Datapath internals changed?)")
    prog: Program = obj.programs[name]
    return prog


def _map_sizes(part: str) -> dict[str, int]:
    """Both arms of a part get the same sizes: only the filled state differs."""
    if part == "ct":
        return {CT_TCP.name: CT_MAP_SIZE}
    if part == "svc":
        return {SERVICES_MAP: SERVICES_MAP_SIZE, BACKENDS_MAP: BACKENDS_MAP_SIZE}
    if part == "mag":
        return {SERVICES_MAP: SERVICES_MAP_SIZE, BACKENDS_MAP: BACKENDS_MAP_SIZE, MAGLEV_MAP: MAGLEV_MAP_SIZE}
    return {}


def _build(stack: contextlib.ExitStack, part: str, n: int, tag: str) -> GrowthArm:
    """The lab of one arm with its measured services (through the SDK), before any filler."""
    key = akey(part, n)
    lab = Lab(f"g{tag}{part}{label(n).lower()}")  # ≤ 16 characters of a-z, 0-9, -
    stack.callback(lab.close)
    t0 = time.perf_counter()
    with lb_map_sizes(_map_sizes(part)):
        if part == "mag":
            cl = lab.cluster(["n"], routing="native", bgp=False, maglev_table_size=MAGLEV_TABLE)
            node = cl.node("n")
            b = node.add_pod("b")
            world = lab.outside()
            assert node.ip is not None
            for name, nport, port in (("crr", NODE_PORT_CRR, CRR_PORT), ("echo", NODE_PORT_ECHO, ECHO_PORT),
                                      ("probe", NODE_PORT_PROBE, CRR_PORT)):
                cl.upsert_service(Service(name=name, frontend=Frontend(f"10.96.1.{nport % 100}", SVC_PORT),
                                          backends=[Backend(b.ip, port)], type="NodePort", node_port=nport,
                                          maglev=True))
            arm = NetArm(key, b.ip, world.run, b.run, b.popen, lab.processes.stop, world.netns, b.netns,
                         node=node, target_ip=node.ip, target_port=NODE_PORT_CRR)
            echo = (world.netns, node.ip, NODE_PORT_ECHO)
        else:
            node = lab.add_node("n", socket_lb=False)
            a, b = node.add_pod("a"), node.add_pod("b")
            dp = _datapath(node)
            for name, ip, port, be_port in (("crr", CLUSTER_IP, SVC_PORT, CRR_PORT),
                                            ("echo", CLUSTER_IP, ECHO_SVC_PORT, ECHO_PORT),
                                            ("probe", PROBE_IP, SVC_PORT, CRR_PORT)):
                dp.upsert_service(Service(name=name, frontend=Frontend(ip, port), backends=[Backend(b.ip, be_port)]))
            arm = NetArm(key, b.ip, a.run, b.run, b.popen, lab.processes.stop, a.netns, b.netns, node=node,
                         target_ip=CLUSTER_IP, target_port=SVC_PORT)
            echo = (a.netns, CLUSTER_IP, ECHO_SVC_PORT)
    g = GrowthArm(part, n, lab, node, arm, echo)
    g.setup["build s"] = time.perf_counter() - t0
    return g


# -- fillers ---------------------------------------------------------------------------------------
def _fill_batches(m: Map[Any, Any], keys: np.ndarray[Any, Any], values: np.ndarray[Any, Any],
                  chunk: int = 1 << 20) -> None:
    """``update_batch`` in chunks of ``chunk`` entries (bounded syscalls; a failure names the chunk)."""
    for i in range(0, len(keys), chunk):
        got = m.update_batch(keys[i:i + chunk], values[i:i + chunk])
        if got != len(keys[i:i + chunk]):
            raise RuntimeError(f"{m.name}: update_batch wrote {got} of {len(keys[i:i + chunk])} at {i}")


def _count(m: Map[Any, Any]) -> int:
    """Entries of a map (one batch dump)."""
    return int(m.lookup_batch_raw()[2])


def ct_tuple(i: int) -> tuple[int, int]:
    """(a's port, b's port) of filled connection ``i`` (b:bport -> a:aport in the original direction)."""
    return CT_DPORT0 + i // CT_SPORTS, CT_SPORT0 + i % CT_SPORTS


def fill_ct(g: GrowthArm) -> None:
    """``g.n`` established TCP connections pod b -> pod a in ``cilium_ct4_global`` (numpy, one pass).

    Key convention (ct.h): a connection S:s -> D:d is stored as {daddr=S, saddr=D, dport=d, sport=s},
    so a packet a -> b of it is a reply and the reply-tuple lookup of ``cil_from_container`` hits it.
    """
    dp = _datapath(g.node)
    assert dp.maps is not None
    m = dp.maps.get(CT_TCP)
    a_ip, b_ip = _u32(str(_pod(g.node, "a").ip)), _u32(g.arm.server_ip)
    i = np.arange(g.n, dtype=np.int64)
    keys = np.zeros(g.n, dtype=m.key_dtype)
    keys["daddr"], keys["saddr"] = b_ip, a_ip
    keys["dport"] = CT_DPORT0 + i // CT_SPORTS
    keys["sport"] = CT_SPORT0 + i % CT_SPORTS
    keys["nexthdr"] = IPPROTO_TCP
    vals = np.zeros(g.n, dtype=m.value_dtype)
    vals["lifetime"] = int(time.clock_gettime(time.CLOCK_MONOTONIC)) + 7 * 86_400
    vals["flags"] = CT_F_SEEN_NON_SYN
    vals["packets"], vals["bytes"] = 2, 120
    vals["tx_flags_seen"], vals["rx_flags_seen"] = TCP_SYN | TCP_ACK, TCP_SYN | TCP_ACK
    t0 = time.perf_counter()
    _fill_batches(m, keys, vals)
    g.setup["fill s"] = time.perf_counter() - t0
    got = _count(m)
    if got < g.n:
        raise RuntimeError(f"{g.key}: {got} CT entries after the fill, expected ≥ {g.n} (LRU eviction?)")
    g.setup["CT entries"] = got


def fill_services(g: GrowthArm, n_fill: int, *, maglev: bool) -> None:
    """``n_fill`` ClusterIP services with 10 backends each straight into the LB maps (numpy arrays;
    backends, reverse NAT, slot rows, frontend rows: ``LbMaps``' order); with ``maglev`` also their
    flag and one Maglev table per reverse-NAT index the fillers use."""
    if n_fill <= 0:
        return
    lb = _lb(g.node)
    k = BACKENDS_PER_SERVICE
    t0 = time.perf_counter()
    used_ids = [int(x) for x in lb.backends.lookup_batch_numpy()[0]] if _count(lb.backends) else []
    first_id = max(used_ids, default=0) + 1000
    used_rev = {int(x) for x in lb.revnat.lookup_batch_numpy()[0]} if _count(lb.revnat) else set()
    free_rev = np.array([r for r in range(1, MAX_REVNAT + 1) if r not in used_rev], dtype=np.int64)
    svc = np.arange(n_fill, dtype=np.int64)
    rev = free_rev[svc % len(free_rev)]
    addr = FILLER_FIRST_IP + svc
    # backends: id first_id + svc*k + j
    nb = n_fill * k
    bidx = np.arange(nb, dtype=np.int64)
    bkeys = (first_id + bidx).astype(lb.backends.key_dtype)
    bvals = np.zeros(nb, dtype=lb.backends.value_dtype)
    bvals["address"] = FILLER_FIRST_BACKEND + bidx % 32_764
    bvals["port"], bvals["proto"] = 8080, IPPROTO_TCP
    _fill_batches(lb.backends, bkeys, bvals)
    # reverse NAT: one row per distinct index (the first filler that uses it)
    nrev = min(n_fill, len(free_rev))
    rkeys = rev[:nrev].astype(lb.revnat.key_dtype)
    rvals = np.zeros(nrev, dtype=lb.revnat.value_dtype)
    rvals["address"], rvals["port"] = addr[:nrev], SVC_PORT
    _fill_batches(lb.revnat, rkeys, rvals)
    # slot rows (1..k), then frontend rows (slot 0)
    skeys = np.zeros(nb, dtype=lb.services.key_dtype)
    skeys["address"] = np.repeat(addr, k)
    skeys["dport"], skeys["proto"] = SVC_PORT, IPPROTO_TCP
    skeys["backend_slot"] = 1 + bidx % k
    svals = np.zeros(nb, dtype=lb.services.value_dtype)
    svals["backend_id"] = first_id + bidx
    svals["rev_nat_index"] = np.repeat(rev, k)
    _fill_batches(lb.services, skeys, svals)
    fkeys = np.zeros(n_fill, dtype=lb.services.key_dtype)
    fkeys["address"], fkeys["dport"], fkeys["proto"] = addr, SVC_PORT, IPPROTO_TCP
    fvals = np.zeros(n_fill, dtype=lb.services.value_dtype)
    fvals["count"], fvals["rev_nat_index"] = k, rev
    if maglev:
        fvals["flags2"] = SVC_FLAG2_MAGLEV
    _fill_batches(lb.services, fkeys, fvals)
    g.setup["fill s"] = time.perf_counter() - t0
    if maglev:
        t1 = time.perf_counter()
        m = lb.maglev
        size = lb.maglev_table_size
        ntab = nrev
        idx = np.arange(ntab * size, dtype=np.int64)
        mkeys = np.zeros(ntab * size, dtype=m.key_dtype)
        mkeys["rev_nat_index"] = rkeys.astype(np.int64)[idx // size]
        mkeys["index"] = idx % size
        # the table of reverse-NAT index rev[t] picks among filler t's backends (ids first_id + t*k + j)
        mvals = (first_id + (idx // size) * k + idx % k).astype(m.value_dtype)
        _fill_batches(m, mkeys, mvals)
        g.setup["maglev fill s"] = time.perf_counter() - t1
        g.setup["maglev entries"] = _count(m)
    rows = _count(lb.services)
    g.setup["service rows"] = rows


def fill_endpoints(g: GrowthArm, n_fill: int) -> None:
    """``n_fill`` more ``cilium_lxc`` rows (addresses nothing routes; ifindexes no device has)."""
    if n_fill <= 0:
        return
    dp = _datapath(g.node)
    assert dp.maps is not None
    m = dp.maps.endpoints
    keys = [EndpointKey(ip4=ipaddress.IPv4Address(FILLER_EP_FIRST + i)) for i in range(n_fill)]
    vals = [EndpointInfo(ifindex=100_000 + i, lxc_id=2_000 + i, flags=0, mac=f"0a:00:00:00:{i >> 8:02x}:{i & 255:02x}",
                         node_mac=f"0e:00:00:00:{i >> 8:02x}:{i & 255:02x}", sec_id=100_000 + i)
            for i in range(n_fill)]
    t0 = time.perf_counter()
    got = m.update_batch(keys, vals)
    g.setup["fill s"] = time.perf_counter() - t0
    if got != n_fill:
        raise RuntimeError(f"{g.key}: wrote {got} of {n_fill} endpoint rows")
    g.setup["cilium_lxc rows"] = _count(m)


def _pod(node: Node, name: str) -> Any:
    return node.pods[name]


# -- test_run inputs -------------------------------------------------------------------------------
def _frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, flags: int,
           payload: bytes = b"") -> bytes:
    return eth(dst_mac, src_mac, ETH_P_IP) + ipv4(src, dst, tcp(src, dst, sport, dport, flags, payload, ack=1),
                                                  proto=IPPROTO_TCP)


def _run(g: GrowthArm, frame: bytes, repeat: int = 1) -> tuple[int, int]:
    """(verdict, kernel ns per run) of the arm's program on ``frame`` in the node's namespace."""
    assert g.prog is not None
    with entered(_datapath(g.node).netns):
        res = g.prog.run(frame, repeat=repeat, ctx=SkbContext(ifindex=g.ifindex))
    return res.retval, res.duration_ns


def prepare_test_run(g: GrowthArm, flows: int) -> None:
    """The arm's program, device and packets (and, for ``svc``, the flows' CT entries)."""
    dp = _datapath(g.node)
    g.prog = _program(dp, g.part)
    if g.part == "mag":
        with devices.iproute(g.node.netns) as ipr:
            link = ipr.get_links(ifname="eth0")[0]
            g.ifindex, node_mac = int(link["index"]), str(link.get_attr("IFLA_ADDRESS"))
        node_ip = g.node.ip
        assert node_ip is not None

        def syns(rnd: int) -> list[bytes]:
            base = 1024 + (rnd % MAX_ROUNDS) * flows
            return [_frame(OUTSIDE_MAC, node_mac, "203.0.113.10", node_ip, base + j, NODE_PORT_PROBE, TCP_SYN)
                    for j in range(flows)]
        g.probe_syn = syns
        g.flows = syns(MAX_ROUNDS - 1)   # the verdict check below uses ports no timed round uses
        _check_verdicts(g, g.flows[:8])
        return
    a, b = _pod(g.node, "a"), _pod(g.node, "b")
    g.ifindex = a.endpoint.ifindex
    amac, lxc_mac = a.endpoint.mac, a.endpoint.node_mac
    if g.part == "ct":
        picks = [j * g.n // flows for j in range(min(flows, g.n))]
        g.flows = [_frame(amac, lxc_mac, a.ip, b.ip, *ct_tuple(i), TCP_ACK | TCP_PSH, b"x") for i in picks]
    elif g.part == "svc":
        g.flows = []
        for j in range(flows):
            sport = 40_000 + j
            for flags in (TCP_SYN, TCP_ACK):   # untimed: the CT service and connection entries
                _run(g, _frame(amac, lxc_mac, a.ip, PROBE_IP, sport, SVC_PORT, flags))
            g.flows.append(_frame(amac, lxc_mac, a.ip, PROBE_IP, sport, SVC_PORT, TCP_ACK | TCP_PSH, b"x"))
    else:
        g.flows = [_frame(amac, lxc_mac, a.ip, b.ip, 30_000 + j, 9, TCP_ACK | TCP_PSH, b"x") for j in range(flows)]
    g.warm = g.flows[len(g.flows) // 2]
    _check_verdicts(g, g.flows[:8])


def _check_verdicts(g: GrowthArm, frames: Sequence[bytes]) -> None:
    """The packets must take the forwarding path (a redirect), not a drop: otherwise the arm
    measures an error path."""
    for f in frames:
        v, _ = _run(g, f)
        name = TcAction(v).name if v in TcAction._value2member_map_ else str(v)
        g.verdicts[name] = g.verdicts.get(name, 0) + 1
    if set(g.verdicts) != {"REDIRECT"}:
        raise RuntimeError(f"{g.key}: test_run packets gave {g.verdicts}, expected REDIRECT only")


def test_run_round(g: GrowthArm, rnd: int) -> dict[str, float]:
    """One round of test_run: the distinct flows once each (median kernel ns) and, except for
    Maglev, one flow ``WARM_REPEAT`` times."""
    assert g.prog is not None
    frames = g.probe_syn(rnd) if g.probe_syn is not None else g.flows
    ctx = SkbContext(ifindex=g.ifindex)
    out: dict[str, float] = {}
    with entered(_datapath(g.node).netns):
        ns = [g.prog.run(f, ctx=ctx).duration_ns for f in frames]
        if g.warm is not None:
            out[TR_WARM] = float(g.prog.run(g.warm, repeat=WARM_REPEAT, ctx=ctx).duration_ns)
    out[TR_FLOWS] = float(statistics.median(ns))
    return out


# -- the rounds ------------------------------------------------------------------------------------
GC_AHEAD_S = 60              # the per-round GC removes what expires within this (closed and SYN-only entries)
CT_AT_TEST_RUN = "CT entries at test_run"


def ct_gc(g: GrowthArm) -> int:
    """Delete the TCP CT entries that expire within ``GC_AHEAD_S`` (numpy: one dump, one delete);
    returns the entries kept.

    Every CRR connection through per-packet LB leaves a service and a connection entry that only a
    GC removes (closed: 10 s to expiry; the node's GC runs on demand only), so without this a
    "small" arm holds ~100k entries after a few rounds. Cilium's agent GCs periodically; here it
    runs untimed before every round, and keeps the filled entries (a week ahead), the svc probe
    flows (established: 8000 s) and nothing else of the previous round. (``Datapath.gc_conntrack``
    decodes every entry into a record: seconds at 1M.)"""
    dp = _datapath(g.node)
    assert dp.maps is not None
    m = dp.maps.get(CT_TCP)
    keys, vals = m.lookup_batch_numpy()
    stale = keys[vals["lifetime"] < int(time.clock_gettime(time.CLOCK_MONOTONIC)) + GC_AHEAD_S]
    if len(stale):
        try:
            m.delete_batch(stale)
        except BpfError:  # a key gone between the dump and the delete (LRU eviction) stops the batch
            for i in range(len(stale)):
                with contextlib.suppress(BpfError):
                    m.delete_batch(stale[i:i + 1])
    return len(keys) - len(stale)


def _start_servers(stack: contextlib.ExitStack, bench: Bench, g: GrowthArm) -> None:
    devices.set_sysctl(g.arm.client_ns, "net.ipv4.tcp_tw_reuse", "1")
    devices.set_sysctl(g.arm.client_ns, "net.ipv4.ip_local_port_range", "1024 65535")
    stack.callback(bench.stop_servers, g.arm)
    bench.start_crr_server(g.arm)
    echo = g.arm.server_popen(*bench.server_argv([bench.crr_bin, "echo", g.arm.server_ip, str(ECHO_PORT),
                                                  str(SERVER_MAX_S)]))
    g.arm.servers.append(echo)
    wait_listening(g.arm, ECHO_PORT, echo, "echo server")


def rrmix(bench: Bench, arms: Sequence[GrowthArm], secs: float) -> dict[str, list[float]]:
    """``crr rrmix`` through every arm's service at once: per arm the p50 of each rotation (first
    ``RRMIX_SKIP`` dropped), index-paired across arms. (``Bench.rr_interleaved`` connects to the
    server address; here the round trips must go through the service.)"""
    spec: list[str] = []
    for g in arms:
        spec += [g.echo[0], g.echo[1], str(g.echo[2])]
    res = subprocess.run(bench.client_argv([bench.crr_bin, "rrmix", f"{secs:g}", str(RRMIX_BLOCK), *spec]),
                         capture_output=True, text=True, timeout=secs + 60, check=False)
    doc = json.loads(check_run(res, "crr rrmix").strip().splitlines()[-1])
    if doc["rotations"] <= RRMIX_SKIP + 2:
        raise RuntimeError(f"crr rrmix: only {doc['rotations']} rotations in {secs:g} s")
    return {g.key: [float(x) for x in t["block_p50_us"][RRMIX_SKIP:]] for g, t in zip(arms, doc["targets"],
                                                                                     strict=True)}


def run_rounds(ctx: Context, bench: Bench, arms: Sequence[GrowthArm], rounds: int, secs: float,
               rr_secs: float) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[float]]]:
    """Warmup + timed rounds; per arm and metric one sample per timed round, and the rrmix
    per-rotation p50s of all timed rounds (index-paired across arms)."""
    samples: dict[str, dict[str, list[float]]] = {g.key: {} for g in arms}
    rotations: dict[str, list[float]] = {g.key: [] for g in arms}
    busy: list[float] = []
    total = ctx.warmup + rounds
    t_start = time.perf_counter()
    for rnd in range(total):
        warm = rnd < ctx.warmup
        kept = {g.key: ct_gc(g) for g in arms}
        busy.append(cpu_busy(0.3))
        shift = rnd % len(arms)
        got: dict[str, dict[str, float]] = {g.key: {} for g in arms}
        for g in list(arms[shift:]) + list(arms[:shift]):
            out = bench.crr(g.arm, WARMUP_SECONDS if warm else secs)
            got[g.key].update({CRR: out[CRR], CRR_P50: out[CRR_P50]})
        rr = rrmix(bench, arms, rr_secs)
        for g in list(arms[shift:]) + list(arms[:shift]):
            got[g.key].update(test_run_round(g, rnd))
            got[g.key][RR_P50] = statistics.median(rr[g.key])
            got[g.key][CT_AT_TEST_RUN] = float(kept[g.key])
        ctx.log(f"round {rnd + 1}/{total}{' (warmup)' if warm else ''}: " + ", ".join(
            f"{k} {v[CRR]:,.0f}/s p50 {v[CRR_P50]:.0f} rr {v[RR_P50]:.1f} tr {v[TR_FLOWS]:.0f}" for k, v in got.items()))
        if warm:
            continue
        for k, v in got.items():
            for m, x in v.items():
                samples[k].setdefault(m, []).append(x)
        n_rot = min(len(x) for x in rr.values())
        for k, xs in rr.items():
            rotations[k] += xs[:n_rot]
    ctx.params["background_busy_cpus_max"] = round(max(busy), 2)
    ctx.log(f"measured in {time.perf_counter() - t_start:.0f} s")
    return samples, rotations


# -- the suite -------------------------------------------------------------------------------------
def _parts() -> list[str]:
    value = os.environ.get(PARTS_ENV, "")
    want = [p.strip() for p in value.split(",") if p.strip()] or list(PARTS)
    unknown = set(want) - set(PARTS)
    if unknown:
        raise ValueError(f"{PARTS_ENV}: unknown part(s) {sorted(unknown)}; have {', '.join(PARTS)}")
    return [p for p in PARTS if p in want]


def _fill(g: GrowthArm, small: int) -> None:
    """What makes the big arm big (the small arm gets the same call with its own size)."""
    if g.part == "ct":
        fill_ct(g)
    elif g.part in ("svc", "mag"):
        # the suite's own 3 services count as "1": the fillers make up the rest of n
        fill_services(g, g.n - small if g.n > small else 0, maglev=g.part == "mag")
        if g.n <= small and g.part == "mag":
            g.setup["maglev entries"] = _count(_lb(g.node).maglev)
    else:
        fill_endpoints(g, g.n - 2)


def run(ctx: Context) -> list[Measurement]:
    """Build both arms of every part, fill them, run interleaved rounds; see the module doc."""
    require_tools("growth", ("taskset", "ss", "gcc"))
    parts = _parts()
    sizes = QUICK_SIZES if ctx.quick else SIZES
    rounds = min(max(1, ctx.repeats), MAX_ROUNDS - 1)
    secs = QUICK_SECONDS if ctx.quick else SECONDS
    rr_secs = QUICK_RR_SECONDS if ctx.quick else RR_SECONDS
    flows = QUICK_FLOWS if ctx.quick else FLOWS
    client_cpu, server_cpu = client_server_cpus()
    nice = env_nice(NICE_ENV)
    tag = f"{os.getpid() % 1000:03d}"
    ctx.params.update(parts=",".join(parts), sizes={p: [sizes[p][0], sizes[p][1]] for p in parts}, rounds=rounds,
                      warmup_rounds=ctx.warmup, crr_seconds=secs, rr_seconds=rr_secs, rrmix_block=RRMIX_BLOCK,
                      test_run_flows=flows, test_run_warm_repeat=WARM_REPEAT, backends_per_service=BACKENDS_PER_SERVICE,
                      maglev_table_size=MAGLEV_TABLE, ct_map_size=CT_MAP_SIZE, services_map_size=SERVICES_MAP_SIZE,
                      backends_map_size=BACKENDS_MAP_SIZE, maglev_map_size=MAGLEV_MAP_SIZE,
                      client_cpu=client_cpu, server_cpu=server_cpu, nice=nice)
    ms: list[Measurement] = []
    t_suite = time.perf_counter()
    with contextlib.ExitStack() as stack:
        bench = Bench(stack.enter_context(crr_binary()), client_cpu, server_cpu, nice)
        arms: list[GrowthArm] = []
        for part in parts:
            small, big = sizes[part]
            for n in (small, big):
                g = _build(stack, part, n, tag)
                _fill(g, small)
                prepare_test_run(g, flows)
                _start_servers(stack, bench, g)
                ctx.log(f"{g.key}: built in {g.setup['build s']:.1f} s, " + ", ".join(
                    f"{k} {v:,.1f}" for k, v in g.setup.items() if k != "build s"))
                arms.append(g)
        ms.append(info("background CPU before the rounds", wait_quiet(ctx, 20.0), "cpus", group="setup"))
        samples, rotations = run_rounds(ctx, bench, arms, rounds, secs, rr_secs)
        # the filled state must still be there (LRU eviction, a GC): otherwise the big arm was not big
        for g in arms:
            if g.part == "ct":
                left = _count(_datapath(g.node).maps.get(CT_TCP))  # type: ignore[union-attr]
                ms.append(info(f"{g.key}: CT entries after the rounds", left))
                if left < g.n:
                    raise RuntimeError(f"{g.key}: only {left} CT entries left of {g.n}")
        for g in arms:
            for m, xs in samples[g.key].items():
                ms.append(Measurement.from_samples(mname(g.key, m), xs, UNITS[m],
                                                   group="counters" if m == CT_AT_TEST_RUN else "arms",
                                                   note="after the round's GC, median of rounds"
                                                   if m == CT_AT_TEST_RUN else ""))
            for k, v in g.setup.items():
                ms.append(info(f"{g.key}: {k}", v, "s" if k.endswith(" s") else "count", group="setup"))
            ms.append(info(f"{g.key}: crr connections", g.arm.counters.get("crr connections", 0)))
            ms.append(info(f"{g.key}: crr errors", g.arm.counters.get("crr errors", 0)))
        for part in parts:
            small_key, big_key = (akey(part, n) for n in sizes[part])
            for m in METRICS:
                if m == RR_P50:
                    ms.append(ratio(rname(big_key, small_key, m), rotations[big_key], rotations[small_key],
                                    group="ratios", note=f"paired per rrmix rotation ({len(rotations[big_key])})"))
                elif m in samples[big_key] and m in samples[small_key]:
                    ms.append(ratio(rname(big_key, small_key, m), samples[big_key][m], samples[small_key][m],
                                    group="ratios", note="paired per round"))
    ms.append(info("suite wall time", time.perf_counter() - t_suite, "s", group="setup"))
    return ms


def _goals() -> list[Goal]:
    out: list[Goal] = []
    for part in PARTS:
        small, big = (akey(part, n) for n in SIZES[part])
        src = "issue 16: per-packet LB at 1M CT ÷ 1k ≤ 1.1 latency" if part == "ct" else "issue 16: flat"
        out += [(big, small, RR_P50, "<=", 1.10, src), (big, small, CRR_P50, "<=", 1.10, "flat is the goal"),
                (big, small, CRR, ">=", 0.91, "flat is the goal"), (big, small, TR_FLOWS, "<=", 1.10, "flat is the goal"),
                (big, small, TR_WARM, "<=", 1.10, "flat is the goal")]
    return out


def summarize(ms: list[Measurement]) -> list[Summary]:
    """Per-arm medians, big ÷ small ratios, the goals."""
    c = Cells(ms)
    arms = sorted({m.name.split(": ")[0] for m in ms if m.group == "arms"},
                  key=lambda k: (PARTS.index(k.split("@")[0]), _size(k)))
    rows = [[k, *(c.cell(mname(k, m)) for m in METRICS)] for k in arms]
    per_arm = Summary("per arm (median of rounds, CV in brackets; '!' = CV > 5 %)",
                      ["arm", "CRR conn/s", "CRR conn p50 µs", "RR p50 µs", "test_run ns (flows)", "test_run ns (warm)"],
                      rows, note="CRR: connect + 1 B request + 1 B response + close through the service, one "
                                 "client; RR: crr rrmix, half round trip; test_run: kernel-reported ns per run.")
    ratio_rows = []
    for part in PARTS:
        pair = [k for k in arms if k.startswith(part + "@")]
        if len(pair) != 2:
            continue
        small, big = _order(pair)
        ratio_rows.append([f"{TITLES[part]}: {big} ÷ {small}", *(c.rcell(rname(big, small, m)) for m in METRICS)])
    ratios = Summary("big ÷ small, paired (per round; RR per rrmix rotation), bootstrap 95 % CI",
                     ["part", "CRR rate", "CRR conn p50", "RR p50", "test_run (flows)", "test_run (warm)"], ratio_rows,
                     note="flat is 1.00; latency and ns ratios > 1 are slower, a rate ratio < 1 is slower.")
    goals = [g for g in _goals() if rname(g[0], g[1], g[2]) in c]
    quick = [g for part in PARTS for g in _quick_goals(part, arms) if rname(g[0], g[1], g[2]) in c]
    return [per_arm, ratios,
            goal_summary(c, goals + quick, "goals (issue 16: flat is the goal)",
                         note="verdict on the median of the paired ratios; 'CI' says whether the whole bootstrap "
                              "interval is on the right side."),
            *tail_summaries(ms, [])]


def _size(key: str) -> float:
    """The size in an arm key (``ct@1M`` -> 1e6)."""
    s = key.split("@")[1]
    mult = {"k": 1e3, "M": 1e6}.get(s[-1], 1.0)
    return float(s[:-1] if s[-1] in "kM" else s) * mult


def _order(pair: Sequence[str]) -> tuple[str, str]:
    """(small, big) of a part's two arm keys."""
    a, b = sorted(pair, key=_size)
    return a, b


def _quick_goals(part: str, arms: Sequence[str]) -> list[Goal]:
    """The goals at whatever sizes ran (a --quick run's arms are not the default sizes)."""
    pair = [k for k in arms if k.startswith(part + "@")]
    if len(pair) != 2 or set(pair) == {akey(part, n) for n in SIZES[part]}:
        return []
    small, big = _order(pair)
    return [(big, small, m, op, thr, "flat (--quick sizes)") for m, op, thr in
            ((RR_P50, "<=", 1.10), (CRR_P50, "<=", 1.10), (CRR, ">=", 0.91), (TR_FLOWS, "<=", 1.10),
             (TR_WARM, "<=", 1.10))]
