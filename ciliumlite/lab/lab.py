"""The lab: a throwaway cluster in network namespaces, torn down completely on exit.

The parts live in modules of their own: the underlay (``fabric``), nodes (``node``), pods and the
outside host (``hosts``), clusters of nodes (``cluster``), BGP (``bgp``) and captures (``capture``).

Every lab keeps an ownership record (:mod:`ciliumlite.ownership.record`) from its first moment:
each namespace, cgroup, pin directory, registry entry, process and work directory is listed before
it is made and dropped once removed, so what a killed lab leaves is found and removed by
``ciliumlite lab destroy`` (:mod:`ciliumlite.lab.destroy`).

``Lab(store="etcd")`` runs the control plane for real: etcd in the fabric namespace
(:mod:`ciliumlite.lab.etcd`), one ``ciliumlite agent`` process per node in its namespace and
cgroup, pods made through the CNI plugin (:mod:`ciliumlite.lab.agents`). Without ``store`` a
lab is what it always was: every node's Datapath in this process, the in-memory store.
"""

from __future__ import annotations

import html
import ipaddress
import os
import re
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ciliumlite.bpf.errors import CiliumliteError, NotSupportedError, ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.cluster import Cluster
from ciliumlite.datapath.config import HostRouting, Routing
from ciliumlite.lab import agents, owned, procs
from ciliumlite.lab.bgp import LabBgp
from ciliumlite.lab.capture import Capture
from ciliumlite.lab.cluster import LabCluster as LabCluster  # re-exported: ciliumlite/demo.py imports it here
from ciliumlite.lab.etcd import LabEtcd
from ciliumlite.lab.fabric import Fabric
from ciliumlite.lab.hosts import Host, Pod
from ciliumlite.lab.naming import lab_prefix
from ciliumlite.lab.node import Node
from ciliumlite.ownership.record import Record, record_dir

if TYPE_CHECKING:
    from ciliumlite.bgp import Bird
    from ciliumlite.manifests import Result

CLUSTER_POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
MANIFEST_DIR = record_dir()  # where lab records live (the records of kept labs too)
STORES = ("memory", "etcd")
#: An etcd lab's agents hold leases this long: a killed agent's node goes from the others after it.
LEASE_TTL = 10


def _claim_record(name: str) -> Record:
    """A new record under a fresh prefix: creating the file claims the prefix machine-wide, so a
    prefix another process drew as well (the same run id) is skipped."""
    for _ in range(1000):
        prefix = lab_prefix(name)
        try:
            return Record(prefix, prefix=prefix, kind="lab")
        except FileExistsError:
            continue
    raise CiliumliteError(f"no free lab prefix for {name!r} in {record_dir()}")


@public_methods_off_event_loop
class Lab:
    """A throwaway cluster in network namespaces with a unique prefix; removed on exit (also on errors).

    Its record (``lab.record``, ``<record dir>/<prefix>.json``) lists what it holds at every moment.

    ``store="etcd"`` makes the fabric at once and etcd in it (``lab.etcd``; or uses
    ``etcd_endpoints``, URLs the nodes reach over the underlay), and every node an
    :class:`~ciliumlite.lab.agents.AgentNode` run by its agent, whose etcd lease lives
    ``lease_ttl`` seconds; ``None`` or ``"memory"``: in-process datapaths, the in-memory store.

    Raises :class:`ValidationError` for a name that is not 1-16 of a-z, 0-9 and '-' or another
    ``store``, ``OSError`` if the record or the work directory (``<tmp>/<prefix>``) cannot be
    written, and (etcd) :class:`CiliumliteError` (``KvstoreError``) when etcd does not start or
    answer within ``etcd_timeout`` seconds: nothing of the lab is left then.
    """

    def __init__(self, name: str = "lab", *, host_routing: HostRouting = "bpf", store: str | None = None,
                 etcd_endpoints: Sequence[str] | None = None, lease_ttl: int = LEASE_TTL,
                 etcd_timeout: float = 15.0) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,15}", name):
            raise ValidationError(f"lab name {name!r}: use 1-16 of a-z, 0-9 and '-'")
        if store is not None and store not in STORES:
            raise ValidationError(f"store must be one of {', '.join(STORES)}, not {store!r}")
        if etcd_endpoints and store != "etcd":
            raise ValidationError("etcd_endpoints needs store='etcd'")
        self.name = name
        self.record = _claim_record(name)
        self.prefix = self.record.name
        self.host_routing = host_routing
        self.nodes: dict[str, Node] = {}
        self.processes = procs.ProcessGroup(self.record)
        self.fabric: Fabric | None = None
        self.clusters: list[Cluster] = []
        self.bgp = LabBgp(self)
        self._outside: Host | None = None
        self.kvstore = store or "memory"
        self.lease_ttl = lease_ttl
        self.etcd: LabEtcd | None = None
        self.lab_clusters: list[LabCluster] = []
        try:
            self.workdir = owned.make_workdir(self.record, os.path.join(tempfile.gettempdir(), self.prefix))
        except BaseException:
            self.record.close()
            raise
        if self.kvstore == "etcd":
            try:
                self.etcd = LabEtcd(self, endpoints=etcd_endpoints, timeout=etcd_timeout)
            except BaseException:
                self.close()  # the fabric, the work dir and the record go: nothing is left
                raise

    @property
    def leaf_bird(self) -> Bird | None:
        """The leaf router's bird (``bgp.leaf``), or None while no node speaks BGP."""
        return self.bgp.leaf

    def fabric_or_create(self) -> Fabric:
        """The underlay fabric, made on first use; raises as :class:`Fabric`."""
        if self.fabric is None:
            self.fabric = Fabric(self)
        return self.fabric

    def cluster(self, nodes: list[str], *, routing: Routing = "vxlan", bgp: bool | None = None,
                store: Any = None, **config: Any) -> LabCluster:
        """Nodes on a shared underlay that know about each other through a Cluster.

        ``routing="native"`` uses BGP through bird (a leaf router at 10.0.0.254, AS 65001; node i
        is 10.0.0.(11+i), AS 65011+i) unless ``bgp=False``, which installs static routes instead.
        In an etcd lab the nodes' agents start at once and this returns when every node routes to
        every other (an :class:`~ciliumlite.lab.agents.AgentCluster`).

        Raises :class:`ValidationError` for another ``routing`` (or a ``store`` in an etcd lab,
        which has one), and as :meth:`add_node`, ``Cluster.join`` and :meth:`LabBgp.start`; what
        was made by then is removed on close.
        """
        if routing not in ("vxlan", "native"):
            raise ValidationError(f"routing must be 'vxlan' or 'native', not {routing!r}")
        use_bgp = routing == "native" if bgp is None else bgp
        if self.etcd is not None:
            if store is not None:
                raise ValidationError("an etcd lab's cluster lives in its etcd: pass no store")
            lab_cluster: LabCluster = agents.build_cluster(self, nodes, routing, use_bgp, config)
            self.lab_clusters.append(lab_cluster)
            return lab_cluster
        cluster = Cluster(store)
        self.clusters.append(cluster)
        for name in nodes:
            node = self.add_node(name, routing=routing, bgp=use_bgp, **config)
            assert node.datapath is not None
            cluster.join(node.info, node.datapath)
        if use_bgp:
            self.bgp.start([self.nodes[n] for n in nodes])
        lab_cluster = LabCluster(self, cluster, [self.nodes[n] for n in nodes])
        self.lab_clusters.append(lab_cluster)
        return lab_cluster

    def add_node(self, name: str, *, pod_cidr: str | None = None, host_routing: HostRouting | None = None,
                 bgp: bool = False, wait: bool = True, **config: Any) -> Node:
        """A node namespace with its own Datapath and pod CIDR (``10.244.<index>.0/24`` by default).

        ``config`` goes to ``DatapathConfig``; with a ``routing`` other than ``"none"`` the node is
        put on the underlay. ``bgp=True`` (native routing) makes the datapath run the node's bird,
        peering with the lab's leaf (:meth:`LabBgp.node_config`); :meth:`LabBgp.start` then
        brings the sessions up. With an ``acceleration`` other than ``"disabled"`` the fabric gives
        the node's port a pass-everything XDP program, which driver-mode XDP_TX on a veth needs
        (:meth:`Fabric.prepare_xdp`); ``xdp_peer=False`` leaves it out. Raises
        :class:`ValidationError` if the node (or its namespace) exists already or the config is
        invalid, and what creating the Datapath raises (a :class:`CiliumliteError`, pyroute2's
        ``NetlinkError``); nothing of the node is left then.

        In an etcd lab the node is an :class:`~ciliumlite.lab.agents.AgentNode` (on the underlay:
        ``routing`` must be vxlan or native; ``lease_ttl=`` overrides the lab's) and ``wait``
        returns once its agent answers (``False``: started only; call ``node.ready()``); raises
        ``AgentStartError`` with the agent's log if it does not come up.
        """
        if name in self.nodes:
            raise ValidationError(f"node {name!r} exists already")
        index = max((n.index for n in self.nodes.values()), default=-1) + 1  # never a live node's
        cidr = pod_cidr or str(list(CLUSTER_POD_CIDR.subnets(new_prefix=24))[index])
        if bgp:
            config.update(self.bgp.node_config(index))
        if self.etcd is not None:
            ttl = int(config.pop("lease_ttl", self.lease_ttl))
            agent_node = agents.AgentNode(self, name, index, cidr, host_routing or self.host_routing, etcd=self.etcd,
                                          lease_ttl=ttl, **config)
            self.nodes[name] = agent_node
            if wait:
                try:
                    agent_node.ready()
                except BaseException:
                    self.remove_node(name)
                    raise
            return agent_node
        node = Node(self, name, index, cidr, host_routing or self.host_routing, **config)
        self.nodes[name] = node
        return node

    def node(self, name: str) -> Node:
        """A node by name. Raises ``KeyError`` for a node this lab does not have."""
        return self.nodes[name]

    def remove_node(self, name: str) -> None:
        """Close and remove one node (its bird, datapath, pods and namespace).

        Raises ``KeyError`` for a node this lab does not have, and as :meth:`Node.close`.
        """
        self.nodes.pop(name).close()

    def capture(self, netns: str, ifname: str, *, seconds: float = 3.0, max_frames: int = 200) -> Capture:
        """Capture IPv4 frames on ``ifname`` in ``netns`` for at most ``seconds`` (use as ``with``).

        Raises as :class:`Capture`.
        """
        return Capture(self.processes, netns, ifname, seconds, max_frames)

    def outside(self, name: str = "world") -> Host:
        """An outside client (203.0.113.10) behind the leaf router, made on first use.

        Raises as :meth:`Fabric.add_outside`.
        """
        if self._outside is None:
            self._outside = self.fabric_or_create().add_outside(name)
        return self._outside

    def pods(self) -> list[Pod]:
        """Every pod of every node."""
        return [p for n in self.nodes.values() for p in n.pods.values()]

    def pod_by_ip(self, ip: str) -> Pod | None:
        """The lab pod that owns ``ip``."""
        return next((p for p in self.pods() if p.ip == ip), None)

    def apply(self, manifests: str | os.PathLike[str], *, timeout: float = 0.0,
              wait: float = agents.CONVERGE_TIMEOUT) -> Result:
        """Apply Kubernetes manifests (a path to a file or directory, or YAML/JSON text) to the
        lab's store with :func:`ciliumlite.manifests.apply`, like ``ciliumlite apply -f``.

        In an etcd lab a failed write to etcd is tried again with backoff for up to ``timeout``
        seconds (0: once), and the call returns once every node's agent has programmed the
        services written (up to ``wait`` seconds). An in-process lab applies to its cluster's
        in-memory store (each node programs them before this returns). Raises
        ``ManifestError`` (nothing written), ``KvstoreError`` (etcd did not answer in time),
        :class:`LabTimeout <ciliumlite.lab.agents.LabTimeout>`, and :class:`ValidationError` for
        an in-process lab with no cluster.
        """
        from ciliumlite.cluster.etcd import KvstoreError
        from ciliumlite.manifests import apply, load, parse

        text = os.fspath(manifests)
        is_path = isinstance(manifests, os.PathLike) or ("\n" not in text and os.path.exists(text))
        docs = load([text]) if is_path else parse(text, source="<lab.apply>")
        if self.etcd is None:
            if not self.clusters:
                raise ValidationError("this lab has no cluster to apply manifests to: make one with lab.cluster()")
            return apply(self.clusters[-1].store, docs)
        store = self.etcd.store
        assert store is not None
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            try:
                result = apply(store, docs)
                break
            except KvstoreError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        names = {n for c in result.changes for n in c.services}
        written = [s for s in store.services() if s.name in names]
        agents.wait_services([n for n in self.nodes.values() if isinstance(n, agents.AgentNode)], written,
                             timeout=wait)
        return result

    def keep(self) -> str:
        """Leave the lab running after this process exits; returns the path of its record.

        BPF links are pinned, and the record (complete all along) is marked kept: ``ciliumlite lab
        list`` shows the lab as kept and ``ciliumlite lab destroy <prefix>`` removes it. Raises
        ``OSError`` if the record cannot be written, and what pinning a link raises;
        :class:`NotSupportedError` for an etcd lab (its etcd dies with this process).
        """
        if self.etcd is not None:
            raise NotSupportedError("an etcd lab cannot be kept: its etcd is a child of this process and ends "
                                    "with it", feature="keep an etcd lab")
        for node in self.nodes.values():
            if node.datapath is not None and node.datapath.config.host_routing == "bpf":
                node.datapath.pin_links()
        self.record.set_kept(True)
        return self.record.path

    def close(self) -> None:
        """Stop processes, close datapaths, remove every namespace, cgroup and file of the lab.

        Every part is closed even if one fails; then raises :class:`CiliumliteError` naming the
        parts that failed, and the record stays, listing what is left, for ``ciliumlite lab
        destroy`` (it is removed when everything went). Safe to call twice.
        """
        errors = []
        # Agents first, by SIGTERM: each removes its own datapath and deletes its keys in etcd,
        # which must still run; then etcd.
        agents.stop_agents(n.agent for n in self.nodes.values() if isinstance(n, agents.AgentNode) and n.agent)
        if self.etcd is not None:
            try:
                self.etcd.close()
            except Exception as exc:
                errors.append(f"etcd: {exc}")
        self.processes.stop_all()
        for node in reversed(list(self.nodes.values())):
            try:
                node.close()
            except Exception as exc:
                errors.append(f"{node.name}: {exc}")
        self.nodes.clear()
        for what, part in (("leaf router", self.bgp), ("fabric", self.fabric)):
            try:
                if part is not None:
                    part.close()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
        self.fabric = None
        self._outside = None
        owned.remove_workdir(self.record, self.workdir)
        self.record.close()
        if errors:
            raise CiliumliteError("lab teardown: " + "; ".join(errors) + f" (what is left: {self.record.path})")

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.prefix} nodes={list(self.nodes)}>"

    def _repr_html_(self) -> str:
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (n.name, n.netns, p.name, p.ip))
                       + "</tr>"
                       for n in self.nodes.values() for p in n.pods.values())
        return (f"<b>Lab {self.prefix}</b><table><tr><th>node</th><th>netns</th><th>pod</th><th>ip</th></tr>"
                f"{rows}</table>")
