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
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Context, Measurement, Summary, fmt_ci, fmt_value, ratio
from benchmarks.suites._netbench import (
    CRR,
    CRR_P50,
    LAT_AVG,
    LAT_NOTE,
    LAT_P50,
    LAT_P99,
    METRICS,
    QUIET_BUSY,
    QUIET_WAIT_S,
    TCP_COUNTERS,
    TPUT,
    TPUT_MED,
    Bench,
    NetArm,
    check_run,
    client_server_cpus,
    conntrack_stats,
    count_rules,
    crr_binary,
    cv_text,
    info,
    kube_proxy_rules,
    kube_services_packets,
    mname,
    ns_run,
    rname,
    softnet_drops,
    tcp_snapshot,
    verdict,
    wait_quiet,
)
from ciliumlite.datapath import devices
from ciliumlite.lab import Lab, Node, Pod, procs
from ciliumlite.testing import VethPair

DESCRIPTION = ("same-node pod-to-pod: veth floor vs legacy routing vs legacy + kube-proxy (10k services) + "
               "conntrack vs bpf host routing; latency, connection rate, throughput")
NEEDS_ROOT = True
DEFAULT_REPEATS = 3          # timed rounds: 3 rounds × 4 arms × (3 + 3 + 3 s) keeps the run under ~3 min

# -- parameters ------------------------------------------------------------------------------------
ARMS_ENV = "CILIUMLITE_BENCH_HR_ARMS"   # comma-separated subset of the arms (the floor always runs)
NICE_ENV = "CILIUMLITE_BENCH_HR_NICE"   # niceness of clients and servers (default -10; 0 = as started)
DEFAULT_NICE = -10           # on a shared 2-vCPU VM, other work otherwise preempts them mid-measurement
SECONDS = 3.0                # per measurement (latency, CRR, iperf3)
WARMUP_SECONDS = 1.0         # per measurement in warmup rounds
QUICK_SECONDS = 1.0
N_SERVICES = 10_000          # kube-proxy services in (c)
ENDPOINTS_PER_SERVICE = 2

QUIET_WAIT_ARM_S = 15.0      # ... and before each further arm's measurements
BUSY_SAMPLE_S = 0.3          # background CPU sample before each arm

ARMS = ("a-floor", "b-legacy", "c-legacy-kproxy", "d-bpf")
FLOOR, LEGACY, KPROXY, BPF = ARMS
TITLES = {
    FLOOR: "(a) floor: one veth between two namespaces",
    LEGACY: "(b) legacy host routing (kernel, proxy ARP)",
    KPROXY: f"(c) legacy + conntrack + kube-proxy iptables, {N_SERVICES // 1000}k services",
    BPF: "(d) ciliumlite bpf host routing",
}

# Goals: (numerator arm, denominator arm, metric, op, threshold, source)
GOALS: list[tuple[str, str, str, str, float, str]] = [
    (BPF, FLOOR, LAT_AVG, "<=", 1.03, "issue: (d) within 3 % of the floor on latency"),
    (BPF, FLOOR, TPUT, ">=", 0.97, "issue: (d) within 3 % of the floor on throughput"),
    (BPF, KPROXY, CRR, ">=", 2.5, "issue: (d) ≥ 2.5× the connection rate of (c)"),
    # The same goals on statistics that scheduling stalls on a shared VM barely move:
    (BPF, FLOOR, LAT_P50, "<=", 1.03, "robust variant: p50 instead of mean latency"),
    (BPF, FLOOR, TPUT_MED, ">=", 0.97, "robust variant: median 0.25-s interval instead of the mean"),
    (KPROXY, BPF, CRR_P50, ">=", 2.5, "robust variant: median connection time, c ÷ d"),
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
def _selected_arms() -> list[str]:
    env = os.environ.get(ARMS_ENV, "")
    if not env.strip():
        return list(ARMS)
    want = {a.strip() for a in env.split(",") if a.strip()}
    unknown = want - set(ARMS)
    if unknown:
        raise ValueError(f"{ARMS_ENV}: unknown arm(s) {sorted(unknown)}; have {', '.join(ARMS)}")
    return [a for a in ARMS if a == FLOOR or a in want]


def _load_kube_proxy(ctx: Context, node: Node, ipt_version: str) -> Measurement:
    """kube-proxy's rules into (c)'s node namespace with one iptables-restore (it reads the file from the host fs)."""
    text = kube_proxy_rules(N_SERVICES, ENDPOINTS_PER_SERVICE)
    n_rules = count_rules(text)
    with tempfile.NamedTemporaryFile("w", prefix="cl-bench-kp-", suffix=".rules") as rules:
        rules.write(text)
        rules.flush()
        t0 = time.perf_counter()
        check_run(node.run("iptables-restore", rules.name, timeout=300), "iptables-restore")
        load_s = time.perf_counter() - t0
    ctx.log(f"kube-proxy rules: {n_rules} rules for {N_SERVICES} services loaded in {load_s:.1f} s ({ipt_version})")
    return info(f"{KPROXY}: iptables-restore of {N_SERVICES} services", load_s, "s", group="setup",
                note=f"{n_rules} rules; {ipt_version}")


def _counters(arms: dict[str, NetArm], before: dict[str, dict[str, dict[str, int]]],
              ct_before: dict[str, int] | None) -> list[Measurement]:
    """Drop counters and sanity checks over the whole run (perf.md §7.7)."""
    out: list[Measurement] = []
    for key, arm in arms.items():
        after = tcp_snapshot(arm)
        for label, (side, counter) in TCP_COUNTERS.items():
            out.append(info(f"{key}: {label}", after[side].get(counter, 0) - before[key][side].get(counter, 0)))
        for label, v in arm.counters.items():
            note = f"last error: {arm.errors[-1]}" if label == "crr errors" and arm.errors else ""
            out.append(info(f"{key}: {label}", v, note=note))
    kp = arms.get(KPROXY)
    if kp is not None and kp.node is not None and ct_before is not None:
        ct = conntrack_stats(kp.node)
        for k in ("drop", "early_drop", "insert_failed", "invalid"):
            if k in ct:
                out.append(info(f"{KPROXY}: conntrack {k}", ct[k] - ct_before.get(k, 0)))
        out.append(info(f"{KPROXY}: conntrack entries at the end", ct["count"],
                        note=f"nf_conntrack_max {ct['max']}"))
        out.append(info(f"{KPROXY}: packets jumping PREROUTING -> KUBE-SERVICES", kube_services_packets(kp.node),
                        note="≈ connections made in this arm: only first packets take the nat table"))
    bpf = arms.get(BPF)
    dp = bpf.node.datapath if bpf is not None and bpf.node is not None else None
    if dp is not None:
        rows = dp.metrics()
        out.append(info(f"{BPF}: datapath drops", sum(r.packets for r in rows if r.is_drop)))
        out.append(info(f"{BPF}: datapath forwarded packets", sum(r.packets for r in rows if not r.is_drop)))
    return out


def run(ctx: Context) -> list[Measurement]:
    """Build the arms, run them interleaved, return per-arm medians, paired ratios and counters."""
    for tool in ("sockperf", "iperf3", "iptables-restore", "iptables", "taskset", "ss", "ping"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"host_routing needs {tool} (scripts/install-system-deps.sh)")
    rounds = max(1, ctx.repeats)
    selected = _selected_arms()
    secs = QUICK_SECONDS if ctx.quick else SECONDS
    client_cpu, server_cpu = client_server_cpus()
    nice = int(os.environ.get(NICE_ENV, str(DEFAULT_NICE)))
    ipt_version = subprocess.run(["iptables-restore", "--version"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout.strip()
    ctx.params.update(arms=",".join(selected), rounds=rounds, warmup_rounds=ctx.warmup, seconds=secs,
                      warmup_seconds=WARMUP_SECONDS, services=N_SERVICES, endpoints_per_service=ENDPOINTS_PER_SERVICE,
                      client_cpu=client_cpu, server_cpu=server_cpu, nice=nice, iptables=ipt_version)
    setup: list[Measurement] = []

    with contextlib.ExitStack() as stack:  # unwinds on any error: servers, labs, namespaces, temp files
        bench = Bench(stack.enter_context(crr_binary()), client_cpu, server_cpu, nice)
        ctx.log(f"building arms: {', '.join(selected)}")
        arms = {FLOOR: _veth_arm(stack)}
        for key, lab_name, mode in ((LEGACY, "hr-legacy", "legacy"), (KPROXY, "hr-kproxy", "legacy"),
                                    (BPF, "hr-bpf", "bpf")):
            if key in selected:
                arms[key] = _lab_arm(stack, key, lab_name, mode)
        kp_node = arms[KPROXY].node if KPROXY in arms else None
        if kp_node is not None:
            setup.append(_load_kube_proxy(ctx, kp_node, ipt_version))

        for arm in arms.values():
            # CRR hygiene (perf.md §7.1): the client closes first and keeps TIME_WAIT
            devices.set_sysctl(arm.client_ns, "net.ipv4.tcp_tw_reuse", "1")
            devices.set_sysctl(arm.client_ns, "net.ipv4.ip_local_port_range", "1024 65535")
            bench.start_servers(arm)
            stack.callback(bench.stop_servers, arm)
            ping = arm.client_run("ping", "-n", "-q", "-c", "1", "-W", "2", arm.server_ip, timeout=10)
            if ping.returncode != 0:
                raise RuntimeError(f"{arm.key}: {arm.server_ip} does not answer ping: {ping.stdout}{ping.stderr}")

        busy_start = wait_quiet(ctx)
        busy: list[float] = []
        before = {k: tcp_snapshot(a) for k, a in arms.items()}
        softnet_before = softnet_drops()
        ct_before = conntrack_stats(kp_node) if kp_node is not None else None
        order = list(arms)
        t_start = time.perf_counter()
        for rnd in range(ctx.warmup + rounds):
            warm = rnd < ctx.warmup
            for i, key in enumerate(order[rnd % len(order):] + order[:rnd % len(order)]):  # round-robin, rotated
                arm = arms[key]
                busy.append(busy_start if rnd == i == 0 else wait_quiet(ctx, QUIET_WAIT_ARM_S, BUSY_SAMPLE_S))
                got = bench.measure(arm, WARMUP_SECONDS if warm else secs)
                ctx.log(f"round {rnd + 1}/{ctx.warmup + rounds}{' (warmup)' if warm else ''} {key}: "
                        f"latency {got[LAT_AVG]:.1f} us (p50 {got[LAT_P50]:.1f}), CRR {got[CRR]:,.0f}/s, "
                        f"{got[TPUT]:.2f} Gbit/s")
                if not warm:
                    for m, v in got.items():
                        arm.samples.setdefault(m, []).append(v)
        ctx.log(f"measured in {time.perf_counter() - t_start:.0f} s")
        setup += _counters(arms, before, ct_before)
        setup.append(info("host: softnet backlog drops (all arms, and anything else running)",
                          softnet_drops() - softnet_before,
                          note="/proc/net/softnet_stat; net.core.netdev_max_backlog = "
                               + Path("/proc/sys/net/core/netdev_max_backlog").read_text().strip()))
        setup.append(info("background CPU busy before the run", busy_start * 100, "%", group="setup",
                          note=f"waited for < {QUIET_BUSY:.0%} (at most {QUIET_WAIT_S:.0f} s)"))
        setup.append(info("background CPU busy before each arm, max", max(busy) * 100, "%", group="setup",
                          note="sampled with our servers idle (other work on the machine), in run order: "
                               + ", ".join(f"{b * 100:.0f}" for b in busy)))

    return _measurements(arms) + setup


def _measurements(arms: dict[str, NetArm]) -> list[Measurement]:
    ms: list[Measurement] = []
    for key, arm in arms.items():
        for metric, (unit, kind) in METRICS.items():
            note = LAT_NOTE if metric.startswith("latency") else ""
            ms.append(Measurement.from_samples(mname(key, metric), arm.samples[metric], unit, group=key, note=note,
                                               kind=kind))
    floor = arms[FLOOR].samples
    for key in (LEGACY, KPROXY, BPF):
        if key in arms:
            for metric in (LAT_AVG, LAT_P50, CRR, CRR_P50, TPUT, TPUT_MED):
                ms.append(ratio(rname(key, FLOOR, metric), arms[key].samples[metric], floor[metric], group="ratios"))
    for num, den, metric in ((BPF, KPROXY, CRR), (KPROXY, BPF, CRR_P50), (BPF, LEGACY, LAT_AVG),
                             (BPF, LEGACY, LAT_P50), (BPF, LEGACY, CRR), (LEGACY, BPF, CRR_P50),
                             (KPROXY, LEGACY, CRR)):
        if num in arms and den in arms:
            ms.append(ratio(rname(num, den, metric), arms[num].samples[metric], arms[den].samples[metric],
                            group="ratios"))
    return ms


# -- tables ------------------------------------------------------------------------------------------
def summarize(ms: list[Measurement]) -> list[Summary]:
    """Per-arm medians, ratios vs the floor, and the issue's goals."""
    by = {m.name: m for m in ms}

    def cell(name: str) -> str:
        m = by.get(name)
        return "" if m is None else f"{fmt_value(m.median, m.unit)} ({cv_text(m) or '-'})"

    def rcell(name: str) -> str:
        m = by.get(name)
        return "" if m is None else f"{fmt_value(m.median, 'x')} {fmt_ci(m)}"

    arms_rows = [[TITLES[a], cell(mname(a, LAT_AVG)), cell(mname(a, LAT_P50)), cell(mname(a, LAT_P99)),
                  cell(mname(a, CRR)), cell(mname(a, CRR_P50)), cell(mname(a, TPUT)), cell(mname(a, TPUT_MED))]
                 for a in ARMS if mname(a, LAT_AVG) in by]
    ratio_rows = [[TITLES[a], *(rcell(rname(a, FLOOR, m)) for m in (LAT_AVG, LAT_P50, CRR, CRR_P50, TPUT, TPUT_MED))]
                  for a in (LEGACY, KPROXY, BPF) if rname(a, FLOOR, LAT_AVG) in by]
    goal_rows = []
    for num, den, metric, op, thr, src in GOALS:
        m = by.get(rname(num, den, metric))
        if m is not None:
            goal_rows.append([f"{num} ÷ {den}: {metric}", f"{fmt_value(m.median, 'x')} {fmt_ci(m)}", f"{op} {thr:g}",
                              verdict(m, op, thr), src])
    out = [
        Summary("per arm (median of rounds, CV in brackets; '!' = CV > 5 %)",
                ["arm", "latency avg µs", "latency p50 µs", "latency p99 µs", "CRR conn/s", "CRR conn p50 µs",
                 "iperf3 Gbit/s", "iperf3 median interval"], arms_rows,
                note="latency: sockperf ping-pong, half round trip; CRR: connect + 1 B request + 1 B response + "
                     "close, one client; iperf3: one stream, mean and median of 0.25-s intervals. Client and "
                     "servers pinned to different CPUs."),
        Summary("ratios vs the floor (a), paired per round, with bootstrap 95 % CI",
                ["arm", "latency avg ÷ a", "latency p50 ÷ a", "CRR rate ÷ a", "CRR conn p50 ÷ a", "throughput ÷ a",
                 "throughput median interval ÷ a"], ratio_rows,
                note="latency and connection-time ratios > 1 are slower; rate and throughput ratios < 1 are slower."),
        Summary("goals (the issue)", ["ratio", "median [95% CI]", "goal", "verdict", "source"], goal_rows,
                note="verdict on the median of the paired ratios; 'CI' says whether the whole bootstrap interval "
                     "is on the right side (with 3 rounds the interval spans about min to max)."),
    ]
    goal_names = {rname(n, d, m) for n, d, m, *_ in GOALS}
    extra = [m for m in ms if m.group == "ratios" and m.name not in goal_names
             and not any(m.name == rname(a, FLOOR, x) for a in ARMS for x in METRICS)]
    if extra:
        out.append(Summary("other ratios", ["ratio", "median [95% CI]"],
                           [[m.name, f"{fmt_value(m.median, 'x')} {fmt_ci(m)}"] for m in extra]))
    counters = [m for m in ms if m.group in ("counters", "setup")]
    if counters:
        out.append(Summary("counters over the timed and warmup rounds, and setup",
                           ["counter", "value", "note"],
                           [[m.name, fmt_value(m.median, m.unit) if m.unit != "count" else f"{m.median:,.0f}", m.note]
                            for m in counters]))
    return out

