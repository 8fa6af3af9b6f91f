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

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import Context, Measurement, Summary, fmt_ci, fmt_value, ratio
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
N_SERVICES = 10_000
ENDPOINTS_PER_SERVICE = 2
CRR_MAX_CONNS = 500_000      # hard bound on connections per CRR measurement (besides the time bound)
SERVER_MAX_SECONDS = 900     # the CRR server exits by itself after this (it is also killed by pid)
SOCKPERF_PORT = 11111
CRR_PORT = 12865
IPERF_PORT = 5201

QUIET_BUSY = 0.10            # background CPU use above which the machine counts as busy
QUIET_WAIT_S = 120.0         # how long to wait for a quiet machine before starting anyway
QUIET_WAIT_ARM_S = 15.0      # ... and before each further arm's measurements
BUSY_SAMPLE_S = 0.3          # background CPU sample before each arm

CRR_SRC = Path(__file__).resolve().parents[1] / "tools" / "crr.c"

ARMS = ("a-floor", "b-legacy", "c-legacy-kproxy", "d-bpf")
FLOOR, LEGACY, KPROXY, BPF = ARMS
TITLES = {
    FLOOR: "(a) floor: one veth between two namespaces",
    LEGACY: "(b) legacy host routing (kernel, proxy ARP)",
    KPROXY: f"(c) legacy + conntrack + kube-proxy iptables, {N_SERVICES // 1000}k services",
    BPF: "(d) ciliumlite bpf host routing",
}

# Metrics: name, unit, kind. Latency is lower-is-better ("time"); rates are reported as "info".
LAT_AVG = "latency avg"
LAT_P50 = "latency p50"
LAT_P99 = "latency p99"
CRR = "CRR rate"
CRR_P50 = "CRR connection time p50"
CRR_P99 = "CRR connection time p99"
TPUT = "iperf3 throughput"
TPUT_MED = "iperf3 throughput, median interval"
IPERF_INTERVAL = 0.25        # s; the median of the intervals shrugs off a stall of less than half the run
METRICS: dict[str, tuple[str, str]] = {
    LAT_AVG: ("us", "time"), LAT_P50: ("us", "time"), LAT_P99: ("us", "time"),
    CRR: ("conn/s", "info"), CRR_P50: ("us", "time"), CRR_P99: ("us", "time"),
    TPUT: ("Gbit/s", "info"), TPUT_MED: ("Gbit/s", "info"),
}
LAT_NOTE = "sockperf pp --tcp, half round trip"

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


def mname(arm: str, metric: str) -> str:
    """Measurement name of one arm's metric (stable: trend lines key on it)."""
    return f"{arm}: {metric}"


def rname(num: str, den: str, metric: str) -> str:
    """Name of a paired ratio."""
    return f"{num} ÷ {den}: {metric}"


# -- kube-proxy iptables rules -----------------------------------------------------------------------
def _kp_chain(prefix: str, text: str) -> str:
    # kube-proxy: prefix + first 16 chars of base32(sha256(service port name [+ endpoint]))
    return prefix + base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def kube_proxy_rules(n_services: int = N_SERVICES, endpoints: int = ENDPOINTS_PER_SERVICE) -> str:
    """An ``iptables-restore`` input shaped like kube-proxy's iptables mode (nat and filter tables).

    ClusterIPs from 10.96.0.10 up (inside 10.96.0.0/12), port 80; endpoints from 10.244.128.2 up
    (inside 10.244.0.0/16, outside the lab's node pod CIDRs), port 8080. Nothing answers on them: the
    benchmark's traffic matches no service, it only walks ``KUBE-SERVICES``.
    """
    if n_services < 1 or endpoints < 1 or n_services * endpoints > 30_000 or n_services > 100_000:
        raise ValueError(f"{n_services} services × {endpoints} endpoints does not fit the address plan")
    cluster_ips = ipaddress.IPv4Network("10.96.0.0/12")
    eps = ipaddress.IPv4Network("10.244.128.0/17")
    first_ip, first_ep = int(cluster_ips.network_address) + 10, int(eps.network_address) + 2
    decl: list[str] = []
    svc_rules: list[str] = []
    chain_rules: list[str] = []
    for i in range(n_services):
        cip = ipaddress.IPv4Address(first_ip + i)
        name = f"bench/svc-{i}:http"
        svc = _kp_chain("KUBE-SVC-", name + ":tcp")
        decl.append(f":{svc} - [0:0]")
        svc_rules.append(f'-A KUBE-SERVICES -d {cip}/32 -p tcp -m comment --comment "{name} cluster IP" '
                         f"-m tcp --dport 80 -j {svc}")
        chain_rules.append(f'-A {svc} ! -s 10.244.0.0/16 -d {cip}/32 -p tcp -m comment --comment "{name} cluster IP" '
                           f"-m tcp --dport 80 -j KUBE-MARK-MASQ")
        for j in range(endpoints):
            ep = ipaddress.IPv4Address(first_ep + i * endpoints + j)
            assert ep in eps and cip in cluster_ips
            sep = _kp_chain("KUBE-SEP-", f"{name}:tcp:{ep}:8080")
            decl.append(f":{sep} - [0:0]")
            prob = (f"-m statistic --mode random --probability {1 / (endpoints - j):.11f} "
                    if j < endpoints - 1 else "")
            chain_rules.append(f'-A {svc} -m comment --comment "{name} -> {ep}:8080" {prob}-j {sep}')
            chain_rules.append(f'-A {sep} -s {ep}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
            chain_rules.append(f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp '
                               f"-j DNAT --to-destination {ep}:8080")
    nat = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
        ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]", *decl,
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        *svc_rules,
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last '
        'rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
        *chain_rules,
        "COMMIT",
    ]
    flt = [
        "*filter",
        ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":KUBE-FORWARD - [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-EXTERNAL-SERVICES - [0:0]",
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
    ]
    return "\n".join(nat + flt) + "\n"


# -- arms ------------------------------------------------------------------------------------------
Run = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass
class _Arm:
    """Where one arm's client and servers run, and how (pod.run/pod.popen or procs with a ProcessGroup)."""

    key: str
    server_ip: str
    client_run: Run                      # run(*argv, timeout=) in the client namespace
    server_run: Run                      # run(*argv, timeout=) in the server namespace
    server_popen: Callable[..., subprocess.Popen[str]]   # popen(*argv) in the server namespace
    stop: Callable[[subprocess.Popen[str]], None]
    client_ns: str
    server_ns: str
    node: Node | None = None
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _ns_run(ns: str) -> Run:
    def run(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return procs.run(ns, argv, timeout=timeout)
    return run


def _veth_arm(stack: contextlib.ExitStack) -> _Arm:
    group = procs.ProcessGroup()
    pair = VethPair.create("hr")
    stack.callback(pair.remove)
    stack.callback(group.stop_all)  # runs before pair.remove (LIFO)

    def popen(*argv: str) -> subprocess.Popen[str]:
        return group.popen(pair.ns_b, argv)

    return _Arm(FLOOR, pair.ip_b, _ns_run(pair.ns_a), _ns_run(pair.ns_b), popen, group.stop, pair.ns_a,
                pair.ns_b)


def _lab_arm(stack: contextlib.ExitStack, key: str, lab_name: str, host_routing: str) -> _Arm:
    lab = Lab(lab_name, host_routing=host_routing)  # type: ignore[arg-type]
    stack.callback(lab.close)
    node = lab.add_node("node")
    a: Pod = node.add_pod("a")
    b: Pod = node.add_pod("b")
    return _Arm(key, b.ip, a.run, b.run, b.popen, lab.processes.stop, a.netns, b.netns, node=node)


# -- tools -----------------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _pin(cpu: int | None, argv: Sequence[str], nice: int = 0) -> list[str]:
    out = ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)
    return ["nice", "-n", str(nice), *out] if nice else out


def _check(res: subprocess.CompletedProcess[str], what: str) -> str:
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (rc {res.returncode}): {res.stderr.strip()[-800:]} {res.stdout[-400:]}")
    return res.stdout


def _wait_listening(arm: _Arm, port: int, proc: subprocess.Popen[str], what: str, timeout: float = 5.0) -> None:
    """Poll ``ss`` in the server namespace until something listens on ``port`` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"{arm.key}: {what} exited early (rc {proc.returncode}): {err.strip()[-500:]}")
        out = arm.server_run("ss", "-Hltn", f"sport = :{port}", timeout=5).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{arm.key}: {what} is not listening on port {port} after {timeout:.0f} s")


def parse_sockperf(text: str) -> dict[str, float]:
    """avg, p50 and p99 latency (usec) from ``sockperf pp`` output."""
    text = _ANSI.sub("", text)
    avg = re.search(r"avg-latency=([\d.]+)", text)
    pct = {float(p): float(v) for p, v in re.findall(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)", text)}
    if not avg or 50.0 not in pct or 99.0 not in pct:
        raise RuntimeError(f"cannot parse sockperf output: {text[-600:]}")
    return {LAT_AVG: float(avg.group(1)), LAT_P50: pct[50.0], LAT_P99: pct[99.0]}


@dataclass
class _Bench:
    """Runs the three measurements against one arm."""

    crr_bin: str
    client_cpu: int | None
    server_cpu: int | None
    nice: int = 0            # niceness of clients and servers (0: as started)

    def _client(self, argv: Sequence[str]) -> list[str]:
        return _pin(self.client_cpu, argv, self.nice)

    def _server(self, argv: Sequence[str]) -> list[str]:
        return _pin(self.server_cpu, argv, self.nice)

    def start_servers(self, arm: _Arm) -> None:
        """sockperf and CRR servers in the server namespace, for the whole run (killed by pid at the end)."""
        sp = arm.server_popen(*self._server(["sockperf", "sr", "--tcp", "-i", arm.server_ip,
                                             "-p", str(SOCKPERF_PORT)]))
        arm.servers.append(sp)
        _wait_listening(arm, SOCKPERF_PORT, sp, "sockperf server")
        crr = arm.server_popen(*self._server([self.crr_bin, "server", arm.server_ip, str(CRR_PORT),
                                              str(SERVER_MAX_SECONDS)]))
        arm.servers.append(crr)
        _wait_listening(arm, CRR_PORT, crr, "CRR server")

    def stop_servers(self, arm: _Arm) -> None:
        """Kill this arm's servers (by pid)."""
        for p in arm.servers:
            arm.stop(p)
        arm.servers.clear()

    def latency(self, arm: _Arm, secs: float) -> dict[str, float]:
        # sockperf's -t takes whole seconds
        res = arm.client_run(*self._client(["sockperf", "pp", "--tcp", "-i", arm.server_ip, "-p", str(SOCKPERF_PORT),
                                            "-t", str(max(1, round(secs)))]), timeout=secs + 20)
        return parse_sockperf(_check(res, f"{arm.key}: sockperf pp"))

    def crr(self, arm: _Arm, secs: float) -> dict[str, float]:
        res = arm.client_run(*self._client([self.crr_bin, "client", arm.server_ip, str(CRR_PORT),
                                            f"{secs:g}", str(CRR_MAX_CONNS)]), timeout=secs + 20)
        out = json.loads(_check(res, f"{arm.key}: crr client").strip().splitlines()[-1])
        arm.counters["crr connections"] = arm.counters.get("crr connections", 0) + out["conns"]
        arm.counters["crr errors"] = arm.counters.get("crr errors", 0) + out["errors"]
        if out["last_error"]:
            arm.errors.append(out["last_error"])
        return {CRR: out["rate"], CRR_P50: out["p50_us"], CRR_P99: out["p99_us"]}

    def iperf(self, arm: _Arm, secs: float) -> dict[str, float]:
        srv = arm.server_popen(*self._server(["iperf3", "-s", "-1", "-B", arm.server_ip, "-p", str(IPERF_PORT)]))
        try:
            _wait_listening(arm, IPERF_PORT, srv, "iperf3 server")
            res = arm.client_run(*self._client(["iperf3", "-c", arm.server_ip, "-p", str(IPERF_PORT),
                                                "-t", f"{secs:g}", "-i", f"{IPERF_INTERVAL:g}", "-J"]),
                                 timeout=secs + 20)
            doc = json.loads(_check(res, f"{arm.key}: iperf3 client"))
            ivals = sorted(i["sum"]["bits_per_second"] for i in doc.get("intervals", [])
                           if i.get("sum", {}).get("seconds", 0) > IPERF_INTERVAL / 2)
            if "error" in doc:
                raise RuntimeError(f"{arm.key}: iperf3: {doc['error']}")
            end = doc["end"]
            arm.counters["iperf3 retransmits"] = (arm.counters.get("iperf3 retransmits", 0)
                                                  + float(end["sum_sent"].get("retransmits", 0)))
            with contextlib.suppress(subprocess.TimeoutExpired):
                srv.wait(timeout=5)  # -1: the server exits after this one test
            mean = end["sum_received"]["bits_per_second"] / 1e9
            return {TPUT: mean, TPUT_MED: statistics.median(ivals) / 1e9 if ivals else mean}
        finally:
            arm.stop(srv)

    def measure(self, arm: _Arm, secs: float) -> dict[str, float]:
        return {**self.latency(arm, secs), **self.crr(arm, secs), **self.iperf(arm, secs)}


@contextlib.contextmanager
def _crr_binary() -> Iterator[str]:
    """benchmarks/tools/crr.c compiled with gcc -O2 into a temporary directory (removed afterwards)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("host_routing needs gcc to build benchmarks/tools/crr.c (apt-get install gcc)")
    tmp = tempfile.mkdtemp(prefix="cl-bench-hr-")
    try:
        out = os.path.join(tmp, "crr")
        res = subprocess.run([gcc, "-O2", "-Wall", "-o", out, str(CRR_SRC)], capture_output=True, text=True,
                             timeout=60, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"gcc {CRR_SRC} failed: {res.stderr.strip()[-800:]}")
        os.chmod(tmp, 0o755)
        yield out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- counters (perf.md §7.7: drop counters with every run) -------------------------------------------
def _netstat(run: Run) -> dict[str, int]:
    """TCP counters of one namespace from /proc/net/snmp and /proc/net/netstat."""
    out: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = run("cat", path, timeout=10).stdout.splitlines()
        for head, vals in zip(lines[::2], lines[1::2], strict=False):
            proto, names = head.split(":", 1)
            _, values = vals.split(":", 1)
            for n, v in zip(names.split(), values.split(), strict=False):
                with contextlib.suppress(ValueError):
                    out[f"{proto}.{n}"] = int(v)
    return out


TCP_COUNTERS = {
    "client TCP retransmitted segments": ("client", "Tcp.RetransSegs"),
    "server TCP retransmitted segments": ("server", "Tcp.RetransSegs"),
    "server listen queue overflows": ("server", "TcpExt.ListenOverflows"),
    "server listen drops": ("server", "TcpExt.ListenDrops"),
    "client TIME_WAIT overflows": ("client", "TcpExt.TCPTimeWaitOverflow"),
}


def _tcp_snapshot(arm: _Arm) -> dict[str, dict[str, int]]:
    return {"client": _netstat(arm.client_run), "server": _netstat(arm.server_run)}


def _softnet_drops() -> int:
    """Packets dropped because a CPU's backlog queue was full (host-wide, /proc/net/softnet_stat column 2).

    veth delivers through the sending CPU's backlog (netif_rx), so this is where a veth path drops
    under load; the queue length is ``net.core.netdev_max_backlog``."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f if line.strip())


def _conntrack_stats(node: Node) -> dict[str, int]:
    """Summed per-CPU conntrack statistics of the node namespace, and the entry count."""
    text = node.run("cat", "/proc/net/stat/nf_conntrack", timeout=10).stdout.splitlines()
    out: dict[str, int] = {}
    if text:
        names = text[0].split()
        for row in text[1:]:
            for n, v in zip(names, row.split(), strict=False):
                if n != "entries":
                    out[n] = out.get(n, 0) + int(v, 16)
    count = node.run("cat", "/proc/sys/net/netfilter/nf_conntrack_count", timeout=10).stdout.strip()
    cmax = node.run("cat", "/proc/sys/net/netfilter/nf_conntrack_max", timeout=10).stdout.strip()
    out["count"] = int(count) if count.isdigit() else -1
    out["max"] = int(cmax) if cmax.isdigit() else -1
    return out


def _kube_services_packets(node: Node) -> int:
    """Packets that took the PREROUTING -> KUBE-SERVICES jump (new connections walking the chain)."""
    out = node.run("iptables", "-t", "nat", "-L", "PREROUTING", "-n", "-v", "-x", timeout=30).stdout
    for line in out.splitlines():
        if "KUBE-SERVICES" in line:
            return int(line.split()[0])
    return -1


# -- the suite ---------------------------------------------------------------------------------------
def _cpu_busy(seconds: float) -> float:
    """Fraction of all CPUs busy over ``seconds`` (/proc/stat), sampled while our servers are idle."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals[:8]), idle

    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0


def _wait_quiet(ctx: Context, max_wait: float = QUIET_WAIT_S, sample: float = 1.0) -> float:
    """Wait (bounded) until the machine is quiet; other work on a 2-CPU VM swamps these ratios."""
    t0 = time.monotonic()
    busy = _cpu_busy(sample)
    if busy > QUIET_BUSY:
        ctx.log(f"machine busy ({busy:.0%} of the CPUs in use by others), waiting up to {max_wait:.0f} s")
    while busy > QUIET_BUSY and time.monotonic() - t0 < max_wait:
        busy = _cpu_busy(1.0)
    if busy > QUIET_BUSY:
        ctx.log(f"[yellow]still {busy:.0%} busy after {max_wait:.0f} s: results will be noisy[/yellow]")
    elif time.monotonic() - t0 > 2 * sample:
        ctx.log(f"quiet after {time.monotonic() - t0:.0f} s")
    return busy


def _selected_arms() -> list[str]:
    env = os.environ.get(ARMS_ENV, "")
    if not env.strip():
        return list(ARMS)
    want = {a.strip() for a in env.split(",") if a.strip()}
    unknown = want - set(ARMS)
    if unknown:
        raise ValueError(f"{ARMS_ENV}: unknown arm(s) {sorted(unknown)}; have {', '.join(ARMS)}")
    return [a for a in ARMS if a == FLOOR or a in want]


def _cpus() -> tuple[int | None, int | None]:
    """Client and server CPUs (perf.md §7.1): the first two we may use; the machine's 0 and 1 if the
    runner itself was pinned to one CPU (``--cpu``); no pinning on a single-CPU machine."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        cpus = list(range(os.cpu_count() or 1))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def _info(name: str, value: float, unit: str = "count", *, group: str = "counters", note: str = "") -> Measurement:
    return Measurement.from_samples(name, [value], unit, group=group, note=note, kind="info")


def _load_kube_proxy(ctx: Context, node: Node, ipt_version: str) -> Measurement:
    """kube-proxy's rules into (c)'s node namespace with one iptables-restore (it reads the file from the host fs)."""
    text = kube_proxy_rules()
    n_rules = sum(1 for line in text.splitlines() if line.startswith("-A "))
    with tempfile.NamedTemporaryFile("w", prefix="cl-bench-kp-", suffix=".rules") as rules:
        rules.write(text)
        rules.flush()
        t0 = time.perf_counter()
        _check(node.run("iptables-restore", rules.name, timeout=300), "iptables-restore")
        load_s = time.perf_counter() - t0
    ctx.log(f"kube-proxy rules: {n_rules} rules for {N_SERVICES} services loaded in {load_s:.1f} s ({ipt_version})")
    return _info(f"{KPROXY}: iptables-restore of {N_SERVICES} services", load_s, "s", group="setup",
                 note=f"{n_rules} rules; {ipt_version}")


def _counters(arms: dict[str, _Arm], before: dict[str, dict[str, dict[str, int]]],
              ct_before: dict[str, int] | None) -> list[Measurement]:
    """Drop counters and sanity checks over the whole run (perf.md §7.7)."""
    out: list[Measurement] = []
    for key, arm in arms.items():
        after = _tcp_snapshot(arm)
        for label, (side, counter) in TCP_COUNTERS.items():
            out.append(_info(f"{key}: {label}", after[side].get(counter, 0) - before[key][side].get(counter, 0)))
        for label, v in arm.counters.items():
            note = f"last error: {arm.errors[-1]}" if label == "crr errors" and arm.errors else ""
            out.append(_info(f"{key}: {label}", v, note=note))
    kp = arms.get(KPROXY)
    if kp is not None and kp.node is not None and ct_before is not None:
        ct = _conntrack_stats(kp.node)
        for k in ("drop", "early_drop", "insert_failed", "invalid"):
            if k in ct:
                out.append(_info(f"{KPROXY}: conntrack {k}", ct[k] - ct_before.get(k, 0)))
        out.append(_info(f"{KPROXY}: conntrack entries at the end", ct["count"],
                         note=f"nf_conntrack_max {ct['max']}"))
        out.append(_info(f"{KPROXY}: packets jumping PREROUTING -> KUBE-SERVICES", _kube_services_packets(kp.node),
                         note="≈ connections made in this arm: only first packets take the nat table"))
    bpf = arms.get(BPF)
    dp = bpf.node.datapath if bpf is not None and bpf.node is not None else None
    if dp is not None:
        rows = dp.metrics()
        out.append(_info(f"{BPF}: datapath drops", sum(r.packets for r in rows if r.is_drop)))
        out.append(_info(f"{BPF}: datapath forwarded packets", sum(r.packets for r in rows if not r.is_drop)))
    return out


def run(ctx: Context) -> list[Measurement]:
    """Build the arms, run them interleaved, return per-arm medians, paired ratios and counters."""
    for tool in ("sockperf", "iperf3", "iptables-restore", "iptables", "taskset", "ss", "ping"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"host_routing needs {tool} (scripts/install-system-deps.sh)")
    rounds = max(1, ctx.repeats)
    selected = _selected_arms()
    secs = QUICK_SECONDS if ctx.quick else SECONDS
    client_cpu, server_cpu = _cpus()
    nice = int(os.environ.get(NICE_ENV, str(DEFAULT_NICE)))
    ipt_version = subprocess.run(["iptables-restore", "--version"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout.strip()
    ctx.params.update(arms=",".join(selected), rounds=rounds, warmup_rounds=ctx.warmup, seconds=secs,
                      warmup_seconds=WARMUP_SECONDS, services=N_SERVICES, endpoints_per_service=ENDPOINTS_PER_SERVICE,
                      client_cpu=client_cpu, server_cpu=server_cpu, nice=nice, iptables=ipt_version)
    info: list[Measurement] = []

    with contextlib.ExitStack() as stack:  # unwinds on any error: servers, labs, namespaces, temp files
        bench = _Bench(stack.enter_context(_crr_binary()), client_cpu, server_cpu, nice)
        ctx.log(f"building arms: {', '.join(selected)}")
        arms = {FLOOR: _veth_arm(stack)}
        for key, lab_name, mode in ((LEGACY, "hr-legacy", "legacy"), (KPROXY, "hr-kproxy", "legacy"),
                                    (BPF, "hr-bpf", "bpf")):
            if key in selected:
                arms[key] = _lab_arm(stack, key, lab_name, mode)
        kp_node = arms[KPROXY].node if KPROXY in arms else None
        if kp_node is not None:
            info.append(_load_kube_proxy(ctx, kp_node, ipt_version))

        for arm in arms.values():
            # CRR hygiene (perf.md §7.1): the client closes first and keeps TIME_WAIT
            devices.set_sysctl(arm.client_ns, "net.ipv4.tcp_tw_reuse", "1")
            devices.set_sysctl(arm.client_ns, "net.ipv4.ip_local_port_range", "1024 65535")
            bench.start_servers(arm)
            stack.callback(bench.stop_servers, arm)
            ping = arm.client_run("ping", "-n", "-q", "-c", "1", "-W", "2", arm.server_ip, timeout=10)
            if ping.returncode != 0:
                raise RuntimeError(f"{arm.key}: {arm.server_ip} does not answer ping: {ping.stdout}{ping.stderr}")

        busy_start = _wait_quiet(ctx)
        busy: list[float] = []
        before = {k: _tcp_snapshot(a) for k, a in arms.items()}
        softnet_before = _softnet_drops()
        ct_before = _conntrack_stats(kp_node) if kp_node is not None else None
        order = list(arms)
        t_start = time.perf_counter()
        for rnd in range(ctx.warmup + rounds):
            warm = rnd < ctx.warmup
            for i, key in enumerate(order[rnd % len(order):] + order[:rnd % len(order)]):  # round-robin, rotated
                arm = arms[key]
                busy.append(busy_start if rnd == i == 0 else _wait_quiet(ctx, QUIET_WAIT_ARM_S, BUSY_SAMPLE_S))
                got = bench.measure(arm, WARMUP_SECONDS if warm else secs)
                ctx.log(f"round {rnd + 1}/{ctx.warmup + rounds}{' (warmup)' if warm else ''} {key}: "
                        f"latency {got[LAT_AVG]:.1f} us (p50 {got[LAT_P50]:.1f}), CRR {got[CRR]:,.0f}/s, "
                        f"{got[TPUT]:.2f} Gbit/s")
                if not warm:
                    for m, v in got.items():
                        arm.samples.setdefault(m, []).append(v)
        ctx.log(f"measured in {time.perf_counter() - t_start:.0f} s")
        info += _counters(arms, before, ct_before)
        info.append(_info("host: softnet backlog drops (all arms, and anything else running)",
                          _softnet_drops() - softnet_before,
                          note="/proc/net/softnet_stat; net.core.netdev_max_backlog = "
                               + Path("/proc/sys/net/core/netdev_max_backlog").read_text().strip()))
        info.append(_info("background CPU busy before the run", busy_start * 100, "%", group="setup",
                          note=f"waited for < {QUIET_BUSY:.0%} (at most {QUIET_WAIT_S:.0f} s)"))
        info.append(_info("background CPU busy before each arm, max", max(busy) * 100, "%", group="setup",
                          note="sampled with our servers idle (other work on the machine), in run order: "
                               + ", ".join(f"{b * 100:.0f}" for b in busy)))

    return _measurements(arms) + info


def _measurements(arms: dict[str, _Arm]) -> list[Measurement]:
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
def _cv(m: Measurement) -> str:
    if m.cv is None:
        return ""
    return f"{m.cv * 100:.1f}%" + (" !" if m.cv > 0.05 else "")


def _verdict(m: Measurement, op: str, thr: float) -> str:
    def ok(x: float) -> bool:
        return x <= thr if op == "<=" else x >= thr

    med = "pass" if ok(m.median) else "FAIL"
    if m.ci95 is None:
        return med
    lo, hi = m.ci95
    ci = "pass" if ok(lo) and ok(hi) else ("FAIL" if not ok(lo) and not ok(hi) else "inconclusive")
    return f"{med} (CI: {ci})"


def summarize(ms: list[Measurement]) -> list[Summary]:
    """Per-arm medians, ratios vs the floor, and the issue's goals."""
    by = {m.name: m for m in ms}

    def cell(name: str) -> str:
        m = by.get(name)
        return "" if m is None else f"{fmt_value(m.median, m.unit)} ({_cv(m) or '-'})"

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
                              _verdict(m, op, thr), src])
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

