"""Network policy through etcd and the agents (issue 17): ``Lab(store="etcd")`` with
``enable_policy``. Real etcd, real ``ciliumlite agent`` processes, pods made by the CNI plugin.

The lab writes namespaces and policies to etcd; each agent publishes its pods as endpoint records
(their identities allocated in etcd from their security labels), watches endpoints and policies,
and enforces them on its own pods. Real TCP across the VXLAN tunnel: the client's identity travels
in the VNI and the server's node judges it by the policy it took from etcd.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ciliumlite.agent.client import AgentError
from ciliumlite.lab import Lab
from ciliumlite.lab.agents import AgentCluster
from ciliumlite.lab.hosts import Pod
from ciliumlite.ownership.bpfobjs import pinned_ids

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed (apt-get install "
                                 "etcd-server etcd-client)")]

POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
    - namespaceSelector: {matchLabels: {team: blue}}
    ports: [{protocol: TCP, port: 80}]
"""


@dataclass
class Topo:
    lab: Lab
    cl: AgentCluster
    web: Pod     # shop, on e2
    client: Pod  # shop, on e1
    other: Pod   # shop, on e1
    blue: Pod    # namespace ops (team: blue), on e1


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with Lab("pol-etcd", store="etcd") as lab:
        cl = lab.cluster(["e1", "e2"], routing="vxlan", bgp=False, enable_policy=True)
        assert isinstance(cl, AgentCluster)
        cl.set_namespace("ops", {"team": "blue"})
        web = cl.node("e2").add_pod("web", namespace="shop", labels={"app": "web"})
        client = cl.node("e1").add_pod("client", namespace="shop", labels={"app": "client"})
        other = cl.node("e1").add_pod("other", namespace="shop", labels={"app": "other"})
        blue = cl.node("e1").add_pod("tool", namespace="ops", labels={"app": "tool"})
        web.ensure_echo_server(80)
        yield Topo(lab, cl, web, client, other, blue)


def reach(src: Pod, dst: Pod) -> bool:
    return src.tcp_echo(dst, 80, timeout=1.5).ok


def test_identities_come_from_security_labels_through_etcd(topo: Topo) -> None:
    store = topo.cl.control.store
    records = {r.name: r for r in store.endpoints()}  # type: ignore[attr-defined]
    assert set(records) == {"shop/web", "shop/client", "shop/other", "ops/tool"}
    assert records["shop/web"].labels["k8s:app"] == "web"
    assert records["ops/tool"].labels["k8s:io.cilium.k8s.namespace.labels.team"] == "blue"
    assert records["shop/client"].identity == topo.client.endpoint.identity
    assert len({r.identity for r in records.values()}) == 4


def test_a_policy_in_etcd_is_enforced_by_the_agents_and_removed_again(topo: Topo) -> None:
    t = topo
    assert reach(t.client, t.web) and reach(t.other, t.web)  # nothing enforced yet
    [policy] = t.cl.apply_policy(POLICY)  # returns once every agent enforces it
    assert reach(t.client, t.web)
    assert reach(t.blue, t.web)  # its namespace's labels, from etcd
    assert not reach(t.other, t.web)
    res = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "policy", "get", "--lab", t.lab.prefix,
                          "-o", "json"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    [row] = json.loads(res.stdout)
    assert row["key"] == policy.key and len(row["nodes"]) == 2
    t.cl.delete_policy(policy.key)
    assert reach(t.other, t.web)


def pinned_programs(t: Topo) -> dict[str, set[int]]:
    """The ids of the programs each agent's pinned links run."""
    return {n.name: pinned_ids(n.view.config.pin_dir)[1] for n in t.cl.agent_nodes()}


def test_agents_relabel_pods_and_namespaces_in_place(topo: Topo) -> None:
    t = topo
    [policy] = t.cl.apply_policy(POLICY)
    try:
        programs = pinned_programs(t)
        old_identity = t.other.endpoint.identity
        assert not reach(t.other, t.web)
        # The pod relabelled into the policy (same labels as client: the same identity back).
        t.cl.relabel_pod(t.other, {"app": "client"})
        assert t.other.endpoint.identity == t.client.endpoint.identity != old_identity
        record = next(r for r in t.cl.control.store.endpoints() if r.ip == t.other.ip)  # type: ignore[attr-defined]
        assert record.identity == t.client.endpoint.identity and record.labels["k8s:app"] == "client"
        assert reach(t.other, t.web)
        # ... and out again.
        t.cl.relabel_pod(t.other, {"app": "other"})
        assert t.other.endpoint.identity == old_identity
        assert not reach(t.other, t.web)
        # A namespace relabelled out of the namespaceSelector: its pod is cut off; back in, it reaches.
        t.cl.set_namespace("ops", {"team": "red"})
        assert not reach(t.blue, t.web)
        t.cl.set_namespace("ops", {"team": "blue"})
        assert reach(t.blue, t.web)
        assert pinned_programs(t) == programs and all(programs.values())  # map writes only
    finally:
        t.cl.delete_policy(policy.key)


def test_a_relabel_of_an_unknown_container_is_refused(topo: Topo) -> None:
    client = topo.cl.agent_nodes()[0].client()
    with pytest.raises(AgentError) as err:
        client.relabel_endpoint("no-such-container", {"app": "x"})
    assert err.value.status == 404
    with pytest.raises(AgentError) as err:
        client.relabel_endpoint(topo.lab.prefix + "-e1-client", {"app": 3})  # type: ignore[dict-item]
    assert err.value.status == 400


def test_cli_endpoint_labels_relabels_through_the_agent(topo: Topo) -> None:
    t = topo

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ciliumlite.cli", "endpoint", "labels", *args,
                               "--lab", t.lab.prefix], capture_output=True, text=True, timeout=60)

    first = t.other.endpoint.identity
    try:
        res = cli("other", "--add", "app=client", "--add", "tier=cli", "-o", "json")
        assert res.returncode == 0, res.stderr
        row = json.loads(res.stdout)
        assert row["node"].endswith("-e1") and row["labels"]["app"] == "client" and row["labels"]["tier"] == "cli"
        assert row["identity"] not in (first, t.client.endpoint.identity)  # a label set of its own
        res = cli("other", "-d", "tier", "--add", "app=other")
        assert res.returncode == 0, res.stderr
        assert f"identity {first}," in res.stdout, res.stdout  # the same labels, the same identity back
        for args, why in ((("other", "--add", "novalue"), "KEY=VALUE"), (("nobody", "--add", "a=b"), "no agent has")):
            res = cli(*args)
            assert res.returncode == 1 and why in res.stderr, res.stderr
    finally:
        t.cl.relabel_pod(t.other, {"app": "other"})  # and wait until every node has it again
    assert t.other.endpoint.identity == first
