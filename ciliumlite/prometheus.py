"""Prometheus metrics in Cilium's names, read from the datapath's maps when they are scraped.

:class:`DatapathCollector` is a ``prometheus_client`` custom collector: every scrape reads the
pinned maps of the datapaths it is given (through :mod:`ciliumlite.inspect`, so any process can
serve them) and answers with Cilium's metric names (``Documentation/observability/metrics.rst``):

| metric | what |
|---|---|
| ``cilium_forward_count_total{direction}`` | packets forwarded (``cilium_metrics``) |
| ``cilium_forward_bytes_total{direction}`` | bytes forwarded |
| ``cilium_drop_count_total{reason,direction}`` | packets dropped, ``reason`` in Cilium's words (``"Policy denied"``) |
| ``cilium_drop_bytes_total{reason,direction}`` | bytes dropped |
| ``hubble_lost_events_total{source}`` | events ``monitor`` never got: ``perf_event_ring_buffer`` (ring full), ``bpf_events_rate_limit`` |
| ``cilium_bpf_map_pressure{map_name}`` | entries / max_entries of every pinned hash/LPM map |
| ``cilium_datapath_conntrack_gc_entries{family,protocol,status}`` | alive entries now; deleted by the last run |
| ``cilium_datapath_conntrack_gc_runs_total{status}`` | GC passes (where this process runs GC) |
| ``cilium_datapath_conntrack_gc_deleted_total{kind}`` | entries GC deleted (``ct``, ``nat``) |
| ``cilium_datapath_conntrack_gc_duration_seconds`` | time of the last GC pass |
| ``cilium_endpoint`` / ``cilium_endpoint_state`` | endpoints of the node (all ``ready``) |
| ``cilium_services`` / ``cilium_policy`` | services programmed / policies enforced |
| ``cilium_kvstore_operations_duration_seconds`` | etcd round trips (:class:`KvstoreMetrics`) |

Every datapath series has a ``node`` label, so one endpoint can serve a whole lab. Packets never
pass through Python: counters are summed over CPUs and source lines at scrape time, nothing polls.

>>> registry = CollectorRegistry()                                        # doctest: +SKIP
>>> registry.register(DatapathCollector(lab="cl3f2a1-demo"))              # doctest: +SKIP
>>> server = serve("127.0.0.1:9962", registry)                            # doctest: +SKIP
>>> server.url, server.close()                                            # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ciliumlite import inspect as ins
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.datapath.gc import GcResult
from ciliumlite.datapath.reasons import Direction, Reason

__all__ = [
    "DEFAULT_PORT", "LOST_EVENT_SOURCES", "CollectorRegistry", "DatapathCollector", "GcStats", "KvstoreMetrics",
    "MetricsServer", "kvstore_action", "kvstore_kind", "parse_addr", "serve",
]

#: Cilium's default ``--prometheus-serve-addr`` port (``:9962``).
DEFAULT_PORT = 9962
#: ``hubble_lost_events_total{source}`` per lost-event reason of ``cilium_metrics``.
LOST_EVENT_SOURCES = {Reason.EVENT_LOST_RING_FULL: "perf_event_ring_buffer",
                      Reason.EVENT_LOST_RATE_LIMIT: "bpf_events_rate_limit"}
_CT_PROTOCOLS = {ins.CT_TCP_MAP: "TCP", ins.CT_ANY_MAP: "non-TCP"}


def _direction(d: int) -> str:
    try:
        return Direction(d).name
    except ValueError:
        return "UNKNOWN"


# -- conntrack GC -----------------------------------------------------------------------------------------


@dataclass
class _GcNode:
    runs: int = 0
    ct_deleted: int = 0
    nat_deleted: int = 0
    last: GcResult | None = None
    last_seconds: float = 0.0


class GcStats:
    """What the conntrack GC passes of this process did, per node (thread-safe).

    The agent records each pass; a lab or a script does the same with :meth:`run` around
    ``Datapath.gc_conntrack``. GC runs in the process that owns the datapath, so a separate
    exporter (``ciliumlite metrics --serve``) has no GC runs to show, only the entries.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, _GcNode] = {}

    def record(self, node: str, result: GcResult, seconds: float) -> None:
        """One GC pass of ``node`` that took ``seconds``."""
        with self._lock:
            n = self._nodes.setdefault(node, _GcNode())
            n.runs += 1
            n.ct_deleted += result.ct_deleted
            n.nat_deleted += result.nat_deleted
            n.last, n.last_seconds = result, seconds

    def run(self, node: str, gc: Callable[[], GcResult]) -> GcResult:
        """Run ``gc`` (e.g. ``dp.gc_conntrack``), record it under ``node`` and return its result."""
        t0 = time.monotonic()
        result = gc()
        self.record(node, result, time.monotonic() - t0)
        return result

    def snapshot(self) -> dict[str, _GcNode]:
        """A copy of the per-node figures."""
        with self._lock:
            return {k: _GcNode(v.runs, v.ct_deleted, v.nat_deleted, v.last, v.last_seconds)
                    for k, v in self._nodes.items()}


# -- kvstore ----------------------------------------------------------------------------------------------

_KINDS = ("ip identity", "identities", "identity", "endpoint", "services", "service", "policy", "namespace",
          "node", "heartbeat", "lease", "revision", "status", "own keys")


def kvstore_kind(operation: str) -> str:
    """The ``kind`` label of an etcd operation described as ``"put service web"`` (``"service"``)."""
    low = operation.lower()
    for k in _KINDS:
        if k in low:
            return {"ip identity": "ipidentity", "identities": "identity", "services": "service",
                    "own keys": "lease", "revision": "status"}.get(k, k)
    return "other"


def kvstore_action(path: str) -> str:
    """The ``action`` label of an etcd gateway path: ``/kv/put`` -> ``Update``, ``/kv/range`` -> ``Get``, …"""
    return {"/kv/put": "Update", "/kv/range": "Get", "/kv/deleterange": "Delete", "/kv/txn": "Txn",
            "/lease/grant": "LeaseGrant", "/lease/keepalive": "LeaseKeepAlive", "/lease/revoke": "LeaseRevoke",
            "/kv/lease/timetolive": "LeaseTimeToLive", "/maintenance/status": "Status"}.get(path, path.strip("/"))


class KvstoreMetrics:
    """``cilium_kvstore_operations_duration_seconds{action,kind,outcome,scope}``: one histogram
    observation per etcd round trip. :meth:`install` hooks it into :mod:`ciliumlite.cluster.etcd`
    (every :class:`EtcdStore` of the process); :meth:`uninstall` unhooks it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram("cilium_kvstore_operations_duration_seconds",
                                   "Duration of kvstore operations (etcd round trips)",
                                   ["action", "kind", "outcome", "scope"], registry=registry)

    def observe(self, path: str, operation: str, ok: bool, seconds: float) -> None:
        """Record one round trip (the signature of ``ciliumlite.cluster.etcd.client.OBSERVERS``)."""
        self.histogram.labels(kvstore_action(path), kvstore_kind(operation), "success" if ok else "fail",
                              "cilium").observe(seconds)

    def install(self) -> KvstoreMetrics:
        """Observe every etcd round trip of this process from now on."""
        from ciliumlite.cluster.etcd import client

        client.OBSERVERS.append(self.observe)
        return self

    def uninstall(self) -> None:
        """Stop observing."""
        from ciliumlite.cluster.etcd import client

        if self.observe in client.OBSERVERS:
            client.OBSERVERS.remove(self.observe)


# -- the collector ----------------------------------------------------------------------------------------


class DatapathCollector(Collector):
    """Cilium's datapath metrics of the registered datapaths, read at every scrape.

    ``lab``/``node`` select datapaths from the registry as the CLI does (:func:`ciliumlite.inspect.select`);
    ``source`` replaces that with any callable returning registry entries. ``gc`` adds the GC passes
    this process made. A datapath that vanishes between scrapes is skipped, not an error.
    """

    def __init__(self, *, lab: str | None = None, node: str | None = None,
                 source: Callable[[], Iterable[ins.RegisteredDatapath]] | None = None,
                 gc: GcStats | None = None) -> None:
        self._lab, self._node = lab, node
        self._source = source
        self.gc = gc
        #: Errors of the last scrape (a datapath that could not be read), for logs and tests.
        self.errors: list[str] = []

    def datapaths(self) -> list[ins.RegisteredDatapath]:
        """The datapaths the next scrape reads."""
        if self._source is not None:
            return list(self._source())
        reg = ins.load()
        try:
            return ins.select(reg.entries, lab=self._lab, node=self._node, directory=reg.directory)
        except ins.InspectError:
            return []  # nothing registered (yet): an empty scrape, not an error page

    def describe(self) -> Iterable[Metric]:
        """Nothing: the series depend on what the maps hold at scrape time (an unchecked collector)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One scrape: every metric family, filled from the maps now."""
        fam: dict[str, Any] = {
            "fc": CounterMetricFamily("cilium_forward_count", "Total forwarded packets, tagged by ingress/egress "
                                      "direction", labels=["direction", "node"]),
            "fb": CounterMetricFamily("cilium_forward_bytes", "Total forwarded bytes, tagged by ingress/egress "
                                      "direction", labels=["direction", "node"]),
            "dc": CounterMetricFamily("cilium_drop_count", "Total dropped packets, tagged by drop reason and "
                                      "ingress/egress direction", labels=["reason", "direction", "node"]),
            "db": CounterMetricFamily("cilium_drop_bytes", "Total dropped bytes, tagged by drop reason and "
                                      "ingress/egress direction", labels=["reason", "direction", "node"]),
            "lost": CounterMetricFamily("hubble_lost_events", "Datapath events not delivered to the monitor "
                                        "(ring buffer full or rate limited)", labels=["source", "node"]),
            "mp": GaugeMetricFamily("cilium_bpf_map_pressure", "Fill percentage of a BPF map, as a ratio "
                                    "(entries / max_entries)", labels=["map_name", "node"]),
            "ct": GaugeMetricFamily("cilium_datapath_conntrack_gc_entries", "Conntrack entries: alive now, "
                                    "deleted by the last GC run", labels=["family", "protocol", "status", "node"]),
            "ep": GaugeMetricFamily("cilium_endpoint", "Number of endpoints managed by this node",
                                    labels=["node"]),
            "eps": GaugeMetricFamily("cilium_endpoint_state", "Count of endpoints in each state",
                                     labels=["endpoint_state", "node"]),
            "svc": GaugeMetricFamily("cilium_services", "Number of services programmed in the datapath",
                                     labels=["node"]),
            "pol": GaugeMetricFamily("cilium_policy", "Number of policies currently loaded", labels=["node"]),
        }
        errors: list[str] = []
        for dp in self.datapaths():
            try:
                self._one(dp, fam)
            except (CiliumliteError, OSError) as exc:
                errors.append(f"{dp.node}: {exc}")
        gc = self.gc.snapshot() if self.gc is not None else {}
        runs = CounterMetricFamily("cilium_datapath_conntrack_gc_runs", "Number of times that the conntrack "
                                   "garbage collector process was run", labels=["status", "node"])
        deleted = CounterMetricFamily("cilium_datapath_conntrack_gc_deleted", "Entries the conntrack garbage "
                                      "collector deleted", labels=["kind", "node"])
        dur = GaugeMetricFamily("cilium_datapath_conntrack_gc_duration_seconds", "Duration of the last "
                                "conntrack garbage collector run", labels=["status", "node"])
        for node, g in sorted(gc.items()):
            runs.add_metric(["completed", node], g.runs)
            deleted.add_metric(["ct", node], g.ct_deleted)
            deleted.add_metric(["nat", node], g.nat_deleted)
            dur.add_metric(["completed", node], g.last_seconds)
            if g.last is not None:
                fam["ct"].add_metric(["ipv4", "all", "deleted", node], g.last.ct_deleted)
        self.errors = errors
        yield from fam.values()
        yield from (runs, deleted, dur)

    def _one(self, dp: ins.RegisteredDatapath, fam: dict[str, Any]) -> None:
        node = dp.node
        if dp.pin_dir:
            fwd: dict[str, list[int]] = {}
            drop: dict[tuple[str, str], list[int]] = {}
            lost: dict[str, int] = {}
            for m in ins.metrics(dp):
                if m.reason in LOST_EVENT_SOURCES:
                    src = LOST_EVENT_SOURCES[Reason(m.reason)]
                    lost[src] = lost.get(src, 0) + m.packets
                    continue
                acc = (drop.setdefault((m.reason_text, _direction(m.direction)), [0, 0]) if m.is_drop
                       else fwd.setdefault(_direction(m.direction), [0, 0]))
                acc[0] += m.packets
                acc[1] += m.bytes
            for d, (pk, by) in sorted(fwd.items()):
                fam["fc"].add_metric([d, node], pk)
                fam["fb"].add_metric([d, node], by)
            for (reason, d), (pk, by) in sorted(drop.items()):
                fam["dc"].add_metric([reason, d, node], pk)
                fam["db"].add_metric([reason, d, node], by)
            for src in LOST_EVENT_SOURCES.values():
                fam["lost"].add_metric([src, node], lost.get(src, 0))
            for p in ins.map_pressure(dp):
                if p.max_entries and ("HASH" in p.type or p.type == "LPM_TRIE"):  # arrays are always full
                    fam["mp"].add_metric([p.name, node], p.ratio)
                if p.name in _CT_PROTOCOLS:
                    fam["ct"].add_metric(["ipv4", _CT_PROTOCOLS[p.name], "alive", node], p.entries)
        fam["ep"].add_metric([node], len(dp.endpoints))
        fam["eps"].add_metric(["ready", node], len(dp.endpoints))
        fam["svc"].add_metric([node], len(dp.services))
        fam["pol"].add_metric([node], len(dp.policies))


# -- serving ----------------------------------------------------------------------------------------------


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (Cilium's ``--prometheus-serve-addr`` form; ``:9962`` binds every address) -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValidationError(f"prometheus serve address {addr!r} is not HOST:PORT (e.g. 127.0.0.1:9962 or :9962)")
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)


class MetricsServer:
    """A running ``/metrics`` HTTP server (``prometheus_client``'s, on its own daemon thread)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ValidationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self.host = host
        self.port = int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and close the socket (waits for the thread)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(addr: str, registry: CollectorRegistry) -> MetricsServer:
    """Serve ``registry`` on ``addr`` (``HOST:PORT``; port 0 picks a free one, see ``.port``)."""
    host, port = parse_addr(addr)
    return MetricsServer(host, port, registry)
