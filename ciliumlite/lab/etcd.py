"""The control plane of an etcd lab (``Lab(store="etcd")``): etcd in the fabric namespace, and the
lab's own client of it.

etcd listens on the leaf router's address (10.0.0.254) inside ``<prefix>-fabric``, where every
node's agent reaches it over the underlay; nothing of it is in the root namespace. Its data
directory is in the lab's work directory and its pid is in the lab's ownership record (recorded by
its data directory before it starts, by pid and start time once it runs, again after a restart),
so ``ciliumlite lab destroy`` finds it after a crash; it also dies with the lab's process
(``PR_SET_PDEATHSIG``). :class:`LabStore` is the lab's client: every call is made from inside the
fabric namespace, the only place etcd can be reached from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import CiliumliteError, NotSupportedError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.cluster.etcd import EtcdStore, KvstoreError
from ciliumlite.cluster.etcd_server import EtcdServer
from ciliumlite.cluster.store import EndpointRecord, NodeInfo, Watcher
from ciliumlite.lab.fabric import LEAF_IP
from ciliumlite.ownership.identity import ProcessId

if TYPE_CHECKING:
    from ciliumlite.lab.lab import Lab
    from ciliumlite.ownership.record import Entry

__all__ = ["LabEtcd", "LabStore"]

T = TypeVar("T")
#: How long a lab waits for its etcd to answer at start (a fresh etcd is healthy in about a second).
START_TIMEOUT = 15.0


@public_methods_off_event_loop
class LabStore:
    """A :class:`~ciliumlite.cluster.store.ClusterStore` client of the lab's etcd that owns nothing
    (no lease, no thread), every call made from inside ``netns``.

    Sockets belong to the namespace of the thread that opens them: the client's connections are
    opened inside the fabric namespace, by whichever thread calls. It does not watch (the agents
    do). Raises :class:`KvstoreError` (etcd did not answer) and :class:`ValidationError` as
    :class:`~ciliumlite.cluster.etcd.EtcdStore` does; the constructor raises :class:`KvstoreError`
    when etcd cannot be reached within ``connect_timeout`` seconds.
    """

    def __init__(self, netns: str, endpoints: Sequence[str], *, cluster: str, connect_timeout: float = 0.0,
                 request_timeout: float = 2.0) -> None:
        self.netns = netns
        with nsmod.entered(netns):
            self._store = EtcdStore(list(endpoints), cluster=cluster, connect_timeout=connect_timeout,
                                    request_timeout=request_timeout)

    @property
    def etcd_endpoints(self) -> tuple[str, ...]:
        """etcd's client URLs."""
        return self._store.etcd_endpoints

    def call(self, fn: Callable[[EtcdStore], T]) -> T:
        """``fn(store)`` inside the fabric namespace, for what the methods below do not cover."""
        with nsmod.entered(self.netns):
            return fn(self._store)

    def put_node(self, node: NodeInfo) -> None:
        """``EtcdStore.put_node``."""
        self.call(lambda s: s.put_node(node))

    def delete_node(self, name: str) -> None:
        """``EtcdStore.delete_node``."""
        self.call(lambda s: s.delete_node(name))

    def nodes(self) -> list[NodeInfo]:
        """``EtcdStore.nodes``."""
        return self.call(lambda s: s.nodes())

    def put_service(self, service: Any) -> None:
        """``EtcdStore.put_service``."""
        self.call(lambda s: s.put_service(service))

    def delete_service(self, name: str) -> None:
        """``EtcdStore.delete_service``."""
        self.call(lambda s: s.delete_service(name))

    def services(self) -> list[Any]:
        """``EtcdStore.services``."""
        return self.call(lambda s: s.services())

    def allocate_identity(self, labels: Mapping[str, str]) -> int:
        """``EtcdStore.allocate_identity``."""
        return self.call(lambda s: s.allocate_identity(labels))

    def put_endpoint(self, record: EndpointRecord) -> None:
        """``EtcdStore.put_endpoint``."""
        self.call(lambda s: s.put_endpoint(record))

    def delete_endpoint(self, ip: str) -> None:
        """``EtcdStore.delete_endpoint``."""
        self.call(lambda s: s.delete_endpoint(ip))

    def endpoints(self) -> list[EndpointRecord]:
        """``EtcdStore.endpoints``."""
        return self.call(lambda s: s.endpoints())

    def put_policy(self, policy: Any) -> None:
        """``EtcdStore.put_policy``."""
        self.call(lambda s: s.put_policy(policy))

    def delete_policy(self, key: str) -> None:
        """``EtcdStore.delete_policy``."""
        self.call(lambda s: s.delete_policy(key))

    def policies(self) -> list[Any]:
        """``EtcdStore.policies``."""
        return self.call(lambda s: s.policies())

    def put_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """``EtcdStore.put_namespace``."""
        self.call(lambda s: s.put_namespace(name, labels))

    def namespace_labels(self, name: str) -> dict[str, str]:
        """``EtcdStore.namespace_labels``."""
        return self.call(lambda s: s.namespace_labels(name))

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """Not offered: a watch runs threads whose connections would be opened outside the fabric
        namespace. Raises :class:`NotSupportedError`; the agents watch, each in its node."""
        raise NotSupportedError("the lab's etcd client does not watch (each node's agent does)", feature="watch")

    def close(self) -> None:
        """Close the client's connections."""
        self._store.close(delete_own_keys=False)


@public_methods_off_event_loop
class LabEtcd:
    """etcd for one lab: an :class:`~ciliumlite.cluster.etcd_server.EtcdServer` in the fabric
    namespace on 10.0.0.254 (or the ``endpoints`` given, an etcd the nodes reach over the underlay)
    and :attr:`store`, the lab's client.

    Raises :class:`CiliumliteError` (a :class:`KvstoreError` for an etcd that does not answer)
    with what went wrong and where: etcd not installed, not healthy, or not reachable from the
    fabric within ``timeout`` seconds; what was started is stopped again then.
    """

    def __init__(self, lab: Lab, *, endpoints: Sequence[str] | None = None, timeout: float = START_TIMEOUT) -> None:
        self.lab = lab
        self.netns = lab.fabric_or_create().netns
        self.server: EtcdServer | None = None
        self._entry: Entry | None = None
        self.store: LabStore | None = None
        try:
            if endpoints:
                self.endpoints: tuple[str, ...] = tuple(endpoints)
            else:
                self.server = EtcdServer(host=LEAF_IP, netns=self.netns, start=False, data_root=lab.workdir,
                                         startup_timeout=timeout)
                self.endpoints = (self.server.url,)
                # Recorded by its data directory (on its command line) before it runs.
                self._entry = lab.record.add("processes", "etcd", netns=self.netns, match=self.server.data_dir)
                self.server.start()
                self._note_pid()
            self.store = self._connect(timeout)
        except BaseException:
            self.close()
            raise

    def _connect(self, timeout: float) -> LabStore:
        t0 = time.monotonic()
        try:
            return LabStore(self.netns, self.endpoints, cluster=self.lab.prefix, connect_timeout=timeout)
        except KvstoreError as exc:
            raise KvstoreError("reach etcd from the lab's fabric", f"not reachable within "
                               f"{time.monotonic() - t0:.0f} s ({exc.detail})", endpoints=self.endpoints,
                               hint="the nodes reach etcd over the underlay (10.0.0.0/24, from "
                                    f"{self.netns}): give an etcd URL they can reach, or none to "
                                    "run one in the fabric") from None

    def _note_pid(self) -> None:
        pid = self.pid
        ident = ProcessId.of(pid) if pid is not None else None
        if ident is not None and self._entry is not None:
            self.lab.record.update(self._entry, pid=ident.pid, start=ident.start)

    @property
    def url(self) -> str:
        """The first client URL (``http://10.0.0.254:<port>`` for the lab's own etcd)."""
        return self.endpoints[0]

    @property
    def pid(self) -> int | None:
        """The pid of the lab's own etcd while it runs (None for external endpoints)."""
        return self.server.pid if self.server is not None else None

    def _own(self) -> EtcdServer:
        if self.server is None:
            raise NotSupportedError("this lab uses an etcd it did not start", feature="etcd control")
        return self.server

    def pause(self) -> None:
        """SIGSTOP etcd (a hung etcd: connections stay open, nothing answers). Raises
        :class:`NotSupportedError` for an etcd the lab did not start."""
        self._own().pause()

    def resume(self) -> None:
        """SIGCONT a paused etcd. Raises as :meth:`pause`."""
        self._own().resume()

    def kill(self) -> None:
        """SIGKILL etcd (a crash; data dir and ports kept for :meth:`restart`). Raises as :meth:`pause`."""
        self._own().kill()

    def restart(self) -> None:
        """Start etcd again on the same ports and data, and record its new pid. Raises as
        :meth:`pause`, and :class:`CiliumliteError` if it does not come back healthy."""
        server = self._own()
        server.restart()
        self._note_pid()

    def etcdctl(self, *args: str, timeout: float = 10.0) -> str:
        """``etcdctl`` (API v3) against the lab's etcd, run in the fabric namespace: its stdout.
        Raises :class:`CiliumliteError` if it fails, and as :meth:`pause`."""
        return self._own().etcdctl(*args, timeout=timeout)

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` (``cilium/state/nodes/v1/<prefix>/``). Raises as :meth:`etcdctl`."""
        return [k for k in self.etcdctl("get", "--prefix", "--keys-only", prefix).splitlines() if k]

    def close(self) -> None:
        """Close the client and stop the lab's etcd by pid (its data go with it). Safe to call twice.

        Raises :class:`CiliumliteError` if etcd is still running afterwards (it stays recorded then).
        """
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.server is not None:
            self.server.stop()
            if self.server.running:
                raise CiliumliteError(f"etcd (pid {self.server.pid}) of {self.lab.prefix} did not stop")
            self.server = None
        if self._entry is not None:
            self.lab.record.drop("processes", self._entry)
            self._entry = None
