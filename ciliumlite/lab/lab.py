"""The lab: a throwaway cluster in network namespaces, torn down completely on exit.

The parts live in modules of their own: the underlay (``fabric``), nodes (``node``), pods and the
outside host (``hosts``), clusters of nodes (``cluster``), BGP (``bgp``) and captures (``capture``).
"""

from __future__ import annotations

import html
import ipaddress
import json
import os
import re
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.cluster import Cluster
from ciliumlite.datapath.config import HostRouting, Routing
from ciliumlite.lab import procs
from ciliumlite.lab.bgp import LabBgp
from ciliumlite.lab.capture import Capture
from ciliumlite.lab.cluster import LabCluster as LabCluster  # re-exported: ciliumlite/demo.py imports it here
from ciliumlite.lab.fabric import Fabric
from ciliumlite.lab.hosts import Host, Pod
from ciliumlite.lab.naming import lab_prefix
from ciliumlite.lab.node import Node

if TYPE_CHECKING:
    from ciliumlite.bgp import Bird

CLUSTER_POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
MANIFEST_DIR = "/run/ciliumlite/labs"


@public_methods_off_event_loop
class Lab:
    """A throwaway cluster in network namespaces with a unique prefix; removed on exit (also on errors).

    Raises :class:`ValidationError` for a name that is not 1-16 of a-z, 0-9 and '-'.
    """

    def __init__(self, name: str = "lab", *, host_routing: HostRouting = "bpf") -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,15}", name):
            raise ValidationError(f"lab name {name!r}: use 1-16 of a-z, 0-9 and '-'")
        self.name = name
        self.prefix = lab_prefix(name)
        self.host_routing = host_routing
        self.nodes: dict[str, Node] = {}
        self.processes = procs.ProcessGroup()
        self.fabric: Fabric | None = None
        self.clusters: list[Cluster] = []
        self.bgp = LabBgp(self)
        self._outside: Host | None = None
        self.workdir = tempfile.mkdtemp(prefix=f"{self.prefix}-")

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

        Raises :class:`ValidationError` for another ``routing``, and as :meth:`add_node`,
        ``Cluster.join`` and :meth:`LabBgp.start`; what was made by then is removed on close.
        """
        if routing not in ("vxlan", "native"):
            raise ValidationError(f"routing must be 'vxlan' or 'native', not {routing!r}")
        use_bgp = routing == "native" if bgp is None else bgp
        cluster = Cluster(store)
        self.clusters.append(cluster)
        for name in nodes:
            node = self.add_node(name, routing=routing, bgp=use_bgp, **config)
            assert node.datapath is not None
            cluster.join(node.info, node.datapath)
        if use_bgp:
            self.bgp.start([self.nodes[n] for n in nodes])
        return LabCluster(self, cluster, [self.nodes[n] for n in nodes])

    def add_node(self, name: str, *, pod_cidr: str | None = None, host_routing: HostRouting | None = None,
                 bgp: bool = False, **config: Any) -> Node:
        """A node namespace with its own Datapath and pod CIDR (``10.244.<index>.0/24`` by default).

        ``config`` goes to ``DatapathConfig``; with a ``routing`` other than ``"none"`` the node is
        put on the underlay. ``bgp=True`` (native routing) makes the datapath run the node's bird,
        peering with the lab's leaf (:meth:`LabBgp.node_config`); :meth:`LabBgp.start` then
        brings the sessions up. Raises :class:`ValidationError` if the node (or its namespace) exists
        already or the config is invalid, and what creating the Datapath raises (a
        :class:`CiliumliteError`, pyroute2's ``NetlinkError``); nothing of the node is left then.
        """
        if name in self.nodes:
            raise ValidationError(f"node {name!r} exists already")
        index = max((n.index for n in self.nodes.values()), default=-1) + 1  # never a live node's
        cidr = pod_cidr or str(list(CLUSTER_POD_CIDR.subnets(new_prefix=24))[index])
        if bgp:
            config.update(self.bgp.node_config(index))
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

    def keep(self) -> str:
        """Leave the lab running after this process exits; returns the manifest path.

        BPF links are pinned, and a manifest lists what to remove later with
        ``ciliumlite lab destroy <prefix>`` (namespaces, pins, cgroups, processes, files).
        Raises ``OSError`` if the manifest cannot be written, and what pinning a link raises.
        """
        for node in self.nodes.values():
            if node.datapath is not None and node.datapath.config.host_routing == "bpf":
                node.datapath.pin_links()
        birds = self.bgp.birds()
        manifest = {
            "prefix": self.prefix,
            "netns": sorted(n for n in nsmod.list_all() if n.startswith(self.prefix + "-")),
            "cgroups": [n.cgroup for n in self.nodes.values() if n.cgroup],
            "pin_dirs": [n.datapath.config.pin_dir for n in self.nodes.values() if n.datapath is not None],
            "nodes": [n.datapath.config.node_name for n in self.nodes.values() if n.datapath is not None],
            "pids": [p.pid for p in self.processes.running()] + [b.pid for b in birds if b.pid],
            "workdir": self.workdir,
        }
        os.makedirs(MANIFEST_DIR, exist_ok=True)
        path = os.path.join(MANIFEST_DIR, f"{self.prefix}.json")
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1)
        return path

    def close(self) -> None:
        """Stop processes, close datapaths, remove every namespace and cgroup of the lab.

        Every node is closed even if one fails; then raises :class:`CiliumliteError` naming the
        nodes that failed (stopping the leaf or removing the fabric raises as it comes).
        """
        self.processes.stop_all()
        errors = []
        for node in reversed(list(self.nodes.values())):
            try:
                node.close()
            except Exception as exc:
                errors.append(f"{node.name}: {exc}")
        self.nodes.clear()
        self.bgp.close()
        if self.fabric is not None:
            self.fabric.close()
            self.fabric = None
        self._outside = None
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise CiliumliteError("lab teardown: " + "; ".join(errors))

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
