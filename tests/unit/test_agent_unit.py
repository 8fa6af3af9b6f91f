"""The agent's pieces without a kernel: its config, its request checks, its API over a real unix
socket with a fake backend, the client's errors, and the CLI's KVStore line."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ciliumlite.agent import endpoint_state
from ciliumlite.agent.api import ApiServer, claim_socket
from ciliumlite.agent.client import AgentClient, AgentError, AgentUnavailable, default_socket
from ciliumlite.agent.config import AgentConfig, load_file
from ciliumlite.agent.endpoints import EndpointRequest, EndpointTable, parse_labels
from ciliumlite.agent.errors import AgentStartError, Conflict, KvstoreUnavailable, NotFound, NotReady
from ciliumlite.bpf.errors import NotSupportedError, ValidationError
from ciliumlite.cli.agent import kvstore_text
from ciliumlite.endpoint import Endpoint

pytestmark = pytest.mark.unit


# -- config ---------------------------------------------------------------------------------------------


def test_flags_override_the_file_and_dashes_equal_underscores() -> None:
    cfg = AgentConfig.from_sources({"node": "w1", "pod-cidr": "10.244.1.0/24", "node_ip": "10.0.0.11", "mtu": 9000},
                                   {"mtu": 1400, "node": None, "kvstore_endpoints": None})
    assert (cfg.node, cfg.mtu, cfg.node_ip, cfg.routing_mode) == ("w1", 1400, "10.0.0.11", "tunnel")
    dp = cfg.datapath_config()
    assert (dp.routing, dp.node_name, dp.mtu, dp.host_routing) == ("vxlan", "w1", 1400, "bpf")
    assert cfg.api_socket == "/run/ciliumlite/w1/agent.sock" == default_socket("w1")
    assert cfg.as_dict()["routing-mode"] == "tunnel"


def test_etcd_endpoints_from_a_flag_or_a_list() -> None:
    base = {"node": "w1", "pod_cidr": "10.244.1.0/24", "routing_mode": "none", "kvstore": "etcd"}
    assert AgentConfig.from_sources(None, {**base, "kvstore_endpoints": "http://a:2379, http://b:2379"}) \
        .kvstore_endpoints == ("http://a:2379", "http://b:2379")
    assert AgentConfig.from_sources({"kvstore-endpoints": ["http://a:2379"]}, base).kvstore_endpoints == ("http://a:2379",)


def test_bgp_peers_and_socket_lb_reach_the_datapath_config() -> None:
    base = {"node": "w1", "pod_cidr": "10.244.1.0/24", "node_ip": "10.0.0.12", "routing_mode": "native"}
    cfg = AgentConfig.from_sources({"bgp-asn": 65012, "bgp-peers": [{"name": "leaf", "address": "10.0.0.254",
                                                                   "asn": 65001}]},
                                   {**base, "bpf_lb_sock": False})
    dp = cfg.datapath_config()
    assert (dp.bgp_asn, [(p.name, p.address, p.asn) for p in dp.bgp_peers]) == (65012, [("leaf", "10.0.0.254", 65001)])
    assert dp.socket_lb is False and cfg.as_dict()["bgp-peers"] == ["leaf=10.0.0.254:65001"]
    two = AgentConfig.from_sources(None, {**base, "bgp_asn": 65012, "bgp_peers": ("a=10.0.0.1:1", "b=10.0.0.2:2")})
    assert [p.name for p in two.bgp_peer_list()] == ["a", "b"]


@pytest.mark.parametrize(("values", "words"), [
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "node_ip": "10.0.0.1", "routing_mode": "native", "bgp_asn": 1,
      "bgp_peers": "leaf"}, "bgp-peers: 'leaf' is not name=ip:asn"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "node_ip": "10.0.0.1", "routing_mode": "native", "bgp_asn": 1,
      "bgp_peers": ["leaf=10.0.0.254:0"]}, "bgp-peers: 'leaf=10.0.0.254:0'"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "routing_mode": "none", "bgp_peers": ["leaf=10.0.0.254:65001"]},
     "bgp_peers needs bgp_asn"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "routing_mode": "none", "bgp_asn": 65012,
      "bgp_peers": ["leaf=10.0.0.254:65001"]}, "bgp_asn needs routing='native'"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "routing_mode": "none", "bgp_asn": "x"}, "bgp-asn: 'x'"),
    ({"pod_cidr": "10.244.1.0/24"}, "node is required"),
    ({"node": "w1"}, "pod-cidr is required"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "routing_mode": "carrier"}, "routing-mode: 'carrier'"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "routing_mode": "none", "kvstore": "etcd"}, "kvstore-endpoints"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "routing_mode": "none", "kvstore": "etcd",
      "kvstore_endpoints": "ftp://x"}, "not an http(s)"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24"}, "needs the node's underlay address"),
    ({"node": "w/1", "pod_cidr": "10.244.1.0/24"}, "node:"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/33", "routing_mode": "none"}, "pod_cidr"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "routing_mode": "none", "cgroup": "relative"}, "cgroup"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "routing_mode": "none", "kvstore_connect_timeout": 0}, "connect"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "routing_mode": "none", "mtu": "big"}, "agent config"),
    ({"node": "w1", "pod_cidr": "10.244.1.0/24", "colour": "blue"}, "unknown key 'colour'"),
])
def test_bad_config_names_the_key(values: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as err:
        AgentConfig.from_sources(values, {})
    assert words in str(err.value)


def test_config_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("node: w1\npod-cidr: 10.244.1.0/24\nkvstore-endpoints:\n  - http://e:2379\n")
    assert load_file(str(tmp_path / "a.yaml"))["kvstore-endpoints"] == ["http://e:2379"]
    (tmp_path / "a.json").write_text('{"node": "w1"}')
    assert load_file(str(tmp_path / "a.json")) == {"node": "w1"}
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "bad.yaml").write_text("node: [")
    (tmp_path / "list.yaml").write_text("- a\n")
    for name, words in (("bad.json", "not valid JSON"), ("bad.yaml", "not valid YAML"), ("list.yaml", "mapping"),
                        ("missing.yaml", "No such file")):
        with pytest.raises(ValidationError) as err:
            load_file(str(tmp_path / name))
        assert words in str(err.value)
    (tmp_path / "empty.yaml").write_text("")
    assert load_file(str(tmp_path / "empty.yaml")) == {}


def test_endpoint_request_checks() -> None:
    req = EndpointRequest.parse("abc", {"netns": "/var/run/netns/x"})
    assert (req.ifname, req.name, req.labels) == ("eth0", "abc", {})
    for cid, body, words in (("", {"netns": "x"}, "container id"), ("a b", {"netns": "x"}, "container id"),
                             ("a", [], "JSON object"), ("a", {}, "netns: required"),
                             ("a", {"netns": "x", "ifname": "x" * 16}, "ifname"),
                             ("a", {"netns": "x", "labels": ["a"]}, "labels"),
                             ("a", {"netns": "x", "size": 1}, "unknown field(s) size")):
        with pytest.raises(ValidationError) as err:
            EndpointRequest.parse(cid, body)
        assert words in str(err.value)


# -- the API, with a fake backend -----------------------------------------------------------------------


class FakeBackend:
    def __init__(self) -> None:
        self.eps: dict[str, dict[str, Any]] = {}

    def healthz(self) -> dict[str, Any]:
        return {"status": "ok"}

    def status(self) -> dict[str, Any]:
        return {"node": "fake", "when": time}  # a value JSON does not know: sent as text

    def config_dict(self) -> dict[str, Any]:
        return {"agent": {}}

    def endpoint_list(self) -> list[dict[str, Any]]:
        return list(self.eps.values())

    def endpoint_get(self, container_id: str, check: bool = False) -> dict[str, Any]:
        if container_id not in self.eps:
            raise NotFound(f"no endpoint for container {container_id!r}")
        return {**self.eps[container_id], "checked": check}

    def endpoint_put(self, container_id: str, body: Any) -> tuple[bool, dict[str, Any]]:
        req = EndpointRequest.parse(container_id, body)
        if req.netns == "busy":
            raise Conflict("taken")
        if req.netns == "kv-down":
            raise KvstoreUnavailable("etcd is away")
        if req.netns == "boom":
            raise RuntimeError("kaput")
        created = container_id not in self.eps
        self.eps.setdefault(container_id, {"container_id": container_id, "netns": req.netns})
        return created, self.eps[container_id]

    def endpoint_delete(self, container_id: str) -> None:
        if self.eps.pop(container_id, None) is None:
            raise NotFound(f"no endpoint for container {container_id!r}")

    def endpoint_relabel(self, container_id: str, body: Any) -> dict[str, Any]:
        labels = parse_labels(body.get("labels") or {})
        if container_id not in self.eps:
            raise NotFound(f"no endpoint for container {container_id!r}")
        self.eps[container_id]["labels"] = labels
        return self.eps[container_id]

    def service_list(self) -> list[dict[str, Any]]:
        return []

    reload_answer = "ok"
    reloads = 0

    def datapath_reload(self) -> dict[str, Any]:
        if self.reload_answer == "legacy":
            raise NotSupportedError("legacy host routing has no programs to reload", feature="bpf host routing")
        if self.reload_answer == "starting":
            raise NotReady("the agent is starting")
        self.reloads += 1
        return {"reloads": self.reloads, "seconds": 0.1, "programs": 7}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[AgentClient]:
    path = str(tmp_path / "run" / "agent.sock")
    loop = asyncio.new_event_loop()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    backend = FakeBackend()
    server = ApiServer(backend, path, pool)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        client = AgentClient(path, timeout=10)
        client.backend = backend  # type: ignore[attr-defined]  # the tests steer the fake through it
        yield client
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        pool.shutdown()
    assert not os.path.exists(path)


def test_api_round_trip_and_error_shapes(api: AgentClient) -> None:
    assert oct(os.stat(api.socket_path).st_mode & 0o777) == "0o600"
    assert api.healthz() == {"status": "ok"}
    assert api.status()["when"].startswith("<module 'time'")
    assert api.request("PUT", "/v1/endpoint/c1", {"netns": "n1"})[0] == 201
    assert api.request("PUT", "/v1/endpoint/c1", {"netns": "n1"})[0] == 200  # it existed
    assert api.endpoint("c1", check=True)["checked"] is True
    assert [e["container_id"] for e in api.endpoints()] == ["c1"]
    assert api.relabel_endpoint("c1", {"app": "web"})["labels"] == {"app": "web"}
    assert api.request("DELETE", "/v1/endpoint/c1") == (204, None)
    for call, status, code in ((lambda: api.delete_endpoint("c1"), 404, "not-found"),
                               (lambda: api.put_endpoint("c2", netns="busy"), 409, "conflict"),
                               (lambda: api.put_endpoint("c2", netns="kv-down"), 503, "kvstore-unavailable"),
                               (lambda: api.put_endpoint("c2", netns="boom"), 500, "internal"),
                               (lambda: api.request("PUT", "/v1/endpoint/c2", {"netns": ""}), 400, "invalid"),
                               (lambda: api.relabel_endpoint("c1", {"app": "web"}), 404, "not-found"),
                               (lambda: api.request("PATCH", "/v1/endpoint/c1/labels", {"labels": ["x"]}), 400,
                                "invalid"),
                               (lambda: api.request("GET", "/v1/nope"), 404, "not-found"),
                               (lambda: api.request("POST", "/v1/status"), 405, "method-not-allowed")):
        with pytest.raises(AgentError) as err:
            call()
        assert (err.value.status, err.value.code) == (status, code), err.value
        assert err.value.message


def test_reload_through_the_api(api: AgentClient) -> None:
    backend: FakeBackend = api.backend  # type: ignore[attr-defined]
    assert api.reload() == {"reloads": 1, "seconds": 0.1, "programs": 7}
    assert api.reload()["reloads"] == 2
    for answer, status, code in (("legacy", 501, "not-supported"), ("starting", 503, "not-ready")):
        backend.reload_answer = answer
        with pytest.raises(AgentError) as err:
            api.reload()
        assert (err.value.status, err.value.code) == (status, code) and err.value.message
    with pytest.raises(AgentError) as err:
        api.request("GET", "/v1/datapath/reload")
    assert err.value.status == 405


def test_a_live_socket_is_not_taken_and_a_stale_one_is(api: AgentClient, tmp_path: Path) -> None:
    with pytest.raises(AgentStartError, match="another agent answers"):
        claim_socket(api.socket_path)
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # bound, never listening: what a killed agent leaves
    claim_socket(stale)
    assert not os.path.exists(stale)
    (tmp_path / "file").write_text("x")
    with pytest.raises(AgentStartError, match="not a socket"):
        claim_socket(str(tmp_path / "file"))


def test_client_without_an_agent(tmp_path: Path) -> None:
    with pytest.raises(AgentUnavailable, match="does not exist"):
        AgentClient(str(tmp_path / "none.sock")).healthz()
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    try:
        with pytest.raises(AgentUnavailable, match="connection refused"):
            AgentClient(stale).healthz()
    finally:
        s.close()


# -- the CLI's KVStore line -----------------------------------------------------------------------------


def test_kvstore_line() -> None:
    kv = {"backend": "etcd", "connected": True, "endpoints": ["http://10.0.0.254:2379"], "lease_id": 0x7C02,
          "lease_ttl": 15, "last_heartbeat": time.time() - 2, "last_error": None, "watch_revision": 42}
    text = kvstore_text(kv)
    assert text.startswith("Ok  etcd: 1/1 connected, lease-ID=7c02, lease-TTL=15s, last heartbeat 2s ago")
    assert "watch revision 42" in text and text.endswith(": http://10.0.0.254:2379")
    down = kvstore_text({**kv, "connected": False, "last_error": "connection refused"})
    assert down.startswith("Failure  etcd: 0/1 connected") and "(last error: connection refused)" in down
    assert kvstore_text({"backend": "memory", "connected": True}).startswith("Ok  memory")


# -- the agent's endpoint table on disk ------------------------------------------------------------------


def _ep(i: int, netns: str) -> Endpoint:
    import ipaddress

    return Endpoint(id=i, name=f"p{i}", ip=ipaddress.IPv4Address(f"10.244.0.{i + 1}"), pod_netns=netns,
                    ifname=f"lxc{i}", ifindex=10 + i, mac="02:00:00:00:00:01", node_mac="02:00:00:00:00:02",
                    identity=300 + i, labels={"name": f"p{i}"})


def _record(cid: str, ep: Endpoint | None, netns: str) -> dict[str, Any]:
    return {"container_id": cid, "netns": netns, "ifname": "eth0", "name": cid, "labels": {"name": cid},
            "netns_inode": 1, "gateway": "10.244.0.1", "mtu": 1450, "created": 1.0,
            "ip": str(ep.ip) if ep else None, "endpoint_id": ep.id if ep else None}


class _Store:
    def __init__(self) -> None:
        self.ips: list[str] = []

    def allocate_identity(self, labels: dict[str, str]) -> int:
        return 300 + int(labels["name"][-1]) if labels["name"][-1].isdigit() else 999

    def put_ip_identity(self, ip: str, identity: int, host: str, **kw: Any) -> None:
        self.ips.append(ip)


def test_endpoint_table_round_trip_and_refusals(tmp_path: Path) -> None:
    path = str(tmp_path / "agent-endpoints.json")
    assert endpoint_state.read(path, "n1") == []  # no file: nothing to restore
    endpoint_state.write(path, "n1", [_record("c1", _ep(1, "ns1"), "ns1")])
    assert [r["container_id"] for r in endpoint_state.read(path, "n1")] == ["c1"]
    with pytest.raises(endpoint_state.EndpointStateError) as err:
        endpoint_state.read(path, "n2")
    assert err.value.reason == "other-node"
    text = Path(path).read_text()
    for bad, reason in ((text[: len(text) // 2], "corrupt"), (text.replace('"end": true', '"end": false'), "corrupt"),
                        (text.replace('"version": 1', '"version": 99'), "version"),
                        (text.replace('"netns_inode": 1, ', ""), "corrupt")):
        with open(path, "w") as f:
            f.write(bad)
        with pytest.raises(endpoint_state.EndpointStateError) as err:
            endpoint_state.read(path, "n1")
        assert err.value.reason == reason, bad
    endpoint_state.remove(path)
    assert os.listdir(tmp_path) == []


def test_endpoint_table_restore_matches_records_to_the_datapath(tmp_path: Path) -> None:
    path = str(tmp_path / "agent-endpoints.json")
    eps = [_ep(1, "ns1"), _ep(2, "ns2"), _ep(3, "ns3")]
    # c1 complete; c2 written before its endpoint existed (killed in between); c9's endpoint is gone;
    # endpoint 3 has no record at all.
    endpoint_state.write(path, "n1", [_record("c1", eps[0], "ns1"), _record("c2", None, "ns2"),
                                      _record("c9", _ep(9, "ns9"), "ns9")])
    store = _Store()
    table = EndpointTable(object(), store, node_netns="x", gateway="10.244.0.1", mtu=1450,  # type: ignore[arg-type]
                          state_path=path, node_name="n1")
    notes = table.restore(eps)
    assert sorted(e.container_id for e in table.all()) == ["c1", "c2"]
    assert table.get("c2").endpoint is eps[1] and table.get("c1").endpoint is eps[0]
    assert len(notes) == 2 and "c9" in notes[0] and "endpoint 3" in notes[1], notes
    assert sorted(store.ips) == ["10.244.0.2", "10.244.0.3"]  # re-published on this agent's lease
    # What is on disk now is the restored table: both complete, c9 gone.
    assert [(r["container_id"], r["ip"]) for r in endpoint_state.read(path, "n1")] == [
        ("c1", "10.244.0.2"), ("c2", "10.244.0.3")]
