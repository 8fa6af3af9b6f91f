"""The rows and lines of ``bpf policy get`` / ``bpf ipcache list``, from hand-built map states."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

from ciliumlite.cli import policy_format as pfmt
from ciliumlite.policy.identity import LOCAL_IDENTITY_FLAG, ReservedIdentity
from ciliumlite.policy.mapstate import MapState, PolicyEntry, PolicyKey, allow_all

EP = {"name": "web", "ipv4": "10.244.0.2", "identity": 4141, "labels": {"app": "web"}}


def test_port_text_names_any_single_ports_and_prefix_ranges() -> None:
    assert pfmt.port_text(0, 0, 0) == "ANY"
    assert pfmt.port_text(6, 0, 0) == "ANY/TCP"
    assert pfmt.port_text(17, 53, 16) == "53/UDP"
    assert pfmt.port_text(6, 1024, 6) == "1024-2047/TCP"


def test_identity_labels_reserved_local_endpoint_and_cidr() -> None:
    assert pfmt.identity_labels(int(ReservedIdentity.HOST)) == ["reserved:host"]
    assert pfmt.identity_labels(4141, [EP]) == ["k8s:app=web"]
    cidr_id = LOCAL_IDENTITY_FLAG | 1
    assert pfmt.identity_labels(cidr_id, prefixes={cidr_id: ["192.0.2.0/24"]}) == ["cidr:192.0.2.0/24"]
    assert pfmt.identity_labels(99999, [EP]) == []


def test_policy_endpoint_sorts_ingress_first_and_counts_only_allows() -> None:
    http = PolicyKey(4141, False, 6, 80, 16)
    deny = PolicyKey(4242, False, 0, 0, 0)
    state: MapState = {allow_all(True): PolicyEntry(), deny: PolicyEntry(deny=True), http: PolicyEntry()}
    row = pfmt.policy_endpoint("n1", 3, EP, state, {(http, False): (7, 700)}, [EP])
    assert (row["ingress"], row["egress"], row["enforced"]) == ("enforced", "allow-all", True)
    assert [(e["direction"], e["policy"]) for e in row["entries"]] == [
        ("Ingress", "Allow"), ("Ingress", "Deny"), ("Egress", "Allow")]
    first = row["entries"][0]
    assert (first["port_proto"], first["packets"], first["bytes"], first["labels"]) == ("80/TCP", 7, 700, ["k8s:app=web"])
    assert row["entries"][1]["packets"] is None  # a deny's packets are drop metrics, not stats
    assert pfmt.policy_title(row) == "Endpoint 3 (web, 10.244.0.2, identity 4141): ingress enforced/egress allow-all"


def test_an_endpoint_without_a_map_is_not_enforced() -> None:
    row = pfmt.policy_endpoint("n1", 9, None, None, {})
    assert row["entries"] == [] and not row["enforced"]
    assert pfmt.policy_title(row) == "Endpoint 9 (not in the registry): not enforced (no policy selects it)"


def test_ipcache_rows() -> None:
    entry = SimpleNamespace(prefix=IPv4Network("10.244.1.0/24"), identity=6, tunnel_endpoint=IPv4Address("10.0.0.2"))
    rows = pfmt.ipcache_rows("n1", [entry])
    assert rows == [{"node": "n1", "prefix": "10.244.1.0/24", "identity": 6, "tunnel_endpoint": "10.0.0.2"}]
    assert pfmt.ipcache_table(rows).row_count == 1


def test_policy_rows_join_nodes_and_the_table_names_isolation_without_rules() -> None:
    from ciliumlite.policy import parse_policy

    deny_all = parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                             "metadata": {"name": "deny", "namespace": "x"},
                             "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}).describe()
    assert deny_all["key"] == "NetworkPolicy/x/deny" and deny_all["specs"][0]["rules"] == []
    assert deny_all["specs"][0]["isolates"] == ["ingress"]
    rows = pfmt.policy_rows([("n2", {deny_all["key"]: deny_all}), ("n1", {deny_all["key"]: deny_all})])
    assert len(rows) == 1 and rows[0]["nodes"] == ["n2", "n1"]
    table = pfmt.policy_rules_table(rows)
    assert table.row_count == 1
    cells = [str(c) for col in table.columns for c in col._cells]
    assert "deny (isolated, no rule)" in cells and "n2, n1" in cells
