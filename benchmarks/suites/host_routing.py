"""host_routing: same-node pod-to-pod over four datapaths, arms interleaved in one run.

perf.md §1.1 (eBPF vs legacy host routing), §2.1 (kube-proxy iptables first-packet cost), §7.1–7.3.

Arms (one client namespace, one server namespace each; client pinned to one CPU, servers to another):

- ``a-floor``: two namespaces joined by one veth, 10.0.0.1/24 – 10.0.0.2/24 (``VethPair``); no routing.
- ``b-legacy``: ``Lab(host_routing="legacy")``, one node, two pods: the kernel routes through the node
  namespace, proxy ARP on the pods' host veths, no BPF and no netfilter.
- ``c-legacy-kproxy``: (b) plus what a Kubernetes node runs in its namespace: kube-proxy in iptables
  mode with 10k ClusterIP services (2 endpoints each) loaded with one ``iptables-restore``, and so
  conntrack. Pod-to-pod traffic hits no service, but the first packet of every connection walks
  ``KUBE-SERVICES`` linearly (perf.md §2.1).
- ``d-bpf``: ``Lab()`` default: ciliumlite ``bpf`` host routing (``redirect_peer`` between the pods).
- ``e-legacy-knft``: (b) plus kube-proxy in nftables mode instead of (c)'s iptables
  (``_netbench.kube_proxy_nft_rules``: the same 10k services, 2 endpoints each, one ``nft -f``):
  conntrack is on, but a new connection costs one ``service-ips`` verdict-map lookup, not a walk of
  10k rules (issue 16: nftables next to iptables in every services comparison).

Per arm and round: sockperf TCP ping-pong latency (``sockperf pp``; sockperf reports half the round
trip), TCP connect/request/response/close rate (``benchmarks/tools/crr.c``, compiled with
``gcc -O2`` at run time; 1-byte request and response, like netperf TCP_CRR) and iperf3 single-stream
throughput. Rounds run the arms round-robin (start arm rotated each round); the first ``warmup``
rounds (shorter) are discarded. Ratios are paired per round against the floor.

Goals (the issue): (d) within 3 % of (a) on latency and throughput; (d) ≥ 2.5× the connection rate
of (c).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

from benchmarks.harness import Context, Measurement, Summary
from benchmarks.suites._netbench import (
    CRR,
    CRR_P50,
    LAT_AVG,
    LAT_P50,
    LAT_P99,
    METRICS,
    TPUT,
    TPUT_MED,
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
    conntrack_counters,
    conntrack_stats,
    count_rules,
    datapath_counters,
    floor_summary,
    goal_summary,
    info,
    iptables_version,
    kube_proxy_nft_rules,
    kube_proxy_rules,
    ns_run,
    prepare_arm,
    require_tools,
    rname,
    rules_file,
    run_rounds,
    softnet_drops,
    tail_summaries,
    tcp_snapshot,
)
from ciliumlite.lab import Lab, Node, Pod, procs
from ciliumlite.testing import VethPair

DESCRIPTION = ("same-node pod-to-pod: veth floor vs legacy routing vs legacy + kube-proxy (10k services) + "
               "conntrack vs bpf host routing; latency, connection rate, throughput")
NEEDS_ROOT = True
DEFAULT_REPEATS = 3          # timed rounds: 3 rounds × 5 arms × (3 + 3 + 3 s) keeps the run under ~3.5 min

# -- parameters ------------------------------------------------------------------------------------
ARMS_ENV = "CILIUMLITE_BENCH_HR_ARMS"   # comma-separated subset of the arms (the floor always runs)
NICE_ENV = "CILIUMLITE_BENCH_HR_NICE"   # niceness of clients and servers (default -10; 0 = as started)
SECONDS = 3.0                # per measurement (latency, CRR, iperf3)
WARMUP_SECONDS = 1.0         # per measurement in warmup rounds
QUICK_SECONDS = 1.0
N_SERVICES = 10_000          # kube-proxy services in (c)
ENDPOINTS_PER_SERVICE = 2

QUIET_WAIT_ARM_S = 15.0      # wait at most this long for a quiet machine before each further arm's measurements

ARMS = ("a-floor", "b-legacy", "c-legacy-kproxy", "d-bpf", "e-legacy-knft")
FLOOR, LEGACY, KPROXY, BPF, KNFT = ARMS
TITLES = {
    FLOOR: "(a) floor: one veth between two namespaces",
    LEGACY: "(b) legacy host routing (kernel, proxy ARP)",
    KPROXY: f"(c) legacy + conntrack + kube-proxy iptables, {N_SERVICES // 1000}k services",
    BPF: "(d) ciliumlite bpf host routing",
    KNFT: f"(e) legacy + conntrack + kube-proxy nftables, {N_SERVICES // 1000}k services",
}

# What every arm is compared with the floor on (the ratio table).
FLOOR_METRICS = (LAT_AVG, LAT_P50, CRR, CRR_P50, TPUT, TPUT_MED)

# Goals: (numerator arm, denominator arm, metric, op, threshold, source)
GOALS: list[Goal] = [
    (BPF, FLOOR, LAT_AVG, "<=", 1.03, "issue: (d) within 3 % of the floor on latency"),
    (BPF, FLOOR, TPUT, ">=", 0.97, "issue: (d) within 3 % of the floor on throughput"),
    (BPF, KPROXY, CRR, ">=", 2.5, "issue: (d) ≥ 2.5× the connection rate of (c)"),
    # The same goals on statistics that scheduling stalls on a shared VM barely move:
    (BPF, FLOOR, LAT_P50, "<=", 1.03, "robust variant: p50 instead of mean latency"),
    (BPF, FLOOR, TPUT_MED, ">=", 0.97, "robust variant: median 0.25-s interval instead of the mean"),
    (KPROXY, BPF, CRR_P50, ">=", 2.5, "robust variant: median connection time, c ÷ d"),
]


# Further paired ratios reported (besides every arm ÷ the floor).
EXTRA_RATIOS: list[tuple[str, str, str]] = [
    (BPF, KPROXY, CRR), (KPROXY, BPF, CRR_P50), (BPF, LEGACY, LAT_AVG), (BPF, LEGACY, LAT_P50),
    (BPF, LEGACY, CRR), (LEGACY, BPF, CRR_P50), (KPROXY, LEGACY, CRR),
    # kube-proxy nftables (issue 16): against bpf, against no rules, and iptables ÷ nftables
    (BPF, KNFT, CRR), (KNFT, BPF, CRR_P50), (BPF, KNFT, LAT_AVG), (BPF, KNFT, TPUT), (KNFT, LEGACY, CRR),
    (KPROXY, KNFT, CRR), (KPROXY, KNFT, CRR_P50),
]


# -- arms ------------------------------------------------------------------------------------------
def _veth_arm(stack: contextlib.ExitStack) -> NetArm:
    group = procs.ProcessGroup()
    pair = VethPair.create("hr")
    stack.callback(pair.remove)
    stack.callback(group.stop_all)  # runs before pair.remove (LIFO)

    def popen(*argv: str) -> subprocess.Popen[str]:
        return group.popen(pair.ns_b, argv)

    return NetArm(FLOOR, pair.ip_b, ns_run(pair.ns_a), ns_run(pair.ns_b), popen, group.stop, pair.ns_a,
                pair.ns_b)


def _lab_arm(stack: contextlib.ExitStack, key: str, lab_name: str, host_routing: str) -> NetArm:
    lab = Lab(lab_name, host_routing=host_routing)  # type: ignore[arg-type]
    stack.callback(lab.close)
    node = lab.add_node("node")
    a: Pod = node.add_pod("a")
    b: Pod = node.add_pod("b")
    return NetArm(key, b.ip, a.run, b.run, b.popen, lab.processes.stop, a.netns, b.netns, node=node)


# -- the suite ---------------------------------------------------------------------------------------
def _load_kube_proxy(ctx: Context, node: Node, ipt_version: str) -> Measurement:
    """kube-proxy's rules into (c)'s node namespace with one iptables-restore (it reads the file from the host fs)."""
    text = kube_proxy_rules(N_SERVICES, ENDPOINTS_PER_SERVICE)
    n_rules = count_rules(text)
    with rules_file(text, "cl-bench-kp-") as rules:
        t0 = time.perf_counter()
        check_run(node.run("iptables-restore", rules, timeout=300), "iptables-restore")
        load_s = time.perf_counter() - t0
    ctx.log(f"kube-proxy rules: {n_rules} rules for {N_SERVICES} services loaded in {load_s:.1f} s ({ipt_version})")
    return info(f"{KPROXY}: iptables-restore of {N_SERVICES} services", load_s, "s", group="setup",
                note=f"{n_rules} rules; {ipt_version}")


def _load_kube_proxy_nft(ctx: Context, node: Node) -> Measurement:
    """kube-proxy's nftables rules (the same services) into (e)'s node namespace with one ``nft -f``."""
    text = kube_proxy_nft_rules(N_SERVICES, ENDPOINTS_PER_SERVICE)
    n_cmds = text.count("\n")
    with rules_file(text, "cl-bench-kn-") as rules:
        t0 = time.perf_counter()
        check_run(node.run("nft", "-f", rules, timeout=300), "nft -f")
        load_s = time.perf_counter() - t0
    ctx.log(f"kube-proxy nftables: {n_cmds} nft commands for {N_SERVICES} services loaded in {load_s:.1f} s")
    return info(f"{KNFT}: nft -f of {N_SERVICES} services", load_s, "s", group="setup", note=f"{n_cmds} nft commands")


def _counters(arms: dict[str, NetArm], before: dict[str, dict[str, dict[str, int]]],
              ct_before: dict[str, dict[str, int]]) -> list[Measurement]:
    """Drop counters and sanity checks over the whole run (perf.md §7.7)."""
    out: list[Measurement] = []
    for key, arm in arms.items():
        out += arm_counters(key, arm, before[key])
    for key in (KPROXY, KNFT):
        kp = arms.get(key)
        if kp is not None and kp.node is not None and key in ct_before:
            out += conntrack_counters(f"{key}:", kp.node, ct_before[key])
    bpf = arms.get(BPF)
    if bpf is not None and bpf.node is not None:
        out += datapath_counters(f"{BPF}:", bpf.node)
    return out


def run(ctx: Context) -> list[Measurement]:
    """Build the arms, run them interleaved, return per-arm medians, paired ratios and counters."""
    require_tools("host_routing", ("sockperf", "iperf3", "iptables-restore", "iptables", "nft", "taskset", "ss",
                                   "ping"))
    plan = Plan.make(ctx, ARMS, arms_env=ARMS_ENV, nice_env=NICE_ENV, secs=SECONDS, quick_secs=QUICK_SECONDS,
                     warmup_secs=WARMUP_SECONDS)
    ipt_version = iptables_version()
    ctx.params.update(plan.params(ctx), services=N_SERVICES, endpoints_per_service=ENDPOINTS_PER_SERVICE,
                      iptables=ipt_version)
    setup: list[Measurement] = []

    with contextlib.ExitStack() as stack:  # unwinds on any error: servers, labs, namespaces, temp files
        bench = plan.bench(stack)
        ctx.log(f"building arms: {', '.join(plan.arms)}")
        arms = {FLOOR: _veth_arm(stack)}
        for key, lab_name, mode in ((LEGACY, "hr-legacy", "legacy"), (KPROXY, "hr-kproxy", "legacy"),
                                    (BPF, "hr-bpf", "bpf"), (KNFT, "hr-knft", "legacy")):
            if key in plan.arms:
                arms[key] = _lab_arm(stack, key, lab_name, mode)
        kp_node = arms[KPROXY].node if KPROXY in arms else None
        if kp_node is not None:
            setup.append(_load_kube_proxy(ctx, kp_node, ipt_version))
        kn_node = arms[KNFT].node if KNFT in arms else None
        if kn_node is not None:
            setup.append(_load_kube_proxy_nft(ctx, kn_node))
        for arm in arms.values():
            prepare_arm(stack, bench, arm)

        gate = QuietGate(ctx, QUIET_WAIT_ARM_S)
        gate.begin()
        before = {k: tcp_snapshot(a) for k, a in arms.items()}
        softnet_before = softnet_drops()
        ct_before = {k: conntrack_stats(n) for k, n in ((KPROXY, kp_node), (KNFT, kn_node)) if n is not None}
        run_rounds(ctx, plan, bench, arms, gate)
        setup += _counters(arms, before, ct_before)
        setup.append(info("host: softnet backlog drops (all arms, and anything else running)",
                          softnet_drops() - softnet_before,
                          note="/proc/net/softnet_stat; net.core.netdev_max_backlog = "
                               + Path("/proc/sys/net/core/netdev_max_backlog").read_text().strip()))
        setup.append(gate.start_info())
        setup.append(info("background CPU busy before each arm, max", max(gate.in_order) * 100, "%", group="setup",
                          note="sampled with our servers idle (other work on the machine), in run order: "
                               + ", ".join(f"{b * 100:.0f}" for b in gate.in_order)))
        setup += bpf_stats_pass(ctx, plan, bench, arms)

    return arm_measurements(arms, FLOOR, FLOOR_METRICS, EXTRA_RATIOS) + setup


# -- tables ------------------------------------------------------------------------------------------
def summarize(ms: list[Measurement]) -> list[Summary]:
    """Per-arm medians, ratios vs the floor, and the issue's goals."""
    c = Cells(ms)
    goal_names = {rname(n, d, m) for n, d, m, *_ in GOALS}
    extra = [m for m in ms if m.group == "ratios" and m.name not in goal_names
             and not any(m.name == rname(a, FLOOR, x) for a in ARMS for x in METRICS)]
    return [
        arm_summary(c, TITLES, (LAT_AVG, LAT_P50, LAT_P99, CRR, CRR_P50, TPUT, TPUT_MED),
                    note=", mean and median of 0.25-s intervals. Client and servers pinned to different CPUs."),
        floor_summary(c, TITLES, FLOOR, "a", FLOOR_METRICS),
        goal_summary(c, GOALS, "goals (the issue)",
                     note="verdict on the median of the paired ratios; 'CI' says whether the whole bootstrap "
                          "interval is on the right side (with 3 rounds the interval spans about min to max)."),
        *tail_summaries(ms, extra),
    ]
