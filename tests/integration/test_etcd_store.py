"""EtcdStore against a real etcd (Debian's etcd-server 3.4, started per test or per module on
loopback by ciliumlite.testing.etcd): CRUD, validation, watch order, kill/restart, compaction,
lease expiry of a killed agent process, SIGSTOP, concurrent identity allocation, bulk puts."""

from __future__ import annotations

import dataclasses
import gc
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.cluster import Cluster, EtcdStore, KvstoreError, NodeInfo
from ciliumlite.cluster.store import EndpointRecord
from ciliumlite.policy import parse_policy
from ciliumlite.service import Backend, Frontend, Service
from ciliumlite.testing.etcd import EtcdServer
from ciliumlite.testing.resources import unique_name

pytestmark = pytest.mark.integration

StoreFactory = Callable[..., EtcdStore]


@pytest.fixture
def stores() -> Iterator[StoreFactory]:
    """Makes EtcdStores and closes every one at teardown (threads stopped, leases revoked)."""
    made: list[EtcdStore] = []

    def make(server: EtcdServer, **kw: Any) -> EtcdStore:
        store = EtcdStore(server.endpoints, **kw)
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in reversed(made):
            store.close()
        # A request that timed out (etcd paused) leaves its socket in a reference cycle (the
        # response's file object); the leak check counts fds, so collect now rather than later.
        gc.collect()


class Recorder:
    """Collects watch events; wait_for polls (bounded) until a predicate holds."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def __call__(self, event: str, obj: Any) -> None:
        with self.lock:
            self.events.append((event, obj))
            self.threads.add(threading.current_thread().name)

    def names(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(e, o.name if hasattr(o, "name") else o.ip) for e, o in self.events]

    def wait_for(self, pred: Callable[[list[tuple[str, str]]], bool], timeout: float = 10.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if pred(self.names()):
                return time.monotonic() - start
            time.sleep(0.01)
        raise AssertionError(f"timed out after {timeout} s; events: {self.names()}")


def node(i: int) -> NodeInfo:
    return NodeInfo(f"n{i}", f"192.168.50.{i}", f"10.244.{i}.0/24")


def svc(name: str, i: int = 1) -> Service:
    return Service(name, Frontend(f"10.96.{i // 250}.{i % 250 + 1}", 80), [Backend("10.244.1.10", 8080)])


def cluster_name() -> str:
    return unique_name("c").replace("-", "")


# -- CRUD, validation ---------------------------------------------------------------------------


def test_crud_and_validation(etcd_server_module: EtcdServer, stores: StoreFactory) -> None:
    store = stores(etcd_server_module, cluster=cluster_name())
    assert store.nodes() == [] and store.services() == []
    store.put_node(node(1))
    store.put_node(node(2))
    store.put_node(NodeInfo("n2", "192.168.50.22", "10.244.2.0/24"))  # replace: same name, new IP
    assert [n.ip for n in store.nodes()] == ["192.168.50.1", "192.168.50.22"]
    with pytest.raises(ValidationError, match="clashes with n1"):
        store.put_node(NodeInfo("n3", "192.168.50.1", "10.244.3.0/24"))  # n1's IP
    with pytest.raises(ValidationError, match="clashes with n2"):
        store.put_node(NodeInfo("n3", "192.168.50.3", "10.244.2.128/25"))  # inside n2's CIDR
    with pytest.raises(ValidationError, match="key segment"):
        store.put_node(NodeInfo("a/b", "192.168.50.9", "10.244.9.0/24"))
    assert [n.name for n in store.nodes()] == ["n1", "n2"]  # nothing written by the failures
    store.delete_node("n1")
    store.delete_node("n1")  # absent: no-op
    assert [n.name for n in store.nodes()] == ["n2"]

    s1, s2 = svc("web", 1), svc("default/db", 2)
    store.put_service(s1)
    store.put_service(s2)
    assert store.services() == sorted([s1, s2], key=lambda s: s.name)
    with pytest.raises(ValidationError, match=r"ciliumlite\.Service"):
        store.put_service({"name": "x"})
    store.delete_service("web")
    assert store.services() == [s2]
    # Cilium's layout, JSON values.
    out = etcd_server_module.etcdctl("get", "--prefix", f"cilium/state/nodes/v1/{store.cluster}/")
    assert f"cilium/state/nodes/v1/{store.cluster}/n2" in out and '"pod_cidr": "10.244.2.0/24"' in out
    assert store.status().connected


def test_ip_identities_and_own_keys(etcd_server_module: EtcdServer, stores: StoreFactory) -> None:
    cluster = cluster_name()
    agent = stores(etcd_server_module, cluster=cluster, owner="n1", lease_ttl=5)
    other = stores(etcd_server_module, cluster=cluster)
    agent.put_node(node(1))
    agent.put_ip_identity("10.244.1.5", 300, "192.168.50.1", namespace="default", pod="web-1")
    seen = Recorder()
    stop = other.watch_ip_identities(seen)  # replays the current entries first
    seen.wait_for(lambda ev: ev == [("ip-upsert", "10.244.1.5")])
    assert [e.identity for e in other.ip_identities()] == [300]
    with pytest.raises(ValidationError):
        agent.put_ip_identity("not-an-ip", 300, "192.168.50.1")
    keys = agent.lease_keys()
    assert f"cilium/state/nodes/v1/{cluster}/n1" in keys and f"cilium/state/ip/v1/{cluster}/10.244.1.5" in keys
    # Someone deletes the agent's own node record: the agent re-creates it at once.
    other.delete_node("n1")
    deadline = time.monotonic() + 5
    while [n.name for n in other.nodes()] != ["n1"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [n.name for n in other.nodes()] == ["n1"]
    agent.delete_ip_identity("10.244.1.5")
    seen.wait_for(lambda ev: ev[-1] == ("ip-delete", "10.244.1.5"))
    stop()
    # close() revokes the lease: the own keys go at once.
    agent.close()
    assert other.nodes() == []


# -- two agents, watch order ---------------------------------------------------------------------


def test_two_agents_converge_and_watch_order(etcd_server_module: EtcdServer, stores: StoreFactory) -> None:
    cluster = cluster_name()
    a = stores(etcd_server_module, cluster=cluster, owner="n1")
    b = stores(etcd_server_module, cluster=cluster, owner="n2")
    a.put_node(node(1))
    # b joins like Cluster.join: list, then watch from the list's revision.
    assert [n.name for n in b.nodes()] == ["n1"]
    assert b.services() == []
    a.put_service(svc("raced", 9))  # between b's list and b's watch: must not be lost
    seen = Recorder()
    stop = b.watch(seen)
    b.put_node(node(2))
    a.put_service(svc("web", 1))
    a.put_service(svc("web", 2))  # changed
    a.delete_service("raced")
    a.delete_node("n1")
    expected = [("service-upsert", "raced"), ("upsert", "n2"), ("service-upsert", "web"),
                ("service-upsert", "web"), ("service-delete", "raced"), ("delete", "n1")]
    latency = seen.wait_for(lambda ev: len(ev) >= len(expected))
    time.sleep(0.2)
    assert seen.names() == expected  # exactly these, in revision order
    assert len(seen.threads) == 1  # one watcher thread
    assert seen.events[3][1].frontend.ip == "10.96.0.3"
    assert [n.name for n in a.nodes()] == [n.name for n in b.nodes()] == ["n2"]
    assert a.services() == b.services()
    stop()
    print(f"\nwatch: 6 events delivered {latency * 1000:.0f} ms after the last write began")


def test_watch_latency(etcd_server_module: EtcdServer, stores: StoreFactory) -> None:
    cluster = cluster_name()
    a = stores(etcd_server_module, cluster=cluster)
    b = stores(etcd_server_module, cluster=cluster)
    times: dict[str, float] = {}

    def on(event: str, obj: Any) -> None:
        times[obj.name] = time.monotonic()

    stop = b.watch(on)
    lat = []
    for i in range(50):
        t0 = time.monotonic()
        a.put_service(svc(f"s{i}", i))
        deadline = t0 + 5
        while f"s{i}" not in times and time.monotonic() < deadline:
            time.sleep(0.0005)
        lat.append(times[f"s{i}"] - t0)
    stop()
    lat.sort()
    print(f"\nwatch latency put->callback: median {lat[25] * 1000:.1f} ms, p95 {lat[47] * 1000:.1f} ms")
    assert lat[25] < 0.5


def test_cluster_over_etcd(etcd_server_module: EtcdServer, stores: StoreFactory) -> None:
    """Cluster.join works unchanged over EtcdStore (two agents, each with its own store)."""
    cluster = cluster_name()

    class Sink:
        def __init__(self) -> None:
            self.remote: dict[str, NodeInfo] = {}
            self.services: dict[str, Service] = {}

        def add_remote_node(self, n: NodeInfo) -> None:
            self.remote[n.name] = n

        def remove_remote_node(self, n: NodeInfo) -> None:
            self.remote.pop(n.name, None)

        def upsert_service(self, s: Any) -> None:
            self.services[s.name] = s

        def validate_service(self, s: Any) -> None:
            pass

        def delete_service(self, name: str) -> None:
            self.services.pop(name, None)

        def sync_policy(self, policies: list[Any], endpoints: list[Any]) -> None:
            pass

    sinks = [Sink(), Sink()]
    clusters = [Cluster(stores(etcd_server_module, cluster=cluster, owner=f"n{i + 1}")) for i in range(2)]
    clusters[0].join(node(1), sinks[0])
    clusters[0].upsert_service(svc("web"))
    clusters[1].join(node(2), sinks[1])
    deadline = time.monotonic() + 5
    while not ("n2" in sinks[0].remote and "n1" in sinks[1].remote) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(sinks[0].remote) == {"n2"} and set(sinks[1].remote) == {"n1"}
    assert set(sinks[1].services) == {"web"}
    with pytest.raises(ValidationError):
        clusters[1].join(NodeInfo("n3", "192.168.50.1", "10.244.3.0/24"), Sink())
    for c, name in zip(clusters, ("n1", "n2"), strict=True):
        c.leave(name)


def test_endpoints_policies_and_namespaces_reach_every_agent(etcd_server_module: EtcdServer,
                                                            stores: StoreFactory) -> None:
    """EtcdStore is a PolicyStore: endpoint records (on the owner's lease, readable as ipcache
    entries too), policies (kept as their manifests) and namespaces; a Cluster member syncs its
    policy on every change of either."""
    cluster = cluster_name()
    agent = stores(etcd_server_module, cluster=cluster, owner="n1", lease_ttl=5)
    lab = stores(etcd_server_module, cluster=cluster)
    rec = EndpointRecord("10.244.1.7", "n1", "192.168.50.1", 4242, {"k8s:app": "web"},
                         {("http", 6): 8080}, "shop/web-1")
    agent.put_endpoint(rec)
    [got] = lab.endpoints()
    assert (got.ip, got.node, got.node_ip, got.identity, dict(got.labels), dict(got.named_ports), got.name) == (
        rec.ip, rec.node, rec.node_ip, rec.identity, dict(rec.labels), dict(rec.named_ports), rec.name)
    assert [(e.ip, e.identity, e.namespace, e.pod) for e in lab.ip_identities()] == [
        ("10.244.1.7", 4242, "shop", "web-1")]
    assert f"cilium/state/ip/v1/{cluster}/10.244.1.7" in agent.lease_keys()
    policy = parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": "web-in", "namespace": "shop"},
                           "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                                    "ingress": [{"ports": [{"port": 80}]}]}})
    lab.put_policy(policy)
    assert lab.policies() == [policy]  # parsed back from the stored manifest: the same policy
    with pytest.raises(ValidationError, match="manifest"):
        lab.put_policy(dataclasses.replace(policy, source=None))
    with pytest.raises(ValidationError, match="Kind/namespace/name"):
        lab.delete_policy("web-in")
    lab.put_namespace("shop", {"team": "blue"})
    assert lab.namespace_labels("shop") == {"team": "blue"} and lab.namespace_labels("other") == {}

    synced: list[tuple[list[str], list[str]]] = []

    class Sink:
        def add_remote_node(self, n: NodeInfo) -> None: ...
        def remove_remote_node(self, n: NodeInfo) -> None: ...
        def upsert_service(self, s: Any) -> None: ...
        def validate_service(self, s: Any) -> None: ...
        def delete_service(self, name: str) -> None: ...

        def sync_policy(self, policies: list[Any], endpoints: list[Any]) -> None:
            synced.append(([p.key for p in policies], [e.ip for e in endpoints]))

    member = Cluster(stores(etcd_server_module, cluster=cluster, owner="n2"))
    member.join(NodeInfo("n2", "192.168.50.2", "10.244.2.0/24"), Sink())
    assert synced[-1] == (["NetworkPolicy/shop/web-in"], ["10.244.1.7"])  # at join
    lab.delete_policy(policy.key)
    agent.delete_endpoint(rec.ip)
    deadline = time.monotonic() + 5
    while synced[-1] != ([], []) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert synced[-1] == ([], []), synced
    member.leave("n2")


# -- outages -------------------------------------------------------------------------------------


def test_watch_survives_kill_and_restart(etcd_server: EtcdServer, stores: StoreFactory) -> None:
    cluster = cluster_name()
    writer = stores(etcd_server, cluster=cluster, request_timeout=1.0)
    watcher = stores(etcd_server, cluster=cluster, request_timeout=1.0)
    writer.put_node(node(1))
    writer.put_node(node(2))
    watcher.nodes()
    watcher.services()
    seen = Recorder()
    stop = watcher.watch(seen)
    writer.put_service(svc("before", 1))
    seen.wait_for(lambda ev: ev == [("service-upsert", "before")])
    etcd_server.kill()
    with pytest.raises(KvstoreError) as info:
        writer.put_service(svc("lost", 2))
    assert "put service lost" in str(info.value) and "hint" in str(info.value)
    etcd_server.restart()
    # Changes made as soon as etcd is back, while the watcher is still backing off.
    writer.put_service(svc("during", 3))
    writer.delete_node("n2")
    seen.wait_for(lambda ev: ("delete", "n2") in ev and ("service-upsert", "during") in ev, timeout=15)
    time.sleep(0.5)
    writer.put_service(svc("after", 4))
    seen.wait_for(lambda ev: ev[-1] == ("service-upsert", "after"))
    names = seen.names()
    assert names.count(("service-upsert", "during")) == 1 and names.count(("delete", "n2")) == 1
    assert ("service-upsert", "lost") not in names and ("upsert", "n1") not in names  # no spurious replays
    assert len(names) == 4
    assert watcher.status().connected
    stop()


def test_compaction_then_relist_emits_missing_deletes(etcd_server: EtcdServer, stores: StoreFactory) -> None:
    cluster = cluster_name()
    writer = stores(etcd_server, cluster=cluster)
    watcher = stores(etcd_server, cluster=cluster)
    for i in range(1, 4):
        writer.put_node(node(i))
    writer.put_service(svc("gone", 1))
    writer.put_service(svc("kept", 2))
    assert len(watcher.nodes()) == 3 and len(watcher.services()) == 2  # the watcher's baseline
    writer.delete_node("n2")
    writer.delete_service("gone")
    writer.put_service(svc("kept", 5))  # changed
    writer.put_node(node(4))
    rev = writer._current_revision()
    etcd_server.etcdctl("compact", str(rev))  # the history since the baseline is gone
    seen = Recorder()
    stop = watcher.watch(seen)
    seen.wait_for(lambda ev: len(ev) >= 4)
    time.sleep(0.2)
    names = seen.names()
    # Deletes first (vanished keys), then upserts for what changed; n1 and n3 did not change.
    assert sorted(names[:2]) == [("delete", "n2"), ("service-delete", "gone")]
    assert sorted(names[2:]) == [("service-upsert", "kept"), ("upsert", "n4")]
    writer.put_node(node(5))  # and it watches again from the relist's revision
    seen.wait_for(lambda ev: ev[-1] == ("upsert", "n5"))
    assert len(seen.names()) == 5
    assert watcher.status().watch_revision is not None and watcher.status().watch_revision > rev
    stop()


AGENT = """
import sys, time
from ciliumlite.cluster import EtcdStore, NodeInfo
store = EtcdStore([sys.argv[1]], cluster=sys.argv[2], owner="dead", lease_ttl=2)
store.put_node(NodeInfo("dead", "192.168.50.99", "10.244.99.0/24"))
store.put_ip_identity("10.244.99.5", 256, "192.168.50.99")
print("ready", flush=True)
time.sleep(60)
"""


def test_killed_agent_expires_with_its_lease(etcd_server_module: EtcdServer, stores: StoreFactory) -> None:
    cluster = cluster_name()
    observer = stores(etcd_server_module, cluster=cluster)
    proc = subprocess.Popen([sys.executable, "-c", AGENT, etcd_server_module.url, cluster],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert [n.name for n in observer.nodes()] == ["dead"]
        seen = Recorder()
        stop = observer.watch(seen)
        time.sleep(1.0)  # its keepalive keeps the node alive beyond the TTL...
        assert observer.nodes() != []
        os.kill(proc.pid, signal.SIGKILL)  # ...until the agent dies
        killed = time.monotonic()
        proc.wait(timeout=5)
        seen.wait_for(lambda ev: ("delete", "dead") in ev, timeout=10)
        noticed = time.monotonic() - killed
        stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert observer.nodes() == [] and observer.ip_identities() == []
    print(f"\nkilled agent (TTL 2 s) noticed as gone after {noticed:.2f} s")
    assert noticed < 5


def test_pause_fails_calls_then_recovers(etcd_server: EtcdServer, stores: StoreFactory) -> None:
    cluster = cluster_name()
    agent = stores(etcd_server, cluster=cluster, owner="n1", lease_ttl=5, request_timeout=0.5)
    other = stores(etcd_server, cluster=cluster, request_timeout=0.5)
    agent.put_node(node(1))
    other.nodes()
    seen = Recorder()
    stop = other.watch(seen)
    etcd_server.pause()
    try:
        t0 = time.monotonic()
        with pytest.raises(KvstoreError, match=r"no answer within 0\.5 s"):
            agent.put_service(svc("web"))
        assert time.monotonic() - t0 < 2
        with pytest.raises(KvstoreError):
            other.nodes()
        time.sleep(1.0)  # the keepalive thread fails too
        status = agent.status()
        assert not status.connected and status.last_error and "Failure" in status.summary()
    finally:
        etcd_server.resume()
    agent.put_service(svc("web"))  # works again at once
    seen.wait_for(lambda ev: ev == [("service-upsert", "web")])
    deadline = time.monotonic() + 5
    while not agent.status().connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.status().connected and "Ok etcd: 1/1 connected" in agent.status().summary()
    assert [n.name for n in other.nodes()] == ["n1"]  # the lease survived a 1.5 s pause
    stop()


def test_lease_lost_while_paused_is_renewed(etcd_server: EtcdServer, stores: StoreFactory) -> None:
    """etcd frozen for longer than the TTL expires the lease when it thaws; the agent notices
    (ErrLeaseNotFound / a delete of its own key), takes a new lease and re-writes its keys."""
    cluster = cluster_name()
    agent = stores(etcd_server, cluster=cluster, owner="n1", lease_ttl=2, request_timeout=0.5)
    other = stores(etcd_server, cluster=cluster, request_timeout=0.5)
    agent.put_node(node(1))
    agent.put_ip_identity("10.244.1.5", 256, "192.168.50.1")
    old_lease = agent.status().lease_id
    other.nodes()
    seen = Recorder()
    stop = other.watch(seen)
    etcd_server.pause()
    time.sleep(3.5)
    etcd_server.resume()
    # (the watch also delivers the ip entry's endpoint-delete/upsert: only the node's are looked at)
    seen.wait_for(lambda ev: [e for e in ev if e[0] in ("delete", "upsert")][-2:] == [("delete", "n1"), ("upsert", "n1")],
                  timeout=10)
    new_lease = agent.status().lease_id
    assert new_lease != old_lease
    deadline = time.monotonic() + 5
    while len(agent.lease_keys()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.lease_keys() == [f"cilium/state/ip/v1/{cluster}/10.244.1.5", f"cilium/state/nodes/v1/{cluster}/n1"]
    assert [e.ip for e in other.ip_identities()] == ["10.244.1.5"]
    stop()


def test_unreachable_etcd_at_start() -> None:
    server = EtcdServer(start=False)
    try:
        t0 = time.monotonic()
        with pytest.raises(KvstoreError, match="connect_timeout") as info:
            EtcdStore(server.endpoints, owner="n1")
        assert time.monotonic() - t0 < 3
        assert server.url in str(info.value)
        # The retry option: wait for an etcd that starts later.
        starter = threading.Timer(1.0, server.start)
        starter.start()
        t0 = time.monotonic()
        store = EtcdStore(server.endpoints, owner="n1", connect_timeout=20)
        waited = time.monotonic() - t0
        starter.join()
        try:
            store.put_node(node(1))
            assert [n.name for n in store.nodes()] == ["n1"]
        finally:
            store.close()
        assert waited >= 1.0
    finally:
        server.stop()
        gc.collect()  # sockets of the refused attempts (see the stores fixture)
    with pytest.raises(ValidationError):
        EtcdStore([], owner="n1")
    with pytest.raises(ValidationError):
        EtcdStore(["unix:///x"])


# -- identities, bulk ----------------------------------------------------------------------------


def test_identity_allocation_concurrent(etcd_server: EtcdServer, stores: StoreFactory) -> None:
    a = stores(etcd_server, owner="n1")
    b = stores(etcd_server, owner="n2")
    label_sets = [{"app": f"a{i}", "k8s:io.kubernetes.pod.namespace": "default"} for i in range(12)]
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(store: EtcdStore, seed: int) -> None:
        order = list(range(len(label_sets)))
        random.Random(seed).shuffle(order)
        try:
            for i in order:
                ident = store.allocate_identity(label_sets[i])
                with lock:
                    results.append((i, ident))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, seed)) for seed, s in enumerate([a, b, a, b, a, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    by_labels: dict[int, set[int]] = {}
    for i, ident in results:
        by_labels.setdefault(i, set()).add(ident)
    assert all(len(ids) == 1 for ids in by_labels.values()), by_labels  # one id per label set
    ids = [next(iter(v)) for v in by_labels.values()]
    assert len(set(ids)) == len(label_sets)  # no duplicates
    assert sorted(ids) == list(range(256, 256 + len(label_sets)))
    # Stable: a third store (another node) finds the same numbers.
    c = stores(etcd_server, owner="n3")
    assert [c.allocate_identity(ls) for ls in label_sets] == [next(iter(by_labels[i])) for i in range(12)]
    assert c.identities()[by_labels[0].pop()] == label_sets[0]
    assert any("/value/app=a0;k8s:io.kubernetes.pod.namespace=default/n3" in k for k in c.lease_keys())


def test_put_services_bulk(etcd_server_module: EtcdServer, stores: StoreFactory) -> None:
    cluster = cluster_name()
    writer = stores(etcd_server_module, cluster=cluster)
    watcher = stores(etcd_server_module, cluster=cluster)
    count = [0]

    def on(event: str, obj: Any) -> None:
        count[0] += 1

    stop = watcher.watch(on)
    services = [svc(f"bulk-{i}", i) for i in range(1000)]
    t0 = time.monotonic()
    assert writer.put_services(services) == 1000
    bulk = time.monotonic() - t0
    deadline = time.monotonic() + 20
    while count[0] < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = time.monotonic() - t0
    assert count[0] == 1000
    assert len(watcher.services()) == 1000
    with pytest.raises(ValidationError, match="twice"):
        writer.put_services([svc("x"), svc("x")])
    t0 = time.monotonic()
    for s in services[:100]:
        writer.put_service(s)
    single = (time.monotonic() - t0) / 100
    stop()
    print(f"\nput_services: 1000 in {bulk:.2f} s ({1000 / bulk:.0f}/s in txns of 100), all watched after "
          f"{seen:.2f} s; single put_service {single * 1000:.1f} ms ({1 / single:.0f}/s)")


# -- the test server itself ----------------------------------------------------------------------


def test_etcd_server_in_a_namespace(netns: str) -> None:
    server = EtcdServer(netns=netns)
    try:
        server.etcdctl("put", "k", "v")
        assert "v" in server.etcdctl("get", "k")
        pid = server.pid
        assert pid is not None and os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        with nsmod.entered(netns):
            assert os.path.exists(f"/proc/{pid}")
    finally:
        server.stop()
    assert server.pid is None and not os.path.exists(server.tmpdir)
    with pytest.raises(ValidationError):
        EtcdServer(host="192.0.2.1", start=False)
    with pytest.raises(CiliumliteError):
        EtcdServer(binary="/nonexistent/etcd")
