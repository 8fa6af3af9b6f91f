"""policy: what network policy enforcement costs per packet, and how fast a policy change lands.

Issue 17's benchmarks, three parts, all on lab clusters (``routing="vxlan"``, ``bgp=False``):

1. **Per-packet cost.** Four labs, each two nodes; n1 has the client pod ``c`` (``app: client``)
   and a server pod ``s``, n2 a server pod ``t`` (both ``app: server``), all in namespace ``bench``.
   Two paths per lab: same node (c -> s) and cross node over VXLAN (c -> t). Arms:

   - ``off``: ``enable_policy=False`` (no policy code on the path);
   - ``on``: ``enable_policy=True`` and no policy selecting the pods (nothing enforced);
   - ``allow``: a CiliumNetworkPolicy selecting the servers with ``ingress: fromEntities: [all]``;
   - ``1k``: one CiliumNetworkPolicy selecting the servers with 1,000 ingress rules, rule *i*
     ``fromEndpoints: matchLabels: {bench-peer: i}``, plus one rule admitting the client. The
     1,000 peers are endpoint records of a node that is not there (``10.0.0.250``), 1,000
     different label sets so 1,000 identities allocated by the store; every server's policy map
     holds one entry per peer identity (the counter table says how many) and every ipcache the
     peers' /32s.

   - ``off2``: a control, a second lab exactly like ``off``: ``off2 ÷ off`` is how far two
     identical labs differ (lab placement: memory, cache, which namespaces), the floor under
     every other ratio; no goal.

   Per arm and round: sockperf TCP ping-pong latency (RR, half round trip) and the connect /
   request / response / close rate of ``benchmarks/tools/crr.c`` (CRR), ``_netbench.Bench``;
   rounds interleaved over all arms (start rotated), ratios vs ``off`` of the same path paired
   per round with bootstrap 95 % CIs. Then the **interleaved RR** (``Bench.rr_interleaved``,
   ``crr rrmix``): one client process with one TCP connection per arm, 200 ping-pongs of 64 B
   per arm per rotation, the arm order rotated, for ``RRMIX_SECONDS``; each arm's per-rotation
   block mean and median paired with ``off``'s of the same rotation. Separate sockperf runs
   seconds apart carry this VM's drift (a CV of 6-15 % between rounds) and cannot resolve a
   5 % goal; rotations milliseconds apart share it, and their ratios have CIs of about ±0.5 %.
   Goal (issue 17): RR latency ≤ 1.05 × no policy, on the interleaved RR.

2. **Policy change -> enforced on every node**, for 1, 10 and 30 nodes (one pod per node, one
   client record). Each round applies a new version of one policy (its port changes) through
   ``LabCluster.apply_policy``; the in-process ``Cluster`` syncs every member synchronously, so
   each node's time is when its ``Datapath.sync_policy`` returned, measured from the apply
   (the suite wraps the method on the instance; no ciliumlite change). After each round every
   node's pinned policy map is read back and must hold the new entry. p50/p99 over nodes × rounds.

3. **Scale.** (a) A 1,000-rule policy set on one node with four server pods and 1,000 peer
   identities: the time of ``apply_policy`` (engine compute + map writes for the node's
   endpoints), and the engine's compute alone; the policy is deleted (untimed) between rounds.
   (b) 10,000 identities: allocating them (``InMemoryStore.allocate_identity`` + records), the
   node filling its ipcache and a policy map selecting all of them (``Datapath.sync_policy`` from
   an ipcache holding none of them), and then with 10k present the update time of one change:
   one new endpoint, and one policy edit.

   The **etcd arm** of part 2 is the same change through a real control plane: ``Lab(store="etcd")``
   (etcd in the fabric namespace, one ``ciliumlite agent --enable-policy default`` process per
   node, as ``control_plane`` runs them). Each round writes the policy to etcd (the lab's client,
   ``put_policy``: the HTTP round trip is part of the time) and polls every node's pinned policy
   map (``PolicyMaps`` from the agent's pins, every 1 ms) until the pod's map holds the new entry;
   a node's time is its first sight. p50/p99 over nodes × rounds, and the slowest node per round.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import Context, Measurement, Summary, fmt_value, ratio
from benchmarks.suites._netbench import (
    CRR,
    CRR_P50,
    CRR_P99,
    LAT_AVG,
    LAT_P50,
    LAT_P99,
    RRMIX_BLOCK,
    Bench,
    Cells,
    NetArm,
    Plan,
    QuietGate,
    bpf_stats_pass,
    datapath_counters,
    info,
    mname,
    prepare_arm,
    ratio_text,
    require_tools,
    rname,
    tail_summaries,
    verdict,
)
from ciliumlite.cluster.store import EndpointRecord, InMemoryStore
from ciliumlite.lab import Lab
from ciliumlite.lab.hosts import Pod
from ciliumlite.node.enforcement import policy_endpoint
from ciliumlite.node.policy import PolicyMaps
from ciliumlite.policy.engine import PolicyEngine
from ciliumlite.policy.labels import pod_labels
from ciliumlite.policy.mapstate import PolicyKey
from ciliumlite.policy.rules import parse_policy_input

DESCRIPTION = ("network policy: per-packet cost (RR latency, CRR; same node and VXLAN cross node; off / on / "
               "allow-all / 1,000 rules over 1,000 identities), policy change -> enforced on 1/10/30 nodes, "
               "1,000-rule apply, 10k identities")
NEEDS_ROOT = True
DEFAULT_REPEATS = 5

# -- parameters ------------------------------------------------------------------------------------
ARMS_ENV = "CILIUMLITE_BENCH_POL_ARMS"
NICE_ENV = "CILIUMLITE_BENCH_POL_NICE"
PARTS_ENV = "CILIUMLITE_BENCH_POL_PARTS"     # comma-separated subset of packet,propagation,scale
SECONDS, QUICK_SECONDS, WARMUP_SECONDS = 2.0, 1.0, 1.0
RRMIX_SECONDS, QUICK_RRMIX_SECONDS = 60.0, 5.0   # the interleaved RR: all arms in one run
NS = "bench"
N_PEERS = 1_000
QUICK_PEERS = 100
N_IDENTITIES = 10_000
QUICK_IDENTITIES = 1_000
GHOST_NODE, GHOST_IP = "ghost", "10.0.0.250"   # the peers' node: on the underlay plan, never built
PROP_NODES = (1, 10, 30)
QUICK_PROP_NODES = (1, 3)
PROP_ROUNDS, QUICK_PROP_ROUNDS = 20, 3
ETCD_POLL_S = 0.001         # the etcd arm's poll of the pinned maps: the resolution of its times
ETCD_TIMEOUT_S = 30.0        # a change some agent has not enforced by then fails the part
SCALE_ROUNDS, QUICK_SCALE_ROUNDS = 5, 2
SCALE_PODS = 4
POLICY_MAP_10K = 16_384      # DatapathConfig.policy_map_size of the 10k lab (the default, ≥ 10k + a few)

ARMS = ("off", "on", "allow", "1k", "off2")
NO_POLICY = ("off", "off2")
CONTROL = "off2"   # a second no-policy lab: how far two identical labs differ (no goal)
TITLES = {"off2": "control: a second no-policy lab (the spread between identical labs)",
          "off": "no policy (enable_policy off)", "on": "enable_policy on, no policy selects the pods",
          "allow": "allow-all policy (fromEntities: all)", "1k": "1,000 rules over 1,000 identities"}
PATHS = ("same", "cross")
PATH_TITLES = {"same": "same node", "cross": "cross node (VXLAN)"}
METRICS: dict[str, tuple[str, str]] = {LAT_AVG: ("us", "time"), LAT_P50: ("us", "time"), LAT_P99: ("us", "time"),
                                       CRR: ("conn/s", "info"), CRR_P50: ("us", "time"), CRR_P99: ("us", "time")}
RATIO_METRICS = (LAT_AVG, LAT_P50, CRR)
IRR_AVG, IRR_P50 = "interleaved RR avg", "interleaved RR p50"   # per rotation: block mean / median
LAT_GOAL = 1.05


def _key(arm: str, path: str) -> str:
    return f"{arm}/{path}"


def _parts() -> set[str]:
    want = {p.strip() for p in os.environ.get(PARTS_ENV, "").split(",") if p.strip()}
    allp = {"packet", "propagation", "scale"}
    if want - allp:
        raise ValueError(f"{PARTS_ENV}: unknown part(s) {sorted(want - allp)}; have {', '.join(sorted(allp))}")
    return want or allp


# -- policies and peers ------------------------------------------------------------------------------
def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    return pod_labels(NS, labels).as_dict()


def peer_records(store: InMemoryStore, n: int, first_octet: int = 160) -> list[EndpointRecord]:
    """``n`` endpoint records on the ghost node, each its own label set, so its own identity,
    allocated by ``store``; addresses from 10.244.<first_octet>.2 up (outside the labs' pod CIDRs)."""
    out = []
    for i in range(n):
        ip = f"10.244.{first_octet + i // 250}.{2 + i % 250}"
        labels = _labels({"bench-peer": str(i)})
        out.append(EndpointRecord(ip, GHOST_NODE, GHOST_IP, store.allocate_identity(labels), labels,
                                  name=f"{NS}/peer-{i}"))
    return out


def client_record(store: Any, ip: str = "10.244.159.2") -> EndpointRecord:
    """A client endpoint on the ghost node (``app: client``), for policies to admit; its identity
    allocated by ``store`` (an ``InMemoryStore`` or an etcd lab's client)."""
    labels = _labels({"app": "client"})
    return EndpointRecord(ip, GHOST_NODE, GHOST_IP, store.allocate_identity(labels), labels, name=f"{NS}/client")


def cnp(name: str, ingress: list[dict[str, Any]], selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A CiliumNetworkPolicy in namespace ``bench`` selecting ``app: server``."""
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"endpointSelector": {"matchLabels": dict(selector or {"app": "server"})}, "ingress": ingress}}


def rules_policy(n: int, name: str = "bench-1k") -> dict[str, Any]:
    """``n`` ingress rules, one per peer identity, plus one admitting ``app: client``."""
    rules = [{"fromEndpoints": [{"matchLabels": {"bench-peer": str(i)}}]} for i in range(n)]
    rules.append({"fromEndpoints": [{"matchLabels": {"app": "client"}}]})
    return cnp(name, rules)


ALLOW_ALL = cnp("bench-allow", [{"fromEntities": ["all"]}])


def map_entries(pod: Pod) -> int:
    """Entries of ``pod``'s policy map, read back from the pinned map (0 if none)."""
    assert pod.node.datapath is not None
    state = pod.node.datapath.policy.get(pod.endpoint)
    return 0 if state is None else len(state)


# -- part 1: per-packet cost ---------------------------------------------------------------------------
class RRBench(Bench):
    """``Bench`` without iperf3: this suite asks for RR latency and CRR only."""

    def measure(self, arm: NetArm, secs: float) -> dict[str, float]:
        """Latency and CRR, one after the other."""
        return {**self.latency(arm, secs), **self.crr(arm, secs)}


@dataclass
class _PacketLab:
    arm: str
    lab: Lab
    pods: dict[str, Pod] = field(default_factory=dict)


def _packet_lab(stack: contextlib.ExitStack, arm: str, n_peers: int) -> _PacketLab:
    store = InMemoryStore()
    if arm == "1k":
        for r in peer_records(store, n_peers):
            store.put_endpoint(r)   # before any node watches: one sync at join, not one per record
    lab = Lab(f"pol-pk-{arm}")
    stack.callback(lab.close)
    cl = lab.cluster(["n1", "n2"], routing="vxlan", bgp=False, store=store, enable_policy=arm not in NO_POLICY)
    n1, n2 = cl.node("n1"), cl.node("n2")
    if arm not in NO_POLICY:
        cl.set_namespace(NS)
    pl = _PacketLab(arm, lab)
    for node, name, app in ((n1, "c", "client"), (n1, "s", "server"), (n2, "t", "server")):
        pl.pods[name] = node.add_pod(name) if arm in NO_POLICY else \
            node.add_pod(name, namespace=NS, labels={"app": app})
    if arm == "allow":
        cl.apply_policy(ALLOW_ALL)
    elif arm == "1k":
        cl.apply_policy(rules_policy(n_peers))
    return pl


def _net_arm(pl: _PacketLab, path: str) -> NetArm:
    c, srv = pl.pods["c"], pl.pods["s" if path == "same" else "t"]
    return NetArm(_key(pl.arm, path), srv.ip, c.run, srv.run, srv.popen, pl.lab.processes.stop, c.netns, srv.netns,
                  node=srv.node)


def _packet(ctx: Context) -> list[Measurement]:
    require_tools("policy", ("sockperf", "taskset", "ss", "ping", "ip"))
    plan = Plan.make(ctx, ARMS, arms_env=ARMS_ENV, nice_env=NICE_ENV, secs=SECONDS, quick_secs=QUICK_SECONDS,
                     warmup_secs=WARMUP_SECONDS)
    n_peers = QUICK_PEERS if ctx.quick else N_PEERS
    ctx.params.update(plan.params(ctx), peers=n_peers)
    out: list[Measurement] = []
    with contextlib.ExitStack() as stack:
        base = plan.bench(stack)
        bench = RRBench(base.crr_bin, base.client_cpu, base.server_cpu, base.nice)
        t0 = time.perf_counter()
        labs = {a: _packet_lab(stack, a, n_peers) for a in plan.arms}
        ctx.log(f"built {len(labs)} labs in {time.perf_counter() - t0:.1f} s")
        for a, pl in labs.items():
            if a not in NO_POLICY:
                for p in ("s", "t"):
                    out.append(info(f"{a}: policy map entries of server {p}", map_entries(pl.pods[p]),
                                    group="setup", note="read back from the pinned map"))
        arms = {_key(a, p): _net_arm(pl, p) for a, pl in labs.items() for p in PATHS}
        for net in arms.values():
            prepare_arm(stack, bench, net)
        gate = QuietGate(ctx, 10.0, 60.0)
        gate.begin(30.0)
        order = list(arms)
        for rnd in range(ctx.warmup + plan.rounds):
            warm = rnd < ctx.warmup
            shift = rnd % len(order)
            for i, key in enumerate(order[shift:] + order[:shift]):
                gate.before(key, first=rnd == 0 and i == 0)
                got = bench.measure(arms[key], plan.warmup_secs if warm else plan.secs)
                ctx.log(f"round {rnd + 1}{' (warmup)' if warm else ''} {key}: latency {got[LAT_AVG]:.1f} us "
                        f"(p50 {got[LAT_P50]:.1f}), CRR {got[CRR]:,.0f}/s")
                if not warm:
                    for m, v in got.items():
                        arms[key].samples.setdefault(m, []).append(v)
        for key, net in arms.items():
            for metric, (unit, kind) in METRICS.items():
                out.append(Measurement.from_samples(mname(key, metric), net.samples[metric], unit, group=key,
                                                    kind=kind))
            out.append(info(f"{key}: crr errors", net.counters.get("crr errors", 0)))
        for a in plan.arms:
            if a == "off":
                continue
            for p in PATHS:
                for metric in RATIO_METRICS:
                    out.append(ratio(rname(_key(a, p), _key("off", p), metric), arms[_key(a, p)].samples[metric],
                                     arms[_key("off", p)].samples[metric], group="ratios"))
            for n in {id(p.node): p.node for p in labs[a].pods.values()}.values():
                out += datapath_counters(f"{a}: {n.name}", n)
        out += _interleaved(ctx, bench, arms, gate)
        out += bpf_stats_pass(ctx, plan, bench, arms)
        out.append(gate.start_info())
    return out


def _interleaved(ctx: Context, bench: Bench, arms: Mapping[str, NetArm], gate: QuietGate) -> list[Measurement]:
    """The goal's measurement: every arm's RR in one interleaved run (``Bench.rr_interleaved``), each
    arm's per-rotation block mean and median paired with ``off`` of the same path in the same rotation.
    Separate sockperf runs seconds apart (the rounds above) carry the VM's drift between them, a
    CV of 6-15 % that hides a 5 % goal; rotations milliseconds apart share it."""
    secs = QUICK_RRMIX_SECONDS if ctx.quick else RRMIX_SECONDS
    ctx.params.update(rrmix_seconds=secs, rrmix_block=RRMIX_BLOCK)
    gate.before("interleaved RR", first=False)
    got = bench.rr_interleaved(arms, secs)
    out: list[Measurement] = []
    for key, t in got.items():
        ctx.log(f"interleaved {key}: avg {t['avg_us']:.2f} us, p50 {t['p50_us']:.2f}, p99 {t['p99_us']:.2f} "
                f"({t['n']:,} round trips)")
        out.append(Measurement.from_samples(mname(key, IRR_AVG), t["block_avg_us"], "us", group=key, kind="time",
                                            note=f"{len(t['block_avg_us'])} rotations of {RRMIX_BLOCK}"))
        out.append(Measurement.from_samples(mname(key, IRR_P50), t["block_p50_us"], "us", group=key, kind="time"))
        out.append(info(f"{key}: interleaved RR p99 (all round trips)", t["p99_us"], "us", group=key))
    for key in got:
        arm, path = key.split("/")
        if arm == "off" or _key("off", path) not in got:
            continue
        off = got[_key("off", path)]
        out.append(ratio(rname(key, _key("off", path), IRR_AVG), got[key]["block_avg_us"], off["block_avg_us"],
                         group="ratios"))
        out.append(ratio(rname(key, _key("off", path), IRR_P50), got[key]["block_p50_us"], off["block_p50_us"],
                         group="ratios"))
    return out


# -- part 2: policy change -> enforced on every node ----------------------------------------------------
def _timed_syncs(nodes: Sequence[Any], done: dict[str, float]) -> None:
    """Wrap each node's ``Datapath.sync_policy`` (instance attribute) to note when it returned."""
    for node in nodes:
        dp = node.datapath
        orig: Callable[..., Any] = dp.sync_policy

        def timed(policies: Any, endpoints: Any, _orig: Callable[..., Any] = orig, _name: str = node.name) -> Any:
            res = _orig(policies, endpoints)
            done[_name] = time.perf_counter()
            return res

        dp.sync_policy = timed


def _pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _propagation(ctx: Context) -> list[Measurement]:
    sizes = QUICK_PROP_NODES if ctx.quick else PROP_NODES
    rounds = QUICK_PROP_ROUNDS if ctx.quick else PROP_ROUNDS
    ctx.params.update(prop_nodes=list(sizes), prop_rounds=rounds)
    out: list[Measurement] = []
    for n in sizes:
        store = InMemoryStore()
        client = client_record(store)
        store.put_endpoint(client)
        with contextlib.ExitStack() as stack:
            lab = Lab(f"pol-pr{n}")
            stack.callback(lab.close)
            t0 = time.perf_counter()
            try:
                cl = lab.cluster([f"n{i + 1}" for i in range(n)], routing="vxlan", bgp=False, store=store,
                                 enable_policy=True)
                cl.set_namespace(NS)
                pods = [cl.node(f"n{i + 1}").add_pod("p", namespace=NS, labels={"app": "server"}) for i in range(n)]
            except Exception as exc:  # 30 full datapaths on a small VM: say how far it got
                out.append(info(f"{n} nodes: could not build", 0, group="setup", note=repr(exc)[:200]))
                ctx.log(f"{n} nodes: could not build: {exc!r}")
                break
            out.append(info(f"{n} nodes: lab built in", time.perf_counter() - t0, "s", group="setup"))
            nodes = [p.node for p in pods]
            done: dict[str, float] = {}
            _timed_syncs(nodes, done)
            per_node: list[float] = []
            all_nodes: list[float] = []
            for rnd in range(ctx.warmup + rounds):
                port = 1000 + rnd
                pol = cnp("bench-prop", [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                          "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}])
                done.clear()
                t_apply = time.perf_counter()
                cl.apply_policy(pol)
                t_end = time.perf_counter()
                want = PolicyKey(client.identity, False, 6, port, 16)
                for p in pods:
                    assert p.node.datapath is not None
                    state = p.node.datapath.policy.get(p.endpoint) or {}
                    if want not in state:
                        raise RuntimeError(f"{n} nodes, round {rnd}: {p.node.name}'s map lacks {want}")
                if len(done) != n:
                    raise RuntimeError(f"{n} nodes: {len(done)} nodes synced")
                if rnd >= ctx.warmup:
                    per_node += [(t - t_apply) * 1e3 for t in done.values()]
                    all_nodes.append((t_end - t_apply) * 1e3)
            ctx.log(f"{n} nodes: per node p50 {_pct(per_node, 0.5):.2f} ms, p99 {_pct(per_node, 0.99):.2f} ms; "
                    f"all nodes {statistics.median(all_nodes):.2f} ms")
            grp = f"propagation, {n} nodes"
            out.append(Measurement.from_samples(f"{n} nodes: policy change -> enforced, per node", per_node, "ms",
                                                group=grp, note="p50 = median; samples = nodes × rounds"))
            out.append(info(f"{n} nodes: per node p99", _pct(per_node, 0.99), "ms", group=grp))
            out.append(Measurement.from_samples(f"{n} nodes: policy change -> enforced on every node", all_nodes,
                                                "ms", group=grp, note="apply_policy returned (all synced)"))
            out.append(info(f"{n} nodes: every node p99", _pct(all_nodes, 0.99), "ms", group=grp))
        out += _propagation_etcd(ctx, n, rounds)
    return out


def _first_sight(maps: Sequence[PolicyMaps], ep_ids: Sequence[int], want: PolicyKey, t0: float) -> list[float]:
    """Seconds from ``t0`` until each node's map of its pod held ``want`` (first sight, polled)."""
    seen: dict[int, float] = {}
    for _ in range(int(ETCD_TIMEOUT_S / ETCD_POLL_S) + 2):  # bounded; each pass sleeps ETCD_POLL_S
        for i, (pm, ep) in enumerate(zip(maps, ep_ids, strict=True)):
            if i not in seen and want in (pm.get_by_id(ep) or {}):
                seen[i] = time.perf_counter() - t0
        if len(seen) == len(maps):
            return list(seen.values())
        if time.perf_counter() - t0 > ETCD_TIMEOUT_S:
            break
        time.sleep(ETCD_POLL_S)
    raise TimeoutError(f"{len(maps) - len(seen)} of {len(maps)} agents did not enforce {want} "
                       f"within {ETCD_TIMEOUT_S:g} s")


def _propagation_etcd(ctx: Context, n: int, rounds: int) -> list[Measurement]:
    """Part 2 through etcd and ``n`` agents; see the module's docstring."""
    out: list[Measurement] = []
    with contextlib.ExitStack() as stack:
        lab = Lab(f"pol-pe{n}", store="etcd")
        stack.callback(lab.close)
        t0 = time.perf_counter()
        try:
            cl = lab.cluster([f"e{i + 1}" for i in range(n)], routing="vxlan", bgp=False, enable_policy=True)
            cl.set_namespace(NS)
            store: Any = cl.control.store   # the lab's etcd client (a PolicyStore)
            client = client_record(store)
            store.put_endpoint(client)
            pods = [cl.node(f"e{i + 1}").add_pod("p", namespace=NS, labels={"app": "server"}) for i in range(n)]
        except Exception as exc:  # 30 agents on a small VM: say how far it got
            out.append(info(f"etcd@{n}: could not build", 0, group="setup", note=repr(exc)[:200]))
            ctx.log(f"etcd@{n}: could not build: {exc!r}")
            return out
        out.append(info(f"etcd@{n}: agent lab built in", time.perf_counter() - t0, "s", group="setup",
                        note="Lab(store='etcd').cluster(enable_policy=True) + one pod per node"))
        maps = [PolicyMaps(p.node.view.config.pin_dir, p.node.view.config.policy_map_size) for p in pods]
        for pm in maps:
            stack.callback(pm.close)
        ep_ids = [p.endpoint.id for p in pods]
        per_node: list[float] = []
        slowest: list[float] = []
        for rnd in range(ctx.warmup + rounds):
            port = 2000 + rnd
            pol, = parse_policy_input(cnp("bench-prop", [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                                          "toPorts": [{"ports": [{"port": str(port),
                                                                                  "protocol": "TCP"}]}]}]))
            want = PolicyKey(client.identity, False, 6, port, 16)
            t_put = time.perf_counter()
            store.put_policy(pol)
            seen = _first_sight(maps, ep_ids, want, t_put)
            if rnd >= ctx.warmup:
                per_node += [t * 1e3 for t in seen]
                slowest.append(max(seen) * 1e3)
        ctx.log(f"etcd@{n}: per node p50 {_pct(per_node, 0.5):.2f} ms, p99 {_pct(per_node, 0.99):.2f} ms; "
                f"every node p50 {statistics.median(slowest):.2f} ms")
        grp = f"propagation, etcd, {n} agents"
        out.append(Measurement.from_samples(f"etcd@{n}: policy change -> enforced, per agent", per_node, "ms",
                                            group=grp, note="put_policy in etcd -> the agent's pinned map holds it; "
                                                            "samples = agents × rounds"))
        out.append(info(f"etcd@{n}: per agent p99", _pct(per_node, 0.99), "ms", group=grp))
        out.append(Measurement.from_samples(f"etcd@{n}: policy change -> enforced on every agent", slowest, "ms",
                                            group=grp, note="the slowest agent of each round"))
        out.append(info(f"etcd@{n}: every agent p99", _pct(slowest, 0.99), "ms", group=grp))
    return out


# -- part 3: scale -----------------------------------------------------------------------------------
def _scale(ctx: Context) -> list[Measurement]:
    n_peers = QUICK_PEERS if ctx.quick else N_PEERS
    n_ids = QUICK_IDENTITIES if ctx.quick else N_IDENTITIES
    rounds = QUICK_SCALE_ROUNDS if ctx.quick else SCALE_ROUNDS
    ctx.params.update(scale_peers=n_peers, identities=n_ids, scale_rounds=rounds, scale_pods=SCALE_PODS)
    out: list[Measurement] = []

    # (a) a 1,000-rule policy set on one node's endpoints
    store = InMemoryStore()
    for r in peer_records(store, n_peers):
        store.put_endpoint(r)
    with contextlib.ExitStack() as stack:
        lab = Lab("pol-sc-1k")
        stack.callback(lab.close)
        cl = lab.cluster(["n1"], routing="vxlan", bgp=False, store=store, enable_policy=True)
        cl.set_namespace(NS)
        node = cl.node("n1")
        pods = [node.add_pod(f"s{i}", namespace=NS, labels={"app": "server"}) for i in range(SCALE_PODS)]
        pol = rules_policy(n_peers)
        parsed = parse_policy_input(pol)
        apply_ms: list[float] = []
        engine_ms: list[float] = []
        written = 0
        for rnd in range(ctx.warmup + rounds):
            t0 = time.perf_counter()
            cl.apply_policy(pol)
            t1 = time.perf_counter()
            assert node.datapath is not None and node.datapath.last_policy_sync is not None
            written = node.datapath.last_policy_sync.written
            records = store.endpoints()
            mine = [r for r in records if r.node_ip == node.ip]
            t2 = time.perf_counter()
            engine = PolicyEngine(parsed, endpoints=[policy_endpoint(r) for r in records])
            for r in mine:
                engine.compute(policy_endpoint(r))
            t3 = time.perf_counter()
            entries = [map_entries(p) for p in pods]
            cl.delete_policy(parsed[0])
            if rnd >= ctx.warmup:
                apply_ms.append((t1 - t0) * 1e3)
                engine_ms.append((t3 - t2) * 1e3)
        grp = "1,000-rule policy set"
        out.append(Measurement.from_samples(f"apply {n_peers}-rule policy on {SCALE_PODS} endpoints of one node",
                                            apply_ms, "ms", group=grp, note="Cluster.apply_policy: engine + map writes"))
        out.append(Measurement.from_samples(f"engine compute alone ({SCALE_PODS} endpoints)", engine_ms, "ms",
                                            group=grp, note="PolicyEngine over the store's endpoints, no maps"))
        out.append(info(f"policy map entries written per apply ({SCALE_PODS} endpoints)", written, group=grp))
        out.append(info("policy map entries per endpoint", min(entries), group=grp,
                        note="read back from the pinned maps"))

    # (b) 10k identities
    alloc_ms: list[float] = []
    for _ in range(rounds):
        s = InMemoryStore()
        t0 = time.perf_counter()
        for r in peer_records(s, n_ids):
            s.put_endpoint(r)
        alloc_ms.append((time.perf_counter() - t0) * 1e3)
    store = InMemoryStore()
    peers = peer_records(store, n_ids, first_octet=128)
    for r in peers:
        store.put_endpoint(r)
    with contextlib.ExitStack() as stack:
        lab = Lab("pol-sc-10k")
        stack.callback(lab.close)
        cl = lab.cluster(["n1", "n2"], routing="vxlan", bgp=False, store=store, enable_policy=True,
                         policy_map_size=POLICY_MAP_10K)
        cl.set_namespace(NS)
        node = cl.node("n1")
        pod = node.add_pod("s", namespace=NS, labels={"app": "server"})
        cl.node("n2").add_pod("t", namespace=NS, labels={"app": "server"})
        all_peers = cnp("bench-all-peers", [{"fromEndpoints": [{"matchExpressions": [
            {"key": "bench-peer", "operator": "Exists"}]}]}])
        cl.apply_policy(all_peers)
        dp = node.datapath
        assert dp is not None
        fill_ms: list[float] = []
        for _ in range(rounds):
            policies = store.policies()
            local = [r for r in store.endpoints() if r.node_ip == node.ip]
            dp.sync_policy([], local)               # untimed: ipcache and policy map without the peers
            t0 = time.perf_counter()
            res = dp.sync_policy(policies, store.endpoints())
            fill_ms.append((time.perf_counter() - t0) * 1e3)
        assert res is not None
        n_ipcache = len(dp.policy.list())
        n_entries = map_entries(pod)
        ep_ms: list[float] = []
        pol_ms: list[float] = []
        for rnd in range(rounds):
            labels = _labels({"bench-new": str(rnd)})
            rec = EndpointRecord(f"10.244.200.{2 + rnd}", GHOST_NODE, GHOST_IP, store.allocate_identity(labels),
                                 labels, name=f"{NS}/new-{rnd}")
            t0 = time.perf_counter()
            cl.control.put_endpoint(rec)
            ep_ms.append((time.perf_counter() - t0) * 1e3)
            edit = cnp("bench-all-peers", [{"fromEndpoints": [{"matchExpressions": [
                {"key": "bench-peer", "operator": "Exists"}]}],
                "toPorts": [{"ports": [{"port": str(2000 + rnd), "protocol": "TCP"}]}]}])
            t0 = time.perf_counter()
            cl.apply_policy(edit)
            pol_ms.append((time.perf_counter() - t0) * 1e3)
        grp = f"{n_ids // 1000}k identities"
        out.append(Measurement.from_samples(f"allocate {n_ids} identities (+ endpoint records)", alloc_ms, "ms",
                                            group=grp, note="InMemoryStore.allocate_identity + put_endpoint, "
                                                            "no watchers"))
        out.append(Measurement.from_samples(f"fill ipcache + policy map with {n_ids} identities (one node)", fill_ms,
                                            "ms", group=grp, note=f"Datapath.sync_policy; {res.ipcache_written} "
                                                                  f"ipcache and {res.written} policy entries written"))
        out.append(Measurement.from_samples(f"one new endpoint with {n_ids} present, synced on 2 nodes", ep_ms, "ms",
                                            group=grp, note="Cluster.put_endpoint -> every node's full sync"))
        out.append(Measurement.from_samples(f"one policy edit with {n_ids} present, synced on 2 nodes", pol_ms, "ms",
                                            group=grp, note="apply_policy (port added to the all-peers rule)"))
        out.append(info(f"ipcache entries on n1 with {n_ids} identities", n_ipcache, group=grp))
        out.append(info("policy map entries of n1's server", n_entries, group=grp))
    return out


# -- the suite ---------------------------------------------------------------------------------------
def run(ctx: Context) -> list[Measurement]:
    """The three parts (``CILIUMLITE_BENCH_POL_PARTS`` picks some), in order."""
    parts = _parts()
    ctx.params["parts"] = ",".join(p for p in ("packet", "propagation", "scale") if p in parts)
    out: list[Measurement] = []
    if "packet" in parts:
        out += _packet(ctx)
    if "propagation" in parts:
        out += _propagation(ctx)
    if "scale" in parts:
        out += _scale(ctx)
    return out


def summarize(ms: list[Measurement]) -> list[Summary]:
    """Per-arm RR/CRR, ratios vs no policy, the latency goal, propagation and scale tables."""
    c = Cells(ms)
    out: list[Summary] = []
    metrics = (LAT_AVG, LAT_P50, LAT_P99, CRR, CRR_P50, CRR_P99)
    rows = [[f"{TITLES[a]}, {PATH_TITLES[p]}", *(c.cell(mname(_key(a, p), m)) for m in metrics)]
            for a in ARMS for p in PATHS if mname(_key(a, p), LAT_AVG) in c]
    if rows:
        out.append(Summary("per arm (median of rounds, CV in brackets; '!' = CV > 5 %)",
                           ["arm", "latency avg µs", "latency p50 µs", "latency p99 µs", "CRR conn/s",
                            "CRR conn p50 µs", "CRR conn p99 µs"], rows,
                           note="latency: sockperf ping-pong --tcp, half round trip; CRR: connect + 1 B request + "
                                "1 B response + close, one client; client and server pinned to different CPUs"))
        rrows = [[f"{TITLES[a]}, {PATH_TITLES[p]}", *(c.rcell(rname(_key(a, p), _key("off", p), m))
                                                      for m in RATIO_METRICS)]
                 for a in ARMS[1:] for p in PATHS if rname(_key(a, p), _key("off", p), LAT_AVG) in c]
        out.append(Summary("ratios vs no policy (same path), paired per round, with bootstrap 95 % CI",
                           ["arm", "latency avg ÷ off", "latency p50 ÷ off", "CRR rate ÷ off"], rrows,
                           note="latency ratios > 1 are slower; CRR ratios < 1 are slower"))
        irows = [[f"{TITLES[a]}, {PATH_TITLES[p]}", c.cell(mname(_key(a, p), IRR_AVG)),
                  c.cell(mname(_key(a, p), IRR_P50)),
                  *((c.rcell(rname(_key(a, p), _key("off", p), m)) for m in (IRR_AVG, IRR_P50))
                    if a != "off" else ("", ""))]
                 for a in ARMS for p in PATHS if mname(_key(a, p), IRR_AVG) in c]
        if irows:
            out.append(Summary("interleaved RR: every arm in one run, paired per rotation (the goal's measurement)",
                               ["arm", "RR avg µs", "RR p50 µs", "avg ÷ off", "p50 ÷ off"], irows,
                               note=f"crr rrmix: one client, one TCP connection per arm, {RRMIX_BLOCK} ping-pongs "
                                    "of 64 B per arm per rotation, arm order rotated; half round trips; per arm "
                                    "the median over rotations of the block mean (avg) and block median (p50) "
                                    "[CV]; ratios paired per rotation with bootstrap 95 % CI"))
        grows = []
        goal_metrics = (IRR_AVG, IRR_P50) if irows else (LAT_AVG, LAT_P50)
        for a in ARMS[1:]:
            if a == CONTROL:
                continue
            for p in PATHS:
                for metric in goal_metrics:
                    m = c.by.get(rname(_key(a, p), _key("off", p), metric))
                    if m is not None:
                        grows.append([m.name, ratio_text(m), f"<= {LAT_GOAL:g}", verdict(m, "<=", LAT_GOAL),
                                      "issue 17: enforcement costs ≤ 5 % latency"])
        out.append(Summary("goal", ["ratio", "median [95% CI]", "goal", "verdict", "source"], grows))
    prop = [m for m in ms if m.group.startswith("propagation")]
    if prop:
        out.append(Summary("policy change -> enforced (n nodes: in-process Cluster, synchronous sync; etcd@n: "
                           "etcd and n agents)", ["measurement", "value",
                                                                                             "min", "note"],
                           [[m.name, f"{fmt_value(m.median, m.unit)} {m.unit}", fmt_value(m.min, m.unit), m.note]
                            for m in prop]))
    scale = [m for m in ms if m.group.endswith(("policy set", "identities"))]   # part 3's groups
    if scale:
        out.append(Summary("scale", ["measurement", "value", "min", "note"],
                           [[m.name, f"{fmt_value(m.median, m.unit)} {m.unit}", fmt_value(m.min, m.unit), m.note]
                            for m in scale]))
    return out + tail_summaries(ms, [])
