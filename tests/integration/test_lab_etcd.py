"""``Lab(store="etcd")``: etcd in the fabric namespace, an agent process per node, pods through the
CNI plugin, services applied as manifests; and what the control plane's outages do to the traffic.

Real etcd, real ``ciliumlite agent`` processes (one per node, in its namespace and cgroup), real
traffic. The demo and the bad-etcd case build their own labs; the other tests share one module lab
(nodes a, b, c over VXLAN with BPF masquerade; a client pod ``cli`` on a, echo pods ``srv`` on b
and c) and run in file order: every outage test brings etcd back before it ends, and a test that
adds a node removes it. Times measured are printed as ``[measure] ...`` lines (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.cluster.etcd import KvstoreError
from ciliumlite.connectivity import ConnectivityTest
from ciliumlite.connectivity.disruption import STREAM
from ciliumlite.datapath import registry
from ciliumlite.datapath.config import PIN_BASE
from ciliumlite.demo import run_demo
from ciliumlite.lab import Lab, Pod, procs
from ciliumlite.lab.agents import AgentCluster, AgentNode, wait_forgotten
from ciliumlite.lab.naming import RUN_ID
from ciliumlite.manifests import Result
from ciliumlite.ownership.record import record_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed (apt-get install "
                                 "etcd-server etcd-client)")]

T = TypeVar("T")
ECHO = 8080
LINES = 8081
WEB_IP = "10.96.50.10"


def measure(what: str, seconds: float) -> None:
    print(f"[measure] {what}: {seconds:.2f} s")


def eventually(fn: Callable[[], T | None], what: str, timeout: float = 30.0, interval: float = 0.1) -> T:
    """``fn()``'s first truthy value within ``timeout`` seconds, else a failure naming ``what``."""
    t0 = time.monotonic()
    last: Any = None
    while time.monotonic() - t0 < timeout:
        try:
            last = fn()
        except Exception as exc:  # an agent that does not answer yet, a key not there yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


def leftovers(match: Callable[[str], bool]) -> list[str]:
    """Everything on the host whose name ``match`` accepts: namespaces, pins, cgroups, records,
    registry entries, temporary directories and processes (by command line)."""
    found = [f"netns {n}" for n in nsmod.list_all() if match(n)]
    for what, directory in (("pins", PIN_BASE), ("cgroup", fs.cgroup2_root()), ("record", record_dir()),
                            ("registry", str(registry.run_dir())), ("tmp", "/tmp")):
        if os.path.isdir(directory):
            found += [f"{what} {e}" for e in os.listdir(directory) if match(e)]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(pid) != os.getpid() and match(cmd):
            found.append(f"process {pid} {cmd[:120]}")
    return found


def manifest(name: str, ip: str, backends: list[str], port: int = ECHO) -> str:
    """A ClusterIP Service and its EndpointSlice, as a user writes them."""
    addresses = "".join(f"  - addresses: [{a}]\n" for a in backends)
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
            f"spec:\n  clusterIP: {ip}\n  ports: [{{port: 80, targetPort: {port}, protocol: TCP}}]\n---\n"
            f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n"
            f"  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\n"
            f"ports: [{{port: {port}, protocol: TCP}}]\nendpoints:\n{addresses}")


# -- an etcd that cannot be reached, and the demo: labs of their own -------------------------------------


def test_an_unreachable_etcd_at_start_is_a_clear_error_and_leaves_nothing() -> None:
    def ours(name: str) -> bool:
        return f"cl{RUN_ID}" in name and "-unreach" in name

    assert leftovers(ours) == []
    t0 = time.monotonic()
    with pytest.raises(KvstoreError) as err:  # nothing listens on port 9 of the leaf's address
        Lab("unreach", store="etcd", etcd_endpoints=["http://10.0.0.254:9"], etcd_timeout=2.0)
    took = time.monotonic() - t0
    text = str(err.value)
    assert "reach etcd from the lab's fabric at http://10.0.0.254:9 failed: not reachable within" in text, text
    assert "hint:" in text and "underlay" in text, text
    assert took < 15, took
    assert leftovers(ours) == []  # namespaces, cgroups, pins, record, work dir, processes
    with pytest.raises(Exception, match="store must be one of memory, etcd"):
        Lab("unreach", store="zookeeper")


def test_the_demo_in_etcd_mode_passes_every_chapter() -> None:
    t0 = time.monotonic()
    results, kept = run_demo(kvstore="etcd")
    measure("demo --kvstore etcd (every chapter, 4 labs, 9 agents)", time.monotonic() - t0)
    assert kept is None
    assert all(r.ok for r in results), [(r.title, r.evidence) for r in results if not r.ok]
    evidence = {r.title: "\n".join(r.evidence) for r in results}
    assert len(results) == len(evidence) == 10 and results[0].title == "cluster built"
    assert "an agent process per node" in evidence["cluster built"]
    assert evidence["kube-proxy replacement status"].count("agent pid") == 3
    assert "leaf Established" in evidence["native routing with BGP (bird)"]
    assert "DSR option 9a 08" in evidence["NodePort SNAT vs DSR"]
    assert leftovers(lambda n: f"cl{RUN_ID}" in n and "-demo" in n) == []
    with pytest.raises(Exception, match="keep=True needs kvstore='memory'"):
        run_demo(kvstore="etcd", keep=True)


# -- one lab for the rest ----------------------------------------------------------------------------------


@dataclass
class Topo:
    lab: Lab
    cluster: AgentCluster
    a: AgentNode
    b: AgentNode
    c: AgentNode
    cli: Pod
    srv_b: Pod
    srv_c: Pod

    @property
    def nodes(self) -> list[AgentNode]:
        return [self.a, self.b, self.c]

    def node_keys(self) -> list[str]:
        return self.etcd_keys(f"cilium/state/nodes/v1/{self.lab.prefix}/")

    def etcd_keys(self, prefix: str) -> list[str]:
        assert self.lab.etcd is not None
        return self.lab.etcd.keys(prefix)

    def talk(self, via: str = "") -> list[str]:
        """New connections from cli (node a) to both echo pods and to the web service: what failed."""
        failed = []
        for target in (self.srv_b.ip, self.srv_c.ip, *([via] if via else [])):
            res = self.cli.tcp_echo(target, 80 if target == via else ECHO, timeout=2.0)
            if not res.ok:
                failed.append(f"{target}: {res.error}")
        ping = self.srv_c.ping(self.srv_b, count=2, interval=0.05, timeout=1.0)
        if not ping.ok:
            failed.append(f"ping c->b {ping.received}/{ping.transmitted}")
        return failed


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    prefix = ""
    with Lab("etcdlab", store="etcd", lease_ttl=15) as lab:
        prefix = lab.prefix
        t0 = time.monotonic()
        cluster = lab.cluster(["a", "b", "c"], routing="vxlan", bpf_masquerade=True, enable_policy=True)
        measure("etcd lab: 3 agents started and converged", time.monotonic() - t0)
        assert isinstance(cluster, AgentCluster)
        a, b, c = (cluster.node(n) for n in "abc")
        assert isinstance(a, AgentNode) and isinstance(b, AgentNode) and isinstance(c, AgentNode)
        cli, srv_b, srv_c = a.add_pod("cli"), b.add_pod("srv"), c.add_pod("srv")
        for host in (srv_b, srv_c, lab.outside()):  # the connectivity test's outside host, made here to stay
            host.ensure_echo_server(ECHO)
        yield Topo(lab, cluster, a, b, c, cli, srv_b, srv_c)
    assert leftovers(lambda n: prefix in n) == []


def test_the_lab_runs_an_agent_per_node_over_etcd(topo: Topo) -> None:
    lab = topo.lab
    assert lab.etcd is not None and lab.etcd.pid is not None
    procs_rec = {e["name"]: e for e in lab.record.entries("processes")}
    assert procs_rec["etcd"]["pid"] == lab.etcd.pid  # recorded by pid (and start time) for lab destroy
    for node in topo.nodes:
        assert node.datapath is None and node.agent is not None and node.agent.running
        st = node.status()
        assert st["pid"] == node.agent.pid and st["netns"] == node.netns and st["cluster_name"] == lab.prefix
        assert st["kvstore"]["backend"] == "etcd" and st["kvstore"]["connected"]
        assert st["kvstore"]["endpoints"] == [lab.etcd.url] and st["kvstore"]["lease_ttl"] == 15
        with open(f"/proc/{node.agent.pid}/cgroup") as f:
            assert os.path.basename(node.cgroup or "") in f.read()  # the agent runs in the node's cgroup
        assert os.stat(f"/proc/{node.agent.pid}/ns/net").st_ino == nsmod.netns_inode(node.netns)
        assert sorted(node.view.remote_nodes()) == sorted(o.info.name for o in topo.nodes if o is not node)
        assert node.view.config.bpf_masquerade and node.view.config.routing == "vxlan"
        assert any(a.program == "cil_from_container" for a in node.view.attachments())
    assert topo.node_keys() == sorted(f"cilium/state/nodes/v1/{lab.prefix}/{n.info.name}" for n in topo.nodes)
    # The pods came through the CNI plugin: the agent knows them by container id.
    (ep,) = [e for e in topo.a.client().endpoints() if e["name"] == "cli"]
    assert ep["container_id"] == f"{lab.prefix}-a-cli" and ep["ip"] == topo.cli.ip
    assert topo.cli.endpoint.identity == ep["identity"] >= 256
    assert topo.srv_b.endpoint.identity == topo.srv_c.endpoint.identity  # the same labels, one identity
    assert topo.talk() == []


# The first service loads bpf_sock on every node and attaches socket LB (kept for the module's later
# tests, like the service itself): the per-test leak check would count those programs and links; the
# module's teardown checks that nothing of the lab is left.
@pytest.mark.no_leak_check
def test_a_manifest_applied_once_is_programmed_on_every_node(topo: Topo) -> None:
    t0 = time.monotonic()
    result: Result = topo.lab.apply(manifest("web", WEB_IP, [topo.srv_b.ip, topo.srv_c.ip]))
    measure("manifest applied -> programmed on all 3 nodes", time.monotonic() - t0)
    assert result.lines() == ["service/web created", "endpointslice.discovery.k8s.io/web-1 created"]
    for node in topo.nodes:
        (svc,) = [s for s in node.view.services() if s.name == "default/web"]
        assert svc.frontend.ip == WEB_IP and {b.ip for b in svc.backends} == {topo.srv_b.ip, topo.srv_c.ip}
    assert f"cilium/state/services/v1/{topo.lab.prefix}/default/web" in topo.etcd_keys("cilium/state/services/")
    servers = {topo.cli.tcp_echo(WEB_IP, 80).server for _ in range(8)}
    assert servers <= {"srv"} and servers, servers
    again = topo.lab.apply(manifest("web", WEB_IP, [topo.srv_b.ip, topo.srv_c.ip]))
    assert again.lines() == ["service/web unchanged", "endpointslice.discovery.k8s.io/web-1 unchanged"]


def test_a_joining_node_is_reachable_from_the_others_within_a_bounded_time(topo: Topo) -> None:
    t0 = time.monotonic()
    d = topo.cluster.add_node("d")  # returns once every node routes to it
    joined = time.monotonic() - t0
    measure("node d: agent start -> every node routes to it", joined)
    try:
        assert isinstance(d, AgentNode) and joined < 60
        pod = d.add_pod("srv")
        pod.ensure_echo_server(ECHO)
        assert topo.cli.tcp_echo(pod.ip, ECHO).ok
        assert topo.srv_b.ping(pod, count=2, interval=0.05).ok and topo.srv_c.ping(pod, count=2, interval=0.05).ok
        assert [s.name for s in d.view.services()] == ["default/web"]  # it listed what was there
        assert pod.tcp_echo(WEB_IP, 80).ok
    finally:
        if isinstance(d, AgentNode) and d.agent is not None and d.agent.running:
            t0 = time.monotonic()
            os.kill(d.agent.pid, signal.SIGTERM)  # it deletes its own keys first, then its datapath
            wait_forgotten(topo.nodes, d.info.name)
            measure("node d: SIGTERM -> no node routes to it", time.monotonic() - t0)
        topo.cluster.remove_node("d")
    assert len(topo.node_keys()) == 3


# agent-restart SIGKILLs agents and starts new ones: children of this process that outlive the test
# (the lab stops them), which the per-test leak check would report; the module's teardown checks that
# nothing of the lab is left.
@pytest.mark.no_leak_check
def test_the_connectivity_test_passes_against_the_etcd_lab(topo: Topo) -> None:
    t0 = time.monotonic()
    with ConnectivityTest(topo.lab) as ct:
        results = ct.run()
        assert ct.config()["kvstore"] == "etcd"
    measure("connectivity test against the etcd lab", time.monotonic() - t0)
    failed = {r.name: r.details for r in results if r.status == "failed"}
    assert not failed, failed
    # DSR needs native routing; the policy scenarios run through etcd and the agents.
    assert {r.name for r in results if r.status == "skipped"} == {"outside-to-nodeport/dsr"}
    assert all(by.status == "passed" for by in results if by.name.startswith("policy/"))
    by_name = {r.name: r for r in results}
    for name in ("node-churn", "agent-restart", "program-replacement"):  # SIGKILLed agents, reloads: 0 lost
        counts = by_name[f"no-interrupted-connections/{name}"].counts
        print(f"[counts] etcd lab, no-interrupted-connections/{name}: {counts}")
        assert counts["broken_connections"] == counts["connect_failures"] == counts["lost_datagrams"] == 0, counts
        assert counts["exchanges"] > 0 and counts["connections"] > 0 and counts["datagrams"] > 0, counts
    assert sorted(topo.cluster.members) == ["a", "b", "c"]  # the churn node came and went
    assert [p for n in topo.nodes for p in n.pods] == ["cli", "srv", "srv"]  # its pods are gone again


def _stream(topo: Topo) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """A long-lived TCP connection from cli (a) to srv on b, a numbered line every 50 ms (bounded: 120 s)."""
    server = topo.srv_b.popen(*procs.python_script(STREAM, "server", "srv-b", str(LINES)))
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    client = topo.cli.popen(*procs.python_script(STREAM, "client", topo.srv_b.ip, str(LINES), "0.05", "120"))
    assert client.stdout is not None and client.stdout.readline().strip() == "connected"
    return server, client


def _stream_result(topo: Topo, server: subprocess.Popen[str], client: subprocess.Popen[str]) -> dict[str, Any]:
    """Stop the client (SIGUSR1: it reports and exits) and its server; what the connection saw."""
    try:
        if client.poll() is None:
            client.send_signal(signal.SIGUSR1)
        out, _ = client.communicate(timeout=10)
        return dict(json.loads(out.strip().splitlines()[-1]))
    finally:
        topo.lab.processes.stop(client)
        topo.lab.processes.stop(server)


def _cli_apply(topo: Topo, text: str) -> subprocess.CompletedProcess[str]:
    """``ciliumlite apply -f`` run from the fabric namespace, where etcd listens."""
    assert topo.lab.etcd is not None and topo.lab.fabric is not None
    path = os.path.join(topo.lab.workdir, "svc.yaml")
    with open(path, "w") as f:
        f.write(text)
    return procs.run(topo.lab.fabric.netns, [sys.executable, "-m", "ciliumlite.cli", "apply", "-f", path,
                                             "--kvstore", "etcd", "--kvstore-endpoints", topo.lab.etcd.url,
                                             "--cluster", topo.lab.prefix], timeout=60)


def _outage(topo: Topo, name: str, ip: str, stop: Callable[[], None], start: Callable[[], None]) -> None:
    """While pods talk, take etcd away: traffic keeps flowing; a service applied meanwhile fails at
    once without retries, and with retries reaches every node once etcd is back."""
    lab = topo.lab
    text = manifest(name, ip, [topo.srv_c.ip])
    server, client = _stream(topo)
    result: dict[str, Any] = {}
    applied: list[Any] = []
    retrying: threading.Thread | None = None
    try:
        time.sleep(0.3)
        stop()
        t_down = time.monotonic()
        # What is programmed keeps forwarding: new connections on existing routes, and the service.
        assert topo.talk(via=WEB_IP) == []
        # A change now: the CLI (kubectl's way) says etcd did not answer and writes nothing ...
        cli = _cli_apply(topo, text)
        assert cli.returncode == 1 and "error: kvstore:" in cli.stderr and lab.etcd is not None \
            and lab.etcd.url in cli.stderr, cli.stderr
        # ... as does the lab without retries; with retries it waits for etcd.
        with pytest.raises(KvstoreError):
            lab.apply(text)

        def apply_retrying() -> None:
            applied.append(lab.apply(text, timeout=90))

        retrying = threading.Thread(target=apply_retrying, daemon=True)
        retrying.start()
        assert topo.talk() == []
        time.sleep(max(0.0, 4.0 - (time.monotonic() - t_down)))
        start()
        t_up = time.monotonic()
        measure(f"{name}: etcd away", t_up - t_down)
        retrying.join(timeout=120)
        assert not retrying.is_alive() and applied, "the apply made during the outage never completed"
        measure(f"{name}: etcd back -> the service applied during the outage programmed on every node",
                time.monotonic() - t_up)
        for node in topo.nodes:
            assert name in {s.name.split("/")[-1] for s in node.view.services()}, node.name
        assert topo.cli.tcp_echo(ip, 80).server == "srv"
        eventually(lambda: all(n.client().healthz()["status"] == "ok" for n in topo.nodes),
                   "every agent reports the kvstore ok again")
        measure(f"{name}: etcd back -> every agent healthy", time.monotonic() - t_up)
    finally:
        result = _stream_result(topo, server, client)
        if retrying is not None:
            retrying.join(timeout=120)
    assert not result["error"] and result["answered"] == result["sent"] > 20, result
    measure(f"{name}: slowest answer on the long-lived connection", result["max_rtt"])
    lab.apply(manifest(name, ip, []))  # no backends left: it serves nothing
    assert len(topo.node_keys()) == 3  # no node lost its record


def test_etcd_stopped_while_pods_talk(topo: Topo) -> None:
    assert topo.lab.etcd is not None
    _outage(topo, "paused", "10.96.50.11", topo.lab.etcd.pause, topo.lab.etcd.resume)


# The restarted etcd is a new child of this process that outlives the test (the lab stops it): the
# per-test leak check would report it; the module's teardown checks that nothing of the lab is left.
@pytest.mark.no_leak_check
def test_etcd_killed_and_restarted_while_pods_talk(topo: Topo) -> None:
    etcd = topo.lab.etcd
    assert etcd is not None
    before = etcd.pid
    _outage(topo, "killed", "10.96.50.12", etcd.kill, etcd.restart)
    entry = next(e for e in topo.lab.record.entries("processes") if e["name"] == "etcd")
    assert etcd.pid != before and entry["pid"] == etcd.pid  # the record follows the new etcd


def test_a_killed_agent_leaves_the_others_forwarding_and_its_node_expires(topo: Topo) -> None:
    v = topo.cluster.add_node("v", lease_ttl=4)
    assert isinstance(v, AgentNode) and v.agent is not None
    try:
        victim = v.add_pod("srv")
        victim.ensure_echo_server(ECHO)
        assert topo.cli.tcp_echo(victim.ip, ECHO).ok
        key = f"cilium/state/nodes/v1/{topo.lab.prefix}/{v.info.name}"
        assert key in topo.node_keys()
        server, client = _stream(topo)
        try:
            assert v.agent.kill() == -signal.SIGKILL  # a crash: no cleanup of its own
            t_kill = time.monotonic()
            assert topo.talk(via=WEB_IP) == []
            eventually(lambda: key not in topo.node_keys(), f"{key} expires with its lease", timeout=30)
            measure("killed agent (lease TTL 4 s) -> its node record gone from etcd", time.monotonic() - t_kill)
            wait_forgotten(topo.nodes, v.info.name)
            measure("killed agent -> every other node stopped routing to it", time.monotonic() - t_kill)
            assert time.monotonic() - t_kill < 4 + 20
            assert not [k for k in topo.etcd_keys(f"cilium/state/ip/v1/{topo.lab.prefix}/") if k.endswith(victim.ip)]
            assert topo.talk(via=WEB_IP) == []
        finally:
            result = _stream_result(topo, server, client)
        assert not result["error"] and result["answered"] == result["sent"] > 20, result
        assert os.path.isdir(f"{PIN_BASE}/{v.info.name}")  # what the killed agent left ...
    finally:
        topo.cluster.remove_node("v")
    assert not os.path.exists(f"{PIN_BASE}/{v.info.name}")  # ... the lab removed
    assert not registry.entry_path(v.info.name).exists()
    assert sorted(topo.cluster.members) == ["a", "b", "c"] and len(topo.node_keys()) == 3


@pytest.mark.no_leak_check  # the new agent outlives the test (as above)
def test_a_sigkilled_agent_is_replaced_by_one_that_adopts_its_datapath_and_containers(topo: Topo) -> None:
    """kill -9 of an agent with pods from the CNI plugin; the new agent restores the datapath and the
    container-id table: the pods keep forwarding, a CNI DEL of a pod made before the restart works,
    and the ipcache entries outlive the dead agent's lease."""
    a = topo.a
    assert a.agent is not None and topo.lab.etcd is not None
    early = a.add_pod("early")
    early.ensure_echo_server(ECHO)
    cid = f"{topo.lab.prefix}-a-early"
    before = {e["container_id"]: e for e in a.client().endpoints()}
    assert cid in before and before[cid]["ip"] == early.ip
    old_pid = a.agent.pid
    ip_prefix = f"cilium/state/ip/v1/{topo.lab.prefix}/"
    server, client = _stream(topo)  # a long-lived connection from cli on a to srv on b, through it all
    try:
        took = topo.cluster.restart_node("a")  # SIGKILL, a new agent, every node routing to it again
        measure("agent of a: SIGKILL -> a new agent restored the datapath and answers", took)
        assert a.agent.pid != old_pid and a.agent.running
        st = a.status()
        assert st["restored"] is True and st["errors"]["count"] == 0, st["errors"]
        after = {e["container_id"]: e for e in a.client().endpoints()}
        assert set(after) == set(before)  # the table came back, not just the datapath
        for key, ep in before.items():
            assert (after[key]["ip"], after[key]["identity"], after[key]["host_ifname"]) == \
                (ep["ip"], ep["identity"], ep["host_ifname"]), key
        check = a.client().endpoint(cid, check=True)["check"]
        assert check["ok"], check
        assert topo.talk(via=WEB_IP) == [] and topo.srv_b.tcp_echo(early.ip, ECHO).ok
        # The dead agent's lease expires (TTL 15 s): the ipcache entries re-published on the new
        # agent's lease stay, and so does the node's record.
        time.sleep(topo.lab.lease_ttl + 3)
        ip_keys = topo.etcd_keys(ip_prefix)
        assert any(k.endswith(early.ip) for k in ip_keys) and any(k.endswith(topo.cli.ip) for k in ip_keys), ip_keys
        assert len(topo.node_keys()) == 3
        assert topo.talk(via=WEB_IP) == []
        # CNI DEL of the pod made before the restart: the new agent knows its container.
        a.remove_pod("early")
        assert cid not in {e["container_id"] for e in a.client().endpoints()}
        assert not any(k.endswith(early.ip) for k in topo.etcd_keys(ip_prefix))
        late = a.add_pod("late")  # and a new pod comes up on the restored datapath
        try:
            assert late.ping(topo.srv_b, count=2, interval=0.05).ok
        finally:
            a.remove_pod("late")
    finally:
        result = _stream_result(topo, server, client)
    assert not result["error"] and result["answered"] == result["sent"] > 20, result
    measure("slowest answer on the long-lived connection across the agent's restart", result["max_rtt"])
