"""``ciliumlite agent --prometheus-serve-addr``: an agent over a real etcd serves Cilium's metrics.

The agent runs in its node's namespace and binds 127.0.0.1 there; the test scrapes it from inside
that namespace with ``requests`` and parses the answer with ``prometheus_client.parser``: the
datapath's counters, its endpoints, and ``cilium_kvstore_operations_duration_seconds`` for the
etcd round trips the agent made (node record, heartbeat, identities, the endpoint's record).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from agent_harness import AgentLab, AgentNode, agent_lab
from prometheus_client.parser import text_string_to_metric_families

from ciliumlite.bpf import netns
from ciliumlite.lab.fabric import LEAF_IP
from ciliumlite.testing.etcd import EtcdServer

pytestmark = [pytest.mark.integration, pytest.mark.no_leak_check]

ADDR = "127.0.0.1:9962"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[AgentLab, AgentNode]]:
    with agent_lab("agmet") as alab:
        a = alab.add_node("a")
        assert alab.lab.fabric is not None
        etcd = EtcdServer(host=LEAF_IP, netns=alab.lab.fabric.netns)
        try:
            agent = alab.start_agent(a, "--remove-datapath-on-exit", "--prometheus-serve-addr", ADDR, etcd=etcd,
                                     wait=False)
            agent.wait_ready()
            yield alab, a
        finally:
            alab.close()  # the agent goes before its etcd
            etcd.stop()


def scrape(ns: str) -> Samples:
    with netns.entered(ns):
        res = requests.get(f"http://{ADDR}/metrics", timeout=10)
    assert res.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(res.text) for s in fam.samples}


def total(s: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in s.items() if n == name and want <= ls)


def test_agent_serves_datapath_and_kvstore_metrics(node: tuple[AgentLab, AgentNode]) -> None:
    alab, a = node
    before = scrape(a.netns)
    assert total(before, "cilium_endpoint", node=a.name) == 0
    assert total(before, "cilium_kvstore_operations_duration_seconds_count") > 0  # the start: lease, node record, lists
    ns = alab.add_pod(a, "p1")
    a.client().put_endpoint("p1", netns=ns, labels={"app": "web"})
    deadline = time.monotonic() + 20
    while True:
        after = scrape(a.netns)
        if total(after, "cilium_endpoint", node=a.name) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert total(after, "cilium_endpoint", node=a.name) == 1
    assert total(after, "cilium_endpoint_state", endpoint_state="ready", node=a.name) == 1
    # The endpoint's ip identity was written to etcd (a transaction on the agent's lease): timed.

    def txns(x: Samples) -> float:
        return total(x, "cilium_kvstore_operations_duration_seconds_count", action="Txn", kind="ipidentity",
                     outcome="success")
    assert txns(after) > txns(before)
    kinds = {dict(ls).get("kind") for n, ls in after if n == "cilium_kvstore_operations_duration_seconds_count"}
    assert {"node", "ipidentity", "lease", "identity"} <= kinds, kinds
    assert total(after, "cilium_kvstore_operations_duration_seconds_sum") > 0
    # The datapath's series carry this node.
    assert total(after, "cilium_bpf_map_pressure", map_name="cilium_lxc", node=a.name) > 0
    alab.remove_pods(a)
