"""Per-packet cost of ``bpf_xdp.o``'s ``cil_xdp_entry`` alone, measured with BPF_PROG_TEST_RUN.

    sudo .venv/bin/python benchmarks/tools/xdp_prog_cost.py [--repeat 1000000] [--rounds 5]

Loads bpf_xdp (with bpf_lxc and bpf_host sharing its pins, as a node and tests/bpf/test_bpf_xdp.py
do) in a private namespace whose ``eth0`` stands in for the node's NIC, puts 198.51.100.0/24 in the
prefilter (the LPM trie, as the xdp benchmark does), programs a UDP NodePort service with one remote
backend, and reports the kernel's ns per run (median and min of ``--rounds`` runs of ``--repeat``):

* ``drop``: a 60-byte UDP frame from 198.51.100.7 (prefilter hit, counted DROP_PREFILTER);
* ``pass``: the same frame from 203.0.113.10 to a port that is no service (XDP_PASS);
* ``nodeport``: a UDP frame to the NodePort (XDP_TX after DNAT+SNAT). The program rewrites the frame
  and a plain test run would feed the rewritten frame to the next run, so this one runs in live-frames
  mode (fresh frame each run; the XDP_TX leaves eth0 into its peer, inside the namespace). Live mode
  costs more per run than the plain mode (page pool, xmit), so ``drop-live`` / ``pass-live`` and the
  floor in both modes are reported too for comparison;
* ``floor``: ``tools/xdp_bench.bpf.c``'s ``xdp_drop`` (one ARRAY counter, XDP_DROP).

Everything it makes (namespace, pins) is removed at the end, also on failure. Needs root.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.suites.xdp import bench_object, udp_frame
from ciliumlite.bpf import BpfObject, Program, fs
from ciliumlite.bpf.netns import entered
from ciliumlite.bpf.program import BPF_F_TEST_XDP_LIVE_FRAMES, XdpContext
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.datapath.maps import PREFILTER_DYN
from ciliumlite.datapath.reasons import Reason
from ciliumlite.datapath.records import ENDPOINT_F_HOST, Cidr4Key, Cidr4Value
from ciliumlite.lab import owned
from ciliumlite.node.services import lb_rows
from ciliumlite.service import Backend, Frontend, Service
from ciliumlite.testing.datapath import DatapathFactory, DatapathObjects, EndpointRow
from ciliumlite.testing.resources import session_record, unique_name

# The addresses of tests/bpf/test_bpf_lb.py / test_bpf_xdp.py.
NODE_IP = "10.0.0.12"
REMOTE_IP = "10.0.0.13"
REMOTE_MAC = "0e:00:00:00:00:13"
UNDERLAY_MAC = "0e:00:00:00:00:12"
CLIENT_MAC = "0e:00:00:00:00:fe"
POD_CIDR = "10.244.1.0/24"
REMOTE_BACKEND, BACKEND_PORT = "10.244.2.7", 8080
CLUSTER_IP, SVC_PORT, NODE_PORT = "10.96.0.10", 80, 30080
OUTSIDE = "203.0.113.10"
DENIED_NET, DENIED_HOST = "198.51.100.0/24", "198.51.100.7"


def setup(ns: DatapathFactory) -> DatapathObjects:
    """test_bpf_xdp.py's ``ns`` fixture and ``load()``: eth0 with its neighbours, routes, one node."""
    ns.underlay("eth0", f"{NODE_IP}/24", mac=UNDERLAY_MAC,
                neighbours={REMOTE_IP: REMOTE_MAC, "10.0.0.254": CLIENT_MAC})
    ns.ip("route", "add", "10.244.2.0/24", "via", REMOTE_IP)
    for world in ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"):
        ns.ip("route", "add", world, "via", "10.0.0.254")
    set_sysctl(ns.netns, "net.ipv4.ip_forward", "1")
    cfg = DatapathConfig(node_name="worker1", pod_cidr=POD_CIDR, node_ip=NODE_IP, routing="native",
                         load_balancer_mode="snat", acceleration="native")
    dp = ns(cfg, ("lxc", "host", "xdp"), native_ifindex=ns.ifindex("eth0"), xdp_nodeport=True,
            native_mac=UNDERLAY_MAC)
    dp.add_endpoints(EndpointRow(NODE_IP, 0, UNDERLAY_MAC, UNDERLAY_MAC, 1, ENDPOINT_F_HOST))
    for node in (NODE_IP, REMOTE_IP):
        dp.maps.nodes.set(int(IPv4Address(node)), 1)
    addr, plen = DENIED_NET.split("/")
    dp.maps.get(PREFILTER_DYN).set(Cidr4Key(int(plen), IPv4Address(addr)), Cidr4Value())
    svc = Service("np", Frontend(CLUSTER_IP, SVC_PORT, "UDP"), [Backend(REMOTE_BACKEND, BACKEND_PORT)],
                  type="NodePort", node_port=NODE_PORT)
    dp.lb.program(svc.name, lb_rows(svc, NODE_IP, POD_CIDR))
    return dp


def measure(run: Callable[[], int], rounds: int) -> tuple[float, int]:
    """Median and min ns/run over ``rounds`` calls of ``run`` (one warm-up call first)."""
    run()
    got = [run() for _ in range(rounds)]
    return statistics.median(got), min(got)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated cases (drop,pass,drop-live,drop-1,nodeport-1,floor,"
                                               "floor-live,floor-1); default all")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))

    record = session_record()
    netns = owned.make_netns(record, unique_name("ns"))
    pins = fs.make_pin_dir(unique_name("pins"))
    ns = DatapathFactory(netns, pins)
    results: dict[str, tuple[float, int]] = {}
    try:
        dp = setup(ns)
        eth0 = ns.ifindex("eth0")
        prog = dp.program("cil_xdp_entry")
        ctx = XdpContext(ingress_ifindex=eth0)
        frames = {
            "drop": udp_frame(UNDERLAY_MAC, CLIENT_MAC, DENIED_HOST, NODE_IP, 41000, 9),
            "pass": udp_frame(UNDERLAY_MAC, CLIENT_MAC, OUTSIDE, NODE_IP, 41000, 9),
            "nodeport": udp_frame(UNDERLAY_MAC, CLIENT_MAC, OUTSIDE, NODE_IP, 41000, NODE_PORT),
        }
        want = {"drop": 1, "pass": 2, "nodeport": 3}   # XDP_DROP, XDP_PASS, XDP_TX
        with entered(netns):
            for name, frame in frames.items():
                one = prog.run(frame, ctx=ctx)
                if one.retval != want[name]:
                    raise SystemExit(f"{name}: verdict {one.retval}, want {want[name]} (setup broken?)")
            def singles(frame: bytes, prog: Program = prog) -> int:
                # repeat=1, many times: every run gets the frame as given (the NodePort path
                # rewrites it, and repeat > 1 would run on the rewritten frame).
                n = max(args.repeat // 50, 1)
                return round(sum(prog.run(frame, ctx=ctx).duration_ns for _ in range(n)) / n)

            cases: dict[str, Callable[[], int]] = {
                "drop": lambda: prog.run(frames["drop"], repeat=args.repeat, ctx=ctx).duration_ns,
                "pass": lambda: prog.run(frames["pass"], repeat=args.repeat, ctx=ctx).duration_ns,
                "drop-live": lambda: prog.run(frames["drop"], repeat=args.repeat, ctx=ctx,
                                              flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64).duration_ns,
                "drop-1": lambda: singles(frames["drop"]),
                "nodeport-1": lambda: singles(frames["nodeport"]),
            }
            before = dp.counts()
            for name, run in cases.items():
                if not only or name in only:
                    results[name] = measure(run, args.rounds)
            counted = dp.counts()
            counted.subtract(before)
        if (not only or "drop" in only) and counted[Reason.DROP_PREFILTER] < args.repeat * args.rounds:
            raise SystemExit(f"DROP_PREFILTER counted {counted[Reason.DROP_PREFILTER]}, want >= "
                             f"{args.repeat * args.rounds}: drops are no longer counted")
        if not only or only & {"floor", "floor-live", "floor-1"}:
            with bench_object() as path, BpfObject.load_file(path) as obj, entered(netns):
                floor = obj.programs["xdp_drop"]
                frame = frames["drop"]
                floor_cases: dict[str, Callable[[], int]] = {
                    "floor": lambda: floor.run(frame, repeat=args.repeat, ctx=ctx).duration_ns,
                    "floor-1": lambda: singles(frame, floor),
                    "floor-live": lambda: floor.run(frame, repeat=args.repeat, ctx=ctx,
                                                    flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64).duration_ns,
                }
                for name, run in floor_cases.items():
                    if not only or name in only:
                        results[name] = measure(run, args.rounds)
    finally:
        ns.close()
        fs.remove_pin_dir(pins)
        owned.remove_netns(record, netns)

    print(f"cil_xdp_entry, BPF_PROG_TEST_RUN repeat={args.repeat} x {args.rounds} rounds: ns/run median (min)")
    for name, (med, low) in results.items():
        print(f"  {name:<11} {med:7.1f}  ({low})")
    if "counted" in locals():
        print(f"  counted: {dict((Reason(r).name, n) for r, n in counted.items() if n)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
