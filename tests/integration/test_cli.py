"""The ``ciliumlite`` inspection commands, run as a separate process against a live lab.

One lab is shared by the module: two nodes in VXLAN mode (``a`` and ``b``), one pod each, with ICMP
and TCP already sent between them. Every command is run the way a person runs it
(``python -m ciliumlite.cli … --lab <prefix>``) and its JSON is checked against the lab's real state
(the pods' IPs and identities, the tunnel map, the packet counters); the human tables must render
the same facts. Bad situations (unknown lab, empty registry, vanished pins, absent maps) must end
with a message that names what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ciliumlite import Backend, Frontend, Service
from ciliumlite.bpf import fs
from ciliumlite.bpf.errors import NotSupportedError
from ciliumlite.datapath import registry
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.lab import Lab, LabCluster, Pod
from ciliumlite.testing.resources import unique_name

pytestmark = pytest.mark.integration

PORT = 8080
SVC_IP = "10.96.0.10"


@dataclass
class Topo:
    lab: Lab
    cl: LabCluster
    p1: Pod
    p2: Pod
    svc_error: str = ""

    @property
    def prefix(self) -> str:
        return self.lab.prefix

    def node_name(self, short: str) -> str:
        return f"{self.lab.prefix}-{short}"


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with Lab("cli") as lab:
        cl = lab.cluster(["a", "b"], routing="vxlan")
        p1 = cl.node("a").add_pod("p1")
        p2 = cl.node("b").add_pod("p2")
        assert p1.ping(p2, count=3).ok
        assert p2.ping(p1, count=2).ok
        echo = p1.tcp_echo(p2, PORT)
        assert echo.ok, echo
        # The service is made here, not in its test: programming the first one loads bpf_sock and opens
        # the LB maps for the datapath's lifetime, which a per-test leak check would count as leaked fds.
        svc_error = ""
        try:
            cl.upsert_service(Service(name="web", frontend=Frontend(SVC_IP, 80), backends=[Backend(p2.ip, PORT)]))
        except Exception as exc:
            svc_error = f"{type(exc).__name__}: {exc}"
        yield Topo(lab, cl, p1, p2, svc_error)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ciliumlite.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def cli_json(*args: str, env: dict[str, str] | None = None) -> Any:
    res = cli(*args, "--output", "json", env=env)
    assert res.returncode == 0, f"{args}: rc={res.returncode}\n{res.stderr}"
    return json.loads(res.stdout)


# -- JSON against the lab --------------------------------------------------------------------------------


def test_endpoint_list_is_the_labs_pods(topo: Topo) -> None:
    rows = cli_json("endpoint", "list", "--lab", topo.prefix)
    got = {(r["node"], r["ipv4"], r["identity"], r["ifname"], r["mac"]) for r in rows}
    want = {(topo.node_name(p.node.name), p.ip, p.endpoint.identity, p.endpoint.ifname, p.endpoint.mac)
            for p in (topo.p1, topo.p2)}
    assert got == want


def test_bpf_endpoint_list_is_the_kernels_cilium_lxc(topo: Topo) -> None:
    rows = cli_json("bpf", "endpoint", "list", "--lab", topo.prefix)
    for short in ("a", "b"):
        node = topo.cl.node(short)
        assert node.datapath is not None
        mine = [r for r in rows if r["node"] == topo.node_name(short)]
        # Every entry of the kernel's map, pods and the node's own addresses (flagged host).
        assert {r["ip"] for r in mine} == {str(k.ip4) for k in node.datapath.bpf_endpoints()}
        hosts = {r["ip"] for r in mine if r["host"]}
        assert node.ip in hosts and str(node.datapath.config.gateway) in hosts
        assert all(r["info"] == "(localhost)" for r in mine if r["host"])
    assert {r["ip"] for r in rows if not r["host"]} == {topo.p1.ip, topo.p2.ip}
    for pod in (topo.p1, topo.p2):
        (row,) = [r for r in rows if r["ip"] == pod.ip]
        ep = pod.endpoint
        assert row["node"] == topo.node_name(pod.node.name)
        assert (row["id"], row["sec_id"], row["ifindex"], row["mac"], row["node_mac"]) == (
            ep.id, ep.identity, ep.ifindex, ep.mac, ep.node_mac)
        assert f"sec_id={ep.identity}" in row["info"]
        # The same as the SDK reads in-process.
        assert pod.node.datapath is not None
        (info,) = [v for k, v in pod.node.datapath.bpf_endpoints().items() if str(k.ip4) == pod.ip]
        assert info.sec_id == row["sec_id"] and info.lxc_id == row["id"]


def test_bpf_tunnel_list_points_at_the_other_node(topo: Topo) -> None:
    rows = cli_json("bpf", "tunnel", "list", "--lab", topo.prefix)
    a, b = topo.cl.node("a"), topo.cl.node("b")
    assert a.datapath is not None and b.datapath is not None
    got = {(r["node"], r["tunnel"], r["value"], r["remote_node"]) for r in rows}
    assert got == {
        (topo.node_name("a"), b.datapath.config.network.network_address.exploded, b.ip, "b"),
        (topo.node_name("b"), a.datapath.config.network.network_address.exploded, a.ip, "a"),
    }
    assert {r["node"]: {r["tunnel"]: r["value"]} for r in rows} == {
        topo.node_name("a"): a.datapath.tunnel.entries(), topo.node_name("b"): b.datapath.tunnel.entries()}


def test_status_describes_each_node(topo: Topo) -> None:
    rows = cli_json("status", "--lab", topo.prefix)
    assert [r["node"] for r in rows] == [topo.node_name("a"), topo.node_name("b")]
    for row, short, pod in zip(rows, ("a", "b"), (topo.p1, topo.p2), strict=True):
        assert (row["kube_proxy_replacement"], row["host_routing"], row["routing"], row["masquerading"],
                row["lb_mode"], row["endpoints"], row["process"]) == (
            "True", "BPF", "vxlan", "Disabled", "SNAT", 1, "running")
        assert "cil_from_netdev (tcx ingress)" in row["programs"]["eth0"]
        assert any(p.startswith("cil_from_overlay") for p in row["programs"]["cilium_vxlan"])
        assert any(p.startswith("cil_from_container") for p in row["programs"][pod.endpoint.ifname])
        maps = {m["name"]: m for m in row["maps"]}
        dp = topo.cl.node(short).datapath
        assert dp is not None
        assert maps["cilium_lxc"]["entries"] == len(dp.bpf_endpoints()) >= 1
        assert maps["cilium_lxc"]["max_entries"] > 1
        assert maps["cilium_tunnel_map"]["entries"] == 1
        assert maps["cilium_metrics"]["entries"] > 0
        assert all(0 <= m["pressure"] <= 1 for m in row["maps"])
        other = "b" if short == "a" else "a"
        assert list(row["remote_nodes"]) == [other]
    verbose = cli_json("status", "--lab", topo.prefix, "--node", "a", "--verbose")
    assert len(verbose) == 1 and verbose[0]["config"]["routing"] == "vxlan"
    assert any(a["program"] == "cil_from_container" for a in verbose[0]["attachments"])


def test_metrics_count_the_traffic(topo: Topo) -> None:
    a, b = topo.cl.node("a").datapath, topo.cl.node("b").datapath
    assert a is not None and b is not None
    before_a = a.count(Reason.ENCAPSULATED, Direction.EGRESS)
    before_b = b.count(Reason.FORWARDED, Direction.INGRESS)
    rows = cli_json("metrics", "--lab", topo.prefix)

    def packets(node: str, reason: Reason, direction: str) -> int:
        return sum(r["packets"] for r in rows if r["node"] == topo.node_name(node) and r["reason"] == reason
                   and r["direction"] == direction)

    assert packets("a", Reason.ENCAPSULATED, "egress") >= before_a > 0
    assert packets("b", Reason.FORWARDED, "ingress") >= before_b > 0
    assert all(r["bytes"] >= r["packets"] >= 0 for r in rows)

    res = cli("metrics", "--prometheus", "--lab", topo.prefix)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "# TYPE cilium_forward_count_total counter" in lines
    assert "# TYPE cilium_drop_count_total counter" in lines
    sample = [ln for ln in lines
              if ln.startswith(f'cilium_forward_count_total{{direction="EGRESS",node="{topo.node_name("a")}"}} ')]
    assert len(sample) == 1 and float(sample[0].rsplit(" ", 1)[1]) >= before_a


def test_node_selection(topo: Topo) -> None:
    rows = cli_json("endpoint", "list", "--lab", topo.prefix, "--node", "b")
    assert [r["ipv4"] for r in rows] == [topo.p2.ip]
    rows = cli_json("bpf", "endpoint", "list", "--node", topo.node_name("a"))
    assert {r["node"] for r in rows} == {topo.node_name("a")}
    assert [r["ip"] for r in rows if not r["host"]] == [topo.p1.ip]


def test_conntrack_and_nat_listings_read(topo: Topo) -> None:
    for argv in (["bpf", "ct", "list"], ["bpf", "nat", "list"]):
        rows = cli_json(*argv, "--lab", topo.prefix)
        assert isinstance(rows, list)
        for r in rows:
            assert r["node"].startswith(topo.prefix + "-") and "->" not in r["src"]
        res = cli(*argv, "--lab", topo.prefix)
        assert res.returncode == 0, res.stderr


# -- human output ----------------------------------------------------------------------------------------


def test_tables_render_the_same_facts(topo: Topo) -> None:
    a, b = topo.cl.node("a"), topo.cl.node("b")
    checks = {
        ("endpoint", "list"): [topo.p1.ip, topo.p2.ip, str(topo.p1.endpoint.identity), "IDENTITY"],
        ("bpf", "endpoint", "list"): [topo.p1.ip, topo.p2.ip, f"sec_id={topo.p2.endpoint.identity}",
                                      "LOCAL ENDPOINT INFO"],
        ("bpf", "tunnel", "list"): [f"{a.ip}:0", f"{b.ip}:0", "10.244.1.0:0", "TUNNEL"],
        ("status",): ["KubeProxyReplacement:   True", "Host Routing:           BPF", "cilium_lxc",
                      "cil_from_overlay", topo.node_name("a")],
        ("metrics",): ["Encapsulated to a remote node", "EGRESS", topo.node_name("b")],
    }
    for argv, needles in checks.items():
        res = cli(*argv, "--lab", topo.prefix)
        assert res.returncode == 0, f"{argv}: {res.stderr}"
        assert res.stdout.strip(), argv
        for needle in needles:
            assert needle in res.stdout, f"{argv}: {needle!r} missing from\n{res.stdout}"
        assert "…" not in res.stdout, f"{argv}: a cell was cropped\n{res.stdout}"


# -- bad situations --------------------------------------------------------------------------------------


def test_unknown_lab_is_an_error(topo: Topo) -> None:
    for argv in (["status"], ["endpoint", "list"], ["bpf", "endpoint", "list"], ["metrics"]):
        res = cli(*argv, "--lab", "doesnotexist")
        assert res.returncode == 1, argv
        assert "no datapath of lab 'doesnotexist' is registered" in res.stderr
        assert not res.stdout.strip()


def test_empty_registry_is_an_error(tmp_path: Path) -> None:
    env = {registry.RUN_DIR_ENV: str(tmp_path)}
    for argv in (["status"], ["endpoint", "list", "-o", "json"], ["bpf", "tunnel", "list"]):
        res = cli(*argv, env=env)
        assert res.returncode == 1, argv
        assert f"no datapath registered in {tmp_path}" in res.stderr
    res = cli("status", env={registry.RUN_DIR_ENV: str(tmp_path / "never-made")})
    assert res.returncode == 1 and "no datapath registered" in res.stderr


def test_vanished_pin_dir_is_skipped_with_a_note(topo: Topo, tmp_path: Path) -> None:
    real = Path(registry.run_dir()) / f"{topo.node_name('a')}.json"
    shutil.copy(real, tmp_path / real.name)
    stale = json.loads(real.read_text()) | {"node": "gone-node", "pin_dir": f"{fs.BPFFS}/ciliumlite/gone-node-xyz"}
    (tmp_path / "gone-node.json").write_text(json.dumps(stale))
    env = {registry.RUN_DIR_ENV: str(tmp_path)}
    res = cli("bpf", "endpoint", "list", "-o", "json", env=env)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {r["node"] for r in rows} == {topo.node_name("a")}
    assert [r["ip"] for r in rows if not r["host"]] == [topo.p1.ip]
    assert "gone-node: pin directory" in res.stderr and "skipped" in res.stderr
    (tmp_path / real.name).unlink()
    res = cli("status", env=env)
    assert res.returncode == 1
    assert "gone-node: pin directory" in res.stderr and "no datapath registered" in res.stderr


def test_absent_maps_are_named(topo: Topo, tmp_path: Path) -> None:
    pins = fs.make_pin_dir(unique_name("clipins"))
    try:
        entry = {"node": "empty-node", "netns": None, "pin_dir": pins, "pid": os.getpid(),
                 "config": {"host_routing": "bpf", "routing": "none"}, "endpoints": [], "services": {},
                 "remote_nodes": {}, "attachments": []}
        (tmp_path / "empty-node.json").write_text(json.dumps(entry))
        env = {registry.RUN_DIR_ENV: str(tmp_path)}
        for argv, name in ((["bpf", "ct", "list"], "cilium_ct4_global"), (["bpf", "nat", "list"], "cilium_snat_v4_external"),
                           (["bpf", "lb", "list"], "cilium_lb4_services_v2"), (["bpf", "tunnel", "list"], "cilium_tunnel_map"),
                           (["metrics"], "cilium_metrics")):
            res = cli(*argv, "-o", "json", env=env)
            assert res.returncode == 0, f"{argv}: {res.stderr}"
            assert json.loads(res.stdout) == []
            assert f"empty-node: map {name} not present in this datapath" in res.stderr, res.stderr
        (row,) = cli_json("status", env=env)
        assert row["maps"] == [] and row["endpoints"] == 0
    finally:
        fs.remove_pin_dir(pins)


# -- services (need the LB maps and records in step) -----------------------------------------------------


def test_services(topo: Topo) -> None:
    if topo.svc_error:
        pytest.skip("services cannot be programmed in this build, so bpf lb list / service list are not "
                    f"checked: {topo.svc_error}")
    echo = topo.p1.tcp_echo(SVC_IP, 80)
    assert echo.ok, echo
    rows = cli_json("bpf", "lb", "list", "--lab", topo.prefix, "--node", "a")
    fe = [r for r in rows if r["frontend"] == f"{SVC_IP}:80"]
    head = [r for r in fe if r["slot"] == 0]
    assert len(head) == 1 and head[0]["count"] == 1 and head[0]["flag_names"][0] == "ClusterIP"
    slots = [r for r in fe if r["slot"] > 0]
    assert [r["backend"] for r in slots] == [f"{topo.p2.ip}:{PORT}"]
    assert slots[0]["rev_nat"] == head[0]["rev_nat"] > 0

    services = cli_json("service", "list", "--lab", topo.prefix, "--node", "a")
    assert [(s["name"], s["frontend"], s["type"], s["backends"], s["id"]) for s in services] == [
        ("web", f"{SVC_IP}:80/TCP", "ClusterIP", [f"{topo.p2.ip}:{PORT}"], head[0]["rev_nat"])]

    res = cli("bpf", "lb", "list", "--lab", topo.prefix)
    assert res.returncode == 0, res.stderr
    assert f"{SVC_IP}:80/TCP" in res.stdout and f"{topo.p2.ip}:{PORT}/TCP" in res.stdout
    assert "[ClusterIP, non-routable]" in res.stdout
    res = cli("service", "list", "--lab", topo.prefix)
    assert res.returncode == 0 and f"1 => {topo.p2.ip}:{PORT}/TCP (active)" in res.stdout


# -- BGP -------------------------------------------------------------------------------------------------


def test_bgp_status_reads_bird() -> None:
    from ciliumlite import bgp

    try:
        bgp._binaries()
    except NotSupportedError as exc:
        pytest.skip(f"bird 2 is not installed: {exc}")
    with Lab("clibgp") as lab:
        cl = lab.cluster(["a", "b"], routing="native")
        sock = cl.node("a").bird.socket_path
        rows = cli_json("bgp", "status", "--socket", sock)
        assert [(r["name"], r["proto"], r["established"]) for r in rows] == [("leaf", "BGP", True)]
        res = cli("bgp", "status", "--socket", sock, "--all")
        assert res.returncode == 0 and "Established" in res.stdout and "Device" in res.stdout
        res = cli("bgp", "status", "--socket", sock + ".nope")
        assert res.returncode == 1 and "no bird control socket at" in res.stderr
