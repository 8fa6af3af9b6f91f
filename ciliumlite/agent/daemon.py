"""``ciliumlite agent``: the long-running process of one node, owning that node's datapath.

Like cilium-agent it connects to the kvstore (retrying with backoff until
``kvstore-connect-timeout``), builds the node's :class:`~ciliumlite.node.Datapath`, writes its own
node record and follows every other node and every service through
:meth:`Cluster.join <ciliumlite.cluster.Cluster.join>`, allocates endpoint identities through the
store, and serves its local API (:mod:`ciliumlite.agent.api`) on ``<run dir>/agent.sock``.

On SIGTERM or SIGINT it stops the API, leaves the cluster and closes the store (its own keys are
deleted), then either leaves the datapath in place (its BPF links pinned, so pods keep forwarding:
cilium-agent's behaviour) or, with ``remove-datapath-on-exit``, removes it; exit status 0. A
startup failure exits 1 with the reason, a bad config 2.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ciliumlite.agent import endpoint_state
from ciliumlite.agent.api import ApiServer, claim_socket
from ciliumlite.agent.config import AgentConfig
from ciliumlite.agent.endpoints import EndpointRequest, EndpointTable, parse_labels
from ciliumlite.agent.errors import AgentStartError, NotReady
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.cluster.cluster import Cluster
from ciliumlite.cluster.store import ClusterStore, EndpointRecord, InMemoryStore, NodeInfo
from ciliumlite.node import Datapath
from ciliumlite.node.state import state_path
from ciliumlite.service import Service

log = logging.getLogger("ciliumlite.agent")

#: Backoff between kvstore connection attempts at startup: first delay, factor, cap (seconds).
BACKOFF_FIRST, BACKOFF_FACTOR, BACKOFF_MAX = 0.5, 2.0, 5.0
#: How often expired conntrack entries are collected (cilium's ``conntrack-gc-interval`` is dynamic).
CT_GC_INTERVAL = 60.0
_KEPT_ERRORS = 20


def open_store(config: AgentConfig) -> ClusterStore:
    """The kvstore client ``config`` names, connected. Raises what connecting raises."""
    if config.kvstore == "memory":
        return InMemoryStore()
    from ciliumlite.cluster.etcd import EtcdStore

    # connect_timeout=0: one attempt; the agent retries itself (logging each try, stoppable by SIGTERM).
    return EtcdStore(list(config.kvstore_endpoints), cluster=config.cluster_name, owner=config.node,
                     lease_ttl=config.kvstore_lease_ttl, connect_timeout=0.0)


class _Sink:
    """The datapath as the cluster feeds it: a change one node cannot apply is recorded, not raised.

    A store delivers changes on its own thread; an exception there would stop the agent hearing
    anything more, and one bad service must not keep every other change from being programmed.
    """

    def __init__(self, datapath: Datapath, on_error: Callable[[str], None]) -> None:
        self._dp = datapath
        self._on_error = on_error

    def _guard(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:
            self._on_error(f"{what}: {type(exc).__name__}: {exc}")

    def add_remote_node(self, node: NodeInfo) -> None:
        """Route to ``node``'s pods (a failure is recorded)."""
        self._guard(f"remote node {node.name}", lambda: self._dp.add_remote_node(node))

    def remove_remote_node(self, node: NodeInfo) -> None:
        """Forget ``node`` (a failure is recorded)."""
        self._guard(f"removing remote node {node.name}", lambda: self._dp.remove_remote_node(node))

    def upsert_service(self, svc: Any) -> None:
        """Program a service (a failure is recorded; the previous state of it stays)."""
        self._guard(f"service {getattr(svc, 'name', svc)}", lambda: self._dp.upsert_service(svc))

    def sync_policy(self, policies: list[Any], endpoints: list[EndpointRecord]) -> None:
        """Enforce the cluster's policies (a failure is recorded; the previous maps stay)."""
        self._guard("network policy", lambda: self._dp.sync_policy(policies, endpoints))

    def validate_service(self, svc: Any) -> None:
        """Raise ValidationError if ``svc`` cannot be programmed here."""
        self._dp.validate_service(svc)

    def delete_service(self, name: str) -> None:
        """Remove a service (one this node never had is no error)."""
        def delete() -> None:
            with contextlib.suppress(ValidationError):
                self._dp.delete_service(name)
        self._guard(f"deleting service {name}", delete)


class Agent:
    """One node's agent. :meth:`run` is the whole life; :meth:`start`, :meth:`serve` and
    :meth:`shutdown` are its three phases (the API's backend methods are below them).

    ``store_factory`` replaces :func:`open_store` (tests, embedding).
    """

    def __init__(self, config: AgentConfig, *, store_factory: Callable[[AgentConfig], ClusterStore] | None = None) -> None:
        self.config = config
        self._store_factory = store_factory or open_store
        self.store: ClusterStore | None = None
        self.datapath: Datapath | None = None
        self.cluster: Cluster | None = None
        self.table: EndpointTable | None = None
        #: Whether the datapath was adopted from a previous agent (rather than built).
        self.restored = False
        self.reloads = 0
        self.state = "starting"
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._stop = threading.Event()
        self._pid = os.getpid()
        self._claimed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._api: ApiServer | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-api")
        self._errors: collections.deque[tuple[float, str]] = collections.deque(maxlen=_KEPT_ERRORS)
        self._error_count = 0
        #: The conntrack GC passes of this agent (``cilium_datapath_conntrack_gc_*``).
        self.gc_stats: Any = None
        self._metrics: Any = None  # (registry, KvstoreMetrics, MetricsServer | None) with --prometheus-serve-addr

    # -- life -----------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the agent to shut down (signal handlers call it; safe from any thread)."""
        if os.getpid() != self._pid:
            return  # a forked child (pyroute2 forks one per netns socket) got the signal, not the agent
        self._stop.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                loop.call_soon_threadsafe(wake.set)

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, shut down. Returns the exit status (0 clean, 1 failed start).

        Installs handlers for SIGTERM and SIGINT (call it from the main thread).
        """
        def handle(*_: object) -> None:
            self.request_stop()

        previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            try:
                self.start()
            except AgentStartError as exc:
                log.error("agent cannot start: %s", exc)
                status = 1
            else:
                if not self._stop.is_set():
                    asyncio.run(self.serve())
        except AgentStartError as exc:
            log.error("agent cannot start: %s", exc)
            status = 1
        except Exception as exc:
            log.exception("agent failed: %s", exc)
            status = 1
        finally:
            errors = self.shutdown()
            for s, h in previous.items():
                signal.signal(s, h)
        if errors:
            log.error("shutdown left errors: %s", "; ".join(errors))
        return status

    def start(self) -> None:
        """Connect the kvstore, build the datapath, join the cluster (blocking; returns early when a
        stop is requested meanwhile).

        Raises :class:`AgentStartError` with the reason: another agent on the socket, the kvstore
        unreachable within ``kvstore-connect-timeout``, the datapath refused, or the node record
        refused (its IP or pod CIDR clashes with another node).
        """
        cfg = self.config
        claim_socket(cfg.api_socket)  # fail before touching the kernel when another agent runs
        self._claimed = True
        self._prepare_metrics()
        self.store = self._connect_store()
        if self.store is None:
            return
        try:
            self.datapath = self._open_datapath()
        except (CiliumliteError, OSError) as exc:
            raise AgentStartError(f"datapath of {cfg.node} in {cfg.netns or 'this namespace'}: {exc}") from exc
        dp_cfg = self.datapath.config
        self.table = EndpointTable(self.datapath, self.store, node_netns=cfg.netns, gateway=str(dp_cfg.gateway),
                                   mtu=dp_cfg.pod_mtu, node_ip=cfg.node_ip, on_error=self._record_error,
                                   state_path=self._table_path, node_name=cfg.node)
        self._restore_table(self.table, self.datapath)
        self.cluster = Cluster(self.store)
        try:
            self.cluster.join(NodeInfo(cfg.node, cfg.node_ip, cfg.pod_cidr), _Sink(self.datapath, self._record_error))
        except ValidationError as exc:
            raise AgentStartError(f"node record refused: {exc}") from exc
        except Exception as exc:
            raise AgentStartError(f"joining the cluster through the kvstore: {type(exc).__name__}: {exc}") from exc

    def _connect_store(self) -> ClusterStore | None:
        cfg = self.config
        deadline = time.monotonic() + cfg.kvstore_connect_timeout
        delay, attempt = BACKOFF_FIRST, 0
        where = f"{cfg.kvstore} at {', '.join(cfg.kvstore_endpoints)}" if cfg.kvstore_endpoints else cfg.kvstore
        while True:
            attempt += 1
            store: ClusterStore | None = None
            try:
                store = self._store_factory(cfg)
                store.nodes()  # a first read proves the store answers
                if attempt > 1:
                    log.info("kvstore %s: connected after %d attempts", where, attempt)
                return store
            except ValidationError as exc:
                raise AgentStartError(f"kvstore {where}: {exc}") from exc
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
                if store is not None:  # made, but the first read failed: release its lease and threads
                    _close_store(store)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentStartError(f"kvstore {where} not reachable within {cfg.kvstore_connect_timeout:g} s "
                                      f"({attempt} attempts); last error: {last}")
            wait = min(delay, remaining)
            log.warning("kvstore %s not reachable (%s); retrying in %.1f s", where, last, wait)
            if self._stop.wait(wait):
                log.info("stop requested while waiting for the kvstore")
                return None
            delay = min(delay * BACKOFF_FACTOR, BACKOFF_MAX)

    async def serve(self) -> None:
        """Serve the API until a stop is requested, then stop serving (removing the socket).

        Raises :class:`AgentStartError` when the socket cannot be bound.
        """
        # Signals stay with the plain handlers run() installed, not loop.add_signal_handler: that
        # one makes the C handler write the signal number to the loop's self-pipe, and pyroute2's
        # forked helper children inherit that pipe; the SIGTERM pyroute2 sends them to stop them
        # would then read as a SIGTERM to the agent.
        loop = asyncio.get_running_loop()
        self._loop, self._wake = loop, asyncio.Event()
        if self._stop.is_set():
            return
        self._api = ApiServer(self, self.config.api_socket, self._executor)
        await self._api.start()
        self._start_metrics()
        self.state = "ready"
        log.info("agent ready: node %s, API on %s, kvstore %s", self.config.node, self.config.api_socket,
                 self.config.kvstore)
        gc_task = loop.create_task(self._gc_loop())
        try:
            await self._wake.wait()
        finally:
            self.state = "stopping"
            gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gc_task
            await self._api.stop()
            self._api = None
            self._stop_metrics()

    def _prepare_metrics(self) -> None:
        """``--prometheus-serve-addr``: the registry, and kvstore timing from the first round trip on."""
        from ciliumlite.prometheus import CollectorRegistry, DatapathCollector, GcStats, KvstoreMetrics

        self.gc_stats = GcStats()
        if not self.config.prometheus_serve_addr or self._metrics is not None:
            return
        registry = CollectorRegistry()
        registry.register(DatapathCollector(node=self.config.node, gc=self.gc_stats))
        self._metrics = (registry, KvstoreMetrics(registry).install(), None)

    def _start_metrics(self) -> None:
        """Serve Cilium's metrics of this node on HTTP, read from the maps at each scrape."""
        from ciliumlite.prometheus import serve

        if self._metrics is None:
            return
        registry, kv, _ = self._metrics
        try:
            server = serve(self.config.prometheus_serve_addr, registry)
        except CiliumliteError as exc:
            raise AgentStartError(str(exc)) from exc
        self._metrics = (registry, kv, server)
        log.info("prometheus metrics on %s", server.url)

    def _stop_metrics(self) -> None:
        if self._metrics is not None:
            _, kv, server = self._metrics
            self._metrics = None
            kv.uninstall()
            if server is not None:
                server.close()

    async def _gc_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CT_GC_INTERVAL)
            if self.datapath is not None:
                try:
                    dp, stats = self.datapath, self.gc_stats
                    if stats is not None:
                        await loop.run_in_executor(self._executor, stats.run, self.config.node, dp.gc_conntrack)
                    else:
                        await loop.run_in_executor(self._executor, dp.gc_conntrack)
                except Exception as exc:
                    self._record_error(f"conntrack GC: {exc}")

    def shutdown(self) -> list[str]:
        """Leave the cluster, close the store (deleting this node's keys), keep or remove the
        datapath, remove the socket and run dir if empty. Returns what failed (the rest is done)."""
        self.state = "stopping"
        errors: list[str] = []
        cfg = self.config
        self._stop_metrics()
        self._executor.shutdown(wait=True)
        if self.cluster is not None:
            try:
                self.cluster.leave(cfg.node)
            except Exception as exc:
                errors.append(f"leaving the cluster: {exc}")
        if self.store is not None:
            try:
                _close_store(self.store)
            except Exception as exc:
                errors.append(f"closing the kvstore: {exc}")
        if self.datapath is not None:
            errors += self._release_datapath(self.datapath)
            self.datapath = None
        if self._claimed:  # never another agent's socket (a second agent on the node fails to start)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cfg.api_socket)
            with contextlib.suppress(OSError):  # not empty (a kept datapath's files, bird's): stays
                os.rmdir(os.path.dirname(cfg.api_socket))
        self.state = "stopped"
        return errors

    @property
    def _table_path(self) -> str:  # the container-id table beside the datapath's state
        return endpoint_state.table_path(self.config.run_dir)

    def _open_datapath(self) -> Datapath:
        """Adopt the datapath a previous agent kept (its state file exists), else build one.

        A restore never rebuilds over a running datapath whose state it cannot trust: a bad state
        (``StateError``) fails the start, leaving that datapath forwarding as it is.
        """
        cfg = self.config
        dp_cfg = cfg.datapath_config()
        if os.path.exists(state_path(dp_cfg)):
            dp = Datapath.restore(dp_cfg, netns=cfg.netns, cgroup=cfg.cgroup)
            self.restored = True
            log.info("datapath of %s restored (%d endpoints, %d services)", cfg.node, len(dp.endpoints()),
                     len(dp.services()))
            return dp
        return Datapath(dp_cfg, netns=cfg.netns, cgroup=cfg.cgroup)

    def _restore_table(self, table: EndpointTable, dp: Datapath) -> None:
        """The container ids of a restored datapath's endpoints, from the previous agent's table (a
        fresh datapath has none of the old endpoints: a table left from before is dropped; one that
        cannot be trusted leaves this one empty, the error says why)."""
        if not self.restored:
            endpoint_state.remove(self._table_path)
            return
        try:
            notes = table.restore(dp.endpoints())
        except endpoint_state.EndpointStateError as exc:
            self._record_error(f"endpoint table not restored: {exc}")
            return
        for note in notes:
            self._record_error(f"restoring the endpoint table: {note}")
        log.info("endpoint table of %s restored: %d containers", self.config.node, len(table))

    def _release_datapath(self, dp: Datapath) -> list[str]:
        if self.config.remove_datapath_on_exit:
            try:
                dp.close(remove=True)
                log.info("datapath of %s removed", self.config.node)
            except Exception as exc:
                return [f"removing the datapath: {exc}"]
            endpoint_state.remove(self._table_path)  # its endpoints went with the datapath
            return []
        # Left in place, as cilium-agent does: links and maps are pinned (since they were made), so
        # the programs stay attached after this process exits and pods keep forwarding; detach()
        # writes the state the next agent restores from.
        try:
            dp.detach()
        except Exception as exc:
            return [f"keeping the datapath: {exc}"]
        log.info("datapath of %s left in place (pins in %s)", self.config.node, dp.config.pin_dir)
        return []

    def _record_error(self, message: str) -> None:
        self._error_count += 1
        self._errors.append((time.time(), message))
        log.warning("%s", message)

    # -- the API's backend ------------------------------------------------------------------------------
    def _ready_table(self) -> EndpointTable:
        if self.table is None or self.state != "ready":
            raise NotReady(f"the agent is {self.state}")
        return self.table

    def kvstore_status(self) -> dict[str, Any]:
        """The kvstore's state as a dict: backend, connected, endpoints, lease, heartbeat, last error."""
        cfg = self.config
        if self.store is None:
            return {"backend": cfg.kvstore, "connected": False, "endpoints": list(cfg.kvstore_endpoints),
                    "last_error": "not connected yet"}
        status = getattr(self.store, "status", None)
        if status is None:
            return {"backend": cfg.kvstore, "connected": True, "endpoints": [], "last_heartbeat": None,
                    "lease_id": None, "lease_ttl": None, "last_error": None, "watch_revision": None}
        return {"backend": cfg.kvstore, **_plain(status())}

    def healthz(self) -> dict[str, Any]:
        """``ok`` when ready and the kvstore is connected, else ``degraded`` (with the state)."""
        kv = self.kvstore_status()
        ok = self.state == "ready" and bool(kv.get("connected"))
        return {"status": "ok" if ok else "degraded", "state": self.state,
                "kvstore": "Ok" if kv.get("connected") else "Failure"}

    def status(self) -> dict[str, Any]:
        """Everything about this agent: node, state, pid, uptime, datapath, kvstore, cluster, errors."""
        cfg = self.config
        return {
            "node": cfg.node, "state": self.state, "pid": os.getpid(),
            "started_at": datetime.datetime.fromtimestamp(self.started_at, datetime.UTC).isoformat(),
            "uptime_seconds": round(time.monotonic() - self._started_mono, 3),
            "socket": cfg.api_socket, "netns": cfg.netns, "cluster_name": cfg.cluster_name,
            "datapath": self.datapath.status() if self.datapath is not None else None,
            "kvstore": self.kvstore_status(),
            "cluster_nodes": sorted(n.name for n in self.cluster.nodes()) if self.cluster is not None
            and self.kvstore_status().get("connected") else None,
            "endpoints": len(self.table) if self.table is not None else 0,
            "restored": self.restored, "reloads": self.reloads,
            "errors": {"count": self._error_count,
                       "recent": [{"time": datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(),
                                   "message": m} for t, m in self._errors]},
        }

    def config_dict(self) -> dict[str, Any]:
        """The agent's settings (flag names) and its datapath's (``DatapathConfig`` fields)."""
        import dataclasses

        dp = self.datapath.config if self.datapath is not None else self.config.datapath_config()
        return {"agent": self.config.as_dict(), "datapath": _plain(dataclasses.asdict(dp))}

    def endpoint_list(self) -> list[dict[str, Any]]:
        """Every endpoint this agent made."""
        return [e.as_dict() for e in self.table.all()] if self.table is not None else []

    def endpoint_get(self, container_id: str, check: bool = False) -> dict[str, Any]:
        """One container's endpoint; with ``check``, also ``{"check": {"ok", "problems"}}`` from
        :meth:`EndpointTable.verify`. Raises :class:`NotFound`."""
        table = self._ready_table()
        out = table.get(container_id).as_dict()
        if check:
            problems = table.verify(container_id)
            out["check"] = {"ok": not problems, "problems": problems}
        return out

    def endpoint_put(self, container_id: str, body: Any) -> tuple[bool, dict[str, Any]]:
        """Make a container's endpoint (or find the one made before). See :meth:`EndpointTable.add`."""
        created, rec = self._ready_table().add(EndpointRequest.parse(container_id, body))
        return created, rec.as_dict()

    def endpoint_relabel(self, container_id: str, body: Any) -> dict[str, Any]:
        """Relabel a container's endpoint (``{"labels": {...}}``; without ``labels``, the same
        labels re-evaluated against its namespace's). See :meth:`EndpointTable.relabel`."""
        if not isinstance(body, Mapping) or set(body) - {"labels"}:
            raise ValidationError('the body must be {"labels": {...}} (or {} to re-evaluate the namespace\'s labels)')
        labels = parse_labels(body["labels"]) if body.get("labels") is not None else None
        return self._ready_table().relabel(container_id, labels).as_dict()

    def endpoint_delete(self, container_id: str) -> None:
        """Remove a container's endpoint. Raises :class:`NotFound`."""
        self._ready_table().remove(container_id)

    def datapath_reload(self) -> dict[str, Any]:
        """Replace every program of the datapath with a freshly loaded build (``Datapath.reload``),
        reusing the pinned maps; returns ``{"reloads", "seconds", "programs"}``.

        Raises :class:`NotReady` while starting or stopping, and what ``Datapath.reload`` raises
        (:class:`NotSupportedError` with legacy host routing; a load that fails swaps nothing).
        """
        self._ready_table()
        assert self.datapath is not None
        t0 = time.monotonic()
        self.datapath.reload()
        self.reloads += 1
        took = time.monotonic() - t0
        log.info("datapath of %s reloaded in %.2f s (reload %d)", self.config.node, took, self.reloads)
        return {"reloads": self.reloads, "seconds": round(took, 3), "programs": len(self.datapath.attachments())}

    def service_list(self) -> list[dict[str, Any]]:
        """The services programmed on this node (``Service.to_dict`` form)."""
        svcs: list[Service] = self.datapath.services() if self.datapath is not None else []
        return [s.to_dict() for s in svcs]


def _close_store(store: ClusterStore) -> None:
    # EtcdStore has close(delete_own_keys): revoking the lease deletes this node's keys at once.
    close = getattr(store, "close", None)
    if close is not None:
        close(delete_own_keys=True)


def _plain(obj: Any) -> Any:
    # A status dataclass (the store's) or a config as JSON-ready values.
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, datetime.datetime):
        return obj.isoformat()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def setup_logging(debug: bool = False) -> None:
    """Log lines to stderr (``time level message``), like a daemon under a supervisor."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("ciliumlite")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def main(config: AgentConfig) -> int:
    """Run an agent for ``config`` in this process (the ``ciliumlite agent`` command). Returns the exit status."""
    setup_logging(config.debug)
    return Agent(config).run()


__all__ = ["Agent", "main", "open_store", "setup_logging"]
