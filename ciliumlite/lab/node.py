"""A lab node: a network namespace, a child cgroup and a Datapath, with pods on it.

The node records in the lab's record what it makes (namespace, cgroup, pods' namespaces) and what
its Datapath will make (pin directory, registry entry, bird) before each is made.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ciliumlite.bpf.errors import CiliumliteError, NotSupportedError, ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.cluster import EndpointRecord, NodeInfo
from ciliumlite.datapath import registry
from ciliumlite.datapath.config import DatapathConfig, HostRouting
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.lab import owned
from ciliumlite.lab.fabric import node_ip
from ciliumlite.lab.hosts import Pod
from ciliumlite.lab.view import DatapathView, NodeView
from ciliumlite.node import BgpRoutes, Datapath
from ciliumlite.ownership.identity import ProcessId
from ciliumlite.ownership.record import Entry
from ciliumlite.policy import parse_named_ports, pod_labels

if TYPE_CHECKING:
    from ciliumlite.bgp import Bird
    from ciliumlite.lab.cluster import LabCluster
    from ciliumlite.lab.lab import Lab


@public_methods_off_event_loop
class Node:
    """A node: a network namespace, a child cgroup, and a Datapath.

    Made by :meth:`Lab.add_node`, which says what creating one raises; whatever was made is
    removed again then.
    """

    def __init__(self, lab: Lab, name: str, index: int, pod_cidr: str, host_routing: HostRouting,
                 **config: Any) -> None:
        self.lab = lab
        self.name = name
        self.index = index
        self.netns = owned.make_netns(lab.record, f"{lab.prefix}-{name}")
        self.cgroup: str | None = None
        self.datapath: Datapath | None = None
        self.pods: dict[str, Pod] = {}
        self.ip: str | None = None
        #: The lab cluster this node is a member of (set when it joins one).
        self.cluster: LabCluster | None = None
        self._detached: DatapathConfig | None = None  # a datapath left running by a failed restart
        self._claims: list[tuple[str, Entry]] = []
        # A lab's knob, not the datapath's: False leaves the fabric port without its XDP program.
        xdp_peer = bool(config.pop("xdp_peer", True))
        try:
            if config.get("routing", "none") != "none":
                self.ip = node_ip(index)
                lab.fabric_or_create().connect(self.netns, index, self.ip)
                if config.get("acceleration", "disabled") != "disabled":
                    # NAPI on the fabric port and full checksums on the wire, as a NIC would have.
                    lab.fabric_or_create().prepare_xdp(self.netns, index, peer_program=xdp_peer)
                config.setdefault("node_ip", self.ip)
            # The node's runtime files (bird's) stay in the lab's work directory, removed with it.
            config.setdefault("state_dir", os.path.join(lab.workdir, name))
            # SNAT and masquerade allocate ports from 32768..65535: keep the node's own
            # ephemeral ports out of that range (what a Cilium node operator does too).
            set_sysctl(self.netns, "net.ipv4.ip_local_port_range", "10000 29999")
            self.cgroup = owned.make_cgroup(lab.record, f"{lab.prefix}-{name}")
            cfg = DatapathConfig(node_name=f"{lab.prefix}-{name}", pod_cidr=pod_cidr, host_routing=host_routing,
                                 **config)
            self._start_datapath(cfg)
        except BaseException:
            self.close()
            raise

    def _start_datapath(self, cfg: DatapathConfig) -> None:
        self._claim_datapath(cfg)
        self.datapath = Datapath(cfg, netns=self.netns, cgroup=self.cgroup)
        self._settle_datapath(cfg)

    def _claim_datapath(self, cfg: DatapathConfig) -> None:
        """Record what the datapath will make, before it is made."""
        record = self.lab.record
        # What the Datapath makes is recorded first: its pins, its registry entry and, with BGP,
        # its bird (found by the lab's work directory on its command line until its pid is known).
        pins = owned.claim(record, "pin_dirs", cfg.pin_dir)
        entry = owned.claim(record, "registry", cfg.node_name, dir=str(registry.run_dir()))
        self._claims = [("pin_dirs", pins), ("registry", entry)]
        if cfg.bgp_asn is not None:
            bird = owned.claim(record, "processes", f"bird of {self.name}", netns=self.netns,
                               match=self.lab.workdir + "/")
            self._claims.append(("processes", bird))

    def _settle_datapath(self, cfg: DatapathConfig) -> None:
        """Once the datapath is made: the inode of its pins, its bird's pid."""
        record = self.lab.record
        owned.settle(record, "pin_dirs", self._claims[0][1], cfg.pin_dir if cfg.host_routing == "bpf" else None)
        if self.bird is not None and self.bird.pid is not None:
            ident = ProcessId.of(self.bird.pid)
            if ident is not None:
                record.update(self._claims[-1][1], pid=ident.pid, start=ident.start)

    def _release_datapath(self) -> None:
        """Forget the datapath's things in the record, those that are gone (the rest stays listed)."""
        record = self.lab.record
        node_name = f"{self.lab.prefix}-{self.name}"
        for kind, entry in self._claims:
            if kind == "pin_dirs":
                left = os.path.exists(entry["name"])
            elif kind == "registry":
                left = any(p.exists() for p in (registry.entry_path(node_name),
                                                registry.run_dir() / f"{node_name}{registry.CLOSING_SUFFIX}"))
            else:
                left = "pid" in entry and ProcessId(entry["pid"], entry["start"]).alive()
            if not left:
                record.drop(kind, entry)
        self._claims = []

    def add_pod(self, name: str, ip: str | None = None, *, namespace: str = "default",
                labels: Mapping[str, str] | None = None, named_ports: Mapping[str, str] | None = None,
                **endpoint_kw: Any) -> Pod:
        """A pod namespace on this node, with an address from the node's pod CIDR.

        On a node with ``enable_policy`` in a cluster, the pod is a Kubernetes pod of
        ``namespace`` with ``labels``: its security identity is allocated cluster-wide from its
        security labels (:func:`ciliumlite.policy.pod_labels`, with the namespace's labels set by
        :meth:`LabCluster.set_namespace`), and it is published to the cluster, so every node
        enforces policies on it and learns its identity. ``named_ports`` are its containers'
        named ports, ``{"serve-80-tcp": "80/TCP"}``.

        Raises :class:`ValidationError` if the pod exists already or its namespace does, for a bad
        named port, and what ``Datapath.add_endpoint`` raises (the namespace is removed again then).
        """
        if name in self.pods:
            raise ValidationError(f"pod {name!r} exists already on {self.name}")
        assert self.datapath is not None
        publish = self.cluster is not None and self.datapath.config.enable_policy and self.ip is not None
        security = None
        if publish:
            assert self.cluster is not None
            security = pod_labels(namespace, labels, self.cluster.namespace_labels(namespace))
            endpoint_kw.setdefault("identity", self.cluster.control.store.allocate_identity(security.as_dict()))
        ports = parse_named_ports(named_ports or {}, f"pod {namespace}/{name}")
        ns = owned.make_netns(self.lab.record, f"{self.lab.prefix}-{self.name}-{name}")
        try:
            ep = self.datapath.add_endpoint(ns, name=name, ip=ip, labels=dict(labels or {}), **endpoint_kw)
        except BaseException:
            owned.remove_netns(self.lab.record, ns)
            raise
        pod = Pod(self, name, ns, ep, namespace=namespace, labels=dict(labels or {}))
        self.pods[name] = pod
        if publish and security is not None and self.cluster is not None and self.ip is not None:
            self.cluster.control.put_endpoint(EndpointRecord(str(ep.ip), self.name, self.ip, ep.identity,
                                                             security.as_dict(), ports, f"{namespace}/{name}"))
        return pod

    def relabel_pod(self, name: str, labels: Mapping[str, str] | None = None) -> Pod:
        """Give pod ``name`` new ``labels`` (None: keep them; its namespace's labels changed).

        Its security identity is allocated again from its security labels and written in place:
        its ``cilium_lxc`` row, then the cluster's endpoint record, so every node updates its
        ipcache and policy maps (``Cluster`` syncs them before this returns). No program is
        reloaded; an established connection is judged by the new identity at its next packet.
        Raises ``KeyError`` for a pod this node does not have, :class:`ValidationError` on a node
        without ``enable_policy`` or outside a cluster.
        """
        pod = self.pods[name]
        if self.cluster is None or self.datapath is None or not self.datapath.config.enable_policy or self.ip is None:
            raise ValidationError(f"relabelling pod {name!r} needs a cluster node with enable_policy")
        if labels is not None:
            pod.labels = dict(labels)
        security = pod_labels(pod.namespace, pod.labels, self.cluster.namespace_labels(pod.namespace))
        identity = self.cluster.control.store.allocate_identity(security.as_dict())
        self.datapath.relabel_endpoint(pod.endpoint, identity=identity, labels=dict(pod.labels))
        old = next((r for r in self.cluster.control.endpoints() if r.ip == pod.ip), None)
        self.cluster.control.put_endpoint(EndpointRecord(
            pod.ip, self.name, self.ip, identity, security.as_dict(), old.named_ports if old is not None else {},
            f"{pod.namespace}/{pod.name}"))
        return pod

    def remove_pod(self, name: str) -> None:
        """Remove a pod: withdrawn from the cluster, then its processes, its endpoint and its namespace.

        Raises ``KeyError`` for a pod this node does not have, and what ``Datapath.remove_endpoint`` raises.
        """
        pod = self.pods.pop(name)
        if self.cluster is not None and self.datapath is not None and self.datapath.config.enable_policy:
            self.cluster.control.delete_endpoint(pod.ip)  # every node forgets it first
        self.lab.processes.stop_in({pod.netns})
        assert self.datapath is not None
        self.datapath.remove_endpoint(pod.endpoint)
        owned.remove_netns(self.lab.record, pod.netns)

    # -- restart and hot replacement --------------------------------------------------------------
    def restart_datapath(self) -> float:
        """Restart the node's owner as a new process would: :meth:`Datapath.detach` (everything keeps
        forwarding), then :meth:`Datapath.restore` from the pins and state; the pods' endpoints are
        the restored ones afterwards. Returns the seconds the node had no owner. A cluster the node
        is in still holds the old object: :meth:`LabCluster.restart_node` joins the new one.

        Raises :class:`NotSupportedError` (before touching anything) for legacy host routing (no
        pinned programs to adopt), and what :meth:`Datapath.restore` raises (a BGP node's bird is
        adopted, not restarted: its pid and routes stay); the detached datapath is then left
        running and removed by :meth:`close`.
        """
        dp = self.datapath
        if dp is None:
            raise CiliumliteError(f"{self.name} has no datapath (closed)")
        cfg = dp.config
        if cfg.host_routing != "bpf":
            raise NotSupportedError("a restart needs BPF host routing (legacy host routing keeps no pinned "
                                    "programs to adopt)", feature="restore")
        t0 = time.monotonic()
        dp.detach()
        self.datapath = None
        self._detached = cfg
        restored = Datapath.restore(cfg, netns=self.netns, cgroup=self.cgroup)
        self.datapath, self._detached = restored, None
        for pod in self.pods.values():
            pod.endpoint = restored.endpoint(pod.endpoint.ip)
        return time.monotonic() - t0

    def reload_datapath(self) -> float:
        """Replace every program of the node with a freshly loaded build (:meth:`Datapath.reload`);
        the seconds it took. Raises what that raises (nothing is swapped on a load failure)."""
        if self.datapath is None:
            raise CiliumliteError(f"{self.name} has no datapath (closed)")
        t0 = time.monotonic()
        self.datapath.reload()
        return time.monotonic() - t0

    def run(self, *argv: str, timeout: float = 30.0) -> Any:
        """Run a command in the node namespace (and cgroup): a ``CompletedProcess``; raises as :meth:`Host.run`."""
        return self.lab.processes.run(self.netns, argv, self.cgroup, timeout=timeout)

    @property
    def bird(self) -> Bird | None:
        """The node's BGP speaker (run by its datapath with BGP routing), or None."""
        routing = self.datapath.routing if self.datapath is not None else None
        return routing.bird if isinstance(routing, BgpRoutes) else None

    @property
    def view(self) -> NodeView:
        """The datapath's settings, counters and tables, read-only (the same for a node run by its
        agent). Raises :class:`CiliumliteError` once the node is closed."""
        if self.datapath is None:
            raise CiliumliteError(f"{self.name} has no datapath (closed)")
        return DatapathView(self.datapath)

    @property
    def info(self) -> NodeInfo:
        """This node as the cluster store records it (only for a node on the underlay)."""
        assert self.datapath is not None and self.ip is not None, f"{self.name} has no underlay"
        return NodeInfo(self.name, self.ip, self.datapath.config.pod_cidr)

    def close(self) -> None:
        """Close the datapath (its BGP speaker too), remove pods, the namespace and the cgroup.

        The namespaces and the cgroup are removed even when closing the datapath fails; then raises
        :class:`CiliumliteError` saying what closing the datapath raised. Safe to call twice.
        """
        self.lab.processes.stop_in({self.netns, *(p.netns for p in self.pods.values())})
        failure: Exception | None = None
        if self.datapath is not None:
            try:
                self.datapath.close(remove=True)
            except Exception as exc:
                failure = exc
            self.datapath = None
        if self._detached is not None:  # a restart that could not restore: its pins are ours to remove
            from ciliumlite.lab.agent_proc import remove_datapath_leftovers

            try:
                remove_datapath_leftovers(self._detached.node_name, self._detached.pin_dir)
            except Exception as exc:
                failure = failure or exc
            self._detached = None
        self._release_datapath()
        if self.lab.fabric is not None:
            self.lab.fabric.release_port(self.index)
        for pod in self.pods.values():
            owned.remove_netns(self.lab.record, pod.netns)
        self.pods.clear()
        owned.remove_netns(self.lab.record, self.netns)
        if self.cgroup:
            owned.remove_cgroup(self.lab.record, self.cgroup)
            self.cgroup = None
        if failure is not None:
            raise CiliumliteError(f"closing the datapath of {self.name}: {failure}") from failure

    def __repr__(self) -> str:
        return f"<Node {self.name} pods={list(self.pods)}>"
