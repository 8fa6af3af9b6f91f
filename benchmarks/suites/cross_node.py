"""cross_node: pod on node n1 to pod on node n2 over nine datapaths, arms interleaved in one run.

perf.md §1.1 (eBPF vs legacy host routing, node-to-node baseline), §7.1–7.3 (D1–D3, D5, D7);
feasibility.md §3 (BPF VXLAN vs kernel VXLAN routing, the kernel-VXLAN recipe).

Every arm is its own ``Lab``: two nodes (n1 10.0.0.11, n2 10.0.0.12 on ``eth0``, joined by the lab's
fabric bridge) with one pod each; the client runs in n1's pod, the servers in n2's pod.

1. ``1-floor``: node to node over the underlay, no pods involved (a legacy lab: no BPF, no rules);
   client in n1's namespace, servers in n2's, talking to 10.0.0.12.
2. ``2-bpf-native``: ciliumlite bpf host routing, ``routing="native"``, static routes (no BGP): FIB
   lookup + ``redirect_neigh`` out of the pod, ``cil_from_netdev`` + ``redirect_peer`` in. Pod MTU 1500.
3. ``3-bpf-vxlan``: ciliumlite bpf host routing, ``routing="vxlan"``: ``set_tunnel_key`` + redirect to
   the collect-metadata vxlan device, ``cil_from_overlay`` + ``redirect_peer``. Pod MTU 1450.
4. ``4-legacy-native``: ``host_routing="legacy"``, native routing: kernel forwarding, proxy ARP,
   ``pod_cidr via node_ip`` routes. Pod MTU 1500.
5. ``5-legacy-vxlan``: (4)'s lab with pod MTU 1450, plus a kernel VXLAN device per node (``vx0``,
   external, dstport 8472, nolearning, MTU 1450) and the static routes replaced by
   ``ip route replace <cidr> encap ip id 1 dst <node> via <cidr .1> dev vx0 onlink`` and a permanent
   neighbour ``<cidr .1>`` -> the remote ``vx0`` MAC (feasibility.md §3). Outer UDP checksum 0 in
   both VXLAN arms (the route encap sets no csum flag; ciliumlite passes ``BPF_F_ZERO_CSUM_TX``).
6. ``6-legacy-native-kproxy``: (4) plus kube-proxy iptables rules for 10k ClusterIP services
   (``_netbench.kube_proxy_rules``) in *both* node namespaces, so conntrack is on: the first
   packet of every connection walks ``KUBE-SERVICES`` (10k rules) in n1's and in n2's PREROUTING.
7. ``7-legacy-vxlan-kproxy``: (5) plus the same rules in both nodes; here the outer UDP flows are new
   conntrack entries too (the VXLAN source port follows the inner flow): each node walks the chain
   for the inner SYN and the peer's outer UDP in PREROUTING and for its own outer UDP in OUTPUT,
   so ~6 walks per connection against (6)'s 2.
8. ``8-legacy-native-knft``: (4) plus kube-proxy in nftables mode (``_netbench.kube_proxy_nft_rules``:
   the same 10k services, 2 endpoints each, as one ``service-ips`` verdict map; one ``nft -f``) in
   both node namespaces: conntrack is on as in (6), but a new connection costs one map lookup per
   node instead of a walk of ``KUBE-SERVICES``. This is what a cluster would run in place of (6) today.
9. ``9-legacy-vxlan-knft``: (5) plus the same nftables rules in both nodes (as (7) is to (5)).

Per arm and round, the three measurements of ``host_routing`` (``_netbench.Bench``): sockperf TCP
ping-pong latency (half round trip), the connect/request/response/close rate of
``benchmarks/tools/crr.c`` and iperf3 single-stream throughput, each ``SECONDS`` long; client pinned
to one CPU, servers to the other, both under ``nice -n -10`` (shared VM). Every lab is built once;
the rounds run the arms round-robin (start arm rotated each round); the first ``warmup`` rounds
(shorter) are discarded. Before each arm's measurements the suite waits, bounded, for other work on
the machine to pass. Ratios are paired per round.

Goals (the brief): (2) within 10 % of (1) on latency and throughput; (3) no slower than (5);
(2) and (3) at least 2× the connection rate of the kube-proxy arms (6) and (7). The nftables arms
(8), (9) are reported against the bpf arms and against iptables (issue 16: nftables next to
iptables in every services comparison).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.harness import Context, Measurement, Summary
from benchmarks.suites._netbench import (
    CRR,
    CRR_P50,
    CRR_P99,
    LAT_AVG,
    LAT_P50,
    LAT_P99,
    TPUT,
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
    prepare_arm,
    require_tools,
    rname,
    rules_file,
    run_rounds,
    tail_summaries,
    tcp_snapshot,
)
from ciliumlite.datapath.config import VXLAN_OVERHEAD, VXLAN_PORT
from ciliumlite.lab import Lab, Node, procs

DESCRIPTION = ("cross-node pod-to-pod: node-to-node floor vs bpf native / bpf VXLAN vs legacy native / kernel "
               "VXLAN, with and without kube-proxy (10k services) + conntrack; latency, connection rate, throughput")
NEEDS_ROOT = True
DEFAULT_REPEATS = 3          # timed rounds; 3 × 9 arms × ~8.3 s + warmup + setup ≈ 5 min (sockperf sleeps 2 s)

# -- parameters ------------------------------------------------------------------------------------
ARMS_ENV = "CILIUMLITE_BENCH_XN_ARMS"   # comma-separated subset of the arms (the floor always runs)
SECONDS = 2.0                # per measurement (latency, CRR, iperf3) in timed rounds
WARMUP_SECONDS = 1.0         # per measurement in warmup rounds (sockperf's -t takes whole seconds)
QUICK_SECONDS = 1.0
QUIET_WAIT_START_S = 30.0    # wait at most this long for a quiet machine before the first arm,
QUIET_WAIT_ARM_S = 10.0      # ... this long before each further arm's measurements,
QUIET_WAIT_TOTAL_S = 60.0    # ... and this long in all after the start (keeps a busy machine's run bounded)
NICE_ENV = "CILIUMLITE_BENCH_XN_NICE"   # niceness of the clients and servers (default -10; 0 = as started)
N_SERVICES = 10_000          # kube-proxy services per node (2 endpoints each: _netbench.kube_proxy_rules)
UNDERLAY_MTU = 1500          # the lab fabric's veths
KVX_DEV = "vx0"              # the kernel VXLAN arm's device (ciliumlite's own is cilium_vxlan)
KVX_VNI = 1
RESTORE_TIMEOUT_S = 300

ARMS = ("1-floor", "2-bpf-native", "3-bpf-vxlan", "4-legacy-native", "5-legacy-vxlan",
        "6-legacy-native-kproxy", "7-legacy-vxlan-kproxy", "8-legacy-native-knft", "9-legacy-vxlan-knft")
FLOOR, BPF_NAT, BPF_VX, LEG_NAT, LEG_VX, KP_NAT, KP_VX, KN_NAT, KN_VX = ARMS
TITLES = {
    FLOOR: "(1) floor: node to node over the underlay",
    BPF_NAT: "(2) bpf host routing, native routing",
    BPF_VX: "(3) bpf host routing, VXLAN tunnel",
    LEG_NAT: "(4) legacy host routing, native routing",
    LEG_VX: "(5) legacy host routing, kernel VXLAN",
    KP_NAT: f"(6) = (4) + kube-proxy {N_SERVICES // 1000}k services + conntrack",
    KP_VX: f"(7) = (5) + kube-proxy {N_SERVICES // 1000}k services + conntrack",
    KN_NAT: f"(8) = (4) + kube-proxy nftables {N_SERVICES // 1000}k services + conntrack",
    KN_VX: f"(9) = (5) + kube-proxy nftables {N_SERVICES // 1000}k services + conntrack",
}


@dataclass(frozen=True)
class _Spec:
    """How one arm's lab is built."""

    lab: str                 # Lab name (≤ 16 chars)
    host_routing: str        # "bpf" or "legacy"
    routing: str             # lab.cluster(routing=...)
    mtu: int                 # DatapathConfig.mtu: the pods get pod_mtu (mtu - 50 with routing="vxlan")
    kernel_vxlan: bool = False
    kube_proxy: bool = False     # kube-proxy iptables mode in both nodes
    kube_proxy_nft: bool = False  # kube-proxy nftables mode in both nodes
    pods: bool = True

    @property
    def conntrack(self) -> bool:
        """Whether netfilter conntrack is on in the nodes (either kube-proxy mode's NAT rules)."""
        return self.kube_proxy or self.kube_proxy_nft


SPECS: dict[str, _Spec] = {
    FLOOR: _Spec("xn-floor", "legacy", "native", UNDERLAY_MTU, pods=False),
    BPF_NAT: _Spec("xn-bpf-nat", "bpf", "native", UNDERLAY_MTU),
    BPF_VX: _Spec("xn-bpf-vx", "bpf", "vxlan", UNDERLAY_MTU),
    LEG_NAT: _Spec("xn-leg-nat", "legacy", "native", UNDERLAY_MTU),
    LEG_VX: _Spec("xn-leg-vx", "legacy", "native", UNDERLAY_MTU - VXLAN_OVERHEAD, kernel_vxlan=True),
    KP_NAT: _Spec("xn-kp-nat", "legacy", "native", UNDERLAY_MTU, kube_proxy=True),
    KP_VX: _Spec("xn-kp-vx", "legacy", "native", UNDERLAY_MTU - VXLAN_OVERHEAD, kernel_vxlan=True,
                 kube_proxy=True),
    KN_NAT: _Spec("xn-kn-nat", "legacy", "native", UNDERLAY_MTU, kube_proxy_nft=True),
    KN_VX: _Spec("xn-kn-vx", "legacy", "native", UNDERLAY_MTU - VXLAN_OVERHEAD, kernel_vxlan=True,
                 kube_proxy_nft=True),
}

# What every arm is compared with the floor on (the ratio table).
FLOOR_METRICS = (LAT_AVG, LAT_P50, CRR, TPUT)

# Goals: (numerator arm, denominator arm, metric, op, threshold, source)
GOALS: list[Goal] = [
    (BPF_NAT, FLOOR, LAT_AVG, "<=", 1.10, "brief: bpf native within 10 % of the floor on latency"),
    (BPF_NAT, FLOOR, LAT_P50, "<=", 1.10, "same, on p50 (the average carries the VM's ms-long stalls)"),
    (BPF_NAT, FLOOR, TPUT, ">=", 0.90, "brief: bpf native within 10 % of the floor on throughput"),
    (BPF_VX, LEG_VX, LAT_AVG, "<=", 1.00, "brief: bpf tunnel no slower than kernel VXLAN (latency)"),
    (BPF_VX, LEG_VX, LAT_P50, "<=", 1.00, "same, on p50"),
    (BPF_VX, LEG_VX, CRR, ">=", 1.00, "brief: bpf tunnel no slower than kernel VXLAN (connection rate)"),
    (BPF_VX, LEG_VX, TPUT, ">=", 1.00, "brief: bpf tunnel no slower than kernel VXLAN (throughput)"),
    (BPF_NAT, KP_NAT, CRR, ">=", 2.0, "brief: bpf connection rate ≥ 2× kube-proxy (native)"),
    (BPF_VX, KP_VX, CRR, ">=", 2.0, "brief: bpf connection rate ≥ 2× kube-proxy (VXLAN)"),
    (BPF_NAT, KP_NAT, LAT_AVG, "<=", 0.80, "perf.md D1 (eBPF ÷ legacy + iptables/CT, latency)"),
    (BPF_NAT, KP_NAT, CRR, ">=", 1.20, "perf.md D2 (eBPF ÷ legacy + iptables/CT, CRR)"),
    (BPF_NAT, KP_NAT, TPUT, ">=", 1.05, "perf.md D3 (eBPF ÷ legacy + iptables/CT, STREAM)"),
    (BPF_NAT, FLOOR, CRR, ">=", 0.85, "perf.md D5 (eBPF pod-to-pod ÷ node-to-node, CRR)"),
    (BPF_VX, BPF_NAT, TPUT, ">=", 0.60, "perf.md D7 (VXLAN ÷ native, both eBPF, STREAM)"),
    (BPF_VX, BPF_NAT, CRR, ">=", 0.85, "perf.md D7 (VXLAN ÷ native, both eBPF, CRR)"),
]

# Further paired ratios reported (besides every arm ÷ the floor and the goals).
EXTRA_RATIOS: list[tuple[str, str, str]] = [
    (BPF_NAT, LEG_NAT, LAT_AVG), (BPF_NAT, LEG_NAT, CRR), (BPF_NAT, LEG_NAT, TPUT),
    (BPF_VX, KP_VX, LAT_AVG), (BPF_VX, KP_VX, TPUT),
    (LEG_VX, LEG_NAT, TPUT), (LEG_VX, LEG_NAT, CRR),
    (KP_NAT, LEG_NAT, CRR), (KP_VX, LEG_VX, CRR),
    # kube-proxy nftables (issue 16): against the bpf arms, legacy without rules, and iptables
    (BPF_NAT, KN_NAT, CRR), (BPF_NAT, KN_NAT, LAT_AVG), (BPF_NAT, KN_NAT, TPUT),
    (BPF_VX, KN_VX, CRR), (BPF_VX, KN_VX, LAT_AVG), (BPF_VX, KN_VX, TPUT),
    (KN_NAT, LEG_NAT, CRR), (KN_VX, LEG_VX, CRR), (KP_NAT, KN_NAT, CRR), (KP_VX, KN_VX, CRR),
]


# -- arms ------------------------------------------------------------------------------------------
@dataclass
class _Built:
    """One arm: a ``_netbench.NetArm`` (where the client and servers run) and its lab's nodes."""

    spec: _Spec
    arm: NetArm
    nodes: list[Node]
    device_packets: Callable[[], dict[str, int]] | None = None
    extra: dict[str, float] = field(default_factory=dict)


def _build(stack: contextlib.ExitStack, key: str) -> _Built:
    spec = SPECS[key]
    lab = Lab(spec.lab, host_routing=spec.host_routing)  # type: ignore[arg-type]
    stack.callback(lab.close)
    cl = lab.cluster(["n1", "n2"], routing=spec.routing, bgp=False, mtu=spec.mtu)  # type: ignore[arg-type]
    n1, n2 = cl.node("n1"), cl.node("n2")
    nodes = [n1, n2]
    if spec.kernel_vxlan:
        _kernel_vxlan(nodes, spec.mtu)
    if spec.pods:
        a, b = n1.add_pod("a"), n2.add_pod("b")
        arm = NetArm(key, b.ip, a.run, b.run, b.popen, lab.processes.stop, a.netns, b.netns, node=n2)
    else:
        assert n2.ip is not None

        def popen(*argv: str) -> subprocess.Popen[str]:
            return lab.processes.popen(n2.netns, argv, n2.cgroup)  # type: ignore[no-any-return]

        arm = NetArm(key, n2.ip, n1.run, n2.run, popen, lab.processes.stop, n1.netns, n2.netns, node=n2)
    built = _Built(spec, arm, nodes)
    dev = KVX_DEV if spec.kernel_vxlan else (n1.datapath.config.tunnel_device  # type: ignore[union-attr]
                                              if spec.routing == "vxlan" else None)
    if dev is not None:
        built.device_packets = lambda: {n.name: _tx_packets(n, dev) for n in nodes}
    return built


def _kernel_vxlan(nodes: list[Node], mtu: int) -> None:
    """feasibility.md §3's kernel VXLAN routing in place of the lab's ``pod_cidr via node_ip`` routes.

    iproute2 (pyroute2 cannot build ``encap ip`` routes), run in each node namespace.
    """
    macs: dict[str, str] = {}
    for n in nodes:
        check_run(n.run("ip", "link", "add", KVX_DEV, "type", "vxlan", "external", "dstport", str(VXLAN_PORT),
                        "nolearning"), f"{n.name}: ip link add {KVX_DEV}")
        check_run(n.run("ip", "link", "set", KVX_DEV, "mtu", str(mtu), "up"), f"{n.name}: ip link set {KVX_DEV}")
        link = json.loads(check_run(n.run("ip", "-j", "link", "show", "dev", KVX_DEV), f"{n.name}: ip link show"))
        macs[n.name] = link[0]["address"]
    for n in nodes:
        for r in nodes:
            if r is n:
                continue
            assert r.datapath is not None and r.ip is not None
            cidr, gw = r.datapath.config.pod_cidr, str(r.datapath.config.gateway)
            check_run(n.run("ip", "neigh", "replace", gw, "lladdr", macs[r.name], "dev", KVX_DEV, "nud", "permanent"),
                      f"{n.name}: ip neigh replace {gw}")
            check_run(n.run("ip", "route", "replace", cidr, "encap", "ip", "id", str(KVX_VNI), "dst", r.ip,
                            "via", gw, "dev", KVX_DEV, "onlink"), f"{n.name}: ip route replace {cidr} encap")


def _tx_packets(node: Node, dev: str) -> int:
    res = node.run("ip", "-j", "-s", "link", "show", "dev", dev, timeout=10)
    if res.returncode != 0:
        return -1
    return int(json.loads(res.stdout)[0]["stats64"]["tx"]["packets"])


def _load_kube_proxy(ctx: Context, built: list[_Built]) -> list[Measurement]:
    """kube-proxy's rules into every node namespace of the kube-proxy arms: one ``iptables-restore``
    per node of the iptables arms, then one ``nft -f`` per node of the nftables arms."""
    out: list[Measurement] = []
    for mode, argv, text, what in (
            ("iptables", ["iptables-restore"], kube_proxy_rules(N_SERVICES), "rules"),
            ("nftables", ["nft", "-f"], kube_proxy_nft_rules(N_SERVICES), "nft commands")):
        targets = [(b.arm.key, n) for b in built
                   if (b.spec.kube_proxy if mode == "iptables" else b.spec.kube_proxy_nft) for n in b.nodes]
        if not targets:
            continue
        n_rules = count_rules(text) if mode == "iptables" else text.count("\n")
        with rules_file(text, "cl-bench-xn-kp-") as rules:
            group = procs.ProcessGroup()  # setup only: one load per node, all at once
            t_all = time.perf_counter()
            times: list[float] = []
            try:
                started = [group.popen(n.netns, [*argv, rules], n.cgroup) for _, n in targets]
                for (_, node), proc in zip(targets, started, strict=True):
                    _, err = proc.communicate(timeout=max(1.0, RESTORE_TIMEOUT_S - (time.perf_counter() - t_all)))
                    if proc.returncode != 0:
                        raise RuntimeError(f"{node.netns}: {argv[0]} failed (rc {proc.returncode}): {err[-800:]}")
                    times.append(time.perf_counter() - t_all)
            finally:
                group.stop_all()
            ctx.log(f"{n_rules} kube-proxy {mode} {what} for {N_SERVICES} services into {len(targets)} node "
                    f"namespaces (in parallel) in {time.perf_counter() - t_all:.1f} s")
        for (key, node), load_s in zip(targets, times, strict=True):
            out.append(info(f"{key}: {' '.join(argv)} of {N_SERVICES} services on {node.name}", load_s, "s",
                            group="setup", note=f"{n_rules} {what}; {len(targets)} loads in parallel, "
                                                "time until this one was done"))
    return out


# -- counters (perf.md §7.7) ---------------------------------------------------------------------------
def _counters(built: dict[str, _Built], before: dict[str, dict[str, dict[str, int]]],
              ct_before: dict[tuple[str, str], dict[str, int]],
              dev_before: dict[str, dict[str, int]]) -> list[Measurement]:
    out: list[Measurement] = []
    for key, b in built.items():
        out += arm_counters(key, b.arm, before[key])
        if b.device_packets is not None:
            now = b.device_packets()
            dev = KVX_DEV if b.spec.kernel_vxlan else "cilium_vxlan"
            for name, v in now.items():
                out.append(info(f"{key}: {dev} tx packets on {name}", v - dev_before[key].get(name, 0),
                                note="the path really is encapsulated"))
        for n in b.nodes:
            if b.spec.conntrack:
                out += conntrack_counters(f"{key}: {n.name}", n, ct_before.get((key, n.name), {}))
            if b.spec.host_routing == "bpf":
                out += datapath_counters(f"{key}: {n.name}", n)
    return out


# -- the suite ---------------------------------------------------------------------------------------
def run(ctx: Context) -> list[Measurement]:
    """Build the nine labs, run them interleaved, return per-arm medians, paired ratios and counters."""
    require_tools("cross_node", ("sockperf", "iperf3", "iptables-restore", "iptables", "nft", "taskset", "ss", "ping",
                                 "ip"))
    plan = Plan.make(ctx, ARMS, arms_env=ARMS_ENV, nice_env=NICE_ENV, secs=SECONDS, quick_secs=QUICK_SECONDS,
                     warmup_secs=WARMUP_SECONDS)
    ctx.params.update(plan.params(ctx), services=N_SERVICES, iptables=iptables_version(), underlay_mtu=UNDERLAY_MTU,
                      pod_mtu={k: SPECS[k].mtu - (VXLAN_OVERHEAD if SPECS[k].routing == "vxlan" else 0)
                               for k in plan.arms if SPECS[k].pods})
    setup: list[Measurement] = []

    with contextlib.ExitStack() as stack:  # unwinds on any error: servers, labs, namespaces, temp files
        bench = plan.bench(stack)
        t_build = time.perf_counter()
        built: dict[str, _Built] = {}
        for key in plan.arms:
            built[key] = _build(stack, key)
        ctx.log(f"built {len(built)} labs in {time.perf_counter() - t_build:.1f} s: {', '.join(built)}")
        setup += _load_kube_proxy(ctx, list(built.values()))
        arms = {k: b.arm for k, b in built.items()}
        for arm in arms.values():
            prepare_arm(stack, bench, arm)

        gate = QuietGate(ctx, QUIET_WAIT_ARM_S, QUIET_WAIT_TOTAL_S)
        gate.begin(QUIET_WAIT_START_S)
        before = {k: tcp_snapshot(a) for k, a in arms.items()}
        ct_before = {(k, n.name): conntrack_stats(n) for k, b in built.items() if b.spec.conntrack
                     for n in b.nodes}
        dev_before = {k: b.device_packets() if b.device_packets else {} for k, b in built.items()}
        run_rounds(ctx, plan, bench, arms, gate)
        setup += _counters(built, before, ct_before, dev_before)
        setup.append(gate.start_info())
        setup.append(info("waited for a quiet machine after the start", gate.waited_s, "s",
                          group="setup", note=f"at most {QUIET_WAIT_ARM_S:.0f} s per arm, "
                                              f"{QUIET_WAIT_TOTAL_S:.0f} s in all"))
        for key in arms:
            bs = gate.by_arm[key]
            setup.append(info(f"{key}: background CPU busy before its measurements, max", max(bs) * 100, "%",
                              group="setup", note="sampled with our servers idle (other work on the machine), "
                                                  "per round incl. warmup: " + ", ".join(f"{b * 100:.0f}" for b in bs)))
        setup += bpf_stats_pass(ctx, plan, bench, arms)

    return arm_measurements(arms, FLOOR, FLOOR_METRICS, [(n, d, m) for n, d, m, *_ in GOALS] + EXTRA_RATIOS) + setup


# -- tables ------------------------------------------------------------------------------------------
def summarize(ms: list[Measurement]) -> list[Summary]:
    """Per-arm medians, ratios vs the floor, the goals, other ratios and the counters."""
    c = Cells(ms)
    extra = [c.by[rname(n, d, m)] for n, d, m in EXTRA_RATIOS if rname(n, d, m) in c]
    return [
        arm_summary(c, TITLES, (LAT_AVG, LAT_P50, LAT_P99, CRR, CRR_P50, CRR_P99, TPUT),
                    note=". Client in n1's pod (floor: n1), servers in n2's; client and servers pinned to different "
                         "CPUs. Pod MTU 1500 native, 1450 VXLAN."),
        floor_summary(c, TITLES, FLOOR, "1", FLOOR_METRICS),
        goal_summary(c, GOALS, "goals (the brief; perf.md §7.3 for reference)"),
        *tail_summaries(ms, extra),
    ]
