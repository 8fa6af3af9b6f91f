"""``ciliumlite bpf policy get`` and ``ciliumlite bpf ipcache list`` as a separate process against a live lab.

One node with policy enforcement, two pods. The server pod gets a MapState written through
``Datapath.policy`` (an ingress allow of the client on TCP 80, an allow of a port range, a deny of
the client on TCP 8080, the host allow; egress allow-all); the client pod has none. The CLI shows
what the kernel holds: the entries, the labels naming each identity, the packets the allow let
through; the client as not enforced; the ipcache with the pods and the node's own addresses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ciliumlite.lab import Lab, Node, Pod
from ciliumlite.node import Datapath
from ciliumlite.policy.identity import ReservedIdentity
from ciliumlite.policy.mapstate import MapState, PolicyEntry, PolicyKey, allow_all

pytestmark = pytest.mark.integration

TCP = 6


class Topo:
    def __init__(self, lab: Lab, a: Node, srv: Pod, cli: Pod) -> None:
        self.lab, self.a, self.srv, self.cli = lab, a, srv, cli
        assert a.datapath is not None
        self.dp: Datapath = a.datapath
        self.state: MapState = {
            PolicyKey(cli.endpoint.identity, False, TCP, 80, 16): PolicyEntry(),
            PolicyKey(cli.endpoint.identity, False, TCP, 1024, 6): PolicyEntry(),  # 1024-2047
            PolicyKey(cli.endpoint.identity, False, TCP, 8080, 16): PolicyEntry(deny=True),
            PolicyKey(int(ReservedIdentity.HOST), False): PolicyEntry(),
            allow_all(True): PolicyEntry(),
        }


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with Lab("cli-pol") as lab:
        a = lab.add_node("a", routing="native", enable_policy=True)
        srv = a.add_pod("srv", labels={"app": "srv"})
        cli = a.add_pod("cli", labels={"app": "cli"})
        t = Topo(lab, a, srv, cli)
        srv.ensure_echo_server(80)
        srv.ensure_echo_server(8080)
        assert cli.tcp_echo(srv, 80).ok  # not enforced yet: everything passes
        t.dp.policy.set_endpoint(srv.endpoint, t.state)
        yield t


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ciliumlite.cli", "bpf", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ))


def cli_json(*args: str) -> Any:
    res = run_cli(*args, "-o", "json")
    assert res.returncode == 0, f"{args}: rc={res.returncode}\n{res.stderr}"
    return json.loads(res.stdout)


def _entry(rows: list[dict[str, Any]], identity: int, port: int | None) -> dict[str, Any]:
    [got] = [e for e in rows if e["identity"] == identity and e["port"] == port and e["direction"] == "Ingress"]
    return got


def test_policy_get_shows_what_the_kernel_holds_and_counts_allowed_traffic(topo: Topo) -> None:
    t = topo
    assert t.cli.tcp_echo(t.srv, 80).ok
    assert not t.cli.tcp_echo(t.srv, 8080, timeout=1.0).ok  # denied
    [ep] = cli_json("policy", "get", "srv", "--lab", t.lab.prefix, "--node", "a")
    assert (ep["endpoint_id"], ep["name"], ep["ipv4"], ep["identity"]) == (
        t.srv.endpoint.id, "srv", t.srv.ip, t.srv.endpoint.identity)
    assert (ep["enforced"], ep["ingress"], ep["egress"]) == (True, "enforced", "allow-all")
    got = {(e["policy"], e["direction"], e["identity"], e["port_proto"]) for e in ep["entries"]}
    cid = t.cli.endpoint.identity
    assert got == {("Allow", "Ingress", cid, "80/TCP"), ("Allow", "Ingress", cid, "1024-2047/TCP"),
                   ("Deny", "Ingress", cid, "8080/TCP"), ("Allow", "Ingress", 1, "ANY"), ("Allow", "Egress", 0, "ANY")}
    web = _entry(ep["entries"], cid, 80)
    assert web["labels"] == ["k8s:app=cli"] and web["packets"] >= 3 and web["bytes"] > 0, web
    assert _entry(ep["entries"], 1, None)["labels"] == ["reserved:host"]
    [any_peer] = [e for e in ep["entries"] if e["direction"] == "Egress"]
    assert any_peer["labels"] == ["reserved:unknown"]  # identity 0: any peer, as Cilium names it
    assert _entry(ep["entries"], cid, 8080)["packets"] is None  # denied: counted in the drop metrics
    # The table form: the title line and the columns.
    res = run_cli("policy", "get", "srv", "--lab", t.lab.prefix)
    assert res.returncode == 0, res.stderr
    title = (f"Endpoint {t.srv.endpoint.id} (srv, {t.srv.ip}, identity {t.srv.endpoint.identity}): "
             "ingress enforced/egress allow-all")
    assert title in res.stdout, res.stdout
    for word in ("POLICY", "DIRECTION", "IDENTITY", "LABELS", "PORT/PROTO", "PACKETS", "BYTES",
                 "k8s:app=cli", "reserved:host", "1024-2047/TCP", "8080/TCP", "Deny", "Egress"):
        assert word in res.stdout, (word, res.stdout)


def test_policy_get_by_id_and_all_enforced(topo: Topo) -> None:
    t = topo
    by_id = cli_json("policy", "get", str(t.srv.endpoint.id), "--lab", t.lab.prefix)
    assert [(e["name"], len(e["entries"])) for e in by_id] == [("srv", len(t.state))]
    every = cli_json("policy", "get", "--lab", t.lab.prefix)
    assert [e["name"] for e in every] == ["srv"]  # only endpoints with a policy map


def test_an_endpoint_without_a_policy_map_is_not_enforced(topo: Topo) -> None:
    t = topo
    [ep] = cli_json("policy", "get", "cli", "--lab", t.lab.prefix)
    assert (ep["enforced"], ep["entries"]) == (False, [])
    res = run_cli("policy", "get", "cli", "--lab", t.lab.prefix)
    assert res.returncode == 0 and "not enforced (no policy selects it)" in res.stdout, res
    assert "POLICY" not in res.stdout


def test_a_bad_endpoint_is_a_clear_error(topo: Topo) -> None:
    res = run_cli("policy", "get", "nosuchpod", "--lab", topo.lab.prefix)
    assert res.returncode == 1, res
    text = " ".join(res.stderr.split())
    assert "no endpoint 'nosuchpod'" in text and "cli, srv" in text, res.stderr


def test_ipcache_list_has_the_pods_and_the_nodes_addresses(topo: Topo) -> None:
    t = topo
    rows = cli_json("ipcache", "list", "--lab", t.lab.prefix, "--node", "a")
    got = {r["prefix"]: r["identity"] for r in rows}
    assert got[f"{t.srv.ip}/32"] == t.srv.endpoint.identity and got[f"{t.cli.ip}/32"] == t.cli.endpoint.identity
    assert got[f"{t.a.ip}/32"] == ReservedIdentity.HOST
    assert got[f"{t.dp.config.gateway}/32"] == ReservedIdentity.HOST
    assert all(r["tunnel_endpoint"] is None for r in rows)  # one node: nothing is remote
    res = run_cli("ipcache", "list", "--lab", t.lab.prefix)
    assert res.returncode == 0 and "PREFIX" in res.stdout and "TUNNEL ENDPOINT" in res.stdout, res
    assert f"{t.srv.ip}/32" in res.stdout


# -- ciliumlite policy get: what each node's last policy sync enforced -------------------------------------
POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 80}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-world, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egressDeny:
  - toEntities: [world]
"""


def policy_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ciliumlite.cli", "policy", "get", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ))


def test_policy_get_lists_the_policies_every_node_enforces() -> None:
    with Lab("cli-polget") as lab:
        cl = lab.cluster(["g1", "g2"], routing="vxlan", bgp=False, enable_policy=True)
        cl.node("g1").add_pod("web", namespace="shop", labels={"app": "web"})
        cl.apply_policy(POLICIES)
        res = policy_cli("--lab", lab.prefix, "-o", "json")
        assert res.returncode == 0, res.stderr
        rows = {r["key"]: r for r in json.loads(res.stdout)}
        assert sorted(rows) == ["CiliumNetworkPolicy/shop/no-world", "NetworkPolicy/shop/web-in"]
        web_in = rows["NetworkPolicy/shop/web-in"]
        names = sorted(n.datapath.config.node_name for n in cl.nodes() if n.datapath is not None)
        assert len(names) == 2 and sorted(web_in["nodes"]) == names, web_in  # both nodes enforce it
        [spec] = web_in["specs"]
        assert spec["isolates"] == ["ingress"] and "k8s:app In (web)" in spec["subject"]
        [rule] = spec["rules"]
        assert (rule["direction"], rule["verdict"], rule["ports"]) == ("ingress", "allow", ["80/TCP"])
        assert any("k8s:app In (client)" in p for p in rule["peers"]), rule
        [deny] = rows["CiliumNetworkPolicy/shop/no-world"]["specs"][0]["rules"]
        assert (deny["direction"], deny["verdict"], deny["peers"]) == ("egress", "deny", ["entity(world)"])
        table = policy_cli("web-in", "--lab", lab.prefix)
        assert table.returncode == 0, table.stderr
        for word in ("POLICY", "SUBJECT", "VERDICT", "NetworkPolicy shop/web-in", "80/TCP", "allow"):
            assert word in table.stdout, table.stdout
        assert "no-world" not in table.stdout
        cl.delete_policy("NetworkPolicy/shop/web-in")
        left = json.loads(policy_cli("--lab", lab.prefix, "-o", "json").stdout)
        assert [r["key"] for r in left] == ["CiliumNetworkPolicy/shop/no-world"]
        missing = policy_cli("web-in", "--lab", lab.prefix)
        assert missing.returncode == 1 and "no policy 'web-in'" in missing.stderr, missing.stderr
