"""The CLI's formatting (rows -> tables, Cilium-style lines, JSON, Prometheus) and the registry side of
ciliumlite.inspect, without root: records are built in Python, registries in a temp directory."""

from __future__ import annotations

import io
import json
import os
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ciliumlite import bgp, inspect
from ciliumlite.cli import app
from ciliumlite.cli import format as fmt
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import (
    ENDPOINT_F_HOST,
    SCOPE_INTERNAL,
    SVC_FLAG2_INT_LOCAL_SCOPE,
    SVC_FLAG2_TWO_SCOPES,
    SVC_FLAG_EXT_LOCAL_SCOPE,
    SVC_FLAG_EXTERNAL_IP,
    SVC_FLAG_LOADBALANCER,
    SVC_FLAG_NODEPORT,
    SVC_FLAG_ROUTABLE,
    CtEntry,
    EndpointInfo,
    EndpointKey,
    Ipv4CtTuple,
    Lb4Backend,
    Lb4Key,
    Lb4Service,
    NatEntry,
    TunnelKey,
    TunnelValue,
)
from ciliumlite.inspect import InspectError, LbEntry, MapPressure, RegisteredDatapath
from ciliumlite.node import MetricRow

pytestmark = pytest.mark.unit

NODE = "cl1a2b3-demo-a"


def render(renderable: Any) -> str:
    buf = io.StringIO()
    Console(file=buf, width=400, markup=False, emoji=False, highlight=False).print(renderable)
    return buf.getvalue()


def state(node: str = NODE, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "node": node, "netns": node, "pin_dir": None, "cgroup": f"/sys/fs/cgroup/{node}", "pid": os.getpid(),
        "config": {"node_name": node, "pod_cidr": "10.244.0.0/24", "host_routing": "bpf", "routing": "vxlan",
                   "node_ip": "10.0.0.11", "kube_proxy_replacement": True, "socket_lb": True,
                   "bpf_masquerade": False, "load_balancer_mode": "snat", "tunnel_device": "cilium_vxlan",
                   "underlay_device": "eth0", "native_routing_cidr": "10.244.0.0/16"},
        "endpoints": [{"id": 2, "name": "web", "ipv4": "10.244.0.3", "identity": 4242, "ifname": "lxc2",
                       "ifindex": 7, "mac": "aa:bb:cc:00:00:03", "node_mac": "de:ab:c3:00:00:01",
                       "netns": f"{node}-web", "program": "attached"},
                      {"id": 1, "name": "client", "ipv4": "10.244.0.2", "identity": 4141, "ifname": "lxc1",
                       "ifindex": 6, "mac": "aa:bb:cc:00:00:02", "node_mac": "de:ab:c3:00:00:01",
                       "netns": f"{node}-client", "program": "attached"}],
        "services": {"web": {"name": "web", "frontend": {"ip": "10.96.0.10", "port": 80, "protocol": "TCP"},
                             "backends": [{"ip": "10.244.0.3", "port": 8080}, {"ip": "10.244.1.2", "port": 8080}],
                             "type": "NodePort", "node_port": 30080, "external_traffic_policy": "Cluster"}},
        "remote_nodes": {"b": {"name": "b", "ip": "10.0.0.12", "pod_cidr": "10.244.1.0/24"}},
        "attachments": [{"program": "cil_from_overlay", "where": f"tcx ingress on cilium_vxlan in netns {node}"},
                        {"program": "cil_from_netdev", "where": f"tcx ingress on eth0 in netns {node}"},
                        {"program": "cil_sock4_connect",
                         "where": f"cgroup cgroup_inet4_connect on cgroup /sys/fs/cgroup/unified/{node}"}],
    }
    base.update(over)
    return base


def dp(**over: Any) -> RegisteredDatapath:
    return RegisteredDatapath.from_state(state(**over), "/run/x.json")


# -- endpoints and tunnels -------------------------------------------------------------------------------


def test_endpoint_rows_sorted_by_id_with_node_and_table():
    rows = fmt.endpoint_rows([dp()])
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[0] | {} == {"node": NODE, **state()["endpoints"][1]}
    text = render(fmt.endpoint_table(rows))
    assert text.split("\n")[0].split() == ["ENDPOINT", "IDENTITY", "IPv4", "IFNAME", "MAC", "NAME", "NODE"]
    assert "10.244.0.2" in text and "4141" in text and "lxc1" in text and NODE in text


def test_bpf_endpoint_info_is_ciliums_column():
    key = EndpointKey(ip4=IPv4Address("10.244.0.2"))
    info = EndpointInfo(ifindex=6, lxc_id=1, flags=0, mac="aa:bb:cc:00:00:02", node_mac="de:ab:c3:00:00:01",
                        sec_id=4141)
    rows = fmt.bpf_endpoint_rows(NODE, [(key, info)])
    assert rows[0]["ip"] == "10.244.0.2" and rows[0]["sec_id"] == 4141 and rows[0]["ifindex"] == 6
    assert rows[0]["info"].split() == ["id=1", "sec_id=4141", "flags=0x0000", "ifindex=6",
                                       "mac=aa:bb:cc:00:00:02", "nodemac=de:ab:c3:00:00:01"]
    assert rows[0]["host"] is False
    host = fmt.bpf_endpoint_rows(NODE, [(EndpointKey(ip4=IPv4Address("10.0.0.11")), EndpointInfo(
        ifindex=0, lxc_id=0, flags=ENDPOINT_F_HOST, mac="00:00:00:00:00:00", node_mac="00:00:00:00:00:00",
        sec_id=1))])
    assert host[0]["host"] is True and host[0]["info"] == "(localhost)"
    text = render(fmt.bpf_endpoint_table(rows + host))
    assert "IP ADDRESS" in text and "LOCAL ENDPOINT INFO" in text and "(localhost)" in text
    assert "nodemac=de:ab:c3:00:00:01" in text  # ":ab:" is not an emoji code


def test_tunnel_rows_name_the_remote_node():
    rows = fmt.tunnel_rows(dp(), [(TunnelKey(ip4=IPv4Address("10.244.1.0")), TunnelValue(ip4=IPv4Address("10.0.0.12"))),
                                  (TunnelKey(ip4=IPv4Address("10.244.9.0")), TunnelValue(ip4=IPv4Address("10.0.0.19")))])
    assert rows[0] == {"node": NODE, "tunnel": "10.244.1.0", "value": "10.0.0.12", "remote_node": "b",
                       "pod_cidr": "10.244.1.0/24"}
    assert rows[1]["remote_node"] is None
    text = render(fmt.tunnel_table(rows))
    assert "10.244.1.0:0" in text and "10.0.0.12:0" in text and "?" in text


# -- services --------------------------------------------------------------------------------------------


def test_svc_flags_text():
    assert fmt.svc_flags_text(0, 0) == ["ClusterIP", "non-routable"]
    assert fmt.svc_flags_text(SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE | SVC_FLAG_EXT_LOCAL_SCOPE,
                              SVC_FLAG2_TWO_SCOPES) == ["NodePort", "Local", "two-scopes"]


def test_lb_rows_and_lines_like_cilium_bpf_lb_list():
    fe = dict(address=IPv4Address("10.96.0.10"), dport=80, proto=6)
    entries = [
        LbEntry(Lb4Key(**fe, backend_slot=0), Lb4Service(count=2, rev_nat_index=1)),
        LbEntry(Lb4Key(**fe, backend_slot=1), Lb4Service(backend_id=7, rev_nat_index=1),
                Lb4Backend(address=IPv4Address("10.244.0.3"), port=8080)),
        LbEntry(Lb4Key(**fe, backend_slot=2), Lb4Service(backend_id=9, rev_nat_index=1), None),
        LbEntry(Lb4Key(address=IPv4Address("10.0.0.11"), dport=30080, proto=6, scope=SCOPE_INTERNAL),
                Lb4Service(count=1, rev_nat_index=2, flags=SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE)),
    ]
    rows = fmt.lb_rows(NODE, entries)
    assert rows[0]["count"] == 2 and rows[0]["flag_names"] == ["ClusterIP", "non-routable"]
    assert rows[1]["backend"] == "10.244.0.3:8080" and rows[1]["backend_id"] == 7
    assert fmt.lb_lines(rows) == [
        ("10.96.0.10:80/TCP", "0.0.0.0:0 (1) (0) [ClusterIP, non-routable]"),
        ("10.96.0.10:80/TCP", "10.244.0.3:8080/TCP (1) (1)"),
        ("10.96.0.10:80/TCP", "backend 9 missing! (1) (2)"),
        ("10.0.0.11:30080/TCP/i", "0.0.0.0:0 (2) (0) [NodePort]"),
    ]
    text = render(fmt.lb_table(rows))
    assert "[ClusterIP, non-routable]" in text  # not eaten as markup
    assert "SERVICE ADDRESS" in text and "BACKEND ADDRESS (REVNAT_ID) (SLOT)" in text


def test_service_rows_list_every_frontend_with_ids():
    rows = fmt.service_rows(dp(), {("10.96.0.10", 80): 1, ("10.0.0.11", 30080): 2})
    assert [(r["id"], r["frontend"], r["type"]) for r in rows] == [
        (1, "10.96.0.10:80/TCP", "ClusterIP"), (2, "10.0.0.11:30080/TCP", "NodePort"),
        (None, "0.0.0.0:30080/TCP", "NodePort")]
    assert rows[0]["backends"] == ["10.244.0.3:8080", "10.244.1.2:8080"]
    text = render(fmt.service_table(rows))
    assert "1 => 10.244.0.3:8080/TCP (active)" in text and "2 => 10.244.1.2:8080/TCP (active)" in text


def test_new_frontends_and_terminating_backends_in_bpf_lb_list():
    assert fmt.svc_flags_text(SVC_FLAG_LOADBALANCER | SVC_FLAG_ROUTABLE, SVC_FLAG2_INT_LOCAL_SCOPE) == \
        ["LoadBalancer", "InternalLocal"]
    assert fmt.svc_flags_text(SVC_FLAG_EXTERNAL_IP | SVC_FLAG_ROUTABLE | SVC_FLAG_EXT_LOCAL_SCOPE, 0) == \
        ["ExternalIPs", "Local"]
    fe = dict(address=IPv4Address("198.51.100.7"), dport=80, proto=6)
    entries = [
        LbEntry(Lb4Key(**fe, backend_slot=0), Lb4Service(count=1, rev_nat_index=3,
                                                         flags=SVC_FLAG_EXTERNAL_IP | SVC_FLAG_ROUTABLE)),
        LbEntry(Lb4Key(**fe, backend_slot=1), Lb4Service(backend_id=2, rev_nat_index=3),
                Lb4Backend(address=IPv4Address("10.244.0.4"), port=8080)),
        LbEntry(Lb4Key(**fe, backend_slot=2), Lb4Service(backend_id=1, rev_nat_index=3),
                Lb4Backend(address=IPv4Address("10.244.0.3"), port=8080, flags=1)),
    ]
    assert fmt.lb_lines(fmt.lb_rows(NODE, entries)) == [
        ("198.51.100.7:80/TCP", "0.0.0.0:0 (3) (0) [ExternalIPs]"),
        ("198.51.100.7:80/TCP", "10.244.0.4:8080/TCP (3) (1)"),
        ("198.51.100.7:80/TCP", "10.244.0.3:8080/TCP (3) (2) [terminating]"),
    ]


def test_service_rows_list_external_and_load_balancer_ips_and_backend_states():
    svc = {"name": "lb", "frontend": {"ip": "10.96.0.30", "port": 80, "protocol": "TCP"},
           "backends": [{"ip": "10.244.0.3", "port": 8080, "terminating": True}, {"ip": "10.244.1.2", "port": 8080}],
           "type": "LoadBalancer", "node_port": None, "external_ips": ["198.51.100.7"],
           "load_balancer_ips": ["192.0.2.80"], "external_traffic_policy": "Local", "internal_traffic_policy": "Local"}
    rows = fmt.service_rows(dp(services={"lb": svc}))
    assert [(r["frontend"], r["type"]) for r in rows] == [
        ("10.96.0.30:80/TCP", "ClusterIP"), ("198.51.100.7:80/TCP", "ExternalIPs"), ("192.0.2.80:80/TCP", "LoadBalancer")]
    assert rows[2]["external_traffic_policy"] == "Local" and rows[0]["internal_traffic_policy"] == "Local"
    text = render(fmt.service_table(rows))
    assert "1 => 10.244.0.3:8080/TCP (terminating)" in text and "2 => 10.244.1.2:8080/TCP (active)" in text


# -- conntrack and NAT -----------------------------------------------------------------------------------


def test_ct_line_undoes_ciliums_naming_quirk():
    # Original direction 10.244.0.2:40000 -> 10.96.0.10:80 is stored {daddr=client, saddr=frontend,
    # sport=client port, dport=frontend port} (ct.h).
    key = Ipv4CtTuple(daddr=IPv4Address("10.244.0.2"), saddr=IPv4Address("10.96.0.10"), dport=80, sport=40000,
                      nexthdr=6, flags=4)
    entry = CtEntry(backend_id=3, packets=5, bytes=400, lifetime=1100, flags=0x0010, rev_nat_index=1, ifindex=6,
                    tx_flags_seen=0x1b, rx_flags_seen=0x12, src_sec_id=4141)
    row = fmt.ct_row(NODE, "cilium_ct4_global", key, entry, now=1000)
    assert (row["src"], row["dst"], row["direction"], row["service"]) == (
        "10.244.0.2:40000", "10.96.0.10:80", "OUT", True)
    assert row["expires_in"] == 100 and row["flag_names"] == ["SeenNonSyn"]
    assert fmt.ct_line(row) == (
        "TCP OUT 10.244.0.2:40000 -> 10.96.0.10:80 service expires=1100 (in 100s) Packets=5 Bytes=400 "
        "RxFlagsSeen=0x12 TxFlagsSeen=0x1b Flags=0x0010 [ SeenNonSyn ] RevNAT=1 SourceSecurityID=4141 "
        "IfIndex=6 BackendID=3")


def test_nat_lines_both_halves():
    out_key = Ipv4CtTuple(saddr=IPv4Address("10.244.1.2"), daddr=IPv4Address("203.0.113.10"), sport=40000,
                          dport=80, nexthdr=6, flags=0)
    in_key = Ipv4CtTuple(saddr=IPv4Address("203.0.113.10"), daddr=IPv4Address("10.0.0.12"), sport=80,
                         dport=40000, nexthdr=6, flags=1)
    rows = [fmt.nat_row(NODE, out_key, NatEntry(created=990, needs_ct=1, to_addr=IPv4Address("10.0.0.12"),
                                                to_port=40000), now=1000),
            fmt.nat_row(NODE, in_key, NatEntry(created=990, needs_ct=1, to_addr=IPv4Address("10.244.1.2"),
                                               to_port=40000), now=1000)]
    assert [fmt.nat_line(r) for r in rows] == [
        "TCP OUT 10.244.1.2:40000 -> 203.0.113.10:80 XLATE_SRC 10.0.0.12:40000 Created=10sec ago NeedsCT=1",
        "TCP IN 203.0.113.10:80 -> 10.0.0.12:40000 XLATE_DST 10.244.1.2:40000 Created=10sec ago NeedsCT=1"]
    assert [r["direction"] for r in fmt.sort_flows(list(reversed(rows)))] == ["OUT", "IN"]


# -- metrics ---------------------------------------------------------------------------------------------


METRICS = [MetricRow(Reason.FORWARDED, Direction.INGRESS, 10, 1000),
           MetricRow(Reason.ENCAPSULATED, Direction.EGRESS, 7, 700),
           MetricRow(Reason.ARP_REPLY, Direction.EGRESS, 1, 42),
           MetricRow(Reason.DROP_INVALID_SIP, Direction.EGRESS, 3, 300),
           MetricRow(250, 9, 1, 1)]


def test_metric_rows_and_table():
    rows = fmt.metric_rows(NODE, METRICS)
    assert rows[1] == {"node": NODE, "reason": 102, "reason_text": "Encapsulated to a remote node", "drop": False,
                       "direction": "egress", "packets": 7, "bytes": 700}
    assert rows[3]["drop"] and rows[3]["reason_text"] == "Invalid source ip"
    assert rows[4]["direction"] == "unknown" and rows[4]["reason_text"] == "Unknown drop reason 250"
    text = render(fmt.metric_table(rows))
    assert "DROP: Invalid source ip" in text and "EGRESS" in text


def test_prometheus_exposition():
    rows = fmt.metric_rows(NODE, METRICS) + fmt.metric_rows('x"y', [MetricRow(0, 1, 2, 3)])
    text = fmt.prometheus(rows)
    lines = text.splitlines()
    assert text.endswith("\n")
    assert "# HELP ciliumlite_forward_count_total Packets forwarded by the datapath, by direction" in lines
    assert "# TYPE ciliumlite_forward_count_total counter" in lines
    assert "# TYPE ciliumlite_drop_count_total counter" in lines
    assert f'ciliumlite_forward_count_total{{direction="egress",node="{NODE}"}} 8' in lines
    assert f'ciliumlite_forward_bytes_total{{direction="ingress",node="{NODE}"}} 1000' in lines
    assert f'ciliumlite_drop_count_total{{reason="Invalid source ip",direction="egress",node="{NODE}"}} 3' in lines
    assert f'ciliumlite_drop_bytes_total{{reason="Invalid source ip",direction="egress",node="{NODE}"}} 300' in lines
    assert 'ciliumlite_forward_count_total{direction="ingress",node="x\\"y"} 2' in lines
    # Every sample follows its own HELP/TYPE block.
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            name = line.split("{")[0]
            assert any(prev == f"# TYPE {name} counter" for prev in lines[:i])
    assert fmt.prometheus([]).count("# TYPE") == 4


# -- status ----------------------------------------------------------------------------------------------


def test_programs_by_device():
    assert fmt.programs_by_device(state()["attachments"] + [{"program": "p", "where": "odd"}]) == {
        "cilium_vxlan": ["cil_from_overlay (tcx ingress)"], "eth0": ["cil_from_netdev (tcx ingress)"],
        f"cgroup {NODE}": ["cil_sock4_connect (cgroup cgroup_inet4_connect)"], "?": ["p (odd)"]}


def test_status_row_and_lines():
    maps = [MapPressure("cilium_lxc", "HASH", 2, 65535), MapPressure("cilium_ct4_global", "LRU_HASH", 0, 524288)]
    row = fmt.status_row(dp(pin_dir="/sys/fs/bpf/ciliumlite/x"), maps, alive=True)
    assert (row["kube_proxy_replacement"], row["host_routing"], row["routing"], row["masquerading"],
            row["lb_mode"], row["endpoints"]) == ("True", "BPF", "vxlan", "Disabled", "SNAT", 2)
    assert row["maps"][0] == {"name": "cilium_lxc", "type": "HASH", "entries": 2, "max_entries": 65535,
                              "pressure": round(2 / 65535, 6)}
    assert "config" not in row
    text = "\n".join(fmt.status_lines(row))
    assert "KubeProxyReplacement:   True" in text and "Host Routing:           BPF" in text
    assert "cilium_lxc" in text and "cilium_ct4_global" not in text  # empty maps only with --verbose
    assert "eth0: cil_from_netdev (tcx ingress)" in text

    verbose = fmt.status_row(dp(pin_dir="/p"), maps, alive=False, verbose=True)
    text = "\n".join(fmt.status_lines(verbose, verbose=True))
    assert "cilium_ct4_global" in text and "routing = 'vxlan'" in text and "not running" in text

    legacy = dp(config={**state()["config"], "host_routing": "legacy", "kube_proxy_replacement": False,
                        "bpf_masquerade": True})
    row = fmt.status_row(legacy, [], alive=True)
    assert (row["host_routing"], row["kube_proxy_replacement"], row["lb_mode"], row["masquerading"]) == (
        "Legacy", "False", "Disabled", "BPF [eth0] 10.244.0.0/16")
    assert "legacy host routing" in "\n".join(fmt.status_lines(row))


def test_status_reports_socket_acceleration():
    row = fmt.status_row(dp(pin_dir="/p"), [], alive=True)
    assert row["sockops"] is None and "  Socket acceleration:    Disabled" in fmt.status_lines(row)
    sk = {"enabled": True, "sockets": 2, "messages_redirected": 401, "bytes_redirected": 40026,
          "messages_passed": 3, "bytes_passed": 120}
    row = fmt.status_row(dp(pin_dir="/p"), [], alive=True, sockops=sk)
    assert row["sockops"] == sk
    assert ("  Socket acceleration:    Enabled (experimental)   [2 sockets, 401 messages redirected, 3 passed]"
            in fmt.status_lines(row))
    row = fmt.status_row(dp(pin_dir="/p"), [], alive=True, sockops={**sk, "enabled": False})
    assert any(line.startswith("  Socket acceleration:    Disabled (experimental)") for line in fmt.status_lines(row))


# -- BGP, JSON -------------------------------------------------------------------------------------------


def test_bgp_rows():
    text = "\n".join([
        "BIRD 2.0.12 ready.",
        "Name       Proto      Table      State  Since         Info",
        "device1    Device     ---        up     2026-11-30 02:25:25.518  ",
        "leaf       BGP        ---        up     2026-11-30 02:25:26.601  Established",
        "other      BGP        ---        start  2026-11-30 02:25:25.518  Active        Socket: Connection refused",
    ])
    rows = fmt.bgp_rows("/tmp/bird.ctl", bgp.parse_protocols(text))
    assert [(r["name"], r["established"]) for r in rows] == [("leaf", True), ("other", False)]
    assert len(fmt.bgp_rows("/s", bgp.parse_protocols(text), all_protocols=True)) == 3
    assert "Established" in render(fmt.bgp_table(rows))


def test_to_json_handles_records_and_addresses():
    out = json.loads(fmt.to_json({"a": IPv4Address("10.0.0.1"), "m": MapPressure("x", "HASH", 1, 2)}))
    assert out == {"a": "10.0.0.1", "m": {"name": "x", "type": "HASH", "entries": 1, "max_entries": 2}}


# -- the registry side of ciliumlite.inspect -------------------------------------------------------------


def _write(d: Path, st: dict[str, Any]) -> None:
    (d / f"{st['node']}.json").write_text(json.dumps(st))


def test_load_skips_vanished_pins_and_bad_entries_with_notes(tmp_path):
    _write(tmp_path, state("lab1-a", pin_dir=str(tmp_path)))
    _write(tmp_path, state("lab1-b", pin_dir=str(tmp_path / "gone")))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / ".lab1-c.tmp123").write_text("{")  # a publish in progress
    reg = inspect.load(tmp_path)
    assert [e.node for e in reg.entries] == ["lab1-a"]
    assert any("lab1-b" in n and "is gone" in n for n in reg.notes)
    assert any("broken.json" in n and "unreadable" in n for n in reg.notes)
    assert inspect.load(tmp_path / "missing").entries == []


def test_select_by_lab_and_node():
    entries = [dp(node=n) for n in ("cl1-lab-a", "cl1-lab-b", "cl2-lab-a", "cl1-lab")]
    assert [e.node for e in inspect.select(entries, lab="cl1-lab")] == ["cl1-lab-a", "cl1-lab-b", "cl1-lab"]
    assert [e.node for e in inspect.select(entries, lab="cl1-lab", node="a")] == ["cl1-lab-a"]
    assert [e.node for e in inspect.select(entries, node="cl2-lab-a")] == ["cl2-lab-a"]
    assert [e.node for e in inspect.select(entries, node="a")] == ["cl1-lab-a", "cl2-lab-a"]
    with pytest.raises(InspectError, match="no datapath of lab 'nope' is registered"):
        inspect.select(entries, lab="nope")
    with pytest.raises(InspectError, match="no node 'z' in lab 'cl1-lab'"):
        inspect.select(entries, lab="cl1-lab", node="z")
    with pytest.raises(InspectError, match="no datapath registered"):
        inspect.select([], lab="x")


# -- the command line without root ------------------------------------------------------------------------


def test_cli_empty_registry_and_registry_only_commands(tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("CILIUMLITE_RUN_DIR", str(tmp_path))
    res = runner.invoke(app, ["endpoint", "list"])
    assert res.exit_code == 1 and "no datapath registered" in res.stderr

    _write(tmp_path, state("lab1-a"))
    res = runner.invoke(app, ["endpoint", "list", "--lab", "lab1", "--output", "json"])
    assert res.exit_code == 0, res.stderr
    assert {r["ipv4"] for r in json.loads(res.stdout)} == {"10.244.0.2", "10.244.0.3"}
    res = runner.invoke(app, ["service", "list", "--lab", "lab1", "-o", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["frontend"] == "10.96.0.10:80/TCP"
    res = runner.invoke(app, ["endpoint", "list", "--lab", "doesnotexist"])
    assert res.exit_code == 1 and "no datapath of lab 'doesnotexist'" in res.stderr
    res = runner.invoke(app, ["version", "-o", "json"])
    assert res.exit_code == 0 and "version" in json.loads(res.stdout)


def test_cli_map_commands_need_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CILIUMLITE_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for argv in (["status"], ["metrics"], ["bpf", "endpoint", "list"], ["bpf", "ct", "list"]):
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 1 and "needs root (reads pinned BPF maps)" in res.stderr, argv


def test_cli_bgp_status_needs_a_socket(tmp_path):
    res = CliRunner().invoke(app, ["bgp", "status"])
    assert res.exit_code == 1 and "needs --socket PATH" in res.stderr
    res = CliRunner().invoke(app, ["bgp", "status", "--socket", str(tmp_path / "no.ctl")])
    assert res.exit_code == 1 and "no bird control socket at" in res.stderr


def test_cli_notes_a_datapath_whose_process_is_gone(tmp_path, monkeypatch):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setenv("CILIUMLITE_RUN_DIR", str(tmp_path))
    _write(tmp_path, state("lab1-a", pid=dead.pid))
    res = CliRunner().invoke(app, ["endpoint", "list", "-o", "json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)) == 2
    assert f"lab1-a: its process {dead.pid} is not running" in res.stderr
