"""The services features issue 13 added, end to end in a lab with real traffic: external IPs and
LoadBalancer IPs reached from outside (and from pods), ``externalTrafficPolicy=Local`` on them,
``internalTrafficPolicy=Local``, terminating backends draining an established TCP connection,
``healthCheckNodePort`` answering 200/503 as backends move, and a service set that does not fit
the LB maps (``lb_map_max``) refused with nothing changed.

One lab for the class: a 2-node VXLAN cluster (SNAT NodePort, socket LB on), ``lb_map_max`` 256 so
that a few hundred backends overflow ``cilium_lb4_services_v2``. The outside host (203.0.113.10)
reaches external and LoadBalancer IPs through the leaf router, which routes each such /32 to one
node, as an external balancer (or BGP) would. Only lab namespaces and documentation addresses are
used; every process is the lab's and goes with it.

``TestThroughAgents`` has a lab of its own with etcd and an agent process per node: a LoadBalancer
manifest applied to etcd, each agent's health check server answering for its own node, and the
endpoint going terminating.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from ciliumlite.datapath.lb import LbMapFullError
from ciliumlite.datapath.reasons import Reason
from ciliumlite.datapath.records import SVC_FLAG_EXTERNAL_IP, SVC_FLAG_LOADBALANCER
from ciliumlite.lab import Host, Lab, LabCluster, Node, Pod
from ciliumlite.lab.agent_cluster import AgentCluster
from ciliumlite.service import Backend, Frontend, Service

pytestmark = pytest.mark.integration

ECHO = 8080            # the lab echo server (one request per connection)
LONG = 9200            # a server that keeps connections open (below)
LB_MAP_MAX = 256
EXT_IP = "198.51.100.7"
LB_IP = "192.0.2.80"
WORLD = "203.0.113.10"
ECONNREFUSED = 111

# Every line gets "<name> <line>" back; connections stay open. argv: name port
LONG_SERVER = r"""
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(64)
print("ready", flush=True)
def serve(conn):
    with conn:
        for line in conn.makefile("rb"):
            conn.sendall(name.encode() + b" " + line)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""

# A connection that lands on backend ``want`` (at most 30 connects), "ready", then waits (at most 30 s)
# for ``trigger`` to exist; then 5 round trips on that connection and 10 new connections, as JSON.
#   argv: ip port want trigger
DRAIN_CLIENT = r"""
import json, os, socket, sys, time
ip, port, want, trigger = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def ask(f, s, text):
    s.sendall(text.encode() + b"\n")
    return f.readline().decode().split(" ", 1)[0] or "EOF"
conn = None
for _ in range(30):
    s = socket.create_connection((ip, port), timeout=2)
    s.settimeout(2)
    f = s.makefile("rb")
    if ask(f, s, "hello") == want:
        conn = (f, s)
        break
    s.close()
print("ready" if conn else "no-connection", flush=True)
end = time.monotonic() + 30
while conn and not os.path.exists(trigger) and time.monotonic() < end:
    time.sleep(0.05)
old, new = [], []
for i in range(5):
    try:
        old.append(ask(conn[0], conn[1], "old%d" % i) if conn else "none")
    except OSError as exc:
        old.append("ERR %s" % exc)
    time.sleep(0.1)
for i in range(10):
    try:
        c = socket.create_connection((ip, port), timeout=2)
        c.settimeout(2)
        new.append(ask(c.makefile("rb"), c, "new%d" % i))
        c.close()
    except OSError as exc:
        new.append("ERR %s" % exc)
print(json.dumps({"old": old, "new": new}), flush=True)
"""

# GET http://ip:port/ -> {"status": ..., "body": ...}. argv: ip port
PROBE = r"""
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen("http://%s:%s/" % (sys.argv[1], sys.argv[2]), timeout=3) as r:
        print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": json.loads(e.read())}))
except OSError as e:
    print(json.dumps({"status": None, "error": str(e)}))
"""


def py(*args: str, script: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", script, *args]


@dataclass
class ExtLab:
    lab: Lab
    cl: LabCluster
    w1: Node
    w2: Node
    c1: Pod            # client on w1
    c2: Pod            # client on w2
    be1: Pod           # backend on w1
    be2: Pod           # backend on w2
    outside: Host

    def route(self, ip: str, via: Node) -> None:
        """The leaf routes ``ip`` to ``via`` (what an external balancer or BGP would arrange)."""
        route(self.lab, ip, via.ip)


def route(lab: Lab, ip: str, node_ip: str) -> None:
    """The leaf router of ``lab`` sends ``ip`` to the node at ``node_ip``."""
    with IPRoute(netns=lab.fabric_or_create().netns) as ipr:
        ipr.route("replace", dst=f"{ip}/32", gateway=node_ip)


def _start(pod: Pod, script: str, *args: str) -> None:
    proc = pod.popen(*py(*args, script=script))
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    line = proc.stdout.readline() if ready and proc.stdout else ""
    assert line.strip() == "ready", f"{pod.name}: {line!r}"


@pytest.fixture(scope="class")
def ext() -> Iterator[ExtLab]:
    with Lab("svc-ext") as lab:
        cl = lab.cluster(["w1", "w2"], routing="vxlan", lb_map_max=LB_MAP_MAX)
        w1, w2 = cl.node("w1"), cl.node("w2")
        pods = {name: node.add_pod(name) for node, name in [(w1, "c1"), (w2, "c2"), (w1, "be1"), (w2, "be2")]}
        for name in ("be1", "be2"):
            pods[name].ensure_echo_server(ECHO)
            _start(pods[name], LONG_SERVER, name, str(LONG))
        # The first upsert loads socket LB and opens the LB maps on every node: do it now, so that
        # the per-test leak check does not count the lab's own objects against the first test.
        cl.upsert_service(Service("warm-up", Frontend("10.96.40.99", 80), [Backend(pods["be1"].ip, ECHO)]))
        cl.delete_service("warm-up")
        yield ExtLab(lab, cl, w1, w2, pods["c1"], pods["c2"], pods["be1"], pods["be2"], lab.outside())


def answers(src: Host, ip: str, port: int, n: int = 8, timeout: float = 2.0) -> Counter[str]:
    """Who answered ``n`` connections (``ERR <errno>`` for a failed one)."""
    out: Counter[str] = Counter()
    for i in range(n):
        r = src.tcp_echo(ip, port, payload=f"p{i}", timeout=timeout)
        out[r.server if r.ok else f"ERR {r.errno}"] += 1
    return out


def frontend_flags(node: Node, addr: str, port: int) -> set[int]:
    assert node.datapath is not None
    return {r["flags"] for r in node.datapath.lb_entries() if r["frontend"] == f"{addr}:{port}" and r["slot"] == 0}


def drop(cl: LabCluster, *names: str) -> None:
    for name in names:
        try:
            cl.delete_service(name)
        except Exception:  # cleanup must not hide the test's own failure
            pass


def probe(src: Host, ip: str, port: int) -> dict[str, Any]:
    res = src.run(*py(ip, str(port), script=PROBE), timeout=15)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def snapshot(cl: LabCluster) -> dict[str, Any]:
    out: dict[str, Any] = {n.name: n.datapath.lb_entries() for n in cl.nodes() if n.datapath is not None}
    out["store"] = sorted(s.name for s in cl.control.services())
    return out


class TestExternalFrontends:
    def test_external_ip_from_outside_and_from_a_pod(self, ext: ExtLab) -> None:
        svc = Service("ext", Frontend("10.96.40.1", 80), [Backend(ext.be1.ip, ECHO), Backend(ext.be2.ip, ECHO)],
                      external_ips=[EXT_IP])
        try:
            ext.cl.upsert_service(svc)
            assert frontend_flags(ext.w1, EXT_IP, 80) == {SVC_FLAG_EXTERNAL_IP | 0x40}  # ExternalIPs, routable
            for via in (ext.w1, ext.w2):
                ext.route(EXT_IP, via)
                got = answers(ext.outside, EXT_IP, 80)
                assert sum(got[b] for b in ("be1", "be2")) == 8, f"through {via.name}: {got}"
            r = ext.c1.tcp_echo(EXT_IP, 80)       # from inside: socket LB translates it at connect()
            assert r.ok and r.peer == (EXT_IP, 80), r
        finally:
            drop(ext.cl, "ext")

    def test_external_ip_honours_external_traffic_policy_local(self, ext: ExtLab) -> None:
        svc = Service("ext-local", Frontend("10.96.40.2", 80), [Backend(ext.be1.ip, ECHO), Backend(ext.be2.ip, ECHO)],
                      external_ips=[EXT_IP], external_traffic_policy="Local")
        try:
            ext.cl.upsert_service(svc)
            ext.route(EXT_IP, ext.w1)
            assert answers(ext.outside, EXT_IP, 80) == Counter({"be1": 8}), "w1 serves its own backend only"
            seen = ext.outside.tcp_echo(EXT_IP, 80).seen_client
            assert seen.split(":")[0] == WORLD, f"Local: no SNAT, the backend sees the client ({seen})"
            ext.route(EXT_IP, ext.w2)
            assert answers(ext.outside, EXT_IP, 80) == Counter({"be2": 8})
            # Only a backend on w2: w1 drops traffic from outside with a reason; pods on w1 still get in
            ext.cl.upsert_service(Service("ext-local", svc.frontend, [Backend(ext.be2.ip, ECHO)],
                                          external_ips=[EXT_IP], external_traffic_policy="Local"))
            ext.route(EXT_IP, ext.w1)
            assert ext.w1.datapath is not None
            before = ext.w1.datapath.count(Reason.DROP_NO_SERVICE)
            assert not ext.outside.tcp_echo(EXT_IP, 80, timeout=1.0).ok
            assert ext.w1.datapath.count(Reason.DROP_NO_SERVICE) > before
            assert answers(ext.c1, EXT_IP, 80, n=4) == Counter({"be2": 4}), "internal scope: every backend"
        finally:
            drop(ext.cl, "ext-local")

    def test_load_balancer_ip_and_its_node_port(self, ext: ExtLab) -> None:
        svc = Service("lb", Frontend("10.96.40.3", 80), [Backend(ext.be1.ip, ECHO), Backend(ext.be2.ip, ECHO)],
                      type="LoadBalancer", node_port=30500, load_balancer_ips=[LB_IP])
        try:
            ext.cl.upsert_service(svc)
            assert frontend_flags(ext.w2, LB_IP, 80) == {SVC_FLAG_LOADBALANCER | 0x40}
            ext.route(LB_IP, ext.w2)
            got = answers(ext.outside, LB_IP, 80)
            assert sum(got[b] for b in ("be1", "be2")) == 8, got
            got = answers(ext.outside, ext.w1.ip, 30500, n=4)
            assert sum(got[b] for b in ("be1", "be2")) == 4, got
        finally:
            drop(ext.cl, "lb")


class TestInternalTrafficPolicy:
    def test_pods_reach_only_their_nodes_backends(self, ext: ExtLab) -> None:
        svc = Service("itp", Frontend("10.96.40.4", 80), [Backend(ext.be1.ip, ECHO), Backend(ext.be2.ip, ECHO)],
                      internal_traffic_policy="Local")
        try:
            ext.cl.upsert_service(svc)
            assert answers(ext.c1, "10.96.40.4", 80) == Counter({"be1": 8})
            assert answers(ext.c2, "10.96.40.4", 80) == Counter({"be2": 8})
        finally:
            drop(ext.cl, "itp")

    def test_no_local_backend_is_refused_with_a_reason(self, ext: ExtLab) -> None:
        svc = Service("itp-none", Frontend("10.96.40.5", 80), [Backend(ext.be2.ip, ECHO)],
                      internal_traffic_policy="Local")
        try:
            ext.cl.upsert_service(svc)
            assert ext.w1.datapath is not None
            before = ext.w1.datapath.count(Reason.LB_SOCK_REFUSED)
            assert answers(ext.c1, "10.96.40.5", 80, n=3) == Counter({f"ERR {ECONNREFUSED}": 3})
            assert ext.w1.datapath.count(Reason.LB_SOCK_REFUSED) - before == 3
            assert answers(ext.c2, "10.96.40.5", 80, n=3) == Counter({"be2": 3})
        finally:
            drop(ext.cl, "itp-none")


class TestTerminatingBackends:
    @pytest.mark.parametrize("via", ["w1", "w2"])
    def test_established_connection_drains_and_new_ones_go_elsewhere(self, ext: ExtLab, tmp_path: Path,
                                                                     via: str) -> None:
        """Through NodePort from outside (conntrack pins the backend): be1 is local to w1 and remote
        (SNAT) from w2, so both the local and the forwarded path drain."""
        port = 30510
        both = [Backend(ext.be1.ip, LONG), Backend(ext.be2.ip, LONG)]
        svc = Service("drain", Frontend("10.96.40.6", LONG), both, type="NodePort", node_port=port)
        trigger = tmp_path / "go"
        node = ext.w1 if via == "w1" else ext.w2
        client = None
        try:
            ext.cl.upsert_service(svc)
            client = ext.outside.popen(*py(node.ip, str(port), "be1", str(trigger), script=DRAIN_CLIENT))
            assert client.stdout is not None
            ready, _, _ = select.select([client.stdout], [], [], 60.0)
            assert ready and client.stdout.readline().strip() == "ready"
            ext.cl.upsert_service(Service("drain", svc.frontend, [Backend(ext.be1.ip, LONG, terminating=True),
                                                                  Backend(ext.be2.ip, LONG)],
                                          type="NodePort", node_port=port))
            assert node.datapath is not None
            rows = [r for r in node.datapath.lb_entries() if r["frontend"] == f"{node.ip}:{port}"]
            assert [r["backend"] for r in sorted(rows, key=lambda r: r["slot"])][1:] == \
                [f"{ext.be2.ip}:{LONG}", f"{ext.be1.ip}:{LONG}"], "the terminating backend sits after count"
            trigger.touch()
            ready, _, _ = select.select([client.stdout], [], [], 60.0)
            assert ready
            result = json.loads(client.stdout.readline())
            assert result["old"] == ["be1"] * 5, "bytes still flow on the established connection"
            assert result["new"] == ["be2"] * 10, "no new connection goes to the terminating backend"
            client.wait(timeout=10)
        finally:
            if client is not None:
                trigger.touch()  # a client still waiting ends on its own; its pipes go now
                for pipe in (client.stdout, client.stderr):
                    if pipe is not None:
                        pipe.close()
            drop(ext.cl, "drain")

    def test_only_terminating_backends_keep_serving(self, ext: ExtLab) -> None:
        svc = Service("all-dying", Frontend("10.96.40.7", 80), [Backend(ext.be1.ip, ECHO, terminating=True)],
                      type="NodePort", node_port=30511)
        try:
            ext.cl.upsert_service(svc)
            assert answers(ext.outside, ext.w1.ip, 30511, n=3) == Counter({"be1": 3})
            assert answers(ext.c2, "10.96.40.7", 80, n=3) == Counter({"be1": 3})
        finally:
            drop(ext.cl, "all-dying")


class TestHealthCheckNodePort:
    def test_answers_200_with_local_backends_and_503_without(self, ext: ExtLab) -> None:
        hc = 30520

        def svc(*backends: Backend) -> Service:
            return Service("default/hc", Frontend("10.96.40.8", 80), list(backends), type="LoadBalancer",
                           node_port=30521, load_balancer_ips=[LB_IP], external_traffic_policy="Local",
                           health_check_node_port=hc)

        def states() -> tuple[Any, ...]:
            return tuple((p["status"], p.get("body", {}).get("localEndpoints"))
                         for p in (probe(ext.outside, n.ip, hc) for n in (ext.w1, ext.w2)))

        try:
            ext.cl.upsert_service(svc(Backend(ext.be1.ip, ECHO)))
            assert states() == ((200, 1), (503, 0))
            body = probe(ext.outside, ext.w1.ip, hc)["body"]
            assert body == {"service": {"namespace": "default", "name": "hc"}, "localEndpoints": 1,
                            "serviceProxyHealthy": True}
            ext.cl.upsert_service(svc(Backend(ext.be2.ip, ECHO)))      # the backend moved to w2
            assert states() == ((503, 0), (200, 1))
            ext.cl.upsert_service(svc(Backend(ext.be1.ip, ECHO), Backend(ext.be2.ip, ECHO, terminating=True)))
            assert states() == ((200, 1), (503, 0)), "a terminating local backend does not count"
            # The balancer follows the health check: it sends LB_IP to w1, which serves it locally
            ext.route(LB_IP, ext.w1)
            assert answers(ext.outside, LB_IP, 80, n=4) == Counter({"be1": 4})
            ext.cl.delete_service("default/hc")
            assert all(p["status"] is None for p in (probe(ext.outside, n.ip, hc) for n in (ext.w1, ext.w2))), \
                "deleting the service stops its health check server"
        finally:
            drop(ext.cl, "default/hc")


class TestLbMapSize:
    def test_a_set_that_does_not_fit_raises_and_changes_nothing(self, ext: ExtLab) -> None:
        big = [Backend(f"10.244.200.{i + 1}", 80) for i in range(200)]   # addresses only: never connected to
        try:
            ext.cl.upsert_service(Service("fill", Frontend("10.96.41.1", 80), big))      # 201 entries
            for n in ext.cl.nodes():
                assert n.datapath is not None and n.datapath.lb_maps is not None
                assert n.datapath.lb_maps.services.max_entries == LB_MAP_MAX, "lb_map_max sized the pinned maps"
                assert n.datapath.lb_maps.backends.max_entries == LB_MAP_MAX
            before = snapshot(ext.cl)
            more = Service("more", Frontend("10.96.41.2", 80), [Backend(f"10.244.210.{i}", 80) for i in range(1, 61)])
            with pytest.raises(LbMapFullError) as info:
                ext.cl.upsert_service(more)                                              # 61 more: 262 > 256
            assert (info.value.map_name, info.value.needed, info.value.capacity) == \
                ("cilium_lb4_services_v2", 262, LB_MAP_MAX)
            assert snapshot(ext.cl) == before, "nothing was written on any node, nor in the store"
            # Growing the one already there past the size is refused the same way, and it keeps working
            with pytest.raises(LbMapFullError, match="cilium_lb4_services_v2 would need 257 entries, it has 256"):
                ext.cl.upsert_service(Service("fill", Frontend("10.96.41.1", 80),
                                              [*big, *(Backend(f"10.244.211.{i}", 80) for i in range(1, 57))]))
            assert snapshot(ext.cl) == before
            fits = Service("more", Frontend("10.96.41.2", 80), [Backend(ext.be1.ip, ECHO)])
            ext.cl.upsert_service(fits)                                                  # 2 entries: fits
            assert answers(ext.c2, "10.96.41.2", 80, n=2) == Counter({"be1": 2})
        finally:
            drop(ext.cl, "fill", "more")


class TestUserLayers:
    """The same features through what users touch: ``ciliumlite apply -f``'s manifests and the CLI."""

    def test_manifest_with_load_balancer_external_ips_and_a_terminating_endpoint(self, ext: ExtLab) -> None:
        manifest = f"""
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: demo}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.42.1
  externalIPs: [{EXT_IP}]
  externalTrafficPolicy: Local
  healthCheckNodePort: 30530
  ports: [{{port: 80, targetPort: {ECHO}, nodePort: 30531}}]
status:
  loadBalancer:
    ingress: [{{ip: {LB_IP}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: shop-1
  namespace: demo
  labels: {{kubernetes.io/service-name: shop}}
addressType: IPv4
ports: [{{port: {ECHO}}}]
endpoints:
  - addresses: [{ext.be1.ip}]
    conditions: {{ready: true}}
  - addresses: [{ext.be2.ip}]
    conditions: {{ready: false, serving: true, terminating: true}}
"""
        try:
            ext.lab.apply(manifest)
            assert ext.w2.datapath is not None
            svc = ext.w2.datapath.service("demo/shop")
            assert [(b.ip, b.terminating) for b in svc.backends] == [(ext.be1.ip, False), (ext.be2.ip, True)]
            # w2's only local backend is terminating: its external scope falls back to it, and its
            # health check says 503 so that a balancer would not pick w2
            assert probe(ext.outside, ext.w2.ip, 30530)["status"] == 503
            assert probe(ext.outside, ext.w1.ip, 30530)["body"]["service"] == {"namespace": "demo", "name": "shop"}
            for ip, via in ((LB_IP, ext.w1), (EXT_IP, ext.w1)):
                ext.route(ip, via)
                assert answers(ext.outside, ip, 80, n=3) == Counter({"be1": 3}), ip
        finally:
            drop(ext.cl, "demo/shop")

    def test_bpf_lb_list_and_service_list_show_the_new_frontends_and_states(self, ext: ExtLab) -> None:
        svc = Service("shown", Frontend("10.96.42.2", 80), [Backend(ext.be1.ip, ECHO, terminating=True),
                                                           Backend(ext.be2.ip, ECHO)],
                      type="LoadBalancer", load_balancer_ips=[LB_IP], external_ips=[EXT_IP])
        try:
            ext.cl.upsert_service(svc)

            def cli(*args: str) -> str:
                res = subprocess.run([sys.executable, "-m", "ciliumlite.cli", *args, "--lab", ext.lab.prefix,
                                      "--node", "w1"], capture_output=True, text=True, timeout=120, env=dict(os.environ))
                assert res.returncode == 0, res.stderr
                return res.stdout

            lines = [" ".join(line.split()) for line in cli("bpf", "lb", "list").splitlines()]
            for addr, kind in ((EXT_IP, "ExternalIPs"), (LB_IP, "LoadBalancer")):
                assert any(line.startswith(f"{addr}:80/TCP 0.0.0.0:0") and f"[{kind}]" in line for line in lines), lines
                assert any(line.startswith(f"{addr}:80/TCP {ext.be1.ip}:{ECHO}/TCP") and "(2) [terminating]" in line
                           for line in lines), lines
            listed = cli("service", "list")
            assert "LoadBalancer" in listed and "ExternalIPs" in listed and "(terminating)" in listed
        finally:
            drop(ext.cl, "shown")


# == through the agents: services from etcd, health checks served by the agent processes =============
@pytest.fixture(scope="class")
def agents() -> Iterator[tuple[Lab, AgentCluster, Pod]]:
    with Lab("svc-agents", store="etcd", lease_ttl=15) as lab:
        cluster = lab.cluster(["a", "b"], routing="vxlan")
        assert isinstance(cluster, AgentCluster)
        web = cluster.node("a").add_pod("web")
        web.ensure_echo_server(ECHO)
        lab.outside()
        yield lab, cluster, web


def _lb_manifest(web_ip: str, conditions: str) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.43.1
  externalTrafficPolicy: Local
  healthCheckNodePort: 30540
  ports: [{{port: 80, targetPort: {ECHO}, nodePort: 30541}}]
status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{port: {ECHO}}}]
endpoints:
  - addresses: [{web_ip}]
    conditions: {conditions}
"""


@pytest.mark.skipif(not os.path.exists("/usr/bin/etcd") and not os.path.exists("/usr/local/bin/etcd"),
                    reason="etcd is not installed")
@pytest.mark.no_leak_check  # the agents' socket LB lives as long as the lab; the lab's teardown removes it
class TestThroughAgents:
    def test_health_check_served_by_each_agent_follows_the_endpoints(self, agents: tuple[Lab, AgentCluster,
                                                                                             Pod]) -> None:
        lab, cluster, web = agents
        a, b = cluster.node("a"), cluster.node("b")
        outside = lab.outside()
        lab.apply(_lb_manifest(web.ip, "{ready: true}"))
        assert [(p["status"], p["body"]["localEndpoints"]) for p in (probe(outside, n.ip, 30540) for n in (a, b))] \
            == [(200, 1), (503, 0)], "each node's agent answers for its own backends"
        route(lab, LB_IP, a.ip)
        assert answers(outside, LB_IP, 80, n=3) == Counter({"web": 3})
        lab.apply(_lb_manifest(web.ip, "{ready: false, serving: true, terminating: true}"))
        assert probe(outside, a.ip, 30540)["status"] == 503, "the only local endpoint is terminating"
        assert answers(outside, LB_IP, 80, n=2) == Counter({"web": 2}), "still served: only terminating is left"
