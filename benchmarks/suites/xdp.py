"""xdp: packets per second through one node: XDP vs tc vs iptables (issue 12's benchmarks).

perf.md §1.7 (Cilium 1.8's XDP NodePort figures), §3 (XDP drop vs iptables raw drop), §6 (floors),
§7.2 E3 (the veth pps ceiling), §7.4 S6/S7.

Two comparisons, every arm interleaved in one run, each arm's rate counted on the node side:

**Prefilter drop** of UDP frames from a denied source (198.51.100.7, CIDR 198.51.100.0/24) to the
node (10.0.0.11:9):

- ``pf-xdp``: ``bpf_xdp``'s prefilter (``Datapath.prefilter.add``), native XDP on the node's
  ``eth0``; counted ``DROP_PREFILTER`` in ``cilium_metrics``.
- ``pf-tc``: ciliumlite's tc datapath has no prefilter (``bpf_host`` never reads
  ``cilium_cidr_v4_*``), so this is the same lookup as a tc ingress program:
  ``tools/xdp_bench.bpf.c``'s ``tc_prefilter`` (prefilter.h's ``prefilter_denied``: a /32 hash,
  then an LPM trie, same key, sizes and flags, the CIDR in the trie as ``Datapath.prefilter``
  puts it), tcx on the legacy node's ``eth0``, the only tc program there, ``TC_ACT_SHOT``; its
  own per-CPU counter.
- ``pf-ipt``: ``iptables -t raw -A PREROUTING -s 198.51.100.0/24 -j DROP`` on the legacy node
  (kube-proxy/iptables style: no BPF); the rule's packet counter.
- ``floor-read``: ``xdp_read_drop`` (one read of the source address, then XDP_DROP): the cheapest
  program that looks at the packet. ``floor-read ÷ pf-ipt`` bounds what any XDP prefilter can reach
  over iptables here.
- ``floor``: ``xdp_drop`` (XDP_DROP, a counter, no lookup) on the legacy node's ``eth0``: the veth
  pps ceiling of perf.md E3. An arm near it is bound by the veth and the generator, not by its
  program.

**NodePort forwarding** to a remote backend: UDP from the world (203.0.113.10:40000) to the node's
NodePort (10.0.0.11:31090), one service whose backend is a pod on the other node (port 8080), SNAT
mode; counted where the frames leave the node: ``xdp_sink`` on the node's wire peer counts (and
drops) UDP from the node's address to port 8080, i.e. frames DNATed *and* SNATed:

- ``np-xdp``: ``acceleration="native"``: ``bpf_xdp`` does the service lookup, backend selection,
  conntrack, SNAT and the FIB lookup and sends the frame back out with ``XDP_TX``.
- ``np-tc``: ``acceleration="disabled"``: ``cil_from_netdev`` (tcx) does the same, out with
  ``bpf_redirect_neigh``.
- ``np-floor``: ``xdp_fwd_static`` on the legacy node's ``eth0``: this flow's translation fixed at
  load time (SNAT + DNAT, TTL, checksums, MACs), no lookup, ``XDP_TX``: the cheapest XDP forwarder.
  ``np-floor ÷ np-tc`` bounds what any XDP NodePort can reach over tc here.
- ``np-ipt``: ``host_routing="legacy"`` and kube-proxy's iptables rules for one NodePort service
  (``KUBE-NODEPORTS`` -> ``KUBE-EXT-*`` -> ``KUBE-MARK-MASQ`` + ``KUBE-SVC-*`` -> ``KUBE-SEP-*``
  DNAT, ``MASQUERADE`` in ``KUBE-POSTROUTING``, the filter table's ``KUBE-FORWARD``), conntrack on,
  kernel forwarding.
- ``np-nft``: the same with kube-proxy's nftables mode instead (:func:`kube_proxy_nodeport_nft_rules`:
  ``service-nodeports`` verdict map -> ``external-`` (mark for masquerade) -> ``service-`` ->
  ``endpoint-`` ``dnat``, ``masquerade`` in ``nat-postrouting``), in a lab of its own.

Topology: four labs (``xdp``, ``tc``, ``legacy``, ``nft``), each ``lab.cluster(["n1", "n2"],
routing="native", bgp=False)`` with the backend pod on n2; the node under test is n1, whose
``eth0`` is a veth into the lab's fabric bridge (port ``n0``). Each lab's fabric is a
:class:`_BenchFabric`, which attaches an XDP program to every node's port as it is made: on ``n0``
the sink, on the others ``xdp_pass``. That gives the ports NAPI, which a veth needs before XDP_TX
or a redirect into it delivers anything, so the ``xdp`` lab's n1 takes ``acceleration="native"``
(``ciliumlite.node.xdp``'s veth check passes) instead of falling back to generic XDP. The arms
without XDP get ``xdp_pass`` on n1's ``eth0``, so that every arm receives through veth's NAPI
(perf.md §7.1: give the non-XDP arm the same NAPI setting). n1 has a permanent neighbour entry
for n2 (an ARP reply could be lost in a full receive ring).

The generator is ``xdp_gen`` run with ``BPF_PROG_TEST_RUN`` and ``BPF_F_TEST_XDP_LIVE_FRAMES`` in
the fabric namespace with ``ingress_ifindex`` = ``n0``: every run rewrites a live frame with the
arm's 60-byte frame and returns ``XDP_TX``, which test_run turns into a redirect out of ``n0``, so
the frame arrives on n1's ``eth0`` receive ring (veth's 256-frame ring: what does not fit is dropped
there and counted in ``n0``'s ``tx_queue_0_xdp_xmit_errors``). The generator runs on the first CPU;
n1's ``eth0`` runs threaded NAPI with its kthread pinned to the second CPU, so the node's whole
receive path (and the sink's, scheduled from it) runs on a CPU of its own, and the generator
offers more than any arm takes (reported: offered and accepted rates). Per arm and round the
generator runs ``SECONDS`` (in test_run calls of ``CHUNK`` frames, at most ``MAX_CALLS`` calls).

Two rates per arm and round: **Mpps**, the arm's count ÷ the generator's wall time, and **Mpps per
node core**, the same count ÷ the CPU time n1's NAPI kthread and ``ksoftirqd`` of its CPU ran in
the window (``/proc/<pid>/schedstat``, exact; this kernel's /proc/stat is tick-sampled). The second is
what one core of the node sustains: with two CPUs the generator (and veth's 256-frame ring, refilled
only as fast as the node's kthread is woken) bounds the first, and no arm keeps its CPU busy all the
time. The wire peer ``n0`` runs threaded NAPI too, in a kthread of its own on the node's CPU that is not
counted as the node's: the sink's receive is the next hop's work, and as a softirq raised by n1's
transmit it would run inside n1's kthread and be billed to every NodePort arm. ``--bpf-stats`` adds a separate pass with run-time statistics on:
ns per run and runs per packet of every program that ran (``_progstats.py``).

Not measured: generic XDP (``best-effort`` on a veth without an XDP peer), NodePort DSR, many
flows (one UDP flow: after its first packet every arm takes its established-connection path).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import Context, Measurement, Summary, ratio
from benchmarks.suites import _progstats as progstats
from benchmarks.suites._netbench import (
    Cells,
    Goal,
    QuietGate,
    check_run,
    client_server_cpus,
    cv_text,
    goal_summary,
    info,
    iptables_version,
    kube_proxy_nft_base,
    rname,
    rules_file,
    tail_summaries,
)
from ciliumlite.bpf import U32, U64, BpfObject
from ciliumlite.bpf.link import FdLink, Link
from ciliumlite.bpf.netns import entered
from ciliumlite.bpf.program import BPF_F_TEST_XDP_LIVE_FRAMES, XdpContext
from ciliumlite.datapath import devices
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.lab import Lab, Node, procs
from ciliumlite.lab.fabric import LEAF_MAC, WORLD_HOST, Fabric, node_ip
from ciliumlite.service import Backend, Frontend, Service

DESCRIPTION = ("packets per second through one node: prefilter drop (XDP vs tc vs iptables raw) and NodePort "
               "forwarding to a remote backend (XDP vs tc vs iptables kube-proxy), live-frames generator")
NEEDS_ROOT = True
DEFAULT_REPEATS = 5

# -- parameters ------------------------------------------------------------------------------------
SECONDS = 2.0                # generator time per arm and timed round
WARMUP_SECONDS = 1.0
QUICK_SECONDS = 0.5
CHUNK = 250_000              # frames per test_run call (~25-50 ms at the generator's rate)
MAX_PPS = 30e6               # bound on calls: a run never sends more than SECONDS × this
BATCH = 64                   # live-frames batch size (the kernel's default)
QUIET_WAIT_ARM_S = 5.0
QUIET_WAIT_TOTAL_S = 30.0
PROBE_FRAMES = 2_000         # setup check of each arm's path
# Below saturation: the generator paced at this share of the rate the arm counted under overload.
# Not a loss-free search (RFC 2544): veth's 256-frame ring holds ~85 µs at 3 Mpps, less than the
# NAPI thread's wake-up jitter on this VM, so "zero loss" measured scheduling, not the datapath
# (the first runs found floor "loss-free" at 1 of its 6 Mpps).
LOAD_SHARE = 0.7
PACED_CALL_SECONDS = 0.03    # frames per paced test_run call: this long at the paced rate

DENIED_CIDR = "198.51.100.0/24"
DENIED_SRC = "198.51.100.7"
NODE_PORT = 31090
SVC_IP = "10.96.0.40"
SVC_PORT = 80
BACKEND_PORT = 8080
CLIENT_PORT = 40000
NODE_IP = node_ip(0)         # n1
LINK_XDP = "eth0"

ARMS = ("floor", "floor-read", "pf-xdp", "pf-tc", "pf-ipt", "np-floor", "np-xdp", "np-tc", "np-ipt", "np-nft")
FLOOR, FLOOR_READ, PF_XDP, PF_TC, PF_IPT, NP_FLOOR, NP_XDP, NP_TC, NP_IPT, NP_NFT = ARMS
TITLES = {
    FLOOR: "floor: XDP_DROP, no lookup (veth ceiling, E3)",
    FLOOR_READ: "bound: XDP_DROP after one read of the packet (no prefilter can cost less)",
    PF_XDP: "prefilter at XDP (bpf_xdp, native)",
    PF_TC: "prefilter lookup in tc ingress (tcx)",
    PF_IPT: "iptables -t raw PREROUTING -s CIDR -j DROP",
    NP_FLOOR: "bound: the NodePort rewrite fixed at load, no lookup, XDP_TX (no XDP NodePort can cost less)",
    NP_XDP: "NodePort at XDP (bpf_xdp, XDP_TX)",
    NP_TC: "NodePort in tc (cil_from_netdev, redirect_neigh)",
    NP_IPT: "NodePort by kube-proxy iptables (DNAT+MASQUERADE)",
    NP_NFT: "NodePort by kube-proxy nftables (service-nodeports vmap, dnat, masquerade)",
}
PPS = "pps"
OFFERED = "offered pps"
ACCEPTED = "accepted pps"
CORE = "pps per node core"     # packets ÷ the node CPU's busy seconds: the node's capacity on one core
BUSY = "node CPU busy"          # share of the window the node's CPU worked
NS_PKT = "node ns per packet"
LF = "paced pps"                 # counted with the generator paced at LOAD_SHARE of the overload rate
LF_CORE = "paced pps per node core"   # there: packets ÷ node CPU seconds
LF_NS_PKT = "paced node ns per packet"
LF_LOSS = "paced loss"               # share of the paced frames not counted

GOALS: list[Goal] = [
    (PF_XDP, PF_IPT, PPS, ">=", 3.0, "issue 12: prefilter drop at XDP ≥ 3× iptables"),
    (NP_XDP, NP_TC, PPS, ">=", 2.0, "issue 12: NodePort forwarding at XDP ≥ 2× tc"),
    (PF_XDP, PF_IPT, CORE, ">=", 3.0, "issue 12, per node core: prefilter drop at XDP ≥ 3× iptables"),
    (NP_XDP, NP_TC, CORE, ">=", 2.0, "issue 12, per node core: NodePort forwarding at XDP ≥ 2× tc"),
    (NP_TC, NP_IPT, PPS, ">=", 1.4, "perf.md S6: tc NodePort ≥ 1.4× iptables (reference)"),
    (NP_XDP, NP_TC, PPS, ">=", 1.5, "perf.md S7: XDP ≥ 1.5× tc, or E3-bound (reference)"),
]
EXTRA: list[tuple[str, str]] = [
    (FLOOR_READ, PF_IPT), (NP_FLOOR, NP_TC), (PF_XDP, FLOOR_READ), (NP_XDP, NP_FLOOR),
    (PF_XDP, PF_TC), (PF_TC, PF_IPT), (PF_XDP, FLOOR), (PF_TC, FLOOR), (PF_IPT, FLOOR),
    (NP_XDP, NP_IPT), (NP_XDP, FLOOR), (NP_TC, FLOOR), (NP_IPT, FLOOR),
    (NP_XDP, NP_NFT), (NP_TC, NP_NFT), (NP_NFT, NP_IPT),
]

SRC = Path(__file__).resolve().parents[1] / "tools" / "xdp_bench.bpf.c"


# -- the helper programs -----------------------------------------------------------------------------
def _multiarch_include() -> str:
    """/usr/include/<triplet> with asm/types.h (``-target bpf`` drops it; as CMakeLists.txt finds it)."""
    cands: list[str] = []
    for argv in (["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], ["gcc", "-print-multiarch"]):
        if shutil.which(argv[0]):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
            cands.append(out)
    cands.append(f"{os.uname().machine}-linux-gnu")
    for c in cands:
        if c and Path(f"/usr/include/{c}/asm/types.h").is_file():
            return f"/usr/include/{c}"
    raise RuntimeError(f"no /usr/include/<multiarch>/asm/types.h (tried {cands}): install linux-libc-dev")


@contextlib.contextmanager
def bench_object() -> Iterator[str]:
    """``tools/xdp_bench.bpf.c`` compiled with clang into a temporary directory (removed afterwards)."""
    clang = shutil.which("clang-14") or shutil.which("clang")
    if clang is None:
        raise RuntimeError("xdp needs clang (scripts/install-system-deps.sh)")
    with tempfile.TemporaryDirectory(prefix="cl-bench-xdp-") as tmp:
        out = os.path.join(tmp, "xdp_bench.o")
        res = subprocess.run([clang, "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", f"-I{_multiarch_include()}",
                              "-c", str(SRC), "-o", out], capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"clang {SRC.name} failed: {res.stderr[-1500:]}")
        yield out


def _be32(ip: str) -> int:
    """An IPv4 address as the u32 whose memory holds it in network order (a ``__be32`` .rodata value)."""
    return int(struct.unpack("<I", socket.inet_aton(ip))[0])


def _be16(port: int) -> int:
    return int(struct.unpack("<H", struct.pack("!H", port))[0])


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return int(~s & 0xFFFF)


def udp_frame(dmac: str, smac: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    """A 60-byte Ethernet + IPv4 + UDP frame (18 bytes of payload, valid IP checksum, UDP checksum 0)."""
    payload = bytes(18)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    frame = bytes.fromhex(dmac.replace(":", "")) + bytes.fromhex(smac.replace(":", "")) + b"\x08\x00" + ip + udp
    assert len(frame) == 60
    return frame


def _percpu_sum(obj: BpfObject, slot: int = 0) -> int:
    vals = obj.map("bench_count", key=U32, value=U64).get(slot)
    if isinstance(vals, list):
        return sum(int(v) for v in vals)
    return int(vals or 0)


@dataclass
class Progs:
    """The loaded helper objects (one per role; a sink per lab, so that each has its own counter)."""

    path: str
    gen: BpfObject
    passer: BpfObject
    drop: BpfObject
    tcpf: BpfObject
    sinks: dict[str, BpfObject] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)

    @classmethod
    def load(cls, stack: contextlib.ExitStack, path: str) -> Progs:
        objs = []
        for _ in range(4):
            o = BpfObject(path).load()
            stack.callback(o.close)
            objs.append(o)
        p = cls(path, objs[0], objs[1], objs[2], objs[3])
        stack.callback(p.close_links)  # before the objects close (LIFO)
        net = ipaddress.IPv4Network(DENIED_CIDR)
        # As Datapath.prefilter stores a prefix that is not a /32: in the LPM trie.
        p.tcpf.map("bench_cidr_dyn").set(struct.pack("<I4s", net.prefixlen, net.network_address.packed), b"\x01")
        return p

    def sink(self, stack: contextlib.ExitStack, lab: str) -> BpfObject:
        o = BpfObject(self.path)
        stack.callback(o.close)
        o.rodata.update({"sink_saddr": _be32(NODE_IP), "sink_dport": _be16(BACKEND_PORT)})
        o.load()
        self.sinks[lab] = o
        return o

    def attach_xdp(self, obj: BpfObject, prog: str, netns: str, dev: str) -> FdLink:
        link = obj.program(prog).attach_xdp(dev, netns=netns, mode="native")
        self.links.append(link)
        assert isinstance(link, FdLink)
        return link

    def close_links(self) -> None:
        for link in reversed(self.links):
            with contextlib.suppress(Exception):
                link.close()
        self.links.clear()


class _BenchFabric(Fabric):
    """The lab's fabric with an XDP program on every node's port from the moment it exists: the
    sink on node 0's port, ``xdp_pass`` on the others (NAPI on the peer: see the module docstring)."""

    def __init__(self, lab: Lab, progs: Progs, sink: BpfObject) -> None:
        super().__init__(lab)
        self._progs, self._sink = progs, sink

    def connect(self, node_netns: str, index: int, node_ip: str, mtu: int = 1500) -> None:
        super().connect(node_netns, index, node_ip, mtu)
        if index == 0:
            self._progs.attach_xdp(self._sink, "xdp_sink", self.netns, f"n{index}")
        else:
            self._progs.attach_xdp(self._progs.passer, "xdp_pass", self.netns, f"n{index}")


# -- the labs ------------------------------------------------------------------------------------------
@dataclass
class BenchLab:
    """One lab: n1 (the node under test), its wire peer ``n0`` in the fabric, the backend pod's address."""

    key: str
    lab: Lab
    n1: Node
    n2: Node
    backend_ip: str
    sink: BpfObject
    fabric_ns: str
    gen_ifindex: int
    n1_mac: str
    napi: str = ""           # "pid comm" of n1 eth0's NAPI kthread
    node_threads: list[str] = field(default_factory=list)   # pids whose CPU time is the node's
    eth0_link: FdLink | None = None


def _mac(netns: str, dev: str = "eth0") -> str:
    with devices.iproute(netns) as ipr:
        return str(ipr.link("get", index=ipr.link_lookup(ifname=dev)[0])[0].get_attr("IFLA_ADDRESS"))


def _ifindex(netns: str, dev: str) -> int:
    with devices.iproute(netns) as ipr:
        return int(ipr.link_lookup(ifname=dev)[0])


def _napi_threads() -> set[str]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,comm="], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    return {" ".join(line.split()) for line in out.splitlines() if "napi/" in line}


def _threaded_napi(key: str, netns: str, dev: str, mac: str, cpu: int | None) -> str:
    """Threaded NAPI on ``dev`` of ``netns`` and its kthread pinned to ``cpu``; returns the
    kthread's "pid comm".

    sysfs shows the devices of the namespace that mounted it, so the write goes through ``ip netns
    exec`` (which mounts the namespace's own sysfs) and only after the shell has checked that the
    ``dev`` it sees has ``mac``: it can never reach another namespace's device.
    """
    before = _napi_threads()
    res = subprocess.run(["ip", "netns", "exec", netns, "sh", "-c",
                          f'test "$(cat /sys/class/net/{dev}/address)" = "{mac}" && '
                          f"echo 1 > /sys/class/net/{dev}/threaded"], capture_output=True, text=True, timeout=10,
                         check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{key}: threaded NAPI on {dev} refused: {res.stderr.strip()}")
    new: set[str] = set()
    for _ in range(50):
        new = {t for t in _napi_threads() - before if t.split()[1].startswith(f"napi/{dev}-")}
        if new:
            break
        time.sleep(0.02)
    if len(new) != 1:
        raise RuntimeError(f"{key}: expected one new NAPI thread for {dev}, found {sorted(new)}")
    thread = new.pop()
    if cpu is not None:
        check_run(subprocess.run(["taskset", "-pc", str(cpu), thread.split()[0]], capture_output=True, text=True,
                                 timeout=10, check=False), f"{key}: pin {thread}")
    return thread


def _ksoftirqd(cpu: int | None) -> list[str]:
    """pid of ``ksoftirqd/<cpu>`` (softirq work the kernel defers there runs on the node's CPU too)."""
    if cpu is None:
        return []
    out = subprocess.run(["ps", "-e", "-o", "pid=,comm="], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()[1:] == [f"ksoftirqd/{cpu}"]]


def _cpu_seconds(pids: list[str]) -> float:
    """CPU time the threads ``pids`` have run, in seconds (schedstat: exact, unlike the tick-sampled
    /proc/stat of this kernel)."""
    return sum(int(Path(f"/proc/{p}/schedstat").read_text().split()[0]) for p in pids) / 1e9


def _build_lab(stack: contextlib.ExitStack, progs: Progs, key: str, name: str, *, legacy: bool,
               accel: str | None) -> BenchLab:
    lab = Lab(name, host_routing="legacy" if legacy else "bpf")
    stack.callback(lab.close)
    sink = progs.sink(stack, key)
    lab.fabric = _BenchFabric(lab, progs, sink)
    config: dict[str, Any] = {} if legacy else {"load_balancer_mode": "snat", "acceleration": accel,
                                                   "xdp_peer": False}  # _BenchFabric put ours there
    cl = lab.cluster(["n1", "n2"], routing="native", bgp=False, **config)
    n1, n2 = cl.node("n1"), cl.node("n2")
    be = n2.add_pod("be")
    assert n1.ip == NODE_IP and n2.ip is not None
    fabric = lab.fabric
    if not legacy:
        cl.upsert_service(Service(name="np", frontend=Frontend(SVC_IP, SVC_PORT, protocol="UDP"),
                                  backends=[Backend(be.ip, BACKEND_PORT)], type="NodePort", node_port=NODE_PORT))
    # A permanent neighbour: under a full receive ring an ARP reply can be lost, and a failed
    # neighbour would change the path measured.
    check_run(n1.run("ip", "neigh", "replace", n2.ip, "lladdr", _mac(n2.netns), "dev", "eth0", "nud", "permanent"),
              f"{key}: neighbour")
    return BenchLab(key, lab, n1, n2, be.ip, sink, fabric.netns, _ifindex(fabric.netns, "n0"), _mac(n1.netns))


def kube_proxy_nodeport_rules(backend_ip: str) -> str:
    """kube-proxy's iptables rules (1.28+ layout) for one UDP NodePort service with one endpoint."""
    name = "bench/np:udp"
    svc, ext, sep = "KUBE-SVC-XDPBENCHNP0000001", "KUBE-EXT-XDPBENCHNP0000001", "KUBE-SEP-XDPBENCHNP0000001"
    nat = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
        ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]",
        f":{svc} - [0:0]", f":{ext} - [0:0]", f":{sep} - [0:0]",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        f'-A KUBE-SERVICES -d {SVC_IP}/32 -p udp -m comment --comment "{name} cluster IP" -m udp --dport {SVC_PORT} '
        f"-j {svc}",
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
        'this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
        f'-A KUBE-NODEPORTS -p udp -m comment --comment "{name}" -m udp --dport {NODE_PORT} -j {ext}',
        f'-A {ext} -m comment --comment "masquerade traffic for {name} external destinations" -j KUBE-MARK-MASQ',
        f"-A {ext} -j {svc}",
        f'-A {svc} ! -s 10.244.0.0/16 -d {SVC_IP}/32 -p udp -m comment --comment "{name} cluster IP" -m udp '
        f"--dport {SVC_PORT} -j KUBE-MARK-MASQ",
        f'-A {svc} -m comment --comment "{name} -> {backend_ip}:{BACKEND_PORT}" -j {sep}',
        f'-A {sep} -s {backend_ip}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ',
        f'-A {sep} -p udp -m comment --comment "{name}" -m udp -j DNAT --to-destination {backend_ip}:{BACKEND_PORT}',
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
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
    ]
    return "\n".join(nat + flt) + "\n"


def kube_proxy_nodeport_nft_rules(backend_ip: str) -> str:
    """kube-proxy's nftables mode (KEP-3866) for the same UDP NodePort service with one endpoint: the
    ``services`` chain's ``service-ips`` and ``service-nodeports`` verdict maps (the second for local
    destinations, ``fib daddr type local``), the ``external-`` chain marking for masquerade, the
    ``service-`` chain's ``numgen`` endpoint pick, the ``endpoint-`` chain's ``dnat``, and
    ``masquerading`` in ``nat-postrouting``; ``filter-forward`` keeps the conntrack-invalid drop.
    Chain names shaped like kube-proxy's (``<kind>-<hash>-<namespace>/<name>/<proto>/<port>``)."""
    t, tag = "kube-proxy", f"XDPBENCH-bench/np/udp/p{SVC_PORT}"
    svc, ext, ep = f"service-{tag}", f"external-{tag}", f"endpoint-{tag}__{backend_ip}/{BACKEND_PORT}"
    return "\n".join([
        *kube_proxy_nft_base(t),
        f"add map ip {t} service-nodeports {{ type inet_proto . inet_service : verdict ; }}",
        f"add chain ip {t} {svc}",
        f"add chain ip {t} {ext}",
        f"add chain ip {t} {ep}",
        f"add rule ip {t} {svc} ip daddr {SVC_IP} udp dport {SVC_PORT} ip saddr != 10.244.0.0/16 "
        "jump mark-for-masquerade",
        f"add rule ip {t} {svc} numgen random mod 1 vmap {{ 0 : goto {ep} }}",
        f"add rule ip {t} {ext} jump mark-for-masquerade",
        f"add rule ip {t} {ext} goto {svc}",
        f"add rule ip {t} {ep} ip saddr {backend_ip} jump mark-for-masquerade",
        f"add rule ip {t} {ep} meta l4proto udp dnat to {backend_ip}:{BACKEND_PORT}",
        f"add element ip {t} service-ips {{ {SVC_IP} . udp . {SVC_PORT} : goto {svc} }}",
        f"add element ip {t} service-nodeports {{ udp . {NODE_PORT} : goto {ext} }}",
        f"add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule ip {t} services fib daddr type local ip daddr != 127.0.0.0/8 "
        "meta l4proto . th dport vmap @service-nodeports",
    ]) + "\n"


# -- counters --------------------------------------------------------------------------------------
def _ipt_packets(node: Node, table: str, chain: str, pattern: str) -> int:
    """Packets of the first rule of ``chain`` whose ``iptables -L -v -x -n`` line matches ``pattern``."""
    out = check_run(node.run("iptables", "-t", table, "-L", chain, "-n", "-v", "-x", timeout=30), "iptables -L")
    for line in out.splitlines():
        if re.search(pattern, line):
            return int(line.split()[0])
    raise RuntimeError(f"no rule matching {pattern!r} in {table} {chain}: {out}")


def _ethtool(netns: str, dev: str) -> dict[str, int]:
    out = check_run(procs.run(netns, ["ethtool", "-S", dev], timeout=10), f"ethtool -S {dev}")
    stats: dict[str, int] = {}
    for line in out.splitlines():
        k, sep, v = line.strip().partition(":")
        if sep and v.strip().isdigit():
            stats[k.strip()] = int(v)
    return stats


def _conntrack_count(node: Node) -> int:
    res = node.run("cat", "/proc/sys/net/netfilter/nf_conntrack_count")
    return int(res.stdout.strip() or 0) if res.returncode == 0 else -1


# -- arms --------------------------------------------------------------------------------------------
@dataclass
class PpsArm:
    """One arm: which lab's wire it is fed through, its frame, and how its packets are counted."""

    key: str
    bl: BenchLab
    frame: bytes
    count: Callable[[], int]
    setup: Callable[[], None] | None = None
    teardown: Callable[[], None] | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)   # cross-check counters over every round


class Generator:
    """``xdp_gen`` run in live-frames mode on a lab's ``n0``, pinned to one CPU."""

    def __init__(self, progs: Progs, cpu: int | None) -> None:
        self.obj = progs.gen
        self.prog = progs.gen.program("xdp_gen")
        self.frame_map = progs.gen.map("gen_frame", key=U32)
        self.pace_map = progs.gen.map("gen_pace", key=U32)
        self.cpu = cpu

    def run(self, arm: PpsArm, secs: float, rate: float | None = None) -> tuple[int, float]:
        """(frames sent, seconds) of one bounded run: ``secs`` of test_run calls of ``CHUNK`` frames,
        or with ``rate`` (frames/s) paced in the kernel (``xdp_gen``'s ``gen_pace``) in calls of
        ``PACED_CALL_SECONDS`` worth of frames."""
        self.frame_map.set(0, arm.frame)
        ctx = XdpContext(ingress_ifindex=arm.bl.gen_ifindex)
        chunk = CHUNK if rate is None else max(BATCH, int(rate * PACED_CALL_SECONDS) // BATCH * BATCH)
        max_calls = max(1, math.ceil(secs * MAX_PPS / chunk))
        self.pace_map.set(0, struct.pack("<QQ", 0 if rate is None else max(1, round(1e9 / rate)), 0))
        old = os.sched_getaffinity(0)
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})
        try:
            with entered(arm.bl.fabric_ns):
                sent, calls = 0, 0
                t0 = time.perf_counter()
                while calls < max_calls and time.perf_counter() - t0 < secs:
                    self.prog.run(arm.frame, repeat=chunk, ctx=ctx, flags=BPF_F_TEST_XDP_LIVE_FRAMES,
                                  batch_size=BATCH)
                    sent += chunk
                    calls += 1
                elapsed = time.perf_counter() - t0
        finally:
            os.sched_setaffinity(0, old)
            self.pace_map.set(0, struct.pack("<QQ", 0, 0))
        return sent, elapsed

    def probe(self, arm: PpsArm, frames: int) -> None:
        """A few frames at once (untimed): the arm's counter must see nearly all of them."""
        self.frame_map.set(0, arm.frame)
        ctx = XdpContext(ingress_ifindex=arm.bl.gen_ifindex)
        with entered(arm.bl.fabric_ns):
            for _ in range(frames // BATCH):
                self.prog.run(arm.frame, repeat=BATCH, ctx=ctx, flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=BATCH)
        time.sleep(0.05)


def _window(gen: Generator, arm: PpsArm, secs: float, rate: float | None) -> dict[str, float]:
    """One generator run (the arm set up): frames sent, counted, accepted into n1's ring, node CPU."""
    port = _ethtool(arm.bl.fabric_ns, "n0")
    c0 = arm.count()
    cpu0 = _cpu_seconds(arm.bl.node_threads)
    sent, elapsed = gen.run(arm, secs, rate)
    time.sleep(0.02)  # what is left in the 256-frame ring
    cpu1 = _cpu_seconds(arm.bl.node_threads)
    c1 = arm.count()
    port1 = _ethtool(arm.bl.fabric_ns, "n0")
    return {"sent": sent, "elapsed": elapsed, "packets": c1 - c0, "cpu": cpu1 - cpu0,
            "xmit": port1.get("tx_queue_0_xdp_xmit", 0) - port.get("tx_queue_0_xdp_xmit", 0)}


def _measure(gen: Generator, arm: PpsArm, secs: float) -> dict[str, float]:
    """Overload (the generator unpaced) for ``secs``, then ``secs`` paced at ``LOAD_SHARE`` of the
    rate counted there: the node's CPU per packet when it is not saturated (no frame fails to enter
    n1's ring, so no page-pool frees across CPUs from the generator's side)."""
    if arm.setup is not None:
        arm.setup()
    try:
        w = _window(gen, arm, secs, None)
        el, packets, cpu = w["elapsed"], w["packets"], w["cpu"]
        out = {PPS: packets / el / 1e6, OFFERED: w["sent"] / el / 1e6, ACCEPTED: w["xmit"] / el / 1e6,
               CORE: packets / max(cpu, 1e-9) / 1e6, BUSY: cpu / el, NS_PKT: cpu * 1e9 / max(packets, 1)}
        p = _window(gen, arm, secs, max(1.0, LOAD_SHARE * packets / el))
        out[LF] = p["packets"] / p["elapsed"] / 1e6
        out[LF_CORE] = p["packets"] / max(p["cpu"], 1e-9) / 1e6
        out[LF_NS_PKT] = p["cpu"] * 1e9 / max(p["packets"], 1)
        out[LF_LOSS] = 1 - p["packets"] / max(p["sent"], 1)
    finally:
        if arm.teardown is not None:
            arm.teardown()
    return out


def _build_arms(stack: contextlib.ExitStack, ctx: Context, progs: Progs, gen_cpu: int | None,
                node_cpu: int | None) -> tuple[dict[str, PpsArm], dict[str, BenchLab], list[Measurement]]:
    setup: list[Measurement] = []
    t0 = time.perf_counter()
    labs = {
        "xdp": _build_lab(stack, progs, "xdp", "xbx", legacy=False, accel="native"),
        "tc": _build_lab(stack, progs, "tc", "xbt", legacy=False, accel="disabled"),
        "legacy": _build_lab(stack, progs, "legacy", "xbl", legacy=True, accel=None),
        "nft": _build_lab(stack, progs, "nft", "xbn", legacy=True, accel=None),
    }
    ctx.log(f"labs built in {time.perf_counter() - t0:.1f} s")
    xl, tl, ll, nl = labs["xdp"], labs["tc"], labs["legacy"], labs["nft"]
    xdp_dp, tc_dp = xl.n1.datapath, tl.n1.datapath
    assert xdp_dp is not None and tc_dp is not None
    st = xdp_dp.status()["xdp"]
    if not (st["attached"] and st["nodeport"] and st["mode"] == "native"):
        raise RuntimeError(f"xdp lab: bpf_xdp is not attached in native mode with NodePort: {st}")
    xdp_dp.prefilter.add(DENIED_CIDR)
    tst = tc_dp.status()["xdp"]
    if tst["attached"]:
        raise RuntimeError(f"tc lab: bpf_xdp is attached though acceleration is disabled: {tst}")
    # NAPI on eth0 for the arms without XDP (perf.md §7.1); the floor swaps in xdp_drop.
    tl.eth0_link = progs.attach_xdp(progs.passer, "xdp_pass", tl.n1.netns, "eth0")
    ll.eth0_link = progs.attach_xdp(progs.passer, "xdp_pass", ll.n1.netns, "eth0")
    nl.eth0_link = progs.attach_xdp(progs.passer, "xdp_pass", nl.n1.netns, "eth0")
    for bl in labs.values():
        bl.napi = _threaded_napi(bl.key, bl.n1.netns, "eth0", bl.n1_mac, node_cpu)
        bl.node_threads = [bl.napi.split()[0], *_ksoftirqd(node_cpu)]
        setup.append(info(f"{bl.key} lab: n1 eth0 NAPI thread", node_cpu if node_cpu is not None else -1, "cpu",
                          group="setup", note=bl.napi))
        # The wire peer's receive (the sink: the next hop's work) in a NAPI thread of its own on the
        # node's CPU: otherwise n1's transmit raises n0's NAPI as a softirq inside n1's thread and
        # its cost is billed to the node. Same CPU as before (the generator's stays the
        # generator's), only accounted apart: it is not in node_threads.
        peer = _threaded_napi(bl.key, bl.fabric_ns, "n0", _mac(bl.fabric_ns, "n0"), node_cpu)
        setup.append(info(f"{bl.key} lab: wire peer n0 NAPI thread", node_cpu if node_cpu is not None else -1,
                          "cpu", group="setup", note=peer))
    ipt_version = iptables_version()
    with rules_file(kube_proxy_nodeport_rules(ll.backend_ip), "cl-bench-xdp-") as rules:
        check_run(ll.n1.run("iptables-restore", rules, timeout=60), "iptables-restore")
    check_run(ll.n1.run("iptables", "-t", "raw", "-A", "PREROUTING", "-s", DENIED_CIDR, "-j", "DROP"), "raw rule")
    setup.append(info("legacy lab: iptables", 0, "", group="setup", note=ipt_version))
    with rules_file(kube_proxy_nodeport_nft_rules(nl.backend_ip), "cl-bench-xdp-nft-") as rules:
        check_run(nl.n1.run("nft", "-f", rules, timeout=60), "nft -f")
    setup.append(info("nft lab: nftables", 0, "", group="setup",
                      note=check_run(nl.n1.run("nft", "--version"), "nft --version").strip()))

    pf = {k: udp_frame(bl.n1_mac, LEAF_MAC, DENIED_SRC, NODE_IP, CLIENT_PORT, 9) for k, bl in labs.items()}
    np_ = {k: udp_frame(bl.n1_mac, LEAF_MAC, WORLD_HOST, NODE_IP, CLIENT_PORT, NODE_PORT) for k, bl in labs.items()}

    ll_link = ll.eth0_link
    assert ll_link is not None
    tc_links: list[Link] = []

    def floor_on() -> None:
        ll_link.update(progs.drop.program("xdp_drop"))

    def floor_off() -> None:
        ll_link.update(progs.passer.program("xdp_pass"))

    def read_on() -> None:
        ll_link.update(progs.drop.program("xdp_read_drop"))

    fwd = BpfObject(progs.path)
    stack.callback(fwd.close)
    fwd.rodata.update({"fwd_saddr": _be32(NODE_IP), "fwd_daddr": _be32(ll.backend_ip),
                       "fwd_dport": _be16(BACKEND_PORT)})
    fwd.load()

    def fwd_on() -> None:
        ll_link.update(fwd.program("xdp_fwd_static"))

    def tc_on() -> None:
        tc_links.append(progs.tcpf.program("tc_prefilter").attach_tc("eth0", "ingress", netns=ll.n1.netns,
                                                                        mode="tcx"))

    def tc_off() -> None:
        while tc_links:
            tc_links.pop().close()

    stack.callback(tc_off)

    def sink_of(bl: BenchLab) -> Callable[[], int]:
        return lambda: _percpu_sum(bl.sink, 0)

    arms = {
        FLOOR: PpsArm(FLOOR, ll, pf["legacy"], lambda: _percpu_sum(progs.drop, 0), floor_on, floor_off),
        FLOOR_READ: PpsArm(FLOOR_READ, ll, pf["legacy"], lambda: _percpu_sum(progs.drop, 0), read_on, floor_off),
        PF_XDP: PpsArm(PF_XDP, xl, pf["xdp"], lambda: xdp_dp.count(Reason.DROP_PREFILTER)),
        PF_TC: PpsArm(PF_TC, ll, pf["legacy"], lambda: _percpu_sum(progs.tcpf, 0), tc_on, tc_off),
        PF_IPT: PpsArm(PF_IPT, ll, pf["legacy"],
                       lambda: _ipt_packets(ll.n1, "raw", "PREROUTING", re.escape(DENIED_CIDR))),
        NP_FLOOR: PpsArm(NP_FLOOR, ll, np_["legacy"], sink_of(ll), fwd_on, floor_off),
        NP_XDP: PpsArm(NP_XDP, xl, np_["xdp"], sink_of(xl)),
        NP_TC: PpsArm(NP_TC, tl, np_["tc"], sink_of(tl)),
        NP_IPT: PpsArm(NP_IPT, ll, np_["legacy"], sink_of(ll)),
        NP_NFT: PpsArm(NP_NFT, nl, np_["nft"], sink_of(nl)),
    }
    return arms, labs, setup


def _check_paths(gen: Generator, arms: dict[str, PpsArm], labs: dict[str, BenchLab]) -> list[Measurement]:
    """Send ``PROBE_FRAMES`` through every arm (untimed): its counter must see ≥ 90 % of them, and
    NodePort at XDP must be forwarded by XDP, not passed to tc. RuntimeError otherwise."""
    out: list[Measurement] = []
    xdp_dp, tc_dp = labs["xdp"].n1.datapath, labs["tc"].n1.datapath
    assert xdp_dp is not None and tc_dp is not None
    for key, arm in arms.items():
        if arm.setup is not None:
            arm.setup()
        try:
            c0 = arm.count()
            x0 = xdp_dp.count(Reason.XDP_FORWARDED)
            r0 = xdp_dp.count(Reason.FIB_REDIRECT, Direction.INGRESS)
            gen.probe(arm, PROBE_FRAMES)
            got = arm.count() - c0
            by_xdp = xdp_dp.count(Reason.XDP_FORWARDED) - x0
            by_tc = xdp_dp.count(Reason.FIB_REDIRECT, Direction.INGRESS) - r0
        finally:
            if arm.teardown is not None:
                arm.teardown()
        sent = PROBE_FRAMES // BATCH * BATCH
        if got < 0.9 * sent:
            rows = [(str(m.reason), m.packets) for m in xdp_dp.metrics() + tc_dp.metrics()]
            raise RuntimeError(f"{key}: {got} of {sent} probe frames counted: the path is broken "
                               f"(XDP forwarded {by_xdp}, tc {by_tc}; xdp and tc nodes' metrics: {rows}; "
                               f"sink's other: {_percpu_sum(arm.bl.sink, 1)})")
        if key == NP_XDP and (by_xdp < 0.9 * sent or by_tc):
            raise RuntimeError(f"{key}: {by_xdp} of {sent} probe frames forwarded by XDP, {by_tc} by tc")
        out.append(info(f"{key}: probe frames counted", got, note=f"of {sent} sent one batch at a time"))
    return out


def _totals(arms: dict[str, PpsArm], labs: dict[str, BenchLab]) -> dict[str, int]:
    xl, tl, ll = labs["xdp"], labs["tc"], labs["legacy"]
    assert xl.n1.datapath is not None and tl.n1.datapath is not None
    xm, tm = xl.n1.datapath.metrics(), tl.n1.datapath.metrics()
    t: dict[str, int] = {
        "xdp node: XDP_FORWARDED": xl.n1.datapath.count(Reason.XDP_FORWARDED),
        "xdp node: DROP_PREFILTER": xl.n1.datapath.count(Reason.DROP_PREFILTER),
        "xdp node: FIB_REDIRECT (tc)": xl.n1.datapath.count(Reason.FIB_REDIRECT),
        "xdp node: other drops": sum(m.packets for m in xm if m.is_drop and m.reason != Reason.DROP_PREFILTER),
        "tc node: FIB_REDIRECT": tl.n1.datapath.count(Reason.FIB_REDIRECT),
        "tc node: drops": sum(m.packets for m in tm if m.is_drop),
        # An unreplied UDP flow stays ctstate NEW, so KUBE-FORWARD's RELATED,ESTABLISHED rule never
        # matches: count the FORWARD chain's jump to it (every forwarded packet) instead.
        "legacy node: FORWARD -> KUBE-FORWARD": _ipt_packets(ll.n1, "filter", "FORWARD", "KUBE-FORWARD"),
        "legacy node: conntrack entries": _conntrack_count(ll.n1),
        "nft node: conntrack entries": _conntrack_count(labs["nft"].n1),
    }
    for key, bl in labs.items():
        t[f"{key} lab sink: UDP to the backend port not from the node"] = _percpu_sum(bl.sink, 1)
        st = _ethtool(bl.fabric_ns, "n0")
        t[f"{key} lab n0: xdp_xmit (into n1's ring)"] = st.get("tx_queue_0_xdp_xmit", 0)
        t[f"{key} lab n0: xdp_xmit_errors (ring full)"] = st.get("tx_queue_0_xdp_xmit_errors", 0)
    return t


# -- the suite ---------------------------------------------------------------------------------------
def run(ctx: Context) -> list[Measurement]:
    """Build the four labs, check every path, run the arms interleaved, return rates and ratios."""
    for tool in ("iptables", "iptables-restore", "nft", "ethtool", "taskset", "ps", "ip"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"xdp needs {tool} (scripts/install-system-deps.sh)")
    gen_cpu, node_cpu = client_server_cpus()
    secs = QUICK_SECONDS if ctx.quick else SECONDS
    rounds = max(1, ctx.repeats)
    ctx.params.update(arms=",".join(ARMS), rounds=rounds, warmup_rounds=ctx.warmup, seconds=secs,
                      warmup_seconds=WARMUP_SECONDS, chunk=CHUNK, batch=BATCH, load_share=LOAD_SHARE, generator_cpu=gen_cpu,
                      node_napi_cpu=node_cpu, frame_bytes=60, denied_cidr=DENIED_CIDR, node_port=NODE_PORT)
    ms: list[Measurement] = []
    with contextlib.ExitStack() as stack:
        path = stack.enter_context(bench_object())
        progs = Progs.load(stack, path)
        arms, labs, setup = _build_arms(stack, ctx, progs, gen_cpu, node_cpu)
        gen = Generator(progs, gen_cpu)
        setup += _check_paths(gen, arms, labs)
        start = _totals(arms, labs)

        gate = QuietGate(ctx, QUIET_WAIT_ARM_S, QUIET_WAIT_TOTAL_S)
        gate.begin(QUIET_WAIT_TOTAL_S)
        order = list(arms)
        t_run = time.perf_counter()
        for rnd in range(ctx.warmup + rounds):
            warm = rnd < ctx.warmup
            shift = rnd % len(order)
            for i, key in enumerate(order[shift:] + order[:shift]):
                arm = arms[key]
                gate.before(key, first=rnd == 0 and i == 0)
                got = _measure(gen, arm, WARMUP_SECONDS if warm else secs)
                ctx.log(f"round {rnd + 1}/{ctx.warmup + rounds}{' (warmup)' if warm else ''} {key}: "
                        f"{got[PPS]:.2f} Mpps (offered {got[OFFERED]:.2f}, into the ring {got[ACCEPTED]:.2f}); "
                        f"paced {got[LF]:.2f} Mpps, {got[LF_NS_PKT]:.0f} node ns/pkt, loss {got[LF_LOSS]:.2%}")
                if not warm:
                    for m, v in got.items():
                        arm.samples.setdefault(m, []).append(v)
        ctx.log(f"measured in {time.perf_counter() - t_run:.0f} s")
        end = _totals(arms, labs)

        for key, arm in arms.items():
            for metric, unit in ((PPS, "Mpps"), (OFFERED, "Mpps"), (ACCEPTED, "Mpps"), (CORE, "Mpps"),
                                 (BUSY, "x"), (NS_PKT, "ns"), (LF, "Mpps"), (LF_CORE, "Mpps"), (LF_NS_PKT, "ns"),
                                 (LF_LOSS, "x")):
                ms.append(Measurement.from_samples(f"{key}: {metric}", arm.samples[metric], unit, group=key,
                                                   kind="info", note=TITLES[key] if metric == PPS else ""))
        for num, den, metric, *_ in GOALS:
            if not any(m.name == rname(num, den, metric) for m in ms):
                ms.append(ratio(rname(num, den, metric), arms[num].samples[metric], arms[den].samples[metric],
                                group="ratios"))
        # the goal pairs' pps ratios are made above; below saturation every pair is information only
        pairs = [(n, d, PPS) for n, d in EXTRA] + [(n, d, LF_CORE) for n, d in [(PF_XDP, PF_IPT), (NP_XDP, NP_TC),
                                                                                 *EXTRA]]
        for num, den, metric in pairs:
            ms.append(ratio(rname(num, den, metric), arms[num].samples[metric], arms[den].samples[metric],
                            group="ratios"))
        for k, v in end.items():
            ms.append(info(k, v - start[k] if "conntrack entries" not in k else v,
                           note="over the timed and warmup rounds" if "conntrack" not in k else "at the end"))
        ms += setup
        ms.append(gate.start_info())
        ms.append(info("background CPU busy before each arm, max", max(gate.in_order) * 100, "%", group="setup",
                       note="in run order: " + ", ".join(f"{b * 100:.0f}" for b in gate.in_order)))
        if ctx.bpf_stats:
            ms += _stats_pass(ctx, gen, arms, secs)
    return ms


def _stats_pass(ctx: Context, gen: Generator, arms: dict[str, PpsArm], secs: float) -> list[Measurement]:
    """``--bpf-stats``: each arm once more with run-time statistics on (benchmarks/suites/_progstats.py)."""
    out: list[Measurement] = []
    for key, arm in arms.items():
        if arm.setup is not None:
            arm.setup()
        try:
            with progstats.stats_window() as ran:
                c0 = arm.count()
                gen.run(arm, secs)
                time.sleep(0.02)
                packets = arm.count() - c0
                runs = ran()
        finally:
            if arm.teardown is not None:
                arm.teardown()
        ctx.log(f"bpf stats {key}: " + ", ".join(f"{r.name} {r.per(packets):.2f}/pkt {r.ns_per_run:.0f} ns"
                                                 for r in runs if r.per(packets) >= progstats.MIN_SHARE))
        out += progstats.measurements(key, runs, packets)
    return out


# -- tables ------------------------------------------------------------------------------------------
def summarize(ms: list[Measurement]) -> list[Summary]:
    """Per-arm rates, the goals, the other ratios, the counters."""
    c = Cells(ms)
    rows = []
    for key, title in TITLES.items():
        m = c.by.get(f"{key}: {PPS}")
        if m is None:
            continue
        busy, ns = c.by.get(f"{key}: {BUSY}"), c.by.get(f"{key}: {NS_PKT}")
        rows.append([f"{key}: {title}", f"{m.median:.2f} ({cv_text(m) or '-'})",
                     c.cell(f"{key}: {OFFERED}"), c.cell(f"{key}: {ACCEPTED}"),
                     f"{busy.median:.2f}" if busy else "", f"{ns.median:,.0f}" if ns else "",
                     c.cell(f"{key}: {CORE}"), c.rcell(rname(key, FLOOR, PPS)) if key != FLOOR else ""])
    lf_rows = [[f"{key}: {title}", c.cell(f"{key}: {LF}"),
                f"{c.by[f'{key}: {LF_LOSS}'].median:.2%}" if f"{key}: {LF_LOSS}" in c else "",
                c.cell(f"{key}: {LF_NS_PKT}"), c.cell(f"{key}: {LF_CORE}")]
               for key, title in TITLES.items() if f"{key}: {LF}" in c]
    goal_names = {rname(n, d, m) for n, d, m, *_ in GOALS}
    extra = [m for m in ms if m.group == "ratios" and m.name not in goal_names]
    return [
        Summary(f"per arm below saturation (information, no goal): the generator paced, aiming at "
                f"{LOAD_SHARE:.0%} of the arm's overload rate",
                ["arm", "Mpps", "loss", "node ns / packet", "Mpps per node core"], lf_rows,
                note="The node's CPU per packet when it keeps up: no frame fails to enter n1's ring, so the "
                     "node's time is its own work, not that of a generator fighting a full ring (page-pool "
                     "frees across CPUs). Not a loss-free (RFC 2544) rate: veth's 256-frame ring holds less "
                     "than the NAPI thread's wake-up jitter here, so some loss remains (the loss column). Read "
                     "with care: the paced generator reaches only about 60 % of the rate it aims at (not yet "
                     "explained), and at these rates each NAPI wake-up serves few frames, so per-packet times "
                     "carry wake-up costs the saturated runs spread over a full budget of 64."),
        Summary("per arm, overload: Mpps counted at the node with the generator unpaced (median of rounds, CV)",
                ["arm", "Mpps", "offered Mpps", "into n1's ring Mpps", "node CPU busy", "node ns / packet",
                 "Mpps per node core", "÷ floor"], rows,
                note="Mpps: the arm's own counter (drops: DROP_PREFILTER, the tc program's, the raw rule's; "
                     "NodePort: frames leaving n1 DNATed and SNATed, counted by the sink on its wire peer) ÷ "
                     "the generator's wall time. offered: frames the generator sent; into n1's ring: those "
                     "veth accepted (the rest found the 256-frame ring full). node CPU: the time n1's NAPI kthread and "
                     "ksoftirqd ran on the node's CPU (schedstat) ÷ the window, and ÷ the packets counted; Mpps per "
                     "node core = packets ÷ that time, what one core of the node sustains with the generator and "
                     "the veth ring's wake-ups out of the picture. 60-byte UDP frames, one flow."),
        goal_summary(c, GOALS, "goals",
                     note="verdict on the median of the per-round ratios; 'CI' says whether the whole bootstrap "
                          "interval is on the right side."),
        *tail_summaries(ms, extra),
    ]
