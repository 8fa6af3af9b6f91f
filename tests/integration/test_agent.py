"""``ciliumlite agent`` as a separate process per node: its API, its kvstore, its datapath, its shutdown.

One lab is shared by the module (:mod:`agent_harness`): a real etcd in the fabric namespace
(10.0.0.254), two agent nodes ``a`` and ``b`` on it in tunnel mode, and a single node ``m`` with
the in-memory store and no underlay. Each agent is ``python -m ciliumlite.cli agent …`` started in
its node's namespace and cgroup through the lab's process group. Pods are namespaces the agents
connect through ``PUT /v1/endpoint``; traffic is real ICMP and TCP. Tests that stop an agent
start their own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from agent_harness import AgentLab, AgentNode, AgentProc, agent_lab

from ciliumlite import Backend, Frontend, Service
from ciliumlite.agent.client import AgentClient, AgentError, AgentUnavailable
from ciliumlite.bpf import netns as nsmod
from ciliumlite.cluster.etcd import EtcdStore
from ciliumlite.datapath.config import PIN_BASE
from ciliumlite.lab.fabric import LEAF_IP
from ciliumlite.testing.etcd import EtcdServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = TypeVar("T")
SVC_IP = "10.96.0.10"
PORT = 8080


def eventually(fn: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """``fn()``'s first truthy value within ``timeout`` seconds, else a failure naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (AgentError, AgentUnavailable) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


@dataclass
class Topo:
    alab: AgentLab
    etcd: EtcdServer
    a: AgentNode
    b: AgentNode
    m: AgentNode
    agents: dict[str, AgentProc]

    @property
    def cluster(self) -> str:
        return self.alab.lab.prefix

    @contextlib.contextmanager
    def store(self) -> Iterator[EtcdStore]:
        """A client of the lab's etcd (no owner), used from the fabric namespace where etcd listens."""
        assert self.alab.lab.fabric is not None
        with nsmod.entered(self.alab.lab.fabric.netns):
            store = EtcdStore(self.etcd.endpoints, cluster=self.cluster)
            try:
                yield store
            finally:
                store.close()

    def keys(self, prefix: str) -> list[str]:
        """The etcd keys under ``prefix``."""
        return [k for k in self.etcd.etcdctl("get", "--prefix", "--keys-only", prefix).splitlines() if k]


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with agent_lab("agent") as alab:
        a, b = alab.add_node("a"), alab.add_node("b")
        m = alab.add_node("m", underlay=False)
        assert alab.lab.fabric is not None
        etcd = EtcdServer(host=LEAF_IP, netns=alab.lab.fabric.netns)
        try:
            agents = {"a": alab.start_agent(a, "--remove-datapath-on-exit", etcd=etcd, wait=False),
                      "b": alab.start_agent(b, "--remove-datapath-on-exit", etcd=etcd, wait=False),
                      "m": alab.start_agent(m, "--remove-datapath-on-exit", wait=False)}
            for agent in agents.values():
                agent.wait_ready()
            topo = Topo(alab, etcd, a, b, m, agents)
            _load_socket_lb(topo)
            yield topo
        finally:
            alab.close()  # the agents go before their etcd
            etcd.stop()


def _load_socket_lb(topo: Topo) -> None:
    """Put a service and delete it again: a node loads ``bpf_sock`` and attaches socket LB with its
    first service and keeps it, so this makes those programs part of the module's lab rather than of
    whichever test happens to add the first service (its leak check would count them)."""
    svc = Service(name="warm-up", frontend=Frontend("10.96.0.99", 80), backends=[Backend("10.244.0.99", PORT)])
    with topo.store() as store:
        store.put_service(svc)
        for node in (topo.a, topo.b):
            eventually(lambda n=node: n.client().services(), f"the warm-up service on {node.name}")
        store.delete_service(svc.name)
    for node in (topo.a, topo.b):
        eventually(lambda n=node: not n.client().services(), f"the warm-up service gone from {node.name}")


@pytest.fixture(autouse=True)
def _per_test(topo: Topo) -> Iterator[None]:
    """What a test adds (pods, nodes) goes at its end, before the leak check looks."""
    yield
    for short in [s for s in topo.alab.nodes if s not in ("a", "b", "m")]:
        topo.alab.remove_node(short)
    for node in (topo.a, topo.b, topo.m):
        topo.alab.remove_pods(node)


def _pod(topo: Topo, node: AgentNode, short: str, **body: Any) -> tuple[str, dict[str, Any]]:
    ns = topo.alab.add_pod(node, short)
    return ns, node.client().put_endpoint(short, netns=ns, **body)


def _raw(sock: str, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """A request with a body the client would never send (not JSON, say)."""
    conn = http.client.HTTPConnection("localhost", timeout=10)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    conn.sock = s
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


# -- one node, the memory store ------------------------------------------------------------------------


def test_memory_agent_api_round_trip(topo: Topo) -> None:
    m, client = topo.m, topo.m.client()
    assert client.healthz() == {"status": "ok", "state": "ready", "kvstore": "Ok"}
    st = client.status()
    assert st["node"] == m.name and st["state"] == "ready" and st["pid"] == topo.agents["m"].proc.pid
    assert st["kvstore"]["backend"] == "memory" and st["kvstore"]["connected"]
    assert st["datapath"]["pod_cidr"] == m.pod_cidr and st["uptime_seconds"] > 0
    cfg = client.config()
    assert cfg["agent"]["node"] == m.name and cfg["agent"]["kvstore"] == "memory"
    assert cfg["datapath"]["routing"] == "none" and cfg["datapath"]["pod_cidr"] == m.pod_cidr
    assert oct(os.stat(m.socket).st_mode & 0o777) == "0o600"

    # A pod by namespace name, another by path (what a runtime passes: CNI_NETNS).
    ns1, ep1 = _pod(topo, m, "p1", labels={"app": "one"})
    ns2 = topo.alab.add_pod(m, "p2")
    ep2 = client.put_endpoint("p2", netns=f"/var/run/netns/{ns2}", labels={"app": "two"}, name="second")
    try:
        assert ep1["ip"] != ep2["ip"] and ep1["prefix"] == 32 and ep1["gateway"] == "10.244.2.1"
        assert ep1["host_ifname"].startswith("lxc") and ep1["ifname"] == "eth0"
        assert ep1["identity"] != ep2["identity"] and ep1["identity"] >= 256
        assert ep2["name"] == "second" and ep2["endpoint"]["program"] == "attached"
        # The pod side is configured: its address, the default route via the gateway.
        addr = topo.alab.run(ns1, "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert f"{ep1['ip']}/32" in addr
        assert f"default via {ep1['gateway']}" in topo.alab.run(ns1, "ip", "route").stdout
        ping = topo.alab.ping(ns1, ep2["ip"])
        assert ping.returncode == 0, ping.stdout + ping.stderr
        # Idempotent: the same container again is the same endpoint (200, not a second one).
        again = client.put_endpoint("p1", netns=ns1, labels={"app": "one"})
        assert again["ip"] == ep1["ip"] and again["host_ifname"] == ep1["host_ifname"]
        listed = {e["container_id"]: e for e in client.endpoints()}
        assert set(listed) == {"p1", "p2"} and listed["p1"]["ip"] == ep1["ip"]
        got = client.endpoint("p2", check=True)
        assert got["check"] == {"ok": True, "problems": []}, got["check"]
        assert client.services() == []
    finally:
        client.delete_endpoint("p2")
        client.delete_endpoint("p1")
    assert client.endpoints() == []
    with pytest.raises(AgentError) as err:
        client.delete_endpoint("p1")
    assert err.value.status == 404 and err.value.code == "not-found"
    assert topo.alab.ping(ns1, ep2["ip"], count=1).returncode != 0  # both are gone from the datapath
    with nsmod.entered(m.netns):
        assert not [d for d in os.listdir("/sys/class/net") if d.startswith("lxc")]


def test_bad_requests_are_answered_with_the_reason(topo: Topo) -> None:
    m, client = topo.m, topo.m.client()
    ns = topo.alab.add_pod(m, "bad")
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("c1", {"netns": ""}, 400, "netns: required"),
        ("c1", {"netns": "no-such-ns"}, 400, "does not exist"),
        ("c1", {"netns": "/tmp"}, 400, "is not a network namespace"),
        ("c1", {"netns": m.netns}, 400, "the node's namespace"),
        ("c1", {"netns": "/proc/2/ns/net"}, 400, "the host's namespace"),
        ("c1", {"netns": ns, "ifname": "this-name-is-too-long"}, 400, "ifname"),
        ("c1", {"netns": ns, "labels": {"a": 1}}, 400, "labels"),
    ]
    for cid, body, status, words in cases:
        with pytest.raises(AgentError) as err:
            client.request("PUT", f"/v1/endpoint/{cid}", body)
        assert err.value.status == status and words in err.value.message, (body, err.value)
    status, body = _raw(m.socket, "PUT", "/v1/endpoint/c1", b"{not json")
    assert status == 400 and "not JSON" in body["error"]["message"]
    status, body = _raw(m.socket, "PUT", "/v1/endpoint/c1", json.dumps({"netns": ns, "color": "red"}).encode())
    assert status == 400 and "unknown field(s) color" in body["error"]["message"]
    status, body = _raw(m.socket, "PUT", "/v1/endpoint/bad%20id", json.dumps({"netns": ns}).encode())
    assert status == 400 and "container id" in body["error"]["message"]
    for method, path, want in (("GET", "/v1/endpoint/nobody", 404), ("DELETE", "/v1/endpoint/nobody", 404),
                               ("GET", "/v1/nothing", 404), ("POST", "/v1/status", 405)):
        status, body = _raw(m.socket, method, path)
        assert status == want and set(body["error"]) == {"code", "message"}, (method, path, body)
    # The same container id with another namespace is a conflict; nothing changes.
    ep = client.put_endpoint("c2", netns=ns)
    other = topo.alab.add_pod(m, "other")
    try:
        with pytest.raises(AgentError) as err:
            client.put_endpoint("c2", netns=other)
        assert err.value.status == 409 and "DELETE it first" in err.value.message
        with pytest.raises(AgentError) as err:
            client.put_endpoint("c3", netns=ns)  # its eth0 is c2's
        assert err.value.status == 409
    finally:
        client.delete_endpoint("c2")
    assert client.endpoints() == [] and ep["ip"]


# -- two nodes over etcd -------------------------------------------------------------------------------


def test_agents_converge_through_etcd(topo: Topo) -> None:
    a, b = topo.a.client(), topo.b.client()
    for me, other, client in ((topo.a, topo.b, a), (topo.b, topo.a, b)):
        def knows(c: AgentClient = client, o: AgentNode = other) -> dict[str, Any] | None:
            st = c.status()
            return st if o.name in st["datapath"]["remote_nodes"] else None

        st = eventually(knows, f"{me.name} learns {other.name}")
        kv = st["kvstore"]
        assert kv["backend"] == "etcd" and kv["connected"] and kv["lease_id"] and kv["lease_ttl"] == 10
        assert kv["endpoints"] == [topo.etcd.url] and kv["last_error"] is None
        assert sorted(st["cluster_nodes"]) == sorted([topo.a.name, topo.b.name])
    keys = topo.keys(f"cilium/state/nodes/v1/{topo.cluster}/")
    assert keys == sorted(f"cilium/state/nodes/v1/{topo.cluster}/{n.name}" for n in (topo.a, topo.b))


def test_pods_on_two_agents_ping_across_vxlan(topo: Topo) -> None:
    nsa, epa = _pod(topo, topo.a, "pa", labels={"app": "web"})
    _nsb, epb = _pod(topo, topo.b, "pb", labels={"app": "web"})
    try:
        # One label set, one identity, on every node (allocated through etcd).
        assert epa["identity"] == epb["identity"]
        _, epc = _pod(topo, topo.b, "pc", labels={"app": "db"})
        assert epc["identity"] != epa["identity"]
        topo.b.client().delete_endpoint("pc")
        ping = topo.alab.ping(nsa, epb["ip"], count=3)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        ips = topo.keys(f"cilium/state/ip/v1/{topo.cluster}/")
        assert {k.rsplit("/", 1)[1] for k in ips} >= {epa["ip"], epb["ip"]}
    finally:
        topo.a.client().delete_endpoint("pa")
        topo.b.client().delete_endpoint("pb")
    assert not [k for k in topo.keys(f"cilium/state/ip/v1/{topo.cluster}/") if k.endswith((epa["ip"], epb["ip"]))]


def test_a_service_in_the_store_is_programmed_on_both_nodes(topo: Topo) -> None:
    nsa, _epa = _pod(topo, topo.a, "client")
    nsb, epb = _pod(topo, topo.b, "backend")
    topo.alab.echo_server(nsb, PORT, "backend")
    svc = Service(name="web", frontend=Frontend(SVC_IP, 80), backends=[Backend(epb["ip"], PORT)])
    try:
        with topo.store() as store:
            store.put_service(svc)
        for node in (topo.a, topo.b):
            got = eventually(lambda n=node: [s for s in n.client().services() if s["name"] == "web"],
                             f"service web on {node.name}")
            assert Service.from_dict(got[0]) == svc
        reply = topo.alab.tcp_echo(nsa, SVC_IP, 80, "via-service", cgroup=topo.a.cgroup)
        assert json.loads(reply)["reply"].startswith("via-service|backend|"), reply
        with topo.store() as store:
            store.delete_service("web")
        for node in (topo.a, topo.b):
            eventually(lambda n=node: not n.client().services(), f"service web gone from {node.name}")
    finally:
        with topo.store() as store:
            store.delete_service("web")
        topo.a.client().delete_endpoint("client")
        topo.b.client().delete_endpoint("backend")


def test_cli_shows_what_the_agent_knows(topo: Topo) -> None:
    _ns, ep = _pod(topo, topo.a, "cli")
    try:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "ciliumlite.cli", *args, "--node", topo.a.name],
                                  capture_output=True, text=True, timeout=60)

        res = cli("status", "-o", "json")
        assert res.returncode == 0, res.stderr
        (row,) = json.loads(res.stdout)
        assert row["agent"]["state"] == "ready" and row["agent"]["pid"] == topo.agents["a"].proc.pid
        assert row["kvstore"]["connected"] and row["kvstore"]["backend"] == "etcd"
        text = cli("status").stdout
        kv_line = next(line for line in text.splitlines() if "KVStore:" in line)
        assert "Ok  etcd: 1/1 connected, lease-ID=" in kv_line and "last heartbeat" in kv_line, text
        assert "Agent:" in text and "ready (pid" in text
        res = cli("endpoint", "list", "-o", "json")
        rows = json.loads(res.stdout)
        assert [(r["container_id"], r["ipv4"]) for r in rows] == [("cli", ep["ip"])], res.stdout
    finally:
        topo.a.client().delete_endpoint("cli")


def test_etcd_outage_keeps_pods_forwarding_and_new_identities_wait(topo: Topo) -> None:
    nsa, _ = _pod(topo, topo.a, "o1", labels={"app": "o1"})
    _, epb = _pod(topo, topo.b, "o2", labels={"app": "o2"})
    ns3 = topo.alab.add_pod(topo.a, "o3")
    topo.etcd.pause()  # SIGSTOP: connections stay open, nothing answers (a hung etcd)
    try:
        # A label set never seen needs the kvstore: "try again later" (the CNI plugin's code 11).
        with pytest.raises(AgentError) as err:
            topo.a.client().put_endpoint("o3", netns=ns3, labels={"app": "never-seen"})
        assert err.value.status == 503 and err.value.code == "kvstore-unavailable", err.value
        assert "eth0" not in topo.alab.run(ns3, "ip", "-o", "link").stdout  # nothing was made
        # What is programmed keeps forwarding, across nodes too.
        ping = topo.alab.ping(nsa, epb["ip"], count=3)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        health = eventually(lambda: (h := topo.a.client().healthz())["status"] == "degraded" and h,
                            "a reports the kvstore down", timeout=15)
        assert health["kvstore"] == "Failure"
    finally:
        topo.etcd.resume()
    eventually(lambda: topo.a.client().healthz()["status"] == "ok", "a reconnects", timeout=30)
    assert topo.a.client().put_endpoint("o3", netns=ns3, labels={"app": "never-seen"})["identity"] >= 256
    for node, cid in ((topo.a, "o1"), (topo.b, "o2"), (topo.a, "o3")):
        node.client().delete_endpoint(cid)


# -- shutdown and start-up failures --------------------------------------------------------------------


def test_sigterm_deletes_the_keys_and_keeps_the_datapath_forwarding(topo: Topo) -> None:
    c = topo.alab.add_node("c")
    agent = topo.alab.start_agent(c, etcd=topo.etcd)
    try:
        ns1, ep1 = _pod(topo, c, "k1")
        _ns2, ep2 = _pod(topo, c, "k2")
        eventually(lambda: c.name in topo.a.client().status()["datapath"]["remote_nodes"], "a learns c")
        assert topo.keys(f"cilium/state/nodes/v1/{topo.cluster}/{c.name}")
        assert agent.terminate() == 0, agent.log
        assert "datapath of" in agent.log and "left in place" in agent.log
        # Its keys went with its lease at once (not after the TTL); the others forget the node.
        assert topo.keys(f"cilium/state/nodes/v1/{topo.cluster}/{c.name}") == []
        assert not [k for k in topo.keys(f"cilium/state/ip/v1/{topo.cluster}/") if k.endswith((ep1["ip"], ep2["ip"]))]
        for other in (topo.a, topo.b):
            eventually(lambda o=other: c.name not in o.client().status()["datapath"]["remote_nodes"],
                       f"{other.name} forgets {c.name}")
        assert not os.path.exists(c.socket)
        # The datapath stays: pinned maps and links, and the pods still talk through it.
        assert os.path.isdir(f"{PIN_BASE}/{c.name}/links") and os.listdir(f"{PIN_BASE}/{c.name}/links")
        ping = topo.alab.ping(ns1, ep2["ip"])
        assert ping.returncode == 0, ping.stdout + ping.stderr
        # Without an agent the CLI reads the pins and says the process is gone.
        res = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "endpoint", "list", "--node", c.name, "-o",
                              "json"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"rc={res.returncode}\n{res.stdout}\n{res.stderr}"
        assert {r["ipv4"] for r in json.loads(res.stdout)} == {ep1["ip"], ep2["ip"]}
        assert all("container_id" not in r for r in json.loads(res.stdout))
    finally:
        if agent.proc.poll() is None:
            agent.terminate()
        topo.alab.remove_kept_datapath(c)


def test_remove_datapath_on_exit_leaves_nothing(topo: Topo) -> None:
    r = topo.alab.add_node("r", underlay=False)
    agent = topo.alab.start_agent(r, "--remove-datapath-on-exit")
    ns, ep = _pod(topo, r, "gone")
    assert agent.terminate() == 0, agent.log
    assert "datapath of" in agent.log and "removed" in agent.log
    assert not os.path.exists(f"{PIN_BASE}/{r.name}") and not os.path.exists(os.path.dirname(r.socket))
    with nsmod.entered(r.netns):
        assert [d for d in os.listdir("/sys/class/net") if d.startswith("lxc")] == []
    assert "eth0" not in topo.alab.run(ns, "ip", "-o", "link", "show").stdout  # the pod's veth went too
    assert ep["ip"]


def test_unreachable_etcd_at_start_retries_then_exits_with_the_reason(topo: Topo) -> None:
    u = topo.alab.add_node("u")

    class Dead:  # nothing listens on port 9 inside the node's namespace: connection refused
        url = "http://127.0.0.1:9"

    t0 = time.monotonic()
    agent = topo.alab.start_agent(u, "--kvstore-connect-timeout", "3", etcd=Dead(), wait=False)
    rc = agent.wait_exit(timeout=30)
    took = time.monotonic() - t0
    assert rc == 1, agent.log
    assert agent.log.count("not reachable") >= 2 and "retrying in" in agent.log  # it retried, with backoff
    assert "not reachable within 3 s" in agent.log and "127.0.0.1:9" in agent.log
    assert took < 20
    assert not os.path.exists(u.socket) and not os.path.exists(f"{PIN_BASE}/{u.name}")


def test_one_agent_per_node(topo: Topo) -> None:
    again = topo.alab.start_agent(topo.m, wait=False)
    assert again.wait_exit(timeout=30) == 1
    assert "another agent answers" in again.log
    assert topo.m.client().healthz()["status"] == "ok"  # the first one is untouched


def test_bad_config_exits_2_with_the_key(topo: Topo, tmp_path: Any) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("node: x1\npod-cidr: 10.250.0.0/24\nrouting-mode: carrier-pigeon\n")
    res = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "agent", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "routing-mode: 'carrier-pigeon'" in res.stderr
    cfg.write_text("node: x1\npod-cidr: 10.250.0.0/24\ncolour: blue\n")
    res = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "agent", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown key 'colour'" in res.stderr
