"""restart: restore and reload of a node with 1,000 endpoints and 10,000 services vs building it; UDP lost in a reload.

Issue 11, "Benchmarks". Per round, on one node (``DatapathConfig`` with no routing, kube-proxy
replacement, per-packet LB; its own namespace; its state directory in the default run dir):

- **build**: ``Datapath(config, netns)``, then ``add_endpoint`` for each of ``ENDPOINTS`` pod
  namespaces (ciliumlite makes each veth pair, configures both ends, writes ``cilium_lxc`` and
  attaches ``cil_from_container``: the product path, as the agent's CNI ADD takes it), then
  ``upsert_service`` for each of ``SERVICES`` ClusterIP services (one backend each, a pod): the
  time from nothing to the node as it runs. The pod namespaces themselves are made once, before
  the rounds (``ip -batch``: a pod exists before its CNI ADD), and recorded for ``lab destroy
  --orphans`` in case this process dies.
- **restore**: ``detach()`` (untimed), then ``Datapath.restore(config, netns)``: re-open the pins,
  read and check the state directory (one file per endpoint and service), adopt every link.
- **reload**: ``RELOADS`` calls of ``reload()`` on the restored node (every object loaded again,
  every attach point swapped); the round's value is their median.
- **UDP under reload**: an ``iperf3 -u`` stream at ``RATE`` from pod 0 to pod 1 for
  ``STREAM_S`` seconds, once with no reload (the control) and once with ``RELOADS`` reloads in its
  middle; the server's intervals (0.1 s) give the datagrams lost in the reload window and outside
  it. The pod's UDP receive-buffer errors (``/proc/net/snmp`` in its namespace) and the datapath's
  drop counters are read around each stream, to tell the datapath's losses from the receiver's.

Ratios are paired per round: ``restore ÷ build``, ``reload ÷ build``. Goal: 0 datagrams lost in the
reload window. Then ``close()`` removes the node (untimed) and the next round builds it again.
Everything (the node, its pins and state, the pod namespaces, iperf3 processes by pid) is removed
also when a step fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import Context, Measurement, Summary, fmt_ci, fmt_value, ratio
from benchmarks.suites._netbench import cv_text, info, verdict, wait_quiet
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.reasons import describe, is_drop
from ciliumlite.node import Datapath
from ciliumlite.ownership import Record
from ciliumlite.service import Backend, Frontend, Service

DESCRIPTION = ("restart: restore and reload() of a node with 1,000 endpoints and 10,000 services vs building it "
               "from scratch; UDP datagrams lost during a reload (iperf3)")
NEEDS_ROOT = True
DEFAULT_REPEATS = 3          # rounds; each builds the node from scratch (about 2.5 min a round)

ENDPOINTS, QUICK_ENDPOINTS = 1000, 20
SERVICES, QUICK_SERVICES = 10_000, 200
RELOADS = 3                  # per round: timed one by one, and the ones inside the UDP stream
RATE = "50M"                 # iperf3 -b: ~5,200 datagrams/s of 1,200 bytes
DATAGRAM = 1200
STREAM_S, QUICK_STREAM_S = 8.0, 4.0
RELOAD_AT_S = 2.0            # into the stream, when the reloads start
INTERVAL_S = 0.1             # iperf3 -i: the resolution of the reload window
IPERF_PORT = 5201
POD_CIDR = "10.244.128.0/22"  # 1,021 pod addresses
FIRST_SERVICE = int(ipaddress.IPv4Address("10.96.0.10"))
BUILD_TIMEOUT_S = 900.0      # a round's build that takes longer fails the suite

BUILD, RESTORE, RELOAD = "build from scratch", "restore", "one reload()"
R_RESTORE, R_RELOAD = "build ÷ restore", "build ÷ reload"
LOST_RELOAD, LOST_CONTROL = "UDP lost in the reload window", "UDP lost, control stream (no reload)"
GOALS = ((LOST_RELOAD, "<=", 0.0, "issue 11: no packet lost during a reload"),)


@dataclass
class _Round:
    build_s: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    restore_s: float = 0.0
    reload_s: list[float] = field(default_factory=list)
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)


@contextlib.contextmanager
def _pods(ctx: Context, prefix: str, n: int) -> Iterator[list[str]]:
    """``n`` pod namespaces (one ``ip -batch``), recorded before they are made; removed at the end."""
    record = Record(f"bench-restart-{os.getpid()}", prefix=prefix, kind="benchmark")
    names = [f"{prefix}-node"] + [f"{prefix}-p{i}" for i in range(n)]
    try:
        for name in names:
            record.add("netns", name)
        t0 = time.monotonic()
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns add {x}\n" for x in names), text=True,
                       check=True, capture_output=True, timeout=300)
        subprocess.run(["ip", "-n", names[0], "link", "set", "lo", "up"], check=True, timeout=10)
        ctx.log(f"{len(names)} namespaces in {time.monotonic() - t0:.1f} s")
        yield names
    finally:
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {x}\n" for x in names
                                                                      if os.path.exists(f"/var/run/netns/{x}")),
                       text=True, capture_output=True, timeout=300)
        for name in names:
            if not os.path.exists(f"/var/run/netns/{name}"):
                record.drop_name("netns", name)
        record.close()  # kept (for lab destroy --orphans) only if a namespace could not be removed


def _service(i: int, backend: str) -> Service:
    return Service(f"svc-{i:05d}", Frontend(str(ipaddress.IPv4Address(FIRST_SERVICE + i)), 80),
                   [Backend(backend, 8080)])


def _build(cfg: DatapathConfig, node_ns: str, pods: list[str], n_services: int, rnd: _Round) -> Datapath:
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    t0 = time.perf_counter()
    dp = Datapath(cfg, netns=node_ns)
    try:
        t1 = time.perf_counter()
        ips = [str(dp.add_endpoint(pod, name=f"p{i}").ip) for i, pod in enumerate(pods)]
        t2 = time.perf_counter()
        tenth = max(1, n_services // 10)
        marks = {}
        for i in range(n_services):
            if i in (tenth, n_services - tenth):
                marks[i] = time.perf_counter()
            dp.upsert_service(_service(i, ips[i % len(ips)]))
            if i % 1000 == 999 and time.monotonic() > deadline:
                raise TimeoutError(f"building the node took more than {BUILD_TIMEOUT_S:.0f} s")
        t3 = time.perf_counter()
    except BaseException:
        dp.close(remove=True)
        raise
    rnd.build_s = t3 - t0
    rnd.parts = {"Datapath()": t1 - t0, "add_endpoint × N": t2 - t1, "upsert_service × N": t3 - t2,
                 "first tenth of the services": marks[tenth] - t2,
                 "last tenth of the services": t3 - marks[n_services - tenth]}
    return dp


def _snmp_udp(ns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True,
                         check=True, timeout=10).stdout.splitlines()
    head, vals = [ln.split()[1:] for ln in out if ln.startswith("Udp:")][:2]
    return dict(zip(head, (int(v) for v in vals), strict=True))


def _drops(dp: Datapath) -> Counter[str]:
    out: Counter[str] = Counter()
    for m in dp.metrics():
        if is_drop(m.reason):
            out[describe(m.reason)] += m.packets
    return out


def _stream(ctx: Context, dp: Datapath, client: str, server: str, server_ip: str, seconds: float,
            reloads: int) -> dict[str, Any]:
    """One iperf3 UDP stream client -> server; ``reloads`` reloads from RELOAD_AT_S into it."""
    procs: list[subprocess.Popen[str]] = []
    try:
        srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(srv)
        time.sleep(0.3)
        snmp0, drops0 = _snmp_udp(server), _drops(dp)
        cli = subprocess.Popen(["ip", "netns", "exec", client, "iperf3", "-c", server_ip, "-p", str(IPERF_PORT),
                                "-u", "-b", RATE, "-l", str(DATAGRAM), "-t", f"{seconds:g}", "-i", f"{INTERVAL_S:g}",
                                "-J", "--get-server-output"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        procs.append(cli)
        t_start = time.monotonic()
        window: tuple[float, float] | None = None
        if reloads:
            time.sleep(RELOAD_AT_S)
            w0 = time.monotonic() - t_start
            for _ in range(reloads):
                dp.reload()
            window = (w0, time.monotonic() - t_start)
        out, err = cli.communicate(timeout=seconds + 30)
        snmp1, drops1 = _snmp_udp(server), _drops(dp)
        if cli.returncode != 0:
            raise RuntimeError(f"iperf3 client failed: {err[-500:]}")
        return _udp_result(json.loads(out), window) | {
            "rcvbuf_errors": snmp1.get("RcvbufErrors", 0) - snmp0.get("RcvbufErrors", 0),
            "datapath_drops": sum((drops1 - drops0).values()), "drop_reasons": dict(drops1 - drops0)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # by its pid: ours
            with contextlib.suppress(Exception):
                p.wait(timeout=10)


def _udp_result(res: dict[str, Any], window: tuple[float, float] | None) -> dict[str, Any]:
    """Totals from the client's JSON; losses per reload window from the server's 0.1-s intervals.

    The server's clock starts with the stream's first datagram (a few ms after the client's
    start): intervals overlapping the window widened by one interval count as in it."""
    total = res["end"]["sum"]
    server = res.get("server_output_json") or {}
    lost_in, lost_out = 0, 0
    for iv in server.get("intervals", []):
        s = iv["sum"]
        inside = window is not None and s["start"] < window[1] + INTERVAL_S and s["end"] > window[0] - INTERVAL_S
        if inside:
            lost_in += int(s.get("lost_packets", 0))
        else:
            lost_out += int(s.get("lost_packets", 0))
    return {"packets": int(total.get("packets", 0)), "lost": int(total.get("lost_packets", 0)),
            "lost_in_window": lost_in, "lost_outside": lost_out,
            "window_s": (window[1] - window[0]) if window else 0.0}


def run(ctx: Context) -> list[Measurement]:
    n_eps = QUICK_ENDPOINTS if ctx.quick else ENDPOINTS
    n_svc = QUICK_SERVICES if ctx.quick else SERVICES
    seconds = QUICK_STREAM_S if ctx.quick else STREAM_S
    prefix = f"clbr{os.getpid() % 100000}"
    ctx.params.update(endpoints=n_eps, services=n_svc, rounds=ctx.repeats, reloads_per_round=RELOADS,
                      udp_rate=RATE, datagram_bytes=DATAGRAM, stream_s=seconds, reload_at_s=RELOAD_AT_S,
                      interval_s=INTERVAL_S, tc_mode="auto (tcx)", socket_lb="off (no cgroup): per-packet LB",
                      state_dir="default (/run/ciliumlite/<node>)", pod_cidr=POD_CIDR)
    rounds: list[_Round] = []
    with _pods(ctx, prefix, n_eps) as names:
        node_ns, pods = names[0], names[1:]
        cfg = DatapathConfig(node_name=f"{prefix}-n", pod_cidr=POD_CIDR)
        for r in range(ctx.repeats):
            wait_quiet(ctx)
            rnd = _Round()
            dp = _build(cfg, node_ns, pods, n_svc, rnd)
            try:
                ctx.log(f"round {r + 1}: built in {rnd.build_s:.1f} s ("
                        + ", ".join(f"{k} {v:.1f} s" for k, v in rnd.parts.items()) + ")")
                dp.detach()
                t0 = time.perf_counter()
                dp = Datapath.restore(cfg, netns=node_ns)
                rnd.restore_s = time.perf_counter() - t0
                if len(dp.endpoints()) != n_eps or len(dp.services()) != n_svc:
                    raise RuntimeError(f"restored {len(dp.endpoints())} endpoints, {len(dp.services())} services")
                for _ in range(RELOADS):
                    t0 = time.perf_counter()
                    dp.reload()
                    rnd.reload_s.append(time.perf_counter() - t0)
                ip1 = str(dp.endpoints()[1].ip)
                order = ("control", "reload") if r % 2 == 0 else ("reload", "control")
                for kind in order:
                    rnd.streams[kind] = _stream(ctx, dp, pods[0], pods[1], ip1, seconds,
                                                RELOADS if kind == "reload" else 0)
                ctx.log(f"round {r + 1}: restore {rnd.restore_s * 1e3:.0f} ms, reload "
                        f"{statistics.median(rnd.reload_s) * 1e3:.0f} ms; UDP "
                        + "; ".join(f"{k}: {v['lost']} of {v['packets']} lost ({v['lost_in_window']} in the "
                                    f"window), rcvbuf errors {v['rcvbuf_errors']}, drops {v['datapath_drops']}"
                                    for k, v in rnd.streams.items()))
            finally:
                t0 = time.monotonic()
                dp.close(remove=True)
                ctx.log(f"round {r + 1}: node removed in {time.monotonic() - t0:.1f} s")
            rounds.append(rnd)
    return _measurements(rounds, n_eps, n_svc)


def _measurements(rounds: list[_Round], n_eps: int, n_svc: int) -> list[Measurement]:
    size = f"{n_eps:,} endpoints, {n_svc:,} services"
    build = [r.build_s for r in rounds]
    restore = [r.restore_s for r in rounds]
    reload = [statistics.median(r.reload_s) for r in rounds]
    ms = [Measurement.from_samples(BUILD, build, "s", group="times", note=f"{size}: Datapath() + add_endpoint "
                                   "(veth made by ciliumlite) + upsert_service, each through the API"),
          Measurement.from_samples(RESTORE, [x * 1e3 for x in restore], "ms", group="times",
                                   note="Datapath.restore after detach(): pins, state directory, links"),
          Measurement.from_samples(RELOAD, [x * 1e3 for x in reload], "ms", group="times",
                                   note=f"median of {RELOADS} per round on the restored node"),
          ratio(R_RESTORE, build, restore, group="ratios", note="paired per round: how many times faster a restore is"),
          ratio(R_RELOAD, build, reload, group="ratios", note="paired per round: how many times faster a reload is")]
    for part in rounds[0].parts:
        ms.append(Measurement.from_samples(f"build: {part}", [r.parts[part] for r in rounds], "s", group="build"))
    ms.append(Measurement.from_samples("build: per endpoint", [r.parts["add_endpoint × N"] / n_eps * 1e3
                                                                 for r in rounds], "ms", group="build"))
    ms.append(Measurement.from_samples("build: per service", [r.parts["upsert_service × N"] / n_svc * 1e3
                                                                for r in rounds], "ms", group="build"))
    ms.append(ratio("build: last ÷ first tenth of the services", [r.parts["last tenth of the services"] for r in rounds],
                    [r.parts["first tenth of the services"] for r in rounds], group="build",
                    note="1 when an upsert costs the same whatever the services before it (with the single state "
                    "file: 8x, control_plane part B's first and last 1,000 in memory, 13 s and 105 s)"))
    rel = [r.streams["reload"] for r in rounds]
    ctl = [r.streams["control"] for r in rounds]
    ms += [Measurement.from_samples(LOST_RELOAD, [s["lost_in_window"] for s in rel], "datagrams", group="udp",
                                    note=f"{RELOADS} reloads in a {RATE}bit/s iperf3 UDP stream, pod 0 -> pod 1; "
                                    "server intervals overlapping the window ±0.1 s", kind="info"),
           Measurement.from_samples("UDP lost, reload stream, outside the window", [s["lost_outside"] for s in rel],
                                    "datagrams", group="udp", kind="info"),
           Measurement.from_samples(LOST_CONTROL, [s["lost"] for s in ctl], "datagrams", group="udp", kind="info"),
           Measurement.from_samples("UDP datagrams sent per stream", [s["packets"] for s in rel + ctl], "datagrams",
                                    group="udp", kind="info"),
           Measurement.from_samples("reload window", [s["window_s"] * 1e3 for s in rel], "ms", group="udp",
                                    kind="info", note=f"{RELOADS} reloads back to back"),
           info("receiver UDP rcvbuf errors, reload streams", sum(s["rcvbuf_errors"] for s in rel), group="udp"),
           info("receiver UDP rcvbuf errors, control streams", sum(s["rcvbuf_errors"] for s in ctl), group="udp"),
           info("datapath drops during the reload streams", sum(s["datapath_drops"] for s in rel), group="udp",
                note=_reasons(rel)),
           info("datapath drops during the control streams", sum(s["datapath_drops"] for s in ctl), group="udp",
                note=_reasons(ctl))]
    return ms


def _reasons(streams: list[dict[str, Any]]) -> str:
    total: Counter[str] = Counter()
    for s in streams:
        total.update(s["drop_reasons"])
    return ", ".join(f"{k}: {v}" for k, v in sorted(total.items())) or "none"


def summarize(ms: list[Measurement]) -> list[Summary]:
    by = {m.name: m for m in ms}
    rows = [[m.name, fmt_value(m.value, m.unit) + (f" {m.unit}" if m.unit != "x" else ""),
             fmt_value(m.min, m.unit) if m.kind != "ratio" else fmt_ci(m), cv_text(m), m.note]
            for m in ms if m.group in ("times", "ratios")]
    udp = [[m.name, f"{m.value:g}" if m.unit != "ms" else f"{m.value:.0f} ms", f"{m.min:g}" if m.unit != "ms" else
            f"{m.min:.0f} ms", str(m.repeats), m.note] for m in ms if m.group == "udp"]
    build = [[m.name, fmt_value(m.value, m.unit) + (f" {m.unit}" if m.unit != "x" else ""),
              fmt_ci(m) if m.kind == "ratio" else cv_text(m)] for m in ms if m.group == "build"]
    goals = [[name, fmt_value(by[name].value, "x" if by[name].unit == "x" else ""), f"{op} {thr:g}",
              verdict(by[name], op, thr), src] for name, op, thr, src in GOALS if name in by]
    return [Summary("restore and reload vs building the node (median of rounds)",
                    ["what", "median", "min / 95% CI", "CV", "how"], rows),
            Summary("build from scratch, by part (median of rounds)", ["part", "median", "CV / 95% CI"], build),
            Summary("UDP during reloads (median of rounds; counters summed)", ["what", "median", "min", "rounds",
                                                                               "note"], udp),
            Summary("goals", ["what", "median", "goal", "verdict", "source"], goals,
                    note="datagrams lost in the window: iperf3's server intervals that overlap the reloads; "
                         "rcvbuf errors are the receiving socket's (not the datapath's) losses")]
