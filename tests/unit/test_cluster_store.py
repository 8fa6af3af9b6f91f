"""The cluster control plane in-process: InMemoryStore and Cluster, with a recording sink for datapaths."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster import Cluster, InMemoryStore, NodeInfo

pytestmark = pytest.mark.unit

MASTER = NodeInfo("k8s-master", "10.0.0.11", "10.244.0.0/24")
W1 = NodeInfo("worker1", "10.0.0.12", "10.244.1.0/24")
W3 = NodeInfo("worker3", "10.0.0.13", "10.244.2.0/24")
W4 = NodeInfo("worker4", "10.0.0.14", "10.244.3.0/24")


@dataclass(frozen=True)
class Svc:
    name: str
    frontend: str = "10.96.0.10:80"


class Sink:
    """Stands in for a node's Datapath: records what the cluster tells it, in order."""

    def __init__(self, refuse: str = "") -> None:
        self.events: list[tuple[str, str]] = []
        self.known: dict[str, NodeInfo] = {}
        self.services: dict[str, Svc] = {}
        self.refuse = refuse
        self.policy_syncs: list[tuple[int, int]] = []

    def add_remote_node(self, node: NodeInfo) -> None:
        self.events.append(("add", node.name))
        self.known[node.name] = node

    def remove_remote_node(self, node: NodeInfo) -> None:
        self.events.append(("remove", node.name))
        self.known.pop(node.name, None)

    def sync_policy(self, policies: list[object], endpoints: list[object]) -> None:
        self.policy_syncs.append((len(policies), len(endpoints)))  # apart from events: their order is tested

    def validate_service(self, svc: Svc) -> None:
        if svc.name == self.refuse:
            raise ValidationError(f"cannot program {svc.name}")

    def upsert_service(self, svc: Svc) -> None:
        self.events.append(("svc", svc.name))
        self.services[svc.name] = svc

    def delete_service(self, name: str) -> None:
        self.events.append(("svc-delete", name))
        self.services.pop(name, None)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, NodeInfo]] = []

    def __call__(self, event: str, node: NodeInfo) -> None:
        self.events.append((event, node))


# -- NodeInfo ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ip", "cidr"), [("10.0.0.300", "10.244.0.0/24"), ("node1", "10.244.0.0/24"),
                                          ("10.0.0.1", "10.244.0.1/24"), ("10.0.0.1", "10.244.0.0/33"),
                                          ("fd00::1", "10.244.0.0/24")])
def test_nodeinfo_rejects_bad_addresses(ip: str, cidr: str) -> None:
    with pytest.raises(ValidationError, match="node n"):
        NodeInfo("n", ip, cidr)


def test_nodeinfo_is_a_value() -> None:
    assert NodeInfo("a", "10.0.0.1", "10.244.0.0/24") == NodeInfo("a", "10.0.0.1", "10.244.0.0/24")
    with pytest.raises(AttributeError):
        MASTER.ip = "10.0.0.99"  # type: ignore[misc]


# -- InMemoryStore -------------------------------------------------------------------------------------
def test_put_get_replace_delete() -> None:
    store = InMemoryStore()
    assert store.nodes() == []
    for n in (W3, MASTER, W1):
        store.put_node(n)
    assert store.nodes() == [MASTER, W1, W3]            # sorted by name
    moved = NodeInfo("worker1", "10.0.0.22", "10.244.1.0/24")
    store.put_node(moved)                                # same name: replaced, not clashing with itself
    assert store.nodes() == [MASTER, moved, W3]
    store.delete_node("worker1")
    assert store.nodes() == [MASTER, W3]
    store.delete_node("worker1")                         # absent: no-op
    store.delete_node("nobody")
    assert store.nodes() == [MASTER, W3]


def test_nodes_is_a_copy() -> None:
    store = InMemoryStore()
    store.put_node(MASTER)
    store.nodes().clear()
    assert store.nodes() == [MASTER]


def test_watch_sees_every_change_and_unwatch_stops() -> None:
    store = InMemoryStore()
    store.put_node(MASTER)                    # before watching: not replayed
    rec, other = Recorder(), Recorder()
    stop = store.watch(rec)
    store.watch(other)
    store.put_node(W1)
    store.put_node(W1)                        # a replace is an upsert too
    store.delete_node("k8s-master")
    store.delete_node("k8s-master")           # absent: nobody is told
    assert rec.events == [("upsert", W1), ("upsert", W1), ("delete", MASTER)]
    stop()
    stop()                                    # idempotent
    store.put_node(W3)
    assert rec.events[-1] == ("delete", MASTER)
    assert other.events[-1] == ("upsert", W3)  # the other watcher is unaffected


@pytest.mark.parametrize("clash", [
    pytest.param(NodeInfo("worker9", "10.0.0.12", "10.244.9.0/24"), id="same-node-ip"),
    pytest.param(NodeInfo("worker9", "10.0.0.99", "10.244.1.0/24"), id="same-pod-cidr"),
    pytest.param(NodeInfo("worker9", "10.0.0.99", "10.244.1.128/25"), id="cidr-inside"),
    pytest.param(NodeInfo("worker9", "10.0.0.99", "10.244.0.0/16"), id="cidr-covering"),
])
def test_clashing_node_is_rejected_and_nothing_changes(clash: NodeInfo) -> None:
    store = InMemoryStore()
    store.put_node(MASTER)
    store.put_node(W1)
    rec = Recorder()
    store.watch(rec)
    with pytest.raises(ValidationError, match=r"clashes with (worker1|k8s-master)"):
        store.put_node(clash)
    assert store.nodes() == [MASTER, W1]
    assert rec.events == []


def test_replacing_a_node_may_not_take_anothers_address() -> None:
    store = InMemoryStore()
    store.put_node(MASTER)
    store.put_node(W1)
    with pytest.raises(ValidationError):
        store.put_node(NodeInfo("worker1", MASTER.ip, W1.pod_cidr))
    assert store.nodes() == [MASTER, W1]


def test_adjacent_cidrs_do_not_clash() -> None:
    store = InMemoryStore()
    store.put_node(NodeInfo("a", "10.0.0.1", "10.244.0.0/25"))
    store.put_node(NodeInfo("b", "10.0.0.2", "10.244.0.128/25"))
    assert [n.name for n in store.nodes()] == ["a", "b"]


def test_watcher_may_use_the_store_from_its_callback() -> None:
    # Callbacks run outside the store's lock: a watcher that reads (or writes) the store must not deadlock.
    store = InMemoryStore()
    seen: list[list[str]] = []
    store.watch(lambda _e, _n: seen.append([x.name for x in store.nodes()]))
    done = threading.Event()

    def work() -> None:
        store.put_node(MASTER)
        store.put_node(W1)
        done.set()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    assert done.wait(5), "put_node deadlocked with a watcher reading the store"
    assert seen == [["k8s-master"], ["k8s-master", "worker1"]]


def test_concurrent_puts_from_threads() -> None:
    store = InMemoryStore()
    nodes = [NodeInfo(f"n{i}", f"10.0.1.{i + 1}", f"10.245.{i}.0/24") for i in range(64)]
    threads = [threading.Thread(target=store.put_node, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(store.nodes(), key=lambda n: int(n.name[1:])) == nodes


# -- Cluster -------------------------------------------------------------------------------------------
def test_join_learns_existing_nodes_and_tells_the_others() -> None:
    c = Cluster()
    m, w1, w3 = Sink(), Sink(), Sink()
    c.join(MASTER, m)
    assert m.events == []                                   # alone: nothing to learn, never itself
    c.join(W1, w1)
    assert w1.events == [("add", "k8s-master")]
    assert m.events == [("add", "worker1")]
    c.join(W3, w3)
    assert w3.events == [("add", "k8s-master"), ("add", "worker1")]
    assert m.events[-1] == w1.events[-1] == ("add", "worker3")
    for sink, me in ((m, MASTER), (w1, W1), (w3, W3)):
        assert me.name not in sink.known
        assert set(sink.known) == {"k8s-master", "worker1", "worker3"} - {me.name}
        assert all(sink.known[n.name] == n for n in (MASTER, W1, W3) if n.name != me.name)
    assert c.nodes() == [MASTER, W1, W3]


def test_leave_tells_the_others_and_stops_the_leavers_updates() -> None:
    c = Cluster()
    m, w1, w3 = Sink(), Sink(), Sink()
    c.join(MASTER, m)
    c.join(W1, w1)
    c.join(W3, w3)
    before = list(w1.events)
    c.leave("worker1")
    assert m.events[-1] == w3.events[-1] == ("remove", "worker1")
    assert "worker1" not in m.known and "worker1" not in w3.known
    assert c.nodes() == [MASTER, W3]
    c.join(W4, Sink())
    assert w1.events == before, "a node that left must not hear about later changes"
    assert m.events[-1] == w3.events[-1] == ("add", "worker4")
    c.leave("worker1")                                       # twice: nothing happens
    c.leave("nobody")
    assert m.events[-1] == ("add", "worker4")


def test_rejoin_with_new_address_updates_everyone() -> None:
    c = Cluster()
    m, w1 = Sink(), Sink()
    c.join(MASTER, m)
    c.join(W1, w1)
    moved = NodeInfo("worker1", "10.0.0.42", W1.pod_cidr)
    c.leave("worker1")
    c.join(moved, Sink())
    assert m.known["worker1"] == moved
    assert m.events == [("add", "worker1"), ("remove", "worker1"), ("add", "worker1")]


def test_cluster_over_a_shared_store_sees_nodes_joined_elsewhere() -> None:
    store = InMemoryStore()
    a, b = Cluster(store), Cluster(store)
    m, w1 = Sink(), Sink()
    a.join(MASTER, m)
    b.join(W1, w1)
    assert w1.known == {"k8s-master": MASTER} and m.known == {"worker1": W1}
    assert a.nodes() == b.nodes() == [MASTER, W1]


def test_clashing_join_is_rejected() -> None:
    c = Cluster()
    m = Sink()
    c.join(MASTER, m)
    with pytest.raises(ValidationError):
        c.join(NodeInfo("worker9", MASTER.ip, "10.244.9.0/24"), Sink())
    assert c.nodes() == [MASTER]
    assert m.events == [], "the existing node must not learn about a rejected one"


def test_rejected_join_leaves_no_subscription() -> None:
    c = Cluster()
    c.join(MASTER, Sink())
    rejected = Sink()
    with pytest.raises(ValidationError):
        c.join(NodeInfo("worker9", "10.0.0.99", MASTER.pod_cidr), rejected)
    c.join(W1, Sink())
    c.leave("k8s-master")
    assert rejected.events == [], "a rejected node must be told nothing, then or later"
    assert [n.name for n in c.nodes()] == ["worker1"]


def test_joining_twice_under_one_name_keeps_one_subscription() -> None:
    c = Cluster()
    c.join(MASTER, Sink())
    old, new = Sink(), Sink()
    c.join(W1, old)
    c.join(NodeInfo("worker1", "10.0.0.42", W1.pod_cidr), new)   # the node restarted with a new address
    c.leave("worker1")
    before = list(old.events)
    c.join(W3, Sink())
    assert old.events == before, f"the replaced sink still hears about changes: {old.events[len(before):]}"


# -- services through the cluster ----------------------------------------------------------------------
def test_services_reach_every_member_and_late_joiners() -> None:
    c = Cluster()
    m, w1 = Sink(), Sink()
    c.join(MASTER, m)
    c.join(W1, w1)
    c.upsert_service(Svc("dns"))
    assert m.services == w1.services == {"dns": Svc("dns")}
    late = Sink()
    c.join(W3, late)
    assert late.services == {"dns": Svc("dns")}
    c.delete_service("dns")
    assert m.services == w1.services == late.services == {}
    c.delete_service("dns")                                  # absent: nobody is told
    assert [e for e in late.events if e[0] == "svc-delete"] == [("svc-delete", "dns")]


def test_service_refused_by_one_node_is_written_nowhere() -> None:
    c = Cluster()
    m, picky = Sink(), Sink(refuse="web")
    c.join(MASTER, m)
    c.join(W1, picky)
    with pytest.raises(ValidationError, match="web"):
        c.upsert_service(Svc("web"))
    assert m.services == picky.services == {} and c.services() == []
    c.upsert_service(Svc("dns"))
    assert [s.name for s in c.services()] == ["dns"]


def test_identities_are_stable_and_distinct() -> None:
    store = InMemoryStore()
    web = store.allocate_identity({"app": "web", "tier": "front"})
    assert web == store.allocate_identity({"tier": "front", "app": "web"}), "label order does not matter"
    db = store.allocate_identity({"app": "db"})
    assert db != web and min(web, db) >= 256


def test_endpoints_and_policies_make_every_member_sync() -> None:
    from ciliumlite.cluster import EndpointRecord
    from ciliumlite.policy import parse_policy

    cluster = Cluster()
    a, b = Sink(), Sink()
    cluster.join(NodeInfo("a", "10.0.0.11", "10.244.0.0/24"), a)
    cluster.join(NodeInfo("b", "10.0.0.12", "10.244.1.0/24"), b)
    assert a.policy_syncs == [(0, 0)] and b.policy_syncs == [(0, 0)]  # at join
    cluster.put_endpoint(EndpointRecord("10.244.0.2", "a", "10.0.0.11", 256, {"k8s:app": "x"}))
    pol = parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": "p", "namespace": "default"}, "spec": {"podSelector": {}}})
    cluster.put_policy(pol)
    assert a.policy_syncs[-1] == b.policy_syncs[-1] == (1, 1)
    cluster.delete_policy(pol.key)
    cluster.delete_endpoint("10.244.0.2")
    assert a.policy_syncs[-1] == (0, 0) and len(a.policy_syncs) == 5
    cluster.delete_endpoint("10.244.0.2")  # absent: nobody is told
    assert len(b.policy_syncs) == 5
    with pytest.raises(ValidationError, match="identity"):
        EndpointRecord("10.244.0.3", "a", "10.0.0.11", 7, {})
    with pytest.raises(ValidationError, match=r"endpoint 10\.244\.0\.300: Octet 300"):
        EndpointRecord("10.244.0.300", "a", "10.0.0.11", 300, {})
