"""The soak: a 3-node VXLAN lab under continuous mixed traffic and churn, recorded over time.

``python -m ciliumlite.testing.soak --seconds 600`` (``make soak``) builds an in-process lab (three
nodes ``a``, ``b``, ``c``, VXLAN, every node's ``Datapath`` in this process), starts traffic and
then, for ``--seconds``, changes the cluster under it while it samples the datapaths:

* **traffic** (``_soak_traffic.py``, one client in pod ``client`` on ``a`` and one on the outside
  host): long-lived TCP connections (a numbered, patterned line every 0.2 s, each echo checked
  byte for byte; a break is counted with the backend the connection last talked to, and the
  connection is reopened), new connections at a steady rate, UDP request/response, and NodePort
  from the outside host (``lab.outside()``), to pods, to a *stable* service (backends
  ``stable-a``/``stable-b`` that never change) and to a *churn* service (session affinity, whose
  backends come and go);
* **churn**, one step every ``--churn-interval`` seconds, in a cycle: add a backend pod (on the
  next node; an endpoint comes), mark the oldest terminating (kept for its connections, not
  chosen for new ones), remove the terminating ones from the service and delete their pods (an
  endpoint goes), node ``c`` leaves the cluster (its backends first) or joins it again, an idle
  pod comes or goes;
* **conntrack GC** on every node every ``--gc-interval`` seconds (``Datapath.gc_conntrack``, what
  Cilium's agent does);
* **a sample** every ``--sample`` seconds: the traffic's counts, the entries of every node's CT,
  NAT, affinity, rev-NAT, LB service and backend and ``cilium_lxc`` maps, and the RSS and open fds
  of this process (which holds every datapath: the lab has no agents) and of the traffic processes.

The verdict (see :func:`verdict`): CT, NAT, affinity and rev-NAT entries of the permanent nodes
and this process's RSS and fds are *bounded*: the max of the last third of the samples is at most
``1.2 x`` the max of the first third (or that plus a small slack for counts near zero); no
long-lived connection broke that should not have (a break on a backend the churn removed is
expected and counted apart, as Cilium users expect); connect failures and lost datagrams are
reported. It writes ``--out`` (Markdown) and the same name with ``.json`` (summary and time
series), and exits 1 when the verdict fails. Every loop is bounded by ``--seconds``; every process
is started through the lab (recorded, stopped by pid); the lab is torn down on any exit, Ctrl-C
and SIGTERM included.

It lives in the package (beside :mod:`ciliumlite.testing.fuzz`), not under ``benchmarks/``,
because the smoke test imports it, ``make lint`` type-checks it with the package, and it is a
check with a verdict rather than a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ciliumlite.connectivity.disruption import STREAM
from ciliumlite.datapath.maps import LB_AFFINITY
from ciliumlite.lab import Lab, LabCluster, Pod, procs
from ciliumlite.lab.node import Node
from ciliumlite.service import Backend, Frontend, Service

TRAFFIC = str(Path(__file__).with_name("_soak_traffic.py"))
PORT = 8081
STABLE_VIP, CHURN_VIP = "10.96.90.10", "10.96.90.20"
STABLE_NODE_PORT, CHURN_NODE_PORT = 31090, 31091
NODES = ("a", "b", "c")
PERMANENT = ("a", "b")  # c leaves and joins
CHURN_NODE = "c"
MAX_CHURN_BACKENDS = 4
MAPS = ("ct", "nat", "affinity", "revnat", "lb_services", "lb_backends", "lxc")
#: The verdict's rules: (series, ratio, absolute slack).
RULES: dict[str, tuple[float, float]] = {
    "ct": (1.2, 32), "nat": (1.2, 32), "affinity": (1.2, 4), "revnat": (1.2, 4),
    "rss_kib": (1.2, 8192), "fds": (1.2, 8),
}
CYCLE = ("add", "terminate", "remove", "node", "add", "terminate", "remove", "pod")


class Stopped(Exception):
    """SIGTERM: the soak stops and tears the lab down as on Ctrl-C."""


def _proc_status(pid: int | str) -> tuple[int, int]:
    """RSS (KiB) and open fds of a process; (0, 0) once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0, 0


def map_counts(node: Node) -> dict[str, int]:
    """Entries of the node's CT (both maps), NAT, affinity, rev-NAT, LB and endpoint maps."""
    dp = node.datapath
    m = dp.maps if dp is not None else None
    if m is None:
        return dict.fromkeys(MAPS, 0)
    snat = m.snat
    return {"ct": sum(len(ct) for ct in m.conntrack_maps()), "nat": len(snat) if snat is not None else 0,
            "affinity": len(m.get(LB_AFFINITY)) if m.has(LB_AFFINITY) else 0, "revnat": len(m.revnat),
            "lb_services": len(m.lb_services), "lb_backends": len(m.lb_backends), "lxc": len(m.endpoints)}


class TrafficClient:
    """One ``_soak_traffic.py`` process: started in ``host``, its latest report kept by a reader thread."""

    def __init__(self, host: Any, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.host = host
        self.latest: dict[str, Any] = {"paths": [], "breaks": []}
        self.final = threading.Event()
        self.proc: subprocess.Popen[str] = host.popen(*procs.python_script(TRAFFIC, json.dumps(spec)))
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "running":
            err = self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""
            raise RuntimeError(f"traffic from {name} did not start: {line.strip()!r} {err}")
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"soak-{name}")
        self._reader.start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        try:
            for line in out:
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                self.latest = report
                if report.get("final"):
                    self.final.set()
                    return
        except (OSError, ValueError):
            return  # the pipe was closed by stop()

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """SIGUSR1, wait for the final report (bounded), then end the process by pid."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
        self.final.wait(timeout)
        self.host.lab.processes.stop(self.proc)
        self._reader.join(timeout=2)
        return self.latest


@dataclass
class ChurnBackend:
    pod: Pod
    terminating: bool = False


@dataclass
class Soak:
    """One soak run; :meth:`run` returns the result (also written by :func:`write`)."""

    seconds: float = 600.0
    sample: float = 10.0
    churn_interval: float = 5.0
    gc_interval: float = 10.0
    log: Callable[[str], None] = print
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    removed: dict[str, float] = field(default_factory=dict)  # backend (pod) name -> when removed
    gc_deleted: dict[str, int] = field(default_factory=lambda: {"ct": 0, "nat": 0, "runs": 0})
    lab_prefix: str = ""

    def __post_init__(self) -> None:
        self._churn: list[ChurnBackend] = []
        self._seq = 0
        self._idle: Pod | None = None
        self._servers: list[subprocess.Popen[str]] = []
        self._clients: list[TrafficClient] = []
        self._t0 = 0.0

    # -- lab, services, traffic ------------------------------------------------------------------
    def _server(self, pod: Pod) -> None:
        proc = pod.popen(*procs.python_script(STREAM, "server", pod.name, str(PORT)))
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError(f"stream server on {pod.name} did not start: {line.strip()!r}")
        self._servers.append(proc)

    def _services(self, cluster: LabCluster, stable: list[Pod]) -> None:
        backends = [Backend(p.ip, PORT) for p in stable]
        for proto, name in (("TCP", "soak-stable"), ("UDP", "soak-stable-udp")):
            cluster.upsert_service(Service(name, Frontend(STABLE_VIP, 80, proto), backends,  # type: ignore[arg-type]
                                           type="NodePort", node_port=STABLE_NODE_PORT))
        self._update_churn(cluster)

    def _update_churn(self, cluster: LabCluster) -> None:
        cluster.upsert_service(Service("soak-churn", Frontend(CHURN_VIP, 80),
                                       [Backend(b.pod.ip, PORT, terminating=b.terminating) for b in self._churn],
                                       type="NodePort", node_port=CHURN_NODE_PORT, session_affinity=True,
                                       affinity_timeout=60))

    def _event(self, what: str, **detail: Any) -> None:
        self.events.append({"t": round(time.monotonic() - self._t0, 1), "event": what, **detail})

    def expected(self, brk: dict[str, Any]) -> bool:
        """A break is expected when its connection's backend was removed (by the churn) before it broke
        (1 s of slack: the removal's timestamp is taken just before the service is updated)."""
        removed = self.removed.get(str(brk.get("server", "")))
        return removed is not None and float(brk.get("t", 0)) >= removed - 1.0

    # -- churn -----------------------------------------------------------------------------------
    def _present(self, cluster: LabCluster) -> list[Node]:
        return [cluster.node(n) for n in NODES if n in cluster.members]

    def _add_backend(self, cluster: LabCluster, *, avoid: str = "") -> None:
        nodes = [n for n in self._present(cluster) if n.name != avoid]
        self._seq += 1
        node = nodes[self._seq % len(nodes)]
        pod = node.add_pod(f"churn-{self._seq}")
        self._server(pod)
        self._churn.append(ChurnBackend(pod))
        self._update_churn(cluster)
        self._event("backend added", pod=pod.name, node=node.name, ip=pod.ip)

    def _remove_backends(self, cluster: LabCluster, gone: list[ChurnBackend], why: str) -> None:
        if not gone:
            return
        self._churn = [b for b in self._churn if b not in gone]
        now = time.time()
        for b in gone:
            self.removed[b.pod.name] = now
        self._update_churn(cluster)
        for b in gone:
            self._servers = [s for s in self._servers if s.poll() is None]
            b.pod.node.remove_pod(b.pod.name)
            self._event(f"backend removed ({why})", pod=b.pod.name, node=b.pod.node.name)

    def _step(self, cluster: LabCluster, step: int) -> None:
        action = CYCLE[step % len(CYCLE)]
        active = [b for b in self._churn if not b.terminating]
        if action == "add" or (action == "terminate" and len(active) < 2):
            if len(self._churn) < MAX_CHURN_BACKENDS:
                self._add_backend(cluster)
        elif action == "terminate":
            active[0].terminating = True
            self._update_churn(cluster)
            self._event("backend terminating", pod=active[0].pod.name)
        elif action == "remove":
            self._remove_backends(cluster, [b for b in self._churn if b.terminating], "terminated")
        elif action == "node":
            if CHURN_NODE in cluster.members:
                self._remove_backends(cluster, [b for b in self._churn if b.pod.node.name == CHURN_NODE], "node left")
                if self._idle is not None and self._idle.node.name == CHURN_NODE:
                    self._idle = None
                if not self._churn:
                    self._add_backend(cluster, avoid=CHURN_NODE)  # the service keeps a backend
                cluster.remove_node(CHURN_NODE)
                self._event("node left", node=CHURN_NODE)
            else:
                node = cluster.add_node(CHURN_NODE)
                self._event("node joined", node=CHURN_NODE, ip=node.ip, pod_cidr=node.view.config.pod_cidr)
        elif action == "pod":
            if self._idle is not None:
                self._idle.node.remove_pod(self._idle.name)
                self._event("pod removed", pod=self._idle.name)
                self._idle = None
            else:
                self._seq += 1
                nodes = self._present(cluster)
                self._idle = nodes[self._seq % len(nodes)].add_pod(f"idle-{self._seq}")
                self._event("pod added", pod=self._idle.name, node=self._idle.node.name)

    def _gc(self, cluster: LabCluster) -> None:
        for node in self._present(cluster):
            if node.datapath is not None:
                r = node.datapath.gc_conntrack()
                self.gc_deleted["ct"] += r.ct_deleted
                self.gc_deleted["nat"] += r.nat_deleted
        self.gc_deleted["runs"] += 1

    # -- samples ---------------------------------------------------------------------------------
    def _traffic_totals(self) -> dict[str, Any]:
        paths = [p for c in self._clients for p in c.latest.get("paths", [])]
        breaks = [b for c in self._clients for b in c.latest.get("breaks", [])]
        expected = [b for b in breaks if self.expected(b)]
        return {
            "long_lines": sum(p["answered"] for p in paths if p["kind"] == "long"),
            "bytes_checked": sum(p["bytes_checked"] for p in paths),
            "broken": len(breaks) - len(expected), "broken_expected": len(expected),
            "long_connect_failures": sum(p["failed"] for p in paths if p["kind"] == "long"),
            "new_connections": sum(p["sent"] for p in paths if p["kind"] == "new"),
            "connect_failures": sum(p["failed"] for p in paths if p["kind"] == "new"),
            "udp_sent": sum(p["sent"] for p in paths if p["kind"] == "udp"),
            "udp_lost": sum(p["failed"] for p in paths if p["kind"] == "udp"),
        }

    def _sample(self, cluster: LabCluster) -> dict[str, Any]:
        per_node = {n.name: map_counts(n) for n in self._present(cluster)}
        totals = {k: sum(per_node[n][k] for n in PERMANENT if n in per_node) for k in MAPS}
        rss, fds = _proc_status("self")
        others = [_proc_status(p.pid) for p in [c.proc for c in self._clients] + self._servers if p.poll() is None]
        s = {"t": round(time.monotonic() - self._t0, 1), **self._traffic_totals(), **totals,
             "rss_kib": rss, "fds": fds, "traffic_rss_kib": sum(r for r, _ in others),
             "traffic_fds": sum(f for _, f in others), "nodes": per_node, "churn_backends": len(self._churn)}
        self.samples.append(s)
        self.log(f"[soak {s['t']:6.0f}s] broken {s['broken']} (expected {s['broken_expected']}) "
                 f"connect-fail {s['connect_failures']}/{s['new_connections']} udp-lost {s['udp_lost']}/{s['udp_sent']} "
                 f"| a+b: ct {s['ct']} nat {s['nat']} aff {s['affinity']} revnat {s['revnat']} "
                 f"svc {s['lb_services']} be {s['lb_backends']} lxc {s['lxc']} "
                 f"| rss {rss // 1024} MiB fds {fds} | nodes {','.join(per_node)} churn-be {len(self._churn)}")
        return s

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Build the lab, soak, tear down; the result (see :func:`write`)."""
        started = time.time()
        with _signals():
            lab = Lab("soak")
            self.lab_prefix = lab.prefix
            try:
                final = self._soak(lab)
            finally:
                # A second Ctrl-C must not cut the teardown short (the record would then be left for
                # `ciliumlite lab destroy`): SIGINT is ignored until the lab is gone.
                old = signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    for client in self._clients:
                        if client.proc.poll() is None:
                            client.stop(timeout=10)
                    for proc in self._servers:
                        lab.processes.stop(proc)
                    self.log(f"[soak] tearing down lab {lab.prefix}")
                    lab.close()
                finally:
                    signal.signal(signal.SIGINT, old)
        return self._result(started, final)

    def _soak(self, lab: Lab) -> list[dict[str, Any]]:
        self.log(f"[soak] lab {lab.prefix}: 3 nodes, VXLAN; {self.seconds:.0f} s, sample every {self.sample:.0f} s")
        cluster = lab.cluster(list(NODES), routing="vxlan")
        client = cluster.node("a").add_pod("client")
        stable = [cluster.node("a").add_pod("stable-a"), cluster.node("b").add_pod("stable-b")]
        for pod in stable:
            self._server(pod)
        self._t0 = time.monotonic()
        self._add_backend(cluster)
        self._seq += 1  # the second initial backend on c
        pod = cluster.node(CHURN_NODE).add_pod(f"churn-{self._seq}")
        self._server(pod)
        self._churn.append(ChurnBackend(pod))
        self._services(cluster, stable)
        world = lab.outside()
        node_a, node_b = cluster.node("a").ip or "", cluster.node("b").ip or ""
        limit = self.seconds + 120
        inside = {"long": [["pod same-node", stable[0].ip, PORT, 1], ["pod cross-node", stable[1].ip, PORT, 2],
                           ["ClusterIP stable", STABLE_VIP, 80, 4], ["ClusterIP churn", CHURN_VIP, 80, 4]],
                  "new": [["ClusterIP stable", STABLE_VIP, 80], ["ClusterIP churn", CHURN_VIP, 80],
                          ["pod cross-node", stable[1].ip, PORT]],
                  "udp": [["ClusterIP stable UDP", STABLE_VIP, 80], ["pod cross-node UDP", stable[1].ip, PORT]],
                  "interval": 0.2, "new_interval": 0.1, "report": 1.0, "limit": limit}
        outside = {"long": [["NodePort a stable", node_a, STABLE_NODE_PORT, 2],
                            ["NodePort b churn", node_b, CHURN_NODE_PORT, 2]],
                   "new": [["NodePort a stable", node_a, STABLE_NODE_PORT], ["NodePort b stable", node_b, STABLE_NODE_PORT],
                           ["NodePort a churn", node_a, CHURN_NODE_PORT]],
                   "udp": [["NodePort a stable UDP", node_a, STABLE_NODE_PORT]],
                   "interval": 0.2, "new_interval": 0.2, "report": 1.0, "limit": limit}
        self._clients.append(TrafficClient(client, "client", inside))
        self._clients.append(TrafficClient(world, "world", outside))
        self._event("traffic started")
        self._t0 = time.monotonic()  # the soak's clock: churn, GC and samples from here
        end = self._t0 + self.seconds
        next_sample, next_gc, next_churn = self._t0, self._t0 + self.gc_interval, self._t0 + self.churn_interval
        step = 0
        self._sample(cluster)
        next_sample += self.sample
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_churn:
                self._step(cluster, step)
                step += 1
                next_churn = max(next_churn + self.churn_interval, time.monotonic())  # no burst after a stall
            if now >= next_gc:
                self._gc(cluster)
                next_gc = max(next_gc + self.gc_interval, time.monotonic())
            if time.monotonic() >= next_sample:
                self._sample(cluster)
                next_sample = max(next_sample + self.sample, time.monotonic() + 1.0)
            time.sleep(max(0.0, min(next_sample, next_gc, next_churn, end) - time.monotonic()))
        self._event("churn stopped")
        self._gc(cluster)
        self._sample(cluster)
        finals = [dict(c.stop(), source=c.name) for c in self._clients]
        return finals

    def _result(self, started: float, finals: list[dict[str, Any]]) -> dict[str, Any]:
        paths = [{**p, "source": f["source"]} for f in finals for p in f.get("paths", [])]
        breaks = [{**b, "source": f["source"], "expected": self.expected(b)}
                  for f in finals for b in f.get("breaks", [])]
        summary = {
            "long_lived_connections": sum(p["opened"] for p in paths if p["kind"] == "long"),
            "long_lived_lines_checked": sum(p["answered"] for p in paths if p["kind"] == "long"),
            "bytes_checked": sum(p["bytes_checked"] for p in paths),
            "broken": sum(1 for b in breaks if not b["expected"]),
            "broken_expected": sum(1 for b in breaks if b["expected"]),
            "reopen_failures": sum(p["failed"] for p in paths if p["kind"] == "long"),
            "new_connections": sum(p["sent"] for p in paths if p["kind"] == "new"),
            "connect_failures": sum(p["failed"] for p in paths if p["kind"] == "new"),
            "udp_sent": sum(p["sent"] for p in paths if p["kind"] == "udp"),
            "udp_lost": sum(p["failed"] for p in paths if p["kind"] == "udp"),
            "churn_events": len(self.events), "gc": dict(self.gc_deleted),
            "backends_removed": len(self.removed),
        }
        result: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "wall_seconds": round(time.time() - started, 1),
            "config": {"seconds": self.seconds, "sample": self.sample, "churn_interval": self.churn_interval,
                       "gc_interval": self.gc_interval, "nodes": list(NODES), "routing": "vxlan",
                       "lab": self.lab_prefix, "kernel": os.uname().release, "cpus": os.cpu_count(),
                       "commit": _commit(), "objects": os.environ.get("CILIUMLITE_OBJECTS", "the package's")},
            "summary": summary, "paths": paths, "breaks": breaks, "events": self.events,
            "samples": self.samples,
        }
        result["verdict"] = verdict(self.samples, summary)
        return result


def _commit() -> str:
    """The git commit of the code that ran: ``$SOAK_COMMIT`` (a run from an export of a commit), else
    the checkout's HEAD, else empty."""
    if os.environ.get("SOAK_COMMIT"):
        return os.environ["SOAK_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def bounded(series: list[float], ratio: float, slack: float) -> dict[str, Any]:
    """The growth rule: max of the last third <= max(ratio x max of the first third, first + slack)."""
    n = len(series) // 3
    if n < 1:
        return {"ok": False, "why": f"{len(series)} samples: too few for thirds"}
    first, last = max(series[:n]), max(series[-n:])
    limit = max(ratio * first, first + slack)
    return {"ok": last <= limit, "first_third_max": first, "last_third_max": last, "limit": round(limit, 1)}


def verdict(samples: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """Every rule of the soak and whether it held; ``ok`` is all of them."""
    rules: dict[str, dict[str, Any]] = {}
    for key, (ratio, slack) in RULES.items():
        rules[key] = bounded([float(s[key]) for s in samples], ratio, slack)
    rules["broken"] = {"ok": summary["broken"] == 0, "value": summary["broken"],
                       "expected_breaks": summary["broken_expected"]}
    rules["traffic"] = {"ok": summary["long_lived_lines_checked"] > 0 and summary["new_connections"] > 0
                        and summary["udp_sent"] > 0, "why": "every kind of traffic ran"}
    return {"ok": all(r["ok"] for r in rules.values()), "rules": rules,
            "reported": {"connect_failures": summary["connect_failures"], "reopen_failures": summary["reopen_failures"],
                         "udp_lost": summary["udp_lost"]}}


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown: summary, verdict, breaks, churn events (counted), the time series."""
    s, v, cfg = result["summary"], result["verdict"], result["config"]
    lines = [
        "# Soak", "",
        f"{result['started']}, {cfg['seconds']:.0f} s of churn under traffic ({result['wall_seconds']:.0f} s with "
        f"setup and teardown), lab `{cfg['lab']}`: nodes {', '.join(cfg['nodes'])} ({cfg['routing']}, in-process "
        f"datapaths), kernel {cfg['kernel']}, {cfg['cpus']} CPUs; sample every {cfg['sample']:.0f} s, a churn step "
        f"every {cfg['churn_interval']:.0f} s, conntrack GC every {cfg['gc_interval']:.0f} s; code at commit "
        f"{cfg.get('commit') or '?'}, BPF objects: {cfg.get('objects', '?')}. Written by "
        "`python -m ciliumlite.testing.soak` (`make soak`); rules in docs/testing.md#soak.", "",
        f"**Verdict: {'PASS' if v['ok'] else 'FAIL'}**", "",
        "| figure | value |", "|---|---|",
        f"| long-lived connections opened (reopened after a break) | {s['long_lived_connections']} |",
        f"| long-lived lines echoed and checked | {s['long_lived_lines_checked']:,} |",
        f"| bytes checked end to end | {s['bytes_checked']:,} |",
        f"| **connections broken (should not)** | **{s['broken']}** |",
        f"| connections broken with their backend (removed by the churn: expected) | {s['broken_expected']} |",
        f"| reopen failures of long-lived connections | {s['reopen_failures']} |",
        f"| new connections | {s['new_connections']:,} |",
        f"| **connect failures** | **{s['connect_failures']}** |",
        f"| UDP datagrams sent / lost | {s['udp_sent']:,} / {s['udp_lost']} |",
        f"| churn events / backends removed | {s['churn_events']} / {s['backends_removed']} |",
        f"| conntrack GC runs / CT deleted / NAT deleted | {s['gc']['runs']} / {s['gc']['ct']} / {s['gc']['nat']} |",
        "", "| rule | held | first third max | last third max | limit |", "|---|---|---|---|---|",
    ]
    for key, r in v["rules"].items():
        if "limit" in r:
            lines.append(f"| {key} bounded | {'yes' if r['ok'] else '**no**'} | {r['first_third_max']:.0f} | "
                         f"{r['last_third_max']:.0f} | {r['limit']:.0f} |")
        else:
            lines.append(f"| {key} | {'yes' if r['ok'] else '**no**'} | {r.get('value', r.get('why', ''))} | | |")
    lines += ["", "## Paths", "", "| source | path | kind | target | sent | answered | broken/failed | opened | slowest |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in result["paths"]:
        bad = p["broken"] if p["kind"] == "long" else p["failed"]
        lines.append(f"| {p['source']} | {p['label']} | {p['kind']} | {p['target']} | {p['sent']:,} | {p['answered']:,} | "
                     f"{bad} | {p['opened'] or ''} | {p['max_rtt'] * 1000:.0f} ms |")
    lines += ["", "## Breaks", ""]
    if result["breaks"]:
        lines += ["| source | path | backend | expected | lines | error |", "|---|---|---|---|---|---|"]
        lines += [f"| {b['source']} | {b['label']} | {b['server'] or '?'} | {'yes' if b['expected'] else '**no**'} | "
                  f"{b['lines']} | {b['error']} |" for b in result["breaks"]]
    else:
        lines.append("None.")
    errors = [f"{p['source']} {p['label']} ({p['kind']}): {e}" for p in result["paths"] for e in p["errors"]]
    if errors:
        lines += ["", "Errors seen (first of each path):", ""] + [f"- {e}" for e in errors[:40]]
    counts: dict[str, int] = {}
    for e in result["events"]:
        counts[e["event"]] = counts.get(e["event"], 0) + 1
    lines += ["", "## Churn", "", ", ".join(f"{k}: {n}" for k, n in counts.items()), "",
              "## Time series", "",
              "Map entries summed over the permanent nodes a and b (c leaves and joins); RSS and fds of the soak's "
              "process (every datapath) and of the traffic processes.", "",
              "| t (s) | broken | expected | connect fail / new | udp lost | CT | NAT | affinity | rev-NAT | LB svc | "
              "LB be | lxc | RSS MiB | fds | traffic RSS MiB | traffic fds | nodes |",
              "|" + "---|" * 17]
    for x in result["samples"]:
        lines.append(f"| {x['t']:.0f} | {x['broken']} | {x['broken_expected']} | {x['connect_failures']} / "
                     f"{x['new_connections']} | {x['udp_lost']} | {x['ct']} | {x['nat']} | {x['affinity']} | {x['revnat']} | "
                     f"{x['lb_services']} | {x['lb_backends']} | {x['lxc']} | {x['rss_kib'] / 1024:.1f} | {x['fds']} | "
                     f"{x['traffic_rss_kib'] / 1024:.1f} | {x['traffic_fds']} | {','.join(x['nodes'])} |")
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: str) -> tuple[str, str]:
    """``out`` (Markdown) and the same path with ``.json``; returns both paths."""
    md = Path(out)
    js = md.with_suffix(".json")
    md.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(result, indent=1) + "\n")
    md.write_text(markdown(result))
    return str(md), str(js)


@contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM stops the soak as Ctrl-C does (the lab is torn down); restored after.

    Only in this process: pyroute2 forks helper children and stops them with SIGTERM, and a child
    that inherited the handler must die as by default, never run the lab's teardown."""
    owner = os.getpid()

    def term(*_: object) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            os._exit(143)
        raise Stopped("SIGTERM")

    old = signal.signal(signal.SIGTERM, term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ciliumlite.testing.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="length of churn under traffic (default 600)")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--churn-interval", type=float, default=5.0, help="seconds between churn steps (default 5)")
    ap.add_argument("--gc-interval", type=float, default=10.0, help="seconds between conntrack GC runs (default 10)")
    ap.add_argument("--out", default="benchmarks/results/soak.md", help="Markdown result; .json beside it")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces, BPF)", file=sys.stderr)
        return 2
    soak = Soak(seconds=args.seconds, sample=args.sample, churn_interval=args.churn_interval,
                gc_interval=args.gc_interval, log=lambda text: print(text, flush=True))
    try:
        result = soak.run()
    except (KeyboardInterrupt, Stopped):
        print("soak: interrupted; the lab was torn down, nothing written", file=sys.stderr)
        return 130
    md, js = write(result, args.out)
    s, v = result["summary"], result["verdict"]
    print(f"soak: {'PASS' if v['ok'] else 'FAIL'}: broken {s['broken']} (expected {s['broken_expected']}), connect "
          f"failures {s['connect_failures']} of {s['new_connections']}, UDP lost {s['udp_lost']} of {s['udp_sent']}; "
          f"wrote {md} and {js}")
    for key, r in v["rules"].items():
        if not r["ok"]:
            print(f"soak: rule {key} failed: {r}", file=sys.stderr)
    return 0 if v["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
