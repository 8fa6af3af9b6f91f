"""ciliumlite.prometheus without a kernel: registry entries without pins, GC stats, kvstore timing, the server."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ciliumlite import prometheus as prom
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath.gc import GcResult
from ciliumlite.inspect import RegisteredDatapath

pytestmark = pytest.mark.unit


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def entry(node: str, endpoints: int, services: int, policies: int) -> RegisteredDatapath:
    return RegisteredDatapath(node=node, pin_dir=None, endpoints=[{"id": i} for i in range(endpoints)],
                              services={f"s{i}": {} for i in range(services)},
                              policies={f"p{i}": {} for i in range(policies)})


def test_counts_of_each_node_and_gc_runs() -> None:
    gc = prom.GcStats()
    gc.record("n1", GcResult(ct_deleted=3, ct_kept=5, nat_deleted=1, nat_kept=2), 0.004)
    gc.run("n1", lambda: GcResult(2, 3, 0, 2))
    registry = prom.CollectorRegistry()
    registry.register(prom.DatapathCollector(source=lambda: [entry("n1", 3, 2, 1), entry("n2", 1, 0, 0)], gc=gc))
    s = samples(generate_latest(registry).decode())
    assert s[("cilium_endpoint", frozenset({("node", "n1")}))] == 3
    assert s[("cilium_endpoint_state", frozenset({("endpoint_state", "ready"), ("node", "n2")}))] == 1
    assert s[("cilium_services", frozenset({("node", "n1")}))] == 2
    assert s[("cilium_policy", frozenset({("node", "n1")}))] == 1
    assert s[("cilium_datapath_conntrack_gc_runs_total", frozenset({("status", "completed"), ("node", "n1")}))] == 2
    assert s[("cilium_datapath_conntrack_gc_deleted_total", frozenset({("kind", "ct"), ("node", "n1")}))] == 5
    assert s[("cilium_datapath_conntrack_gc_deleted_total", frozenset({("kind", "nat"), ("node", "n1")}))] == 1
    assert s[("cilium_datapath_conntrack_gc_entries", frozenset({("family", "ipv4"), ("protocol", "all"),
                                                                 ("status", "deleted"), ("node", "n1")}))] == 2


def test_kvstore_operations_are_timed_with_ciliums_labels() -> None:
    registry = prom.CollectorRegistry()
    kv = prom.KvstoreMetrics(registry)
    kv.observe("/kv/put", "put service web", True, 0.002)
    kv.observe("/kv/txn", "put ip identity 10.244.0.2", False, 0.5)
    s = samples(generate_latest(registry).decode())
    ok = frozenset({("action", "Update"), ("kind", "service"), ("outcome", "success"), ("scope", "cilium")})
    bad = frozenset({("action", "Txn"), ("kind", "ipidentity"), ("outcome", "fail"), ("scope", "cilium")})
    assert s[("cilium_kvstore_operations_duration_seconds_count", ok)] == 1
    assert s[("cilium_kvstore_operations_duration_seconds_sum", bad)] == 0.5
    assert prom.kvstore_kind("keep the lease alive") == "lease" and prom.kvstore_kind("frobnicate") == "other"
    assert prom.kvstore_action("/kv/range") == "Get" and prom.kvstore_action("/kv/deleterange") == "Delete"


def test_kvstore_metrics_hook_into_the_etcd_client() -> None:
    from ciliumlite.cluster.etcd import client

    kv = prom.KvstoreMetrics(prom.CollectorRegistry()).install()
    try:
        assert kv.observe in client.OBSERVERS
    finally:
        kv.uninstall()
    assert kv.observe not in client.OBSERVERS


def test_addresses() -> None:
    assert prom.parse_addr(":9962") == ("0.0.0.0", 9962)
    assert prom.parse_addr("127.0.0.1:0") == ("127.0.0.1", 0)
    assert prom.parse_addr("[::1]:9962") == ("::1", 9962)
    for bad in ("9962", "host:", "h:99999", "h:x"):
        with pytest.raises(ValidationError, match="HOST:PORT"):
            prom.parse_addr(bad)


def test_the_server_answers_on_loopback_and_stops() -> None:
    registry = prom.CollectorRegistry()
    registry.register(prom.DatapathCollector(source=lambda: [entry("n1", 2, 0, 0)]))
    with prom.serve("127.0.0.1:0", registry) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(server.url, timeout=10) as res:
            text = res.read().decode()
    assert samples(text)[("cilium_endpoint", frozenset({("node", "n1")}))] == 2
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def test_the_grafana_dashboard_queries_only_metrics_we_serve() -> None:
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).resolve().parents[2] / "docs/grafana/ciliumlite-dashboard.json").read_text())
    gc = prom.GcStats()
    gc.record("n1", GcResult(1, 1, 1, 1), 0.1)
    registry = prom.CollectorRegistry()
    registry.register(prom.DatapathCollector(source=lambda: [entry("n1", 1, 1, 1)], gc=gc))
    prom.KvstoreMetrics(registry).observe("/kv/put", "put node n1", True, 0.01)
    served = {s.name for fam in registry.collect() for s in fam.samples}
    # Families the collector only fills from pinned maps (no pins here): named in its docstring.
    served |= {"cilium_forward_count_total", "cilium_forward_bytes_total", "cilium_drop_count_total",
               "cilium_drop_bytes_total", "hubble_lost_events_total", "cilium_bpf_map_pressure"}
    assert all(f"``{n}" in (prom.__doc__ or "") for n in ("cilium_drop_count_total", "cilium_bpf_map_pressure"))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15 and dash["uid"] == "ciliumlite-datapath"
    used = {m for e in exprs for m in re.findall(r"\b((?:cilium|hubble)_[a-z_]+)", e)}
    assert used - served == set(), used - served
    assert {"cilium_drop_count_total", "cilium_forward_count_total", "cilium_bpf_map_pressure",
            "cilium_kvstore_operations_duration_seconds_bucket"} <= used
