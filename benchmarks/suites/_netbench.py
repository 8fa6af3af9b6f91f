"""Pieces shared by the namespace datapath suites (``host_routing``, ``cross_node``, ``services``).

- **kube-proxy baselines**: :func:`kube_proxy_rules` (an ``iptables-restore`` input shaped like
  kube-proxy's iptables mode) and :func:`kube_proxy_nft_rules` (an ``nft -f`` input shaped like
  kube-proxy's nftables mode), for N ClusterIP services;
- **where an arm runs**: :class:`NetArm` (client and server namespaces, how to run and stop things
  there, samples and counters) and :func:`ns_run`;
- **measurements**: :class:`Bench` (sockperf ping-pong latency, the ``benchmarks/tools/crr.c``
  connect/request/response/close rate, iperf3 throughput) and :func:`crr_binary` (that tool,
  compiled into a temporary directory);
- **counters** (perf.md §7.7): :func:`tcp_snapshot`, :func:`softnet_drops`,
  :func:`conntrack_stats`, :func:`kube_services_packets`;
- **a quiet machine**: :func:`cpu_busy`, :func:`wait_quiet`, :class:`QuietGate`; CPU placement
  :func:`client_server_cpus`;
- **running a suite**: :class:`Plan` (arms, rounds, seconds, CPUs, niceness; from
  :func:`selected_arms` and :func:`env_nice`), :func:`require_tools`, :func:`iptables_version`,
  :func:`rules_file`, :func:`prepare_arm` (sysctls, servers, a ping), :func:`run_rounds` (the
  interleaved rounds), :func:`arm_counters` / :func:`conntrack_counters` /
  :func:`datapath_counters`, :func:`arm_measurements` (per-arm medians and paired ratios);
- **reporting**: metric names, :func:`mname`/:func:`rname`, :func:`info`, :func:`cv_text`,
  :func:`verdict`; the tables: :class:`Cells`, :func:`arm_summary`, :func:`floor_summary`,
  :func:`goal_summary` (:func:`goal_rows`), :func:`tail_summaries`.

A module starting with ``_`` is a helper, not a suite (``benchmarks/run.py`` skips it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import Context, Measurement, Summary, fmt_ci, fmt_value, ratio
from benchmarks.suites import _progstats as progstats
from ciliumlite.datapath import devices
from ciliumlite.lab import Node, procs

# -- parameters ------------------------------------------------------------------------------------
KUBE_PROXY_SERVICES = 10_000   # default service count of the kube-proxy rule sets
KUBE_PROXY_ENDPOINTS = 2       # default endpoints per service
CRR_MAX_CONNS = 500_000        # hard bound on connections per CRR measurement (besides the time bound)
SERVER_MAX_SECONDS = 900       # the CRR server exits by itself after this (it is also killed by pid)
SOCKPERF_PORT = 11111
CRR_PORT = 12865
IPERF_PORT = 5201
ECHO_PORT = 12866              # crr echo: the interleaved RR's servers
RRMIX_BLOCK = 200              # round trips per target per rotation of the interleaved RR
RRMIX_SKIP = 10                # first rotations dropped (caches and TCP state warming up)
IPERF_INTERVAL = 0.25          # s; the median of the intervals shrugs off a stall of less than half the run

QUIET_BUSY = 0.10              # background CPU use above which the machine counts as busy
QUIET_WAIT_S = 120.0           # default bound of wait_quiet()
BUSY_SAMPLE_S = 0.3            # background CPU sample before each arm's measurements (QuietGate)
DEFAULT_NICE = -10             # niceness of clients and servers unless a suite's env variable says otherwise

CRR_SRC = Path(__file__).resolve().parents[1] / "tools" / "crr.c"

# Metrics: name, unit, kind. Latency is lower-is-better ("time"); rates are reported as "info".
LAT_AVG = "latency avg"
LAT_P50 = "latency p50"
LAT_P99 = "latency p99"
CRR = "CRR rate"
CRR_P50 = "CRR connection time p50"
CRR_P99 = "CRR connection time p99"
TPUT = "iperf3 throughput"
TPUT_MED = "iperf3 throughput, median interval"
METRICS: dict[str, tuple[str, str]] = {
    LAT_AVG: ("us", "time"), LAT_P50: ("us", "time"), LAT_P99: ("us", "time"),
    CRR: ("conn/s", "info"), CRR_P50: ("us", "time"), CRR_P99: ("us", "time"),
    TPUT: ("Gbit/s", "info"), TPUT_MED: ("Gbit/s", "info"),
}
LAT_NOTE = "sockperf pp --tcp, half round trip"


def mname(arm: str, metric: str) -> str:
    """Measurement name of one arm's metric (stable: trend lines key on it)."""
    return f"{arm}: {metric}"


def rname(num: str, den: str, metric: str) -> str:
    """Name of a paired ratio."""
    return f"{num} ÷ {den}: {metric}"


# -- kube-proxy baselines ----------------------------------------------------------------------------
CLUSTER_IPS = ipaddress.IPv4Network("10.96.0.0/12")
SYNTHETIC_ENDPOINTS = ipaddress.IPv4Network("10.244.128.0/17")  # outside the labs' node pod CIDRs
FIRST_CLUSTER_IP = int(CLUSTER_IPS.network_address) + 10         # 10.96.0.10
_FIRST_EP = int(SYNTHETIC_ENDPOINTS.network_address) + 2
_N_EPS = SYNTHETIC_ENDPOINTS.num_addresses - 4
MAX_SERVICES = 100_000

#: Real endpoints for some services: service index -> [(ip, port), ...] (the rest get synthetic ones).
Endpoints = Mapping[int, Sequence[tuple[str, int]]]


def cluster_ip(i: int) -> str:
    """The ClusterIP of service ``i`` in the kube-proxy rule sets (10.96.0.10 + i)."""
    ip = ipaddress.IPv4Address(FIRST_CLUSTER_IP + i)
    if ip not in CLUSTER_IPS:
        raise ValueError(f"service {i}: {ip} is outside {CLUSTER_IPS}")
    return str(ip)


def _service_endpoints(i: int, endpoints: int, real: Endpoints | None) -> list[tuple[str, int]]:
    if real is not None and i in real:
        return [(str(ipaddress.IPv4Address(ip)), int(port)) for ip, port in real[i]]
    # synthetic endpoints from 10.244.128.2 up, port 8080; they wrap around past ~32k (nothing answers
    # on them and the DNAT target does not change the cost of the rule walk)
    return [(str(ipaddress.IPv4Address(_FIRST_EP + (i * endpoints + j) % _N_EPS)), 8080) for j in range(endpoints)]


def _kp_chain(prefix: str, text: str) -> str:
    # kube-proxy: prefix + first 16 chars of base32(sha256(service port name [+ endpoint]))
    return prefix + base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def _check_size(n_services: int, endpoints: int) -> None:
    if not 1 <= n_services <= MAX_SERVICES or endpoints < 1:
        raise ValueError(f"{n_services} services × {endpoints} endpoints does not fit the address plan")


def kube_proxy_rules(n_services: int = KUBE_PROXY_SERVICES, endpoints: int = KUBE_PROXY_ENDPOINTS, *,
                     real: Endpoints | None = None, port: int = 80) -> str:
    """An ``iptables-restore`` input shaped like kube-proxy's iptables mode (nat and filter tables).

    ``KUBE-SERVICES`` with one match rule per service (jumped from ``PREROUTING`` and ``OUTPUT``), a
    ``KUBE-SVC-*`` chain per service choosing a ``KUBE-SEP-*`` endpoint chain with ``statistic
    random``, ``DNAT`` there, masquerade marks, and the filter table's ``KUBE-FORWARD`` conntrack rules.

    ClusterIPs from 10.96.0.10 up (:func:`cluster_ip`, inside 10.96.0.0/12), port ``port``; endpoints
    from 10.244.128.2 up (inside 10.244.0.0/16, outside the labs' node pod CIDRs), port 8080, except
    the services listed in ``real`` (index -> endpoints), which DNAT to those.
    """
    _check_size(n_services, endpoints)
    decl: list[str] = []
    svc_rules: list[str] = []
    chain_rules: list[str] = []
    for i in range(n_services):
        cip = cluster_ip(i)
        name = f"bench/svc-{i}:http"
        svc = _kp_chain("KUBE-SVC-", name + ":tcp")
        decl.append(f":{svc} - [0:0]")
        svc_rules.append(f'-A KUBE-SERVICES -d {cip}/32 -p tcp -m comment --comment "{name} cluster IP" '
                         f"-m tcp --dport {port} -j {svc}")
        chain_rules.append(f'-A {svc} ! -s 10.244.0.0/16 -d {cip}/32 -p tcp -m comment --comment "{name} cluster IP" '
                           f"-m tcp --dport {port} -j KUBE-MARK-MASQ")
        eps = _service_endpoints(i, endpoints, real)
        for j, (ep, ep_port) in enumerate(eps):
            sep = _kp_chain("KUBE-SEP-", f"{name}:tcp:{ep}:{ep_port}")
            decl.append(f":{sep} - [0:0]")
            prob = (f"-m statistic --mode random --probability {1 / (len(eps) - j):.11f} "
                    if j < len(eps) - 1 else "")
            chain_rules.append(f'-A {svc} -m comment --comment "{name} -> {ep}:{ep_port}" {prob}-j {sep}')
            chain_rules.append(f'-A {sep} -s {ep}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
            chain_rules.append(f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp '
                               f"-j DNAT --to-destination {ep}:{ep_port}")
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


@contextlib.contextmanager
def rules_file(text: str, prefix: str) -> Iterator[str]:
    """The path of a temporary file holding ``text`` (removed afterwards): ``iptables-restore`` in a
    node namespace reads its input from the host filesystem."""
    with tempfile.NamedTemporaryFile("w", prefix=prefix, suffix=".rules") as f:
        f.write(text)
        f.flush()
        yield f.name


def count_rules(text: str) -> int:
    """Rules (``-A`` lines) of an ``iptables-restore`` input."""
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


NFT_TABLE = "kube-proxy"


def _nft_chain(prefix: str, text: str) -> str:
    # kube-proxy nftables: "service-<hash>-<namespace>/<name>/<proto>/<port>"; ours: prefix + 8 hash chars + index
    return prefix + base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:8].lower()


def kube_proxy_nft_base(t: str = NFT_TABLE) -> list[str]:
    """The part of kube-proxy's nftables table every service shares: the table, masquerade marking,
    the ``services`` chain and its hooks, ``filter-forward``'s conntrack-invalid drop, and the
    ``service-ips`` verdict map (``nft -f`` lines)."""
    return [
        f"add table ip {t}",
        f"flush table ip {t}",
        f"add chain ip {t} mark-for-masquerade",
        f"add rule ip {t} mark-for-masquerade mark set mark or 0x4000",
        f"add chain ip {t} masquerading",
        f"add rule ip {t} masquerading mark and 0x4000 == 0 return",
        f"add rule ip {t} masquerading mark set mark xor 0x4000",
        f"add rule ip {t} masquerading masquerade fully-random",
        f"add chain ip {t} services",
        f"add chain ip {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}",
        f"add rule ip {t} nat-prerouting jump services",
        f"add chain ip {t} nat-output {{ type nat hook output priority -100 ; }}",
        f"add rule ip {t} nat-output jump services",
        f"add chain ip {t} nat-postrouting {{ type nat hook postrouting priority srcnat ; }}",
        f"add rule ip {t} nat-postrouting jump masquerading",
        f"add chain ip {t} filter-forward {{ type filter hook forward priority -110 ; }}",
        f"add rule ip {t} filter-forward ct state invalid drop",
        f"add map ip {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}",
    ]


def kube_proxy_nft_rules(n_services: int = KUBE_PROXY_SERVICES, endpoints: int = KUBE_PROXY_ENDPOINTS, *,
                         real: Endpoints | None = None, port: int = 80, exact: bool = False) -> str:
    """An ``nft -f`` input shaped like kube-proxy's nftables mode (KEP-3866), table ``ip kube-proxy``.

    The parts on the first-packet path: a ``service-ips`` verdict map keyed by
    ``ipv4_addr . inet_proto . inet_service`` (``ip daddr . meta l4proto . th dport``) whose elements
    ``goto`` a per-service chain; that chain marks for masquerade traffic from outside the pod
    network, then picks an endpoint with ``numgen random mod N vmap { 0 : goto endpoint-…, … }``; the
    endpoint chain does ``dnat to <ip>:<port>``. Hooks: ``nat-prerouting`` and ``nat-output`` jump to
    ``services`` (dstnat priority), ``nat-postrouting`` masquerades marked packets, and
    ``filter-forward`` keeps kube-proxy's conntrack-invalid drop. Addresses as in
    :func:`kube_proxy_rules` (same ClusterIPs and synthetic endpoints; ``real`` overrides).

    One deviation unless ``exact``: a *synthetic* service with a single endpoint gets ``goto
    endpoint-…`` instead of ``numgen random mod 1 vmap { 0 : goto endpoint-… }``. Every such
    ``vmap { … }`` is an anonymous set, and the kernel names a new anonymous set (``__map%d``) by
    scanning every set of the table, so loading N of them is quadratic (Linux 6.18, nft 1.0.6:
    2k services 0.7 s, 5k 4 s, 10k ~35 s; 100k out of reach). The synthetic services' chains are
    never traversed by benchmark traffic (the ``service-ips`` lookup is one hash lookup whatever N
    is), and the services in ``real`` keep kube-proxy's exact form.
    """
    _check_size(n_services, endpoints)
    decl: list[str] = []
    rules: list[str] = []
    elements: list[str] = []
    for i in range(n_services):
        cip = cluster_ip(i)
        name = f"bench/svc-{i}/tcp/http"
        svc = _nft_chain("service-", name) + f"-{i}"
        eps = _service_endpoints(i, endpoints, real)
        ep_chains = [_nft_chain("endpoint-", f"{name}__{ip}/{p}") + f"-{i}-{j}" for j, (ip, p) in enumerate(eps)]
        vmap = ", ".join(f"{j} : goto {c}" for j, c in enumerate(ep_chains))
        decl.append(f"add chain ip {NFT_TABLE} {svc}")
        rules.append(f"add rule ip {NFT_TABLE} {svc} ip daddr {cip} tcp dport {port} "
                     "ip saddr != 10.244.0.0/16 jump mark-for-masquerade")
        if len(eps) == 1 and not exact and (real is None or i not in real):
            rules.append(f"add rule ip {NFT_TABLE} {svc} goto {ep_chains[0]}")
        else:
            rules.append(f"add rule ip {NFT_TABLE} {svc} numgen random mod {len(eps)} vmap {{ {vmap} }}")
        for c, (ip, p) in zip(ep_chains, eps, strict=True):
            decl.append(f"add chain ip {NFT_TABLE} {c}")
            rules.append(f"add rule ip {NFT_TABLE} {c} ip saddr {ip} jump mark-for-masquerade")
            rules.append(f"add rule ip {NFT_TABLE} {c} meta l4proto tcp dnat to {ip}:{p}")
        elements.append(f"{cip} . tcp . {port} : goto {svc}")
    t = NFT_TABLE
    head = kube_proxy_nft_base(t)
    # elements in chunks: one huge "add element" line makes nft's parser slow
    elem = [f"add element ip {t} service-ips {{ {', '.join(elements[k:k + 1000])} }}"
            for k in range(0, len(elements), 1000)]
    # Every chain is declared before a rule or map element refers to it, and the rule that makes the
    # map reachable from the hooks comes last: the kernel re-validates the graph reachable from the
    # base chains after each rule message of the batch, which is quadratic when the services are
    # already reachable (10k services: ~35 s instead of ~1 s on Linux 6.18).
    tail = [f"add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips"]
    return "\n".join(head + decl + rules + elem + tail) + "\n"


# -- arms ------------------------------------------------------------------------------------------
Run = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass
class NetArm:
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
    target_ip: str | None = None         # where clients connect (a service address); None: server_ip
    target_port: int | None = None       # ... and its port for the CRR client; None: CRR_PORT
    crr_server: tuple[subprocess.Popen[str], str, int] | None = None   # (process, ip, port) of the CRR server

    @property
    def crr_target(self) -> tuple[str, int]:
        """(address, port) the CRR client connects to."""
        return self.target_ip or self.server_ip, self.target_port or CRR_PORT


def ns_run(ns: str) -> Run:
    """``run(*argv, timeout=)`` in namespace ``ns`` (``procs.run``)."""
    def run(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return procs.run(ns, argv, timeout=timeout)
    return run


# -- tools -----------------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pin_argv(cpu: int | None, argv: Sequence[str], nice: int = 0) -> list[str]:
    """``argv`` under ``taskset -c cpu`` (unless None) and ``nice -n nice`` (unless 0)."""
    out = ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)
    return ["nice", "-n", str(nice), *out] if nice else out


def check_run(res: subprocess.CompletedProcess[str], what: str) -> str:
    """stdout of a finished command, or RuntimeError with its stderr when it failed."""
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (rc {res.returncode}): {res.stderr.strip()[-800:]} {res.stdout[-400:]}")
    return res.stdout


def wait_listening(arm: NetArm, port: int, proc: subprocess.Popen[str], what: str, timeout: float = 5.0) -> None:
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
class Bench:
    """Runs the measurements against one arm: sockperf latency, the CRR rate, iperf3 throughput."""

    crr_bin: str
    client_cpu: int | None
    server_cpu: int | None
    nice: int = 0            # niceness of clients and servers (0: as started)

    def client_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` pinned to the client CPU, at the bench's niceness."""
        return pin_argv(self.client_cpu, argv, self.nice)

    def server_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` pinned to the server CPU, at the bench's niceness."""
        return pin_argv(self.server_cpu, argv, self.nice)

    def start_crr_server(self, arm: NetArm, ip: str | None = None, port: int = CRR_PORT) -> None:
        """The CRR server in the server namespace on ``ip`` (default the arm's server_ip; "0.0.0.0": any)."""
        crr = arm.server_popen(*self.server_argv([self.crr_bin, "server", ip or arm.server_ip, str(port),
                                              str(SERVER_MAX_SECONDS)]))
        arm.servers.append(crr)
        arm.crr_server = (crr, ip or arm.server_ip, port)
        wait_listening(arm, port, crr, "CRR server")

    def _crr_server_alive(self, arm: NetArm) -> None:
        """Restart the arm's CRR server if it has ended: it exits by itself after SERVER_MAX_SECONDS
        (a bound for when nobody kills it), which a long run (e.g. 30 rounds) outlasts; its clients
        would then see every connect refused."""
        if arm.crr_server is None or arm.crr_server[0].poll() is None:
            return
        dead, ip, port = arm.crr_server
        arm.servers.remove(dead)
        arm.counters["crr server restarts"] = arm.counters.get("crr server restarts", 0) + 1
        self.start_crr_server(arm, ip, port)

    def start_servers(self, arm: NetArm) -> None:
        """sockperf and CRR servers in the server namespace, for the whole run (killed by pid at the end)."""
        sp = arm.server_popen(*self.server_argv(["sockperf", "sr", "--tcp", "-i", arm.server_ip,
                                             "-p", str(SOCKPERF_PORT)]))
        arm.servers.append(sp)
        wait_listening(arm, SOCKPERF_PORT, sp, "sockperf server")
        self.start_crr_server(arm)

    def stop_servers(self, arm: NetArm) -> None:
        """Kill this arm's servers (by pid)."""
        for p in arm.servers:
            arm.stop(p)
        arm.servers.clear()

    def latency(self, arm: NetArm, secs: float) -> dict[str, float]:
        """sockperf ping-pong against the arm's server: avg, p50, p99 (half round trip, µs)."""
        # sockperf's -t takes whole seconds
        res = arm.client_run(*self.client_argv(["sockperf", "pp", "--tcp", "-i", arm.server_ip, "-p", str(SOCKPERF_PORT),
                                            "-t", str(max(1, round(secs)))]), timeout=secs + 20)
        return parse_sockperf(check_run(res, f"{arm.key}: sockperf pp"))

    def crr_raw(self, arm: NetArm, secs: float, max_conns: int = CRR_MAX_CONNS) -> dict[str, float]:
        """One CRR client run against ``arm.crr_target``: the tool's JSON (conns, rate, p50_us, …);
        connections and errors are added to the arm's counters."""
        self._crr_server_alive(arm)
        ip, port = arm.crr_target
        res = arm.client_run(*self.client_argv([self.crr_bin, "client", ip, str(port), f"{secs:g}", str(max_conns)]),
                             timeout=secs + 20)
        out: dict[str, float] = json.loads(check_run(res, f"{arm.key}: crr client").strip().splitlines()[-1])
        arm.counters["crr connections"] = arm.counters.get("crr connections", 0) + out["conns"]
        arm.counters["crr errors"] = arm.counters.get("crr errors", 0) + out["errors"]
        if out["last_error"]:
            arm.errors.append(str(out["last_error"]))
        return out

    def crr(self, arm: NetArm, secs: float) -> dict[str, float]:
        """Connection rate and per-connection p50/p99 (µs) of one CRR client run."""
        out = self.crr_raw(arm, secs)
        return {CRR: out["rate"], CRR_P50: out["p50_us"], CRR_P99: out["p99_us"]}

    def iperf(self, arm: NetArm, secs: float) -> dict[str, float]:
        """One iperf3 stream: mean and median-interval throughput (Gbit/s)."""
        srv = arm.server_popen(*self.server_argv(["iperf3", "-s", "-1", "-B", arm.server_ip, "-p", str(IPERF_PORT)]))
        try:
            wait_listening(arm, IPERF_PORT, srv, "iperf3 server")
            res = arm.client_run(*self.client_argv(["iperf3", "-c", arm.server_ip, "-p", str(IPERF_PORT),
                                                "-t", f"{secs:g}", "-i", f"{IPERF_INTERVAL:g}", "-J"]),
                                 timeout=secs + 20)
            doc = json.loads(check_run(res, f"{arm.key}: iperf3 client"))
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

    def rr_interleaved(self, arms: Mapping[str, NetArm], secs: float,
                       block: int = RRMIX_BLOCK) -> dict[str, dict[str, Any]]:
        """TCP ping-pong against every arm at once, interleaved (``crr rrmix``): one connection per
        arm from one client process (pinned to the client CPU; each socket made in its arm's client
        namespace), ``block`` round trips per arm per rotation, arm order rotated every rotation.

        Per arm: ``avg_us``/``p50_us``/``p99_us`` over all round trips, and ``block_avg_us``/
        ``block_p50_us``, one value per rotation (first ``RRMIX_SKIP`` dropped): paired across
        arms by rotation, milliseconds apart, so a ratio of two arms sees the same machine state.
        Latencies are half round trips, like sockperf's. An echo server per arm is started here
        and stopped when the arm's servers are."""
        spec: list[str] = []
        for arm in arms.values():
            echo = arm.server_popen(*self.server_argv([self.crr_bin, "echo", arm.server_ip, str(ECHO_PORT),
                                                       str(SERVER_MAX_SECONDS)]))
            arm.servers.append(echo)
            wait_listening(arm, ECHO_PORT, echo, "echo server")
            spec += [arm.client_ns, arm.server_ip, str(ECHO_PORT)]
        res = subprocess.run(self.client_argv([self.crr_bin, "rrmix", f"{secs:g}", str(block), *spec]),
                             capture_output=True, text=True, timeout=secs + 60, check=False)
        doc = json.loads(check_run(res, "crr rrmix").strip().splitlines()[-1])
        if doc["rotations"] <= RRMIX_SKIP + 2:
            raise RuntimeError(f"crr rrmix: only {doc['rotations']} rotations in {secs:g} s")
        out: dict[str, dict[str, Any]] = {}
        for key, t in zip(arms, doc["targets"], strict=True):
            t["block_avg_us"] = t["block_avg_us"][RRMIX_SKIP:]
            t["block_p50_us"] = t["block_p50_us"][RRMIX_SKIP:]
            out[key] = t
        return out

    def measure(self, arm: NetArm, secs: float) -> dict[str, float]:
        """Latency, CRR and throughput, one after the other."""
        return {**self.latency(arm, secs), **self.crr(arm, secs), **self.iperf(arm, secs)}


@contextlib.contextmanager
def crr_binary() -> Iterator[str]:
    """benchmarks/tools/crr.c compiled with gcc -O2 into a temporary directory (removed afterwards)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("the datapath suites need gcc to build benchmarks/tools/crr.c (apt-get install gcc)")
    tmp = tempfile.mkdtemp(prefix="cl-bench-crr-")
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
def netstat(run: Run) -> dict[str, int]:
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


def tcp_snapshot(arm: NetArm) -> dict[str, dict[str, int]]:
    """netstat() of the arm's client and server namespaces."""
    return {"client": netstat(arm.client_run), "server": netstat(arm.server_run)}


def softnet_drops() -> int:
    """Packets dropped because a CPU's backlog queue was full (host-wide, /proc/net/softnet_stat column 2).

    veth delivers through the sending CPU's backlog (netif_rx), so this is where a veth path drops
    under load; the queue length is ``net.core.netdev_max_backlog``."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f if line.strip())


def conntrack_stats(node: Node) -> dict[str, int]:
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


def kube_services_packets(node: Node) -> int:
    """Packets that took the PREROUTING -> KUBE-SERVICES jump (new connections walking the chain)."""
    out = node.run("iptables", "-t", "nat", "-L", "PREROUTING", "-n", "-v", "-x", timeout=30).stdout
    for line in out.splitlines():
        if "KUBE-SERVICES" in line:
            return int(line.split()[0])
    return -1


# -- a quiet machine, CPU placement ----------------------------------------------------------------
def cpu_busy(seconds: float) -> float:
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


def wait_quiet(ctx: Context, max_wait: float = QUIET_WAIT_S, sample: float = 1.0) -> float:
    """Wait (bounded) until the machine is quiet; other work on a 2-CPU VM swamps these ratios.

    Returns the last busy fraction sampled."""
    t0 = time.monotonic()
    busy = cpu_busy(sample)
    if busy > QUIET_BUSY:
        ctx.log(f"machine busy ({busy:.0%} of the CPUs in use by others), waiting up to {max_wait:.0f} s")
    while busy > QUIET_BUSY and time.monotonic() - t0 < max_wait:
        busy = cpu_busy(1.0)
    if busy > QUIET_BUSY:
        ctx.log(f"[yellow]still {busy:.0%} busy after {max_wait:.0f} s: results will be noisy[/yellow]")
    elif time.monotonic() - t0 > 2 * sample:
        ctx.log(f"quiet after {time.monotonic() - t0:.0f} s")
    return busy


@dataclass
class QuietGate:
    """Before each arm's measurements, a bounded wait for other work on the machine to pass (perf.md
    §7.1 wants an idle machine), and a record of how busy it was.

    :meth:`begin` waits before the run; :meth:`before` is called by :func:`run_rounds` before every
    arm: the first arm of the first round uses the sample of :meth:`begin`; the others wait up to
    ``per_arm_s`` each, and up to ``total_s`` in all (then they only sample ``sample_s``), so that a
    machine that never gets quiet still gives a run of bounded length.
    """

    ctx: Context
    per_arm_s: float
    total_s: float = math.inf
    sample_s: float = BUSY_SAMPLE_S
    start: float = 0.0                   # busy fraction sampled by begin()
    start_wait_s: float = QUIET_WAIT_S   # ... and the bound it waited with
    waited_s: float = 0.0                # waited in before(), in all
    by_arm: dict[str, list[float]] = field(default_factory=dict)   # busy fraction per arm, in run order
    in_order: list[float] = field(default_factory=list)            # ... and of every arm, in run order

    def begin(self, max_wait: float = QUIET_WAIT_S) -> float:
        """Wait (at most ``max_wait``) for a quiet machine before the run; the busy fraction."""
        self.start_wait_s = max_wait
        self.start = wait_quiet(self.ctx, max_wait)
        return self.start

    def before(self, key: str, first: bool) -> None:
        """Before arm ``key``'s measurements (``first``: the run's very first, just after begin())."""
        if first:
            busy = self.start
        elif self.waited_s < self.total_s:
            t0 = time.monotonic()
            busy = wait_quiet(self.ctx, min(self.per_arm_s, self.total_s - self.waited_s), self.sample_s)
            self.waited_s += time.monotonic() - t0
        else:
            busy = cpu_busy(self.sample_s)
        self.by_arm.setdefault(key, []).append(busy)
        self.in_order.append(busy)

    def start_info(self) -> Measurement:
        """The busy fraction before the run, as a setup measurement."""
        return info("background CPU busy before the run", self.start * 100, "%", group="setup",
                    note=f"waited for < {QUIET_BUSY:.0%} (at most {self.start_wait_s:.0f} s)")


def client_server_cpus() -> tuple[int | None, int | None]:
    """Client and server CPUs (perf.md §7.1): the first two we may use; the machine's 0 and 1 if the
    runner itself was pinned to one CPU (``--cpu``); no pinning on a single-CPU machine."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        cpus = list(range(os.cpu_count() or 1))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


# -- running a suite -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What a datapath suite's ``run()`` settles before it builds anything (:meth:`make`)."""

    arms: list[str]              # the selected arms, the floor first
    rounds: int                  # timed rounds
    secs: float                  # per measurement in timed rounds
    warmup_secs: float           # ... in warmup rounds
    client_cpu: int | None
    server_cpu: int | None
    nice: int

    @classmethod
    def make(cls, ctx: Context, arms: Sequence[str], *, arms_env: str, nice_env: str, secs: float,
             quick_secs: float, warmup_secs: float) -> Plan:
        """The arms selected by ``arms_env`` (:func:`selected_arms`), ``ctx.repeats`` rounds (at least
        one), ``quick_secs`` with ``--quick``, the CPUs of :func:`client_server_cpus` and the
        niceness of ``nice_env`` (:func:`env_nice`). ValueError for an unknown arm name."""
        client_cpu, server_cpu = client_server_cpus()
        return cls(selected_arms(arms_env, arms), max(1, ctx.repeats), quick_secs if ctx.quick else secs,
                   warmup_secs, client_cpu, server_cpu, env_nice(nice_env))

    def params(self, ctx: Context) -> dict[str, object]:
        """The plan as run parameters (the result file's ``params``)."""
        return dict(arms=",".join(self.arms), rounds=self.rounds, warmup_rounds=ctx.warmup, seconds=self.secs,
                    warmup_seconds=self.warmup_secs, client_cpu=self.client_cpu, server_cpu=self.server_cpu,
                    nice=self.nice)

    def bench(self, stack: contextlib.ExitStack) -> Bench:
        """A ``Bench`` on the plan's CPUs and niceness, with the CRR tool built for as long as ``stack``."""
        return Bench(stack.enter_context(crr_binary()), self.client_cpu, self.server_cpu, self.nice)


def require_tools(suite: str, tools: Iterable[str]) -> None:
    """RuntimeError naming the first of ``tools`` that is not on PATH (before anything is built)."""
    for tool in tools:
        if shutil.which(tool) is None:
            raise RuntimeError(f"{suite} needs {tool} (scripts/install-system-deps.sh)")


def selected_arms(env: str, arms: Sequence[str]) -> list[str]:
    """The arms named in environment variable ``env`` (comma-separated; unset or empty: all), in the
    order of ``arms``; the first of ``arms``, the floor every ratio is against, always runs.

    ValueError for a name that is not one of ``arms``."""
    value = os.environ.get(env, "")
    if not value.strip():
        return list(arms)
    want = {a.strip() for a in value.split(",") if a.strip()}
    unknown = want - set(arms)
    if unknown:
        raise ValueError(f"{env}: unknown arm(s) {sorted(unknown)}; have {', '.join(arms)}")
    return [a for a in arms if a == arms[0] or a in want]


def env_nice(env: str) -> int:
    """Niceness of clients and servers from environment variable ``env`` (``DEFAULT_NICE`` if unset;
    0: as started). On a shared 2-vCPU VM other work otherwise preempts them mid-measurement."""
    return int(os.environ.get(env, str(DEFAULT_NICE)))


def iptables_version() -> str:
    """``iptables-restore --version`` (which backend the kube-proxy arms measure), '' if it says nothing."""
    return subprocess.run(["iptables-restore", "--version"], capture_output=True, text=True,
                          timeout=10, check=False).stdout.strip()


def prepare_arm(stack: contextlib.ExitStack, bench: Bench, arm: NetArm) -> None:
    """Make one arm ready to measure: CRR sysctls in the client namespace, the servers (stopped when
    ``stack`` unwinds), and a ping from the client to the server address (RuntimeError if none)."""
    # CRR hygiene (perf.md §7.1): the client closes first and keeps TIME_WAIT
    devices.set_sysctl(arm.client_ns, "net.ipv4.tcp_tw_reuse", "1")
    devices.set_sysctl(arm.client_ns, "net.ipv4.ip_local_port_range", "1024 65535")
    bench.start_servers(arm)
    stack.callback(bench.stop_servers, arm)
    ping = arm.client_run("ping", "-n", "-q", "-c", "1", "-W", "2", arm.server_ip, timeout=10)
    if ping.returncode != 0:
        raise RuntimeError(f"{arm.key}: {arm.server_ip} does not answer ping: {ping.stdout}{ping.stderr}")


def run_rounds(ctx: Context, plan: Plan, bench: Bench, arms: Mapping[str, NetArm], gate: QuietGate) -> None:
    """``ctx.warmup`` warmup rounds of ``plan.warmup_secs`` per measurement, then ``plan.rounds`` timed
    rounds of ``plan.secs``: every round measures every arm once (``Bench.measure``), round-robin, its
    start arm rotated by one each round, ``gate.before`` first. Timed rounds append to
    ``arm.samples``; warmup rounds are discarded. Errors of the measurements propagate."""
    order = list(arms)
    total = ctx.warmup + plan.rounds
    t_start = time.perf_counter()
    for rnd in range(total):
        warm = rnd < ctx.warmup
        shift = rnd % len(order)
        for i, key in enumerate(order[shift:] + order[:shift]):
            arm = arms[key]
            gate.before(key, first=rnd == 0 and i == 0)
            got = bench.measure(arm, plan.warmup_secs if warm else plan.secs)
            ctx.log(f"round {rnd + 1}/{total}{' (warmup)' if warm else ''} {key}: "
                    f"latency {got[LAT_AVG]:.1f} us (p50 {got[LAT_P50]:.1f}), CRR {got[CRR]:,.0f}/s, "
                    f"{got[TPUT]:.2f} Gbit/s")
            if not warm:
                for m, v in got.items():
                    arm.samples.setdefault(m, []).append(v)
    ctx.log(f"measured in {time.perf_counter() - t_start:.0f} s")


def bpf_stats_pass(ctx: Context, plan: Plan, bench: Bench, arms: Mapping[str, NetArm]) -> list[Measurement]:
    """``--bpf-stats`` (nothing otherwise): after the timed rounds, every arm once more with BPF
    run-time statistics on, one sockperf run ("rr") and one CRR run ("crr") of ``plan.secs`` each,
    per program: runs and ns per TCP segment the server sent or received (its Tcp.InSegs +
    Tcp.OutSegs). Reported in their own table (``_progstats``), never in a ratio."""
    if not ctx.bpf_stats:
        return []
    out: list[Measurement] = []
    for key, arm in arms.items():
        for work, fn in (("rr", bench.latency), ("crr", bench.crr)):
            before = netstat(arm.server_run)
            with progstats.stats_window() as ran:
                fn(arm, plan.secs)
                runs = ran()
            after = netstat(arm.server_run)
            segs = sum(after.get(k, 0) - before.get(k, 0) for k in ("Tcp.InSegs", "Tcp.OutSegs"))
            ctx.log(f"bpf stats {key} {work}: " + ", ".join(
                f"{r.name} {r.per(segs):.2f}/seg {r.ns_per_run:.0f} ns" for r in runs[:6]))
            out += progstats.measurements(f"{key} {work}", runs, segs)
    return out


def arm_counters(key: str, arm: NetArm, before: Mapping[str, Mapping[str, int]]) -> list[Measurement]:
    """One arm's TCP counters since ``before`` (its :func:`tcp_snapshot`) and what ``Bench`` counted
    (CRR connections and errors, iperf3 retransmits)."""
    out: list[Measurement] = []
    after = tcp_snapshot(arm)
    for label, (side, counter) in TCP_COUNTERS.items():
        out.append(info(f"{key}: {label}", after[side].get(counter, 0) - before[side].get(counter, 0)))
    for label, v in arm.counters.items():
        note = f"last error: {arm.errors[-1]}" if label == "crr errors" and arm.errors else ""
        out.append(info(f"{key}: {label}", v, note=note))
    return out


def conntrack_counters(prefix: str, node: Node, before: Mapping[str, int]) -> list[Measurement]:
    """Conntrack drops since ``before`` (its :func:`conntrack_stats`), the entry count, and the
    connections that walked ``KUBE-SERVICES``, of a kube-proxy arm's node; names start ``prefix``."""
    out: list[Measurement] = []
    ct = conntrack_stats(node)
    for k in ("drop", "early_drop", "insert_failed", "invalid"):
        if k in ct:
            out.append(info(f"{prefix} conntrack {k}", ct[k] - before.get(k, 0)))
    out.append(info(f"{prefix} conntrack entries at the end", ct["count"], note=f"nf_conntrack_max {ct['max']}"))
    out.append(info(f"{prefix} packets jumping PREROUTING -> KUBE-SERVICES", kube_services_packets(node),
                    note="≈ connections made in this arm: only first packets take the nat table"))
    return out


def datapath_counters(prefix: str, node: Node) -> list[Measurement]:
    """The packets ciliumlite's datapath on ``node`` dropped and forwarded (none without a datapath)."""
    if node.datapath is None:
        return []
    rows = node.datapath.metrics()
    return [info(f"{prefix} datapath drops", sum(r.packets for r in rows if r.is_drop)),
            info(f"{prefix} datapath forwarded packets", sum(r.packets for r in rows if not r.is_drop))]


def arm_measurements(arms: Mapping[str, NetArm], floor: str, floor_metrics: Sequence[str],
                     pairs: Iterable[tuple[str, str, str]]) -> list[Measurement]:
    """Every arm's ``METRICS`` over the timed rounds, every other arm ÷ ``floor`` on ``floor_metrics``,
    and the ratios ``(numerator, denominator, metric)`` of ``pairs`` whose arms both ran (each ratio
    once), all paired per round."""
    ms: list[Measurement] = []
    for key, arm in arms.items():
        for metric, (unit, kind) in METRICS.items():
            note = LAT_NOTE if metric.startswith("latency") else ""
            ms.append(Measurement.from_samples(mname(key, metric), arm.samples[metric], unit, group=key, note=note,
                                               kind=kind))
    done: set[tuple[str, str, str]] = set()
    base = arms[floor].samples
    for key in arms:
        if key != floor:
            for metric in floor_metrics:
                done.add((key, floor, metric))
                ms.append(ratio(rname(key, floor, metric), arms[key].samples[metric], base[metric], group="ratios"))
    for num, den, metric in pairs:
        if num in arms and den in arms and (num, den, metric) not in done:
            done.add((num, den, metric))
            ms.append(ratio(rname(num, den, metric), arms[num].samples[metric], arms[den].samples[metric],
                            group="ratios"))
    return ms


# -- reporting -------------------------------------------------------------------------------------
#: Column heads of the per-arm table (arm_summary) ...
ARM_COLUMNS = {
    LAT_AVG: "latency avg µs", LAT_P50: "latency p50 µs", LAT_P99: "latency p99 µs", CRR: "CRR conn/s",
    CRR_P50: "CRR conn p50 µs", CRR_P99: "CRR conn p99 µs", TPUT: "iperf3 Gbit/s", TPUT_MED: "iperf3 median interval",
}
#: ... and of the ratio table (floor_summary; followed by " ÷ <floor>").
RATIO_COLUMNS = {
    LAT_AVG: "latency avg", LAT_P50: "latency p50", LAT_P99: "latency p99", CRR: "CRR rate",
    CRR_P50: "CRR conn p50", CRR_P99: "CRR conn p99", TPUT: "throughput", TPUT_MED: "throughput median interval",
}
#: How the per-arm table's numbers were measured (suites add what differs).
METHOD_NOTE = ("latency: sockperf ping-pong, half round trip; CRR: connect + 1 B request + 1 B response + "
               "close, one client; iperf3: one stream")

def info(name: str, value: float, unit: str = "count", *, group: str = "counters", note: str = "") -> Measurement:
    """A one-sample "info" measurement (counters, setup times)."""
    return Measurement.from_samples(name, [value], unit, group=group, note=note, kind="info")


def cv_text(m: Measurement) -> str:
    """'3.1%' (with ' !' above 5 %), '' without a CV."""
    if m.cv is None:
        return ""
    return f"{m.cv * 100:.1f}%" + (" !" if m.cv > 0.05 else "")


class Cells:
    """A suite's measurements by name, as table cells ('' for a name that is not there)."""

    def __init__(self, ms: Iterable[Measurement]) -> None:
        self.by = {m.name: m for m in ms}

    def __contains__(self, name: str) -> bool:
        return name in self.by

    def cell(self, name: str) -> str:
        """The median with its unit and CV: '52.1 (3.1%)'."""
        m = self.by.get(name)
        return "" if m is None else f"{fmt_value(m.median, m.unit)} ({cv_text(m) or '-'})"

    def rcell(self, name: str) -> str:
        """The named ratio as :func:`ratio_text` shows it."""
        m = self.by.get(name)
        return "" if m is None else ratio_text(m)


def ratio_text(m: Measurement) -> str:
    """A ratio's median with its bootstrap interval: '0.98x [0.95x, 1.01x]'."""
    return f"{fmt_value(m.median, 'x')} {fmt_ci(m)}"


#: A goal: (numerator arm, denominator arm, metric, op "<=" or ">=", threshold, source).
Goal = tuple[str, str, str, str, float, str]


def goal_rows(cells: Cells, goals: Iterable[Goal]) -> list[list[str]]:
    """Rows [ratio, median [CI], goal, verdict, source] of the goals whose ratio was measured."""
    rows = []
    for num, den, metric, op, thr, src in goals:
        m = cells.by.get(rname(num, den, metric))
        if m is not None:
            rows.append([m.name, ratio_text(m), f"{op} {thr:g}", verdict(m, op, thr), src])
    return rows


def arm_summary(cells: Cells, titles: Mapping[str, str], metrics: Sequence[str], note: str) -> Summary:
    """The per-arm table: one row per arm of ``titles`` (in its order) that ran, the median and CV of
    each of ``metrics``; ``note`` follows ``METHOD_NOTE``."""
    rows = [[title, *(cells.cell(mname(a, m)) for m in metrics)] for a, title in titles.items()
            if mname(a, LAT_AVG) in cells]
    return Summary("per arm (median of rounds, CV in brackets; '!' = CV > 5 %)",
                   ["arm", *(ARM_COLUMNS[m] for m in metrics)], rows, note=METHOD_NOTE + note)


def floor_summary(cells: Cells, titles: Mapping[str, str], floor: str, label: str,
                  metrics: Sequence[str]) -> Summary:
    """The table of every other arm of ``titles`` ÷ ``floor`` (called ``label`` in the heads) on
    ``metrics``, paired per round."""
    rows = [[title, *(cells.rcell(rname(a, floor, m)) for m in metrics)] for a, title in titles.items()
            if a != floor and rname(a, floor, LAT_AVG) in cells]
    return Summary(f"ratios vs the floor ({label}), paired per round, with bootstrap 95 % CI",
                   ["arm", *(f"{RATIO_COLUMNS[m]} ÷ {label}" for m in metrics)], rows,
                   note="latency and connection-time ratios > 1 are slower; rate and throughput ratios < 1 are slower.")


def goal_summary(cells: Cells, goals: Iterable[Goal], title: str, note: str = "") -> Summary:
    """The goals table (:func:`goal_rows`)."""
    return Summary(title, ["ratio", "median [95% CI]", "goal", "verdict", "source"], goal_rows(cells, goals),
                   note=note)


def tail_summaries(ms: Sequence[Measurement], extra: Sequence[Measurement]) -> list[Summary]:
    """The tables that end a suite's report: the ratios in ``extra`` and the counters and setup
    measurements (each table only if it has rows)."""
    out = []
    if extra:
        out.append(Summary("other ratios", ["ratio", "median [95% CI]"],
                           [[m.name, ratio_text(m)] for m in extra]))
    counters = [m for m in ms if m.group in ("counters", "setup")]
    if counters:
        out.append(Summary("counters over the timed and warmup rounds, and setup", ["counter", "value", "note"],
                           [[m.name, fmt_value(m.median, m.unit) if m.unit != "count" else f"{m.median:,.0f}", m.note]
                            for m in counters]))
    return out + progstats.summary(ms)


def verdict(m: Measurement, op: str, thr: float) -> str:
    """'pass'/'FAIL' on the median, and whether the whole bootstrap interval agrees."""
    def ok(x: float) -> bool:
        return x <= thr if op == "<=" else x >= thr

    med = "pass" if ok(m.median) else "FAIL"
    if m.ci95 is None:
        return med
    lo, hi = m.ci95
    ci = "pass" if ok(lo) and ok(hi) else ("FAIL" if not ok(lo) and not ok(hi) else "inconclusive")
    return f"{med} (CI: {ci})"
