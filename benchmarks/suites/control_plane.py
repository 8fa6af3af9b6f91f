"""Control plane: how fast a service change reaches every node through etcd, against the in-memory store.

Three parts (issue 10, "Benchmarks"; perf.md §7.6):

**A. Convergence.** One service change, from the put into the store to the last node programmed,
for 3, 10 and 30 nodes. The etcd arm is ``Lab(store="etcd").cluster(..., routing="vxlan")``:
a real etcd in the lab's fabric namespace and one ``ciliumlite agent`` process per node; the
memory arm is ``Lab().cluster(..., routing="vxlan")``, whose in-process datapaths follow an
``InMemoryStore``. In both the change is ``put_service`` on the cluster's store (the lab's etcd
client, or the in-memory store).
"Programmed" is observed the same way for both: this process polls every node's pinned
``cilium_lb4_services_v2`` for the new service's frontend row (slot 0, written last). Each change
is a new ClusterIP service; ``DEFAULT_REPEATS`` changes per arm and size, interleaved etcd/memory,
after one untimed warmup change (the first service loads socket LB on every node).

**B. 10,000 services.** ``EtcdStore.put_services`` of 10k services into a cluster of 3 agents,
from the start of the write to every node's LB map holding all of them, against the same 10k
``InMemoryStore.put_service`` calls into a 3-node lab cluster (the store-level write in both arms:
the watchers program the nodes). Every round builds fresh nodes and a fresh etcd. Goal: etcd
within 3x. The same write into the stores with only watchers on the other side (three agent
simulators, or three no-op in-process watchers) shows what the store alone costs.

**C. A simulated scale run.** 100 *agent simulators* (not agents: a process each that runs an
``EtcdStore`` with an owner, so a lease kept alive, writes its node record, lists nodes and
services and watches them; no datapath, no API) against one etcd: etcd's and every simulator's
CPU (``/proc/<pid>/stat`` utime+stime over the run) and RSS, and the convergence of one service
change to all of them (each simulator writes a "seen" line with its ``CLOCK_MONOTONIC`` time).

Everything runs in lab namespaces (etcd in the fabric namespace at 10.0.0.254); every process is
stopped by pid and every namespace removed also when a step fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import selectors
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Context, Measurement, Summary, busy_cpus, fmt_ci, fmt_value, ratio
from benchmarks.suites._netbench import cv_text, info, verdict, wait_quiet
from ciliumlite.bpf.errors import CiliumliteError
from ciliumlite.cluster.store import InMemoryStore
from ciliumlite.datapath.maps import NodeMaps
from ciliumlite.datapath.records import SCOPE_EXTERNAL, Lb4Key
from ciliumlite.lab import Lab
from ciliumlite.service import Backend, Frontend, Service

DESCRIPTION = ("control plane: service change convergence etcd vs in-memory store (3/10/30 nodes), "
               "10k services through etcd, 100 simulated agents")
NEEDS_ROOT = True
#: Timed service changes per arm and size in part A (one untimed warmup change first).
DEFAULT_REPEATS = 20

# -- parameters ------------------------------------------------------------------------------------
SIZES = (3, 10, 30)
QUICK_SIZES = (3,)
CHANGE_TIMEOUT_S = 30.0     # a change not programmed everywhere after this fails the part
POLL_S = 0.001              # part A poll interval: sets the resolution of the convergence times (~1 ms)
SETTLE_S = 0.2              # pause between changes, so one change's tail does not overlap the next
MEM_RESERVE = 4 << 30       # bytes of MemAvailable left to others when deciding to interleave part A
BULK_SERVICES = 10_000
QUICK_BULK_SERVICES = 300
BULK_NODES = 3
BULK_ROUNDS = 2             # part B rounds (each builds fresh nodes; no warmup: nothing to warm)
BULK_TIMEOUT_S = 1800.0     # per arm and round
BULK_POLL_S = 0.1
COUNT_EVERY_S = 1.0         # part B: LB map row counts (a batch dump of up to 20k rows) this often
STORE_ROUNDS = 3            # store-only rounds of part B (seconds each)
SIM_AGENTS = 100
QUICK_SIM_AGENTS = 10
SIM_BATCH = 10              # simulators started at once (each waits for the previous batch's "ready")
SIM_READY_S = 180.0
SIM_IDLE_S = 60.0           # idle part of the measured window (leases renewed, watches open); CPU ticks are 10 ms
SIM_CHANGES = 10
SIM_LEASE_TTL = 15          # the agent's default kvstore-lease-ttl
SIM_MAX_S = 1800            # a simulator exits by itself after this (it is also stopped by pid)
QUIET_WAIT_S = 30.0         # bounded wait for a quiet machine before each part

#: part A/C ClusterIPs (10.97.0.10 + k) and part B's (10.96.0.10 + i); backends outside the node CIDRs.
A_FIRST_IP = int(ipaddress.IPv4Address("10.97.0.10"))
B_FIRST_IP = int(ipaddress.IPv4Address("10.96.0.10"))
FIRST_BACKEND = int(ipaddress.IPv4Address("10.244.128.2"))
MARK = "mark-"              # simulators report services whose name starts with this


def _env_list(var: str, default: Sequence[str]) -> list[str]:
    raw = os.environ.get(var, "")
    return [p.strip() for p in raw.split(",") if p.strip()] or list(default)


# -- small helpers ---------------------------------------------------------------------------------
def _pct(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of ``xs``."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def _svc(name: str, ip_int: int, backend_int: int) -> Service:
    """A ClusterIP service on port 80 with one backend on port 8080."""
    return Service(name, Frontend(str(ipaddress.IPv4Address(ip_int)), 80),
                   (Backend(str(ipaddress.IPv4Address(backend_int)), 8080),))


def _key(svc: Service) -> Lb4Key:
    """The frontend row (slot 0) of a ClusterIP service: LbMaps writes it after the backends and slots."""
    return Lb4Key(address=ipaddress.IPv4Address(svc.frontend.ip), dport=svc.frontend.port, backend_slot=0,
                  proto=svc.frontend.proto_number, scope=SCOPE_EXTERNAL)


def _has(maps: NodeMaps, key: Lb4Key) -> bool:
    """Whether the node's pinned LB map holds ``key`` (False while the map is not pinned yet)."""
    try:
        return maps.lb_services.get(key) is not None
    except CiliumliteError:
        return False


def _lb_entries(maps: NodeMaps) -> int:
    """Rows in the node's LB service map (a batch dump); -1 when it is not there."""
    try:
        return int(maps.lb_services.lookup_batch_raw()[2])
    except CiliumliteError:
        return -1


def _proc_stat(pid: int) -> tuple[float, int]:
    """(utime+stime in seconds, RSS in bytes) of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()  # the command may contain spaces: skip past it
    # fields[0] is stat field 3 (state): utime is field 14, stime 15, rss (pages) 24
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def _mem_available() -> int:
    """MemAvailable in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _etcd_lab_cluster(ctx: Context, name: str, n: int) -> tuple[Lab, Any, float]:
    """``Lab(name, store="etcd")`` with an n-node VXLAN cluster (etcd in the fabric, one agent per
    node, every agent started at once; returns when every node routes to every other), and the
    seconds that took. The caller closes the lab (it is closed here if building fails)."""
    lab = Lab(name, store="etcd")
    try:
        t0 = time.monotonic()
        lc = lab.cluster([f"e{i}" for i in range(n)], routing="vxlan")
        took = time.monotonic() - t0
    except BaseException:
        lab.close()
        raise
    ctx.log(f"{n} agents over etcd ready and converged in {took:.1f} s")
    return lab, lc, took


def _pin_dirs(lc: Any) -> list[str]:
    """Every member node's pin directory (an agent's or an in-process datapath's)."""
    return [node.view.config.pin_dir for node in lc.nodes()]


# -- part A: convergence ---------------------------------------------------------------------------
@dataclass
class _Arm:
    """One store's nodes as the observer sees them: how a change is put, and each node's LB map."""

    name: str
    put: Callable[[Service], None]
    pin_dirs: list[str]
    maps: list[NodeMaps] = field(default_factory=list)
    last: list[float] = field(default_factory=list)    # ms, change to the last node programmed
    first: list[float] = field(default_factory=list)   # ms, change to the first node programmed

    def open(self) -> None:
        """Open every node's pinned maps (lazily, map by map, on first use)."""
        self.maps = [NodeMaps.from_pins(d) for d in self.pin_dirs]

    def close(self) -> None:
        """Close the maps opened from pins."""
        for m in self.maps:
            m.close()
        self.maps = []


def _observe(maps: Sequence[NodeMaps], key: Lb4Key, t0: float, timeout: float, poll_s: float) -> list[float]:
    """Seconds from ``t0`` until each node's LB map held ``key`` (first sight by this poller).

    Raises TimeoutError naming how many nodes never got it."""
    seen: list[float | None] = [None] * len(maps)
    pending = list(range(len(maps)))
    for _ in range(int(timeout / poll_s) + 2):  # bounded; each pass sleeps poll_s
        still = []
        for i in pending:
            if _has(maps[i], key):
                seen[i] = time.monotonic() - t0
            else:
                still.append(i)
        pending = still
        if not pending:
            return [s for s in seen if s is not None]
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(poll_s)
    raise TimeoutError(f"{len(pending)} of {len(maps)} nodes did not program {key.address}:{key.dport} "
                       f"within {timeout:g} s")


class _Changes:
    """Part A's service changes: a new ClusterIP service each (10.97.0.10 + k), never reused."""

    def __init__(self) -> None:
        self.k = 0

    def one(self, arm: _Arm, record: bool) -> float:
        """Put one new service through ``arm`` and wait for every node; returns ms to the last node."""
        k = self.k
        self.k += 1
        svc = _svc(f"cp-a-{k}", A_FIRST_IP + k, FIRST_BACKEND + k)
        key = _key(svc)
        t0 = time.monotonic()
        arm.put(svc)
        seen = _observe(arm.maps, key, t0, CHANGE_TIMEOUT_S, POLL_S)
        if record:
            arm.last.append(max(seen) * 1e3)
            arm.first.append(min(seen) * 1e3)
        return max(seen) * 1e3


def _rounds(ctx: Context, arms: list[_Arm], changes: _Changes, label: str) -> None:
    """Warmup + timed changes, the arms alternating (and the start arm swapped every round)."""
    for rnd in range(ctx.warmup + ctx.repeats):
        order = arms if rnd % 2 == 0 else arms[::-1]
        got = []
        for arm in order:
            ms = changes.one(arm, record=rnd >= ctx.warmup)
            got.append(f"{arm.name} {ms:.1f}")
            time.sleep(SETTLE_S)
        if rnd < ctx.warmup or (rnd - ctx.warmup + 1) % 5 == 0 or rnd == ctx.warmup + ctx.repeats - 1:
            ctx.log(f"{label} change {rnd + 1}/{ctx.warmup + ctx.repeats}"
                    f"{' (warmup)' if rnd < ctx.warmup else ''}: ms to the last node: {', '.join(got)}")


@contextlib.contextmanager
def _etcd_arm(ctx: Context, n: int, setup: list[Measurement]) -> Iterator[_Arm]:
    """An N-node cluster of an etcd lab (agent processes over etcd in the fabric namespace), as an arm;
    the lab (agents, then etcd, then namespaces) goes at the end, also on errors."""
    lab, lc, took = _etcd_lab_cluster(ctx, "cpa-etcd", n)
    with lab:
        setup.append(info(f"etcd@{n}: agent cluster built", took, "s", group="setup",
                          note="Lab(store='etcd').cluster: agents started at once, until all route to all"))
        time.sleep(1.0)  # the last joins' events reach every agent: let that work pass
        nodes = lc.agent_nodes()
        rss = [_proc_stat(node.agent.pid)[1] / 2**20 for node in nodes]
        setup.append(Measurement.from_samples(f"etcd@{n}: agent RSS", rss, "MB", group="setup", kind="info",
                                              note="one ciliumlite agent process per node (median, min)"))
        assert lab.etcd is not None and lab.etcd.pid is not None
        setup.append(info(f"etcd@{n}: etcd RSS", _proc_stat(lab.etcd.pid)[1] / 2**20, "MB", group="setup"))
        # The lab's client (no owner, calls made in the fabric namespace): the same put_service
        # the memory arm calls on its store.
        arm = _Arm("etcd", lc.control.store.put_service, _pin_dirs(lc))
        arm.open()
        try:
            yield arm
            # what the agents could not apply (a failed service would show up as a missing row too)
            errors = sum(node.status()["errors"]["count"] for node in nodes)
            setup.append(info(f"etcd@{n}: errors recorded by the agents", errors, group="setup"))
        finally:
            arm.close()


@contextlib.contextmanager
def _memory_arm(ctx: Context, n: int, setup: list[Measurement]) -> Iterator[_Arm]:
    """An N-node VXLAN lab cluster over an InMemoryStore (in-process datapaths), as an arm."""
    with Lab("cpa-mem") as lab:
        t0 = time.monotonic()
        lc = lab.cluster([f"m{i}" for i in range(n)], routing="vxlan")
        setup.append(info(f"memory@{n}: lab cluster built", time.monotonic() - t0, "s", group="setup"))
        store = lc.control.store
        assert isinstance(store, InMemoryStore)
        arm = _Arm("memory", store.put_service, _pin_dirs(lc))
        arm.open()
        try:
            yield arm
        finally:
            arm.close()


def _part_a(ctx: Context, sizes: Sequence[int], ms: list[Measurement], setup: list[Measurement]) -> None:
    changes = _Changes()
    for n in sizes:
        busy = wait_quiet(ctx, QUIET_WAIT_S)
        setup.append(info(f"A@{n}: background CPU busy before", busy * 100, "%", group="setup",
                          note="of all CPUs, before this size's processes started"))
        ctx.log(f"A: {n} nodes: starting {n} agents over etcd")
        mode = "interleaved"
        with contextlib.ExitStack() as stack:
            avail0 = _mem_available()
            etcd_arm = stack.enter_context(_etcd_arm(ctx, n, setup))
            used = max(0, avail0 - _mem_available())
            left = _mem_available()
            # Both arms alive at once is the method (interleaved changes), but every datapath holds
            # ~200 MB of preallocated BPF maps: do not take the memory other engineers' runs need.
            if left - used < MEM_RESERVE:
                mode = "sequential"
                ctx.log(f"A: {n} nodes: the agents took {used / 2**30:.1f} GiB, {left / 2**30:.1f} GiB left: "
                        "the memory arm runs after the etcd arm")
                _rounds(ctx, [etcd_arm], changes, f"A@{n} etcd")
                stack.close()  # the agents and their lab go (the arm keeps its samples)
                mem_arm = stack.enter_context(_memory_arm(ctx, n, setup))
                _rounds(ctx, [mem_arm], changes, f"A@{n} memory")
            else:
                mem_arm = stack.enter_context(_memory_arm(ctx, n, setup))
                _rounds(ctx, [etcd_arm, mem_arm], changes, f"A@{n}")
            setup.append(info(f"A@{n}: memory taken by the {n} agents", used / 2**30, "GiB", group="setup",
                              note=f"arms {mode}"))
        for arm in (etcd_arm, mem_arm):
            key = f"{arm.name}@{n}"
            ms.append(Measurement.from_samples(f"{key}: convergence", arm.last, "ms", group="A",
                                               note="put to the last node's LB map (median = p50)"))
            ms.append(info(f"{key}: convergence p95", _pct(arm.last, 0.95), "ms", group="A-pct"))
            ms.append(Measurement.from_samples(f"{key}: first node", arm.first, "ms", group="A", kind="info",
                                               note="put to the first node's LB map"))
        note = "paired per change" if mode == "interleaved" else \
            "arms ran one after the other (memory): index-paired, read the medians"
        ms.append(ratio(f"etcd@{n} ÷ memory@{n}: convergence", etcd_arm.last, mem_arm.last, group="A-ratio",
                        note=note))


# -- agent simulators (parts B and C) --------------------------------------------------------------
SIM_SRC = r'''"""An agent simulator of benchmarks/suites/control_plane.py: an EtcdStore with an owner (a lease
kept alive), its node record, a list-then-watch of nodes and services; no datapath, no API.

argv: repo root, etcd URL, cluster, node name, node IP, pod CIDR, lease TTL, mark prefix, max seconds.
stdout lines: "ready <t>", "seen <service> <t> <nodes known>" for services named <mark>*; t is
CLOCK_MONOTONIC (the same clock as the benchmark's).
"""
import logging
import os
import signal
import sys
import threading
import time

root, endpoint, cluster, name, ip, pod_cidr, ttl, mark, max_s = sys.argv[1:10]
sys.path.insert(0, root)
logging.basicConfig(level=logging.WARNING)  # stderr is a pipe: only what matters

from ciliumlite.cluster.etcd import EtcdStore  # noqa: E402
from ciliumlite.cluster.store import NodeInfo  # noqa: E402

parent = os.getppid()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
nodes = set()


def say(line):
    os.write(1, (line + "\n").encode())


def on_change(event, obj):
    if event == "service-upsert" and obj.name.startswith(mark):
        say(f"seen {obj.name} {time.monotonic():.6f} {len(nodes)}")
    elif event == "upsert":
        nodes.add(obj.name)
    elif event == "delete":
        nodes.discard(obj.name)


store = EtcdStore([endpoint], cluster=cluster, owner=name, lease_ttl=int(ttl), connect_timeout=30.0)
try:
    store.put_node(NodeInfo(name, ip, pod_cidr))
    nodes.update(n.name for n in store.nodes())  # list, then watch from the lists' revisions
    store.services()
    unwatch = store.watch(on_change)
    say(f"ready {time.monotonic():.6f}")
    deadline = time.monotonic() + float(max_s)
    while not stop.wait(0.5):  # ends on SIGTERM, when the benchmark is gone, or at the deadline
        if os.getppid() != parent or time.monotonic() > deadline:
            break
    unwatch()
finally:
    store.close(delete_own_keys=True)
'''


@dataclass
class _Sim:
    """One simulator process and what it said."""

    index: int
    name: str
    proc: Any
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    ready: bool = False
    seen: dict[str, tuple[float, int]] = field(default_factory=dict)   # service -> (time, nodes known)


class _Sims:
    """Agent simulators in a lab's fabric namespace, read through one selector; stopped by pid."""

    def __init__(self, lab: Lab, script: str) -> None:
        assert lab.etcd is not None
        self.lab = lab
        self.url = lab.etcd.url
        self.cluster = lab.prefix
        self.script = script
        self.sims: list[_Sim] = []
        self.sel = selectors.DefaultSelector()

    def start(self, count: int, first: int = 0, timeout: float = SIM_READY_S) -> float:
        """Start ``count`` simulators, ``SIM_BATCH`` at a time; seconds until all said ready."""
        assert self.lab.fabric is not None
        t0 = time.monotonic()
        for b in range(first, first + count, SIM_BATCH):
            batch = []
            for i in range(b, min(b + SIM_BATCH, first + count)):
                name = f"sim{i:03d}"
                argv = [sys.executable, self.script, str(ROOT), self.url, self.cluster, name,
                        f"10.1.{i // 250}.{i % 250 + 1}", f"10.245.{i}.0/24", str(SIM_LEASE_TTL), MARK,
                        str(SIM_MAX_S)]
                sim = _Sim(i, name, self.lab.processes.popen(self.lab.fabric.netns, argv))
                for stream, which in ((sim.proc.stdout, "out"), (sim.proc.stderr, "err")):
                    os.set_blocking(stream.fileno(), False)
                    self.sel.register(stream.fileno(), selectors.EVENT_READ, (sim, which))
                self.sims.append(sim)
                batch.append(sim)
            self.pump_until(lambda bt=batch: all(s.ready for s in bt), timeout - (time.monotonic() - t0),
                            "simulators ready")
        return time.monotonic() - t0

    def pump(self, timeout: float) -> None:
        """Read what the simulators wrote within ``timeout`` seconds (whole lines are parsed)."""
        for key, _ in self.sel.select(timeout=max(0.0, timeout)):
            sim, which = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.sel.unregister(key.fd)
                continue
            if which == "err":
                sim.err += chunk
                del sim.err[:-4000]  # keep the tail for error messages
                continue
            sim.out += chunk
            while b"\n" in sim.out:
                line, _, rest = bytes(sim.out).partition(b"\n")
                sim.out[:] = rest
                parts = line.decode(errors="replace").split()
                if parts[:1] == ["ready"]:
                    sim.ready = True
                elif parts[:1] == ["seen"] and len(parts) >= 4:
                    sim.seen[parts[1]] = (float(parts[2]), int(parts[3]))

    def pump_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Pump until ``done()``; raises CiliumliteError after ``timeout`` or when a simulator died."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.005) + 2):  # bounded: each pass waits at most 5 ms... or returns
            if done():
                return
            dead = [s for s in self.sims if s.proc.poll() is not None]
            if dead:
                raise CiliumliteError(f"simulator {dead[0].name} exited ({dead[0].proc.returncode}): "
                                      f"{bytes(dead[0].err).decode(errors='replace')[-1500:]}")
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.pump(min(left, 0.005))
        if not done():
            raise CiliumliteError(f"{what}: not within {timeout:.0f} s")

    def stat(self) -> list[tuple[float, int]]:
        """(CPU seconds, RSS bytes) of every simulator."""
        return [_proc_stat(s.proc.pid) for s in self.sims]

    def stop(self) -> None:
        """SIGTERM all (they revoke their leases), wait a bounded time, then the lab's group kills by pid."""
        for s in self.sims:
            with contextlib.suppress(ProcessLookupError):
                if s.proc.poll() is None:
                    os.kill(s.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20.0
        for s in self.sims:
            with contextlib.suppress(Exception):
                s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for s in self.sims:
            self.lab.processes.stop(s.proc)  # SIGKILL if still there; reaps; closes the pipes
        with contextlib.suppress(Exception):
            self.sel.close()
        self.sims = []


@contextlib.contextmanager
def _sim_script() -> Iterator[str]:
    """The simulator written to a temporary file (removed at the end)."""
    with tempfile.TemporaryDirectory(prefix="ciliumlite-cp-") as d:
        path = os.path.join(d, "cp_agent_sim.py")
        Path(path).write_text(SIM_SRC)
        yield path


# -- part B: 10,000 services -----------------------------------------------------------------------
def _bulk_services(n: int, prefix: str = "cp-b-") -> list[Service]:
    """``n`` ClusterIP services 10.96.0.10 + i, one distinct backend each."""
    return [_svc(f"{prefix}{i}", B_FIRST_IP + i, FIRST_BACKEND + i) for i in range(n)]


def _wait_all(ctx: Context, label: str, maps: list[NodeMaps], key: Lb4Key, n: int, t0: float) -> tuple[float, float]:
    """Seconds from ``t0`` until every node's map holds ``key`` (the last service written), polled every
    ``BULK_POLL_S``; and how long the last tenth of the services took (every node from >= 90 % to all),
    from row counts taken every ``COUNT_EVERY_S``. Progress logged every 30 s. Raises TimeoutError
    after ``BULK_TIMEOUT_S``."""
    pending = list(range(len(maps)))
    next_log = t0 + 30.0
    next_count = t0
    nine_tenths: float | None = None
    below = 0.0  # the last count at which some node had < 90 %: bounds the last tenth when it ran between counts
    for _ in range(int(BULK_TIMEOUT_S / BULK_POLL_S) + 2):
        pending = [i for i in pending if not _has(maps[i], key)]
        now = time.monotonic()
        if not pending:
            done = now - t0
            return done, done - (nine_tenths if nine_tenths is not None else below)
        if now - t0 > BULK_TIMEOUT_S:
            break
        if now >= next_count or now > next_log:
            next_count = now + COUNT_EVERY_S
            counts = [max(0, _lb_entries(m)) // 2 for m in maps]
            if nine_tenths is None:
                if min(counts) >= n - n // 10:
                    nine_tenths = now - t0
                else:
                    below = now - t0
            if now > next_log:
                next_log = now + 30.0
                ctx.log(f"{label}: {now - t0:.0f} s, services programmed per node: "
                        + ", ".join(f"{c:,}" for c in counts))
        time.sleep(BULK_POLL_S)
    raise TimeoutError(f"{label}: {len(pending)} nodes without all {n} services after {BULK_TIMEOUT_S:.0f} s")


def _first_tenth(maps: list[NodeMaps], n: int, t0: float, deadline: float) -> float:
    """Seconds from ``t0`` until every node holds the first tenth of the services (polled; bounded)."""
    for _ in range(int((deadline - time.monotonic()) / BULK_POLL_S) + 2):
        if min(max(0, _lb_entries(m)) // 2 for m in maps) >= n // 10:
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            break
        time.sleep(BULK_POLL_S)
    raise TimeoutError(f"the first {n // 10} services not on every node after {deadline - t0:.0f} s")


def _check_full(label: str, maps: list[NodeMaps], n: int) -> list[int]:
    """Every node's LB map holds exactly 2 rows per service (frontend + one backend slot); raises otherwise."""
    counts = [_lb_entries(m) for m in maps]
    if any(c != 2 * n for c in counts):
        raise CiliumliteError(f"{label}: LB map rows per node {counts}, expected {2 * n} ({n} services)")
    return counts


def _bulk_etcd(ctx: Context, services: list[Service], rnd: int, out: dict[str, list[float]]) -> None:
    """One etcd round: a fresh etcd lab with 3 agents, put_services, wait for every node."""
    lab, lc, _ = _etcd_lab_cluster(ctx, "cpb-etcd", BULK_NODES)
    with lab:
        time.sleep(1.0)
        maps = [NodeMaps.from_pins(d) for d in _pin_dirs(lc)]
        try:
            key = _key(services[-1])
            store = lc.control.store
            t0 = time.monotonic()
            written = store.call(lambda s: s.put_services(services))  # in the fabric namespace
            t_write = time.monotonic() - t0
            if written != len(services):
                raise CiliumliteError(f"put_services wrote {written} of {len(services)}")
            first = _first_tenth(maps, len(services), t0, t0 + BULK_TIMEOUT_S)
            took, last = _wait_all(ctx, f"B etcd round {rnd + 1}", maps, key, len(services), t0)
            _check_full("B etcd", maps, len(services))
            assert lab.etcd is not None and lab.etcd.pid is not None
            out["etcd RSS"].append(_proc_stat(lab.etcd.pid)[1] / 2**20)
        finally:
            for m in maps:
                m.close()
    out["etcd"].append(took)
    out["etcd write"].append(t_write)
    out["etcd first tenth"].append(first)
    out["etcd last tenth"].append(last)
    ctx.log(f"B round {rnd + 1} etcd: put_services {t_write:.1f} s, every node programmed after {took:.1f} s")


def _bulk_memory(ctx: Context, services: list[Service], rnd: int, out: dict[str, list[float]]) -> None:
    """One in-memory round: a fresh 3-node lab cluster, put_service per service, check every node."""
    with Lab("cpb-mem") as lab:
        lc = lab.cluster([f"m{i}" for i in range(BULK_NODES)], routing="vxlan")
        store = lc.control.store
        maps = []
        for node in lc.nodes():
            assert node.datapath is not None
            maps.append(NodeMaps.from_pins(node.datapath.config.pin_dir))
        try:
            key = _key(services[-1])
            tenth = len(services) // 10
            t0 = time.monotonic()
            first = last_start = 0.0
            for i, svc in enumerate(services):  # synchronous: every watcher (node) programs it before the next
                if i == tenth:
                    first = time.monotonic() - t0
                elif i == len(services) - tenth:
                    last_start = time.monotonic()
                store.put_service(svc)
            last = time.monotonic() - last_start
            took, _ = _wait_all(ctx, f"B memory round {rnd + 1}", maps, key, len(services), t0)
            _check_full("B memory", maps, len(services))
        finally:
            for m in maps:
                m.close()
    out["memory"].append(took)
    out["memory first tenth"].append(first)
    out["memory last tenth"].append(last)
    ctx.log(f"B round {rnd + 1} memory: every node programmed after {took:.1f} s")


def _mark_watcher(got: list[float]) -> Callable[[str, Any], None]:
    """An in-memory watcher that does what a simulator does: note when a marked service arrives."""
    def watch(event: str, obj: Any) -> None:
        if event == "service-upsert" and obj.name.startswith(MARK):
            got.append(time.monotonic())
    return watch


def _store_only(ctx: Context, n: int, rounds: int, script: str, ms: list[Measurement]) -> None:
    """The same write with only watchers behind each store: 3 agent simulators over etcd, 3 no-op watchers
    of an InMemoryStore (what the store itself costs, without any datapath)."""
    res: dict[str, list[float]] = {"etcd": [], "memory": []}
    with Lab("cpb-store", store="etcd") as lab:
        sims = _Sims(lab, script)
        try:
            sims.start(BULK_NODES)
            assert lab.etcd is not None and lab.etcd.store is not None
            store = lab.etcd.store
            for rnd in range(rounds):
                # fresh names each round (the last one marked), so every event is a new key
                svcs = [*_bulk_services(n - 1, f"r{rnd}-"), _svc(f"{MARK}r{rnd}", B_FIRST_IP + n, FIRST_BACKEND + n)]
                for arm in (("etcd", "memory") if rnd % 2 == 0 else ("memory", "etcd")):
                    if arm == "etcd":
                        t0 = time.monotonic()
                        store.call(lambda s, v=svcs: s.put_services(v))  # type: ignore[misc]
                        name = svcs[-1].name
                        sims.pump_until(lambda nm=name: all(nm in s.seen for s in sims.sims), BULK_TIMEOUT_S,
                                        "simulators saw the last service")
                        res["etcd"].append(max(s.seen[name][0] for s in sims.sims) - t0)
                    else:
                        mem = InMemoryStore()
                        got: list[float] = []
                        for _ in range(BULK_NODES):
                            mem.watch(_mark_watcher(got))
                        t0 = time.monotonic()
                        for svc in svcs:
                            mem.put_service(svc)
                        if len(got) != BULK_NODES:
                            raise CiliumliteError(f"in-memory watchers saw the last service {len(got)} times")
                        res["memory"].append(max(got) - t0)
                ctx.log(f"B store only, round {rnd + 1}: etcd {res['etcd'][-1]:.2f} s, "
                        f"memory {res['memory'][-1]:.3f} s")
        finally:
            sims.stop()
    lbl = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    ms.append(Measurement.from_samples(f"store only etcd: {lbl} services to {BULK_NODES} simulators", res["etcd"], "s",
                                       group="B-store", note="put_services start to the last simulator's watch "
                                                             "callback for the last service"))
    ms.append(Measurement.from_samples(f"store only memory: {lbl} services to {BULK_NODES} watchers", res["memory"], "s",
                                       group="B-store", note="put_service per service, 3 no-op watchers"))
    ms.append(ratio(f"store only etcd ÷ memory: {lbl} services", res["etcd"], res["memory"], group="B-ratio"))


def _part_b(ctx: Context, n: int, rounds: int, script: str, ms: list[Measurement], setup: list[Measurement]) -> None:
    busy = wait_quiet(ctx, QUIET_WAIT_S)
    setup.append(info("B: background CPU busy before", busy * 100, "%", group="setup", note="of all CPUs"))
    services = _bulk_services(n)
    out: dict[str, list[float]] = {k: [] for k in ("etcd", "etcd write", "etcd RSS", "etcd first tenth",
                                                   "etcd last tenth", "memory", "memory first tenth",
                                                   "memory last tenth")}
    t_part = time.monotonic()
    for rnd in range(rounds):
        for arm in (("etcd", "memory") if rnd % 2 == 0 else ("memory", "etcd")):
            if arm == "etcd":
                _bulk_etcd(ctx, services, rnd, out)
            else:
                _bulk_memory(ctx, services, rnd, out)
    _store_only(ctx, n, max(1, STORE_ROUNDS if not ctx.quick else 1), script, ms)
    lbl = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    ms.append(Measurement.from_samples(f"bulk etcd: {lbl} services on every node", out["etcd"], "s", group="B",
                                       note=f"EtcdStore.put_services start to all {BULK_NODES} agents' LB maps full"))
    ms.append(Measurement.from_samples(f"bulk etcd: put_services write of {lbl}", out["etcd write"], "s",
                                       group="B", kind="info", note="the write alone (100 puts per txn)"))
    ms.append(Measurement.from_samples(f"bulk memory: {lbl} services on every node", out["memory"], "s", group="B",
                                       note=f"InMemoryStore.put_service × {n:,} into a {BULK_NODES}-node lab cluster"))
    ms.append(ratio(f"bulk etcd ÷ memory: {lbl} services on every node", out["etcd"], out["memory"],
                    group="B-ratio", note="paired per round"))
    # The per-service cost of Datapath.upsert_service grows with the services a node has: the first
    # and the last tenth of the same write show by how much (the same in both arms).
    tenth = f"{n // 10:,}"
    for arm in ("etcd", "memory"):
        ms.append(Measurement.from_samples(f"bulk {arm}: first {tenth} services on every node",
                                           out[f"{arm} first tenth"], "s", group="B", kind="info",
                                           note="from the start of the write"))
        ms.append(Measurement.from_samples(f"bulk {arm}: last {tenth} services on every node",
                                           out[f"{arm} last tenth"], "s", group="B", kind="info",
                                           note="etcd: every node from >= 90 % (row counts, ~1 s) to all; "
                                                "memory: the last tenth of the put_service calls"))
    setup.append(Measurement.from_samples(f"B: etcd RSS with {lbl} services", out["etcd RSS"], "MB", group="setup",
                                          kind="info"))
    setup.append(info("B: part wall time", time.monotonic() - t_part, "s", group="setup"))


# -- part C: the simulated scale run ---------------------------------------------------------------
def _part_c(ctx: Context, count: int, idle_s: float, n_changes: int, script: str, ms: list[Measurement],
            setup: list[Measurement]) -> None:
    busy = wait_quiet(ctx, QUIET_WAIT_S)
    setup.append(info("C: background CPU busy before", busy * 100, "%", group="setup"))
    with Lab("cpc", store="etcd") as lab:
        etcd = lab.etcd
        assert etcd is not None and etcd.pid is not None and etcd.store is not None
        store = etcd.store
        sims = _Sims(lab, script)
        try:
            e_start = _proc_stat(etcd.pid)[0]
            took = sims.start(count)
            setup.append(info(f"C: etcd CPU while {count} simulators started and joined",
                              _proc_stat(etcd.pid)[0] - e_start, "s", group="C",
                              note=f"utime+stime over {took:.0f} s"))
            ctx.log(f"C: {count} agent simulators ready in {took:.1f} s")
            setup.append(info(f"C: {count} simulators started, all ready", took, "s", group="setup",
                              note=f"{SIM_BATCH} at a time"))
            time.sleep(2.0)  # the last joins' node events reach every watcher
            leases = [ln for ln in etcd.etcdctl("lease", "list").splitlines() if ln.strip() and "found" not in ln]
            node_keys = [k for k in etcd.etcdctl("get", "--prefix", "--keys-only",
                                                 f"cilium/state/nodes/v1/{lab.prefix}/").splitlines() if k.strip()]
            # the window: idle (leases renewed every ttl/3, watches open), then the changes
            e0, w0 = _proc_stat(etcd.pid)[0], time.monotonic()
            s0 = sims.stat()
            time.sleep(idle_s)
            conv: list[float] = []
            per_sim: list[float] = []
            knew_all = 0
            for k in range(ctx.warmup + n_changes):
                svc = _svc(f"{MARK}c{k}", A_FIRST_IP + 60_000 + k, FIRST_BACKEND + 60_000 + k)
                t0 = time.monotonic()
                store.put_service(svc)  # the lab's client: the call is made in the fabric namespace
                sims.pump_until(lambda nm=svc.name: all(nm in s.seen for s in sims.sims), CHANGE_TIMEOUT_S,
                                f"every simulator saw {svc.name}")
                lat = [s.seen[svc.name][0] - t0 for s in sims.sims]
                if k >= ctx.warmup:
                    conv.append(max(lat) * 1e3)
                    per_sim += [x * 1e3 for x in lat]
                    knew_all = sum(1 for s in sims.sims if s.seen[svc.name][1] >= count)
                time.sleep(0.5)
            e1, w1 = _proc_stat(etcd.pid)[0], time.monotonic()
            s1 = sims.stat()
            etcd_rss = _proc_stat(etcd.pid)[1] / 2**20
        finally:
            sims.stop()  # before the lab stops etcd
    wall = w1 - w0
    cpu = [(b[0] - a[0]) / wall * 100 for a, b in zip(s0, s1, strict=True)]
    rss = [b[1] / 2**20 for b in s1]
    ctx.log(f"C: window {wall:.0f} s: etcd {(e1 - e0) / wall * 100:.1f} % CPU, simulators median "
            f"{statistics.median(cpu):.2f} % each, convergence p50 {statistics.median(conv):.0f} ms")
    g = "C"
    ms += [
        info(f"C: etcd CPU, {count} simulators", (e1 - e0) / wall * 100, "% of a CPU", group=g,
             note=f"utime+stime over a {wall:.0f}-s window: {idle_s:.0f} s idle, then {n_changes} changes"),
        info(f"C: etcd RSS, {count} simulators", etcd_rss, "MB", group=g),
        Measurement.from_samples(f"C: simulator CPU, each of {count}", cpu, "% of a CPU", group=g, kind="info",
                                 note="median, min; every simulator's value is in the JSON"),
        info(f"C: simulator CPU, max of {count}", max(cpu), "% of a CPU", group=g),
        info(f"C: simulator CPU, all {count}", sum(cpu), "% of a CPU", group=g),
        Measurement.from_samples(f"C: simulator RSS, each of {count}", rss, "MB", group=g, kind="info"),
        info(f"C: simulator RSS, max of {count}", max(rss), "MB", group=g),
        info(f"C: simulator RSS, all {count}", sum(rss), "MB", group=g),
        Measurement.from_samples(f"C: simulator CPU to start and join, each of {count}", [a[0] for a in s0], "s",
                                 group=g, kind="info", note="utime+stime from exec to the window (imports, "
                                                            "lease, node record, lists, watch)"),
        Measurement.from_samples(f"C: convergence to {count} simulators", conv, "ms", group=g,
                                 note="put to the last simulator's watch callback (median = p50)"),
        info(f"C: convergence to {count} simulators p95", _pct(conv, 0.95), "ms", group=g),
        Measurement.from_samples("C: delivery to one simulator", per_sim, "ms", group=g, kind="info",
                                 note=f"every simulator × change ({len(per_sim)}): median, min"),
        info("C: delivery to one simulator p95", _pct(per_sim, 0.95), "ms", group=g),
        info("C: leases in etcd", len(leases), group=g, note="etcdctl lease list, before the window"),
        info("C: node records in etcd", len(node_keys), group=g),
        info("C: simulators that knew every node at the last change", knew_all, group=g),
    ]


# -- the suite -------------------------------------------------------------------------------------
# -- the suite -------------------------------------------------------------------------------------
def run(ctx: Context) -> list[Measurement]:
    """Parts A, B, C (``CILIUMLITE_BENCH_CP_PARTS=A,C`` runs a subset; ``..._SIZES=3,10`` part A's sizes)."""
    parts = [p.upper() for p in _env_list("CILIUMLITE_BENCH_CP_PARTS", ["A", "B", "C"])]
    sizes = [int(s) for s in _env_list("CILIUMLITE_BENCH_CP_SIZES", [str(s) for s in
                                                                     (QUICK_SIZES if ctx.quick else SIZES)])]
    bulk_n = QUICK_BULK_SERVICES if ctx.quick else BULK_SERVICES
    bulk_rounds = 1 if ctx.quick else int(os.environ.get("CILIUMLITE_BENCH_CP_BULK_ROUNDS", BULK_ROUNDS))
    sim_n = QUICK_SIM_AGENTS if ctx.quick else SIM_AGENTS
    sim_idle = 3.0 if ctx.quick else SIM_IDLE_S
    sim_changes = 3 if ctx.quick else SIM_CHANGES
    ctx.params.update(parts=",".join(parts), sizes=",".join(map(str, sizes)), changes_per_size=ctx.repeats,
                      warmup_changes=ctx.warmup, poll_ms=POLL_S * 1e3, bulk_services=bulk_n, bulk_nodes=BULK_NODES,
                      bulk_rounds=bulk_rounds, simulators=sim_n, sim_lease_ttl_s=SIM_LEASE_TTL,
                      sim_idle_s=sim_idle, sim_changes=sim_changes, routing="vxlan")
    ms: list[Measurement] = []
    setup: list[Measurement] = [info("background CPU busy at the start", busy_cpus(1.0) / (os.cpu_count() or 1) * 100,
                                     "%", group="setup", note="of all CPUs, before anything started")]
    t_all = time.monotonic()
    with _sim_script() as script:
        if "A" in parts:
            _part_a(ctx, sizes, ms, setup)
        if "B" in parts:
            _part_b(ctx, bulk_n, bulk_rounds, script, ms, setup)
        if "C" in parts:
            _part_c(ctx, sim_n, sim_idle, sim_changes, script, ms, setup)
    setup.append(info("suite wall time", time.monotonic() - t_all, "s", group="setup"))
    return ms + setup


# -- tables ----------------------------------------------------------------------------------------
def _secs(v: float) -> str:
    """Seconds for a table: '132 s', '4.21 s', '9.8 ms'."""
    if v >= 100:
        return f"{v:,.0f} s"
    return f"{v:.2f} s" if v >= 1 else f"{v * 1e3:.1f} ms"


GOALS = [("bulk etcd ÷ memory: 10k services on every node", "<=", 3.0,
          "issue 10: 10,000 services through etcd within 3× the in-memory store")]


def summarize(ms: list[Measurement]) -> list[Summary]:
    """Convergence per size, the 10k-services comparison, the scale run, goals, setup."""
    by = {m.name: m for m in ms}

    def val(name: str, fmt: str = "") -> str:
        m = by.get(name)
        if m is None:
            return ""
        return f"{m.median:{fmt}}" if fmt else fmt_value(m.median, m.unit)

    def rcell(name: str) -> str:
        m = by.get(name)
        return "" if m is None else f"{fmt_value(m.median, 'x')} {fmt_ci(m)}"

    out: list[Summary] = []
    sizes = sorted({int(m.name.split("@")[1].split(":")[0]) for m in ms if m.group == "A"})
    if sizes:
        rows = []
        for n in sizes:
            e, mem = f"etcd@{n}", f"memory@{n}"
            rows.append([str(n), val(f"{e}: convergence", ".1f"), val(f"{e}: convergence p95", ".1f"),
                         val(f"{e}: first node", ".1f"), val(f"{mem}: convergence", ".1f"),
                         val(f"{mem}: convergence p95", ".1f"), val(f"{mem}: first node", ".1f"),
                         rcell(f"etcd@{n} ÷ memory@{n}: convergence"),
                         by[f"etcd@{n} ÷ memory@{n}: convergence"].note if f"etcd@{n} ÷ memory@{n}: convergence"
                         in by else ""])
        out.append(Summary("A. one service change to the last node programmed (ms)",
                           ["nodes", "etcd p50", "etcd p95", "etcd first node p50", "memory p50", "memory p95",
                            "memory first node p50", "etcd ÷ memory p50 [95% CI]", "pairing"], rows,
                           note="etcd: Lab(store='etcd').cluster, one ciliumlite agent process per node (VXLAN), "
                                "etcd in the lab's fabric namespace, the change put by the lab's EtcdStore client; "
                                "memory: Lab().cluster, in-process datapaths over an InMemoryStore, the change put "
                                "into that store. "
                                "Programmed = the frontend row in the node's pinned cilium_lb4_services_v2, "
                                "polled every ~1 ms by the benchmark. The in-memory store programs every node "
                                "inside the put (synchronous watchers), so its first and last node are one poll."))
    bulk = [m for m in ms if m.group in ("B", "B-store")]
    if bulk:
        rows = [[m.name, _secs(m.median), _secs(m.min), str(m.repeats), m.note] for m in bulk]
        rows += [[m.name, rcell(m.name), "", str(m.repeats), m.note] for m in ms if m.group == "B-ratio"]
        out.append(Summary("B. 10,000 services (median of rounds)", ["what", "median", "min", "rounds", "how"], rows))
    goal_rows = []
    for name, op, thr, src in GOALS:
        m = by.get(name)
        if m is not None:
            goal_rows.append([name, rcell(name), f"{op} {thr:g}", verdict(m, op, thr), src])
    if goal_rows:
        out.append(Summary("goals", ["ratio", "median [95% CI]", "goal", "verdict", "source"], goal_rows,
                           note="verdict on the median of the paired ratios; 'CI': whether the whole bootstrap "
                                "interval is on the right side."))
    scale = [m for m in ms if m.group == "C"]
    if scale:
        out.append(Summary("C. simulated scale run: agent simulators over one etcd",
                           ["what", "value", "note"],
                           [[m.name, f"{fmt_value(m.median, m.unit)} {m.unit}" if m.unit != "count"
                             else f"{m.median:,.0f}", m.note] for m in scale],
                           note="An agent simulator is not an agent: a Python process with an EtcdStore that has "
                                "an owner (one lease, renewed every ttl/3), its node record on that lease, a list "
                                "of nodes and services and a watch of both; no datapath, no API. CPU: utime+stime "
                                "from /proc/<pid>/stat over the window ÷ its wall time (10-ms ticks: ~0.02 % of a CPU over "
                                "60 s); RSS at its end."))
    setup = [m for m in ms if m.group == "setup"]
    if setup:
        out.append(Summary("setup and background", ["what", "value", "note"],
                           [[m.name, f"{fmt_value(m.median, m.unit)} {m.unit}" if m.unit != "count"
                             else f"{m.median:,.0f}", (m.note + (f" (CV {cv_text(m)})" if m.repeats > 1 else "")).strip()]
                            for m in setup]))
    return out
