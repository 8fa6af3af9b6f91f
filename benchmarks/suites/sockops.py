"""sockops: same-node pod-to-pod TCP with socket acceleration (sockops + sk_msg) vs redirect_peer vs the veth floor.

Issue 12's benchmark of the experimental socket send/recv acceleration (``docs/sockops.md``;
reference anchors-next §4: "expect small or negative throughput gains and a latency gain only for
small messages"). Three arms, all built first and run interleaved in one process:

- ``a-floor``: two namespaces joined by one veth (``VethPair``), no routing hop;
- ``b-redirect-peer``: ``Lab()`` default, one node, two pods: ciliumlite bpf host routing
  (``cil_from_container`` + ``bpf_redirect_peer``), socket acceleration off;
- ``c-sockops``: the same with ``sockops_enable=True``: once both ends of a connection are
  established, every ``sendmsg`` goes to the peer socket's receive queue (``bpf_msg_redirect_hash``),
  no TCP segment, no veth, no tc program.

Per arm and round, ``host_routing``'s measurements (``_netbench.Bench``): sockperf TCP ping-pong
latency (default 14-byte messages; half round trip), the connect/request/response/close rate of
``benchmarks/tools/crr.c`` (what setting up the sockhash entries costs per connection), iperf3
single-stream throughput; plus sockperf ping-pong with ``LARGE_MSG``-byte messages. Client pinned
to one CPU, servers to the other, both under ``nice -n -10``; rounds run the arms round-robin
(start arm rotated each round); the warmup round is discarded; ratios are paired per round.

The acceleration arm's sockops counters are reported (messages redirected and passed): a run in
which nothing was redirected measured nothing and says so.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.harness import Context, Measurement, Summary, ratio
from benchmarks.suites._netbench import (
    CRR,
    CRR_P50,
    LAT_AVG,
    LAT_P50,
    LAT_P99,
    SOCKPERF_PORT,
    TPUT,
    TPUT_MED,
    Bench,
    Cells,
    Goal,
    NetArm,
    Plan,
    QuietGate,
    arm_counters,
    arm_measurements,
    arm_summary,
    bpf_stats_pass,
    check_run,
    datapath_counters,
    floor_summary,
    goal_summary,
    info,
    mname,
    ns_run,
    parse_sockperf,
    prepare_arm,
    require_tools,
    rname,
    run_rounds,
    softnet_drops,
    tail_summaries,
    tcp_snapshot,
)
from ciliumlite.lab import Lab, Pod, procs
from ciliumlite.testing import VethPair

DESCRIPTION = ("same-node pod-to-pod TCP: veth floor vs bpf host routing (redirect_peer) vs socket "
               "acceleration (sockops + sk_msg, experimental); latency, large-message latency, connection rate, "
               "throughput")
NEEDS_ROOT = True
DEFAULT_REPEATS = 4          # 4 rounds × 3 arms × (4 × 2 s + setup) ≈ 3 min with the warmup round

ARMS_ENV = "CILIUMLITE_BENCH_SO_ARMS"   # comma-separated subset of the arms (the floor always runs)
NICE_ENV = "CILIUMLITE_BENCH_SO_NICE"   # niceness of clients and servers (default -10; 0 = as started)
SECONDS = 2.0
WARMUP_SECONDS = 1.0
QUICK_SECONDS = 1.0
QUIET_WAIT_ARM_S = 10.0
LARGE_MSG = 16384            # bytes per sockperf message in the large-message latency

ARMS = ("a-floor", "b-redirect-peer", "c-sockops")
FLOOR, PEER, SOCKOPS = ARMS
TITLES = {
    FLOOR: "(a) floor: one veth between two namespaces",
    PEER: "(b) bpf host routing, redirect_peer (sockops off)",
    SOCKOPS: "(c) socket acceleration: sockops + sk_msg redirect",
}
LAT_BIG_AVG = f"latency avg, {LARGE_MSG} B"
LAT_BIG_P50 = f"latency p50, {LARGE_MSG} B"
BIG = (LAT_BIG_AVG, LAT_BIG_P50)

FLOOR_METRICS = (LAT_AVG, LAT_P50, CRR, CRR_P50, TPUT, TPUT_MED)
# The question of the issue: is the acceleration faster than what it replaces (redirect_peer)?
# No threshold is given ("report honestly"); these say whether it is faster at all.
GOALS: list[Goal] = [
    (SOCKOPS, PEER, LAT_AVG, "<=", 1.0, "report: small-message latency vs redirect_peer"),
    (SOCKOPS, PEER, LAT_P50, "<=", 1.0, "report: the same on p50 (steadier on a shared VM)"),
    (SOCKOPS, PEER, LAT_BIG_P50, "<=", 1.0, f"report: {LARGE_MSG}-byte message latency p50 vs redirect_peer"),
    (SOCKOPS, PEER, TPUT, ">=", 1.0, "report: single-stream throughput vs redirect_peer"),
    (SOCKOPS, PEER, TPUT_MED, ">=", 1.0, "report: the same on the median 0.25-s interval"),
    (SOCKOPS, PEER, CRR, ">=", 0.9, "report: connection rate (sockhash insert per socket) within 10 %"),
]
EXTRA_RATIOS: list[tuple[str, str, str]] = [
    (SOCKOPS, PEER, m) for m in (LAT_AVG, LAT_P50, LAT_P99, CRR, CRR_P50, TPUT, TPUT_MED, *BIG)
] + [(PEER, FLOOR, m) for m in BIG] + [(SOCKOPS, FLOOR, m) for m in BIG]


@dataclass
class SockBench(Bench):
    """``Bench`` plus a sockperf ping-pong with ``LARGE_MSG``-byte messages."""

    def measure(self, arm: NetArm, secs: float) -> dict[str, float]:
        """Latency (14 B and ``LARGE_MSG``), CRR and throughput, one after the other."""
        got = super().measure(arm, secs)
        res = arm.client_run(*self.client_argv(["sockperf", "pp", "--tcp", "-i", arm.server_ip, "-p",
                                                str(SOCKPERF_PORT), "-m", str(LARGE_MSG),
                                                "-t", str(max(1, round(secs)))]), timeout=secs + 20)
        big = parse_sockperf(check_run(res, f"{arm.key}: sockperf pp -m {LARGE_MSG}"))
        return {**got, LAT_BIG_AVG: big[LAT_AVG], LAT_BIG_P50: big[LAT_P50]}


def _veth_arm(stack: contextlib.ExitStack) -> NetArm:
    group = procs.ProcessGroup()
    pair = VethPair.create("so")
    stack.callback(pair.remove)
    stack.callback(group.stop_all)  # runs before pair.remove (LIFO)

    def popen(*argv: str) -> subprocess.Popen[str]:
        return group.popen(pair.ns_b, argv)

    return NetArm(FLOOR, pair.ip_b, ns_run(pair.ns_a), ns_run(pair.ns_b), popen, group.stop, pair.ns_a,
                  pair.ns_b)


def _lab_arm(stack: contextlib.ExitStack, key: str, lab_name: str, sockops: bool) -> NetArm:
    # Pod processes run in the node's own cgroup (the lab makes one per node), which is where
    # cil_sockops is attached: both ends of every connection are seen.
    lab = Lab(lab_name)
    stack.callback(lab.close)
    node = lab.add_node("node", sockops_enable=sockops)
    a: Pod = node.add_pod("a")
    b: Pod = node.add_pod("b")
    return NetArm(key, b.ip, a.run, b.run, b.popen, lab.processes.stop, a.netns, b.netns, node=node)


def _sockops_counters(arm: NetArm, before: dict[str, tuple[int, int]]) -> list[Measurement]:
    assert arm.node is not None and arm.node.datapath is not None
    now = {k: (v.count, v.bytes) for k, v in arm.node.datapath.sockops.counters().items()}
    out = []
    for name, label in (("sock_added", "sockets added to the sockhash"),
                        ("msg_redirect", "messages redirected (sk_msg -> peer socket)"),
                        ("msg_pass", "messages through TCP/IP (fallback)"),
                        ("pass_no_peer", "fallbacks: first message found no peer")):
        count = now[name][0] - before.get(name, (0, 0))[0]
        size = now[name][1] - before.get(name, (0, 0))[1]
        out.append(info(f"{arm.key}: {label}", count, note=f"{size / 1e9:.2f} GB" if size else ""))
    return out


def _big_measurements(arms: dict[str, NetArm]) -> list[Measurement]:
    ms = []
    for key, arm in arms.items():
        for metric in BIG:
            ms.append(Measurement.from_samples(mname(key, metric), arm.samples[metric], "us", group=key,
                                               note=f"sockperf pp --tcp -m {LARGE_MSG}, half round trip",
                                               kind="time"))
    return ms


def _ratios(arms: dict[str, NetArm], have: Sequence[Measurement]) -> list[Measurement]:
    names = {m.name for m in have}
    out = []
    for num, den, metric in EXTRA_RATIOS:
        name = rname(num, den, metric)
        if num in arms and den in arms and name not in names:
            names.add(name)
            out.append(ratio(name, arms[num].samples[metric], arms[den].samples[metric], group="ratios"))
    return out


def run(ctx: Context) -> list[Measurement]:
    """Build the three arms, run them interleaved, return medians, paired ratios and counters."""
    require_tools("sockops", ("sockperf", "iperf3", "taskset", "ss", "ping"))
    plan = Plan.make(ctx, ARMS, arms_env=ARMS_ENV, nice_env=NICE_ENV, secs=SECONDS, quick_secs=QUICK_SECONDS,
                     warmup_secs=WARMUP_SECONDS)
    ctx.params.update(plan.params(ctx), large_msg=LARGE_MSG)
    setup: list[Measurement] = []

    with contextlib.ExitStack() as stack:  # unwinds on any error: servers, labs, namespaces, temp files
        base = plan.bench(stack)
        bench = SockBench(base.crr_bin, base.client_cpu, base.server_cpu, base.nice)
        ctx.log(f"building arms: {', '.join(plan.arms)}")
        arms = {FLOOR: _veth_arm(stack)}
        for key, lab_name, on in ((PEER, "so-peer", False), (SOCKOPS, "so-accel", True)):
            if key in plan.arms:
                arms[key] = _lab_arm(stack, key, lab_name, on)
        for arm in arms.values():
            prepare_arm(stack, bench, arm)

        gate = QuietGate(ctx, QUIET_WAIT_ARM_S, total_s=60.0)
        gate.begin(max_wait=30.0)
        before = {k: tcp_snapshot(a) for k, a in arms.items()}
        sk_arm = arms.get(SOCKOPS)
        sk_before: dict[str, tuple[int, int]] = {}
        if sk_arm is not None and sk_arm.node is not None and sk_arm.node.datapath is not None:
            sk_before = {k: (v.count, v.bytes) for k, v in sk_arm.node.datapath.sockops.counters().items()}
        softnet_before = softnet_drops()
        run_rounds(ctx, plan, bench, arms, gate)
        for key, arm in arms.items():
            setup += arm_counters(key, arm, before[key])
            if arm.node is not None:
                setup += datapath_counters(f"{key}:", arm.node)
        if sk_arm is not None:
            setup += _sockops_counters(sk_arm, sk_before)
        setup.append(info("host: softnet backlog drops (all arms, and anything else running)",
                          softnet_drops() - softnet_before))
        setup.append(gate.start_info())
        setup.append(info("background CPU busy before each arm, max", max(gate.in_order) * 100, "%", group="setup",
                          note="sampled with our servers idle (other work on the machine), in run order: "
                               + ", ".join(f"{b * 100:.0f}" for b in gate.in_order)))
        setup += bpf_stats_pass(ctx, plan, bench, arms)

    ms = arm_measurements(arms, FLOOR, FLOOR_METRICS, []) + _big_measurements(arms)
    return ms + _ratios(arms, ms) + setup


def summarize(ms: list[Measurement]) -> list[Summary]:
    """Per-arm medians, ratios vs the floor, acceleration vs redirect_peer, and the counters."""
    c = Cells(ms)
    goal_names = {rname(n, d, m) for n, d, m, *_ in GOALS}
    extra = [m for m in ms if m.group == "ratios" and m.name not in goal_names
             and not any(m.name == rname(a, FLOOR, x) for a in ARMS for x in FLOOR_METRICS)]
    per_arm = arm_summary(c, TITLES, (LAT_AVG, LAT_P50, LAT_P99, CRR, CRR_P50, TPUT, TPUT_MED),
                          note=", mean and median of 0.25-s intervals. Client and servers pinned to different CPUs.")
    big = Summary(f"large messages: sockperf ping-pong with {LARGE_MSG}-byte messages (median of rounds, CV)",
                  ["arm", "latency avg µs", "latency p50 µs"],
                  [[t, c.cell(mname(a, LAT_BIG_AVG)), c.cell(mname(a, LAT_BIG_P50))] for a, t in TITLES.items()
                   if mname(a, LAT_BIG_AVG) in c])
    return [
        per_arm, big,
        floor_summary(c, TITLES, FLOOR, "a", FLOOR_METRICS),
        goal_summary(c, GOALS, "socket acceleration vs redirect_peer (c ÷ b)",
                     note="no goal was set (the issue: 'report honestly'); 'pass' only says (c) was faster. "
                          "Verdict on the median of the paired ratios; 'CI' says whether the whole bootstrap "
                          "interval agrees."),
        *tail_summaries(ms, extra),
    ]
