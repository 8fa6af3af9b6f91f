"""A lab node: a network namespace, a child cgroup and a Datapath, with pods on it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.cluster import NodeInfo
from ciliumlite.datapath.config import DatapathConfig, HostRouting
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.lab import procs
from ciliumlite.lab.fabric import node_ip
from ciliumlite.lab.hosts import Pod
from ciliumlite.node import BgpRoutes, Datapath

if TYPE_CHECKING:
    from ciliumlite.bgp import Bird
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
        self.netns = nsmod.create(f"{lab.prefix}-{name}")
        self.cgroup: str | None = None
        self.datapath: Datapath | None = None
        self.pods: dict[str, Pod] = {}
        self.ip: str | None = None
        try:
            if config.get("routing", "none") != "none":
                self.ip = node_ip(index)
                lab.fabric_or_create().connect(self.netns, index, self.ip)
                config.setdefault("node_ip", self.ip)
            # The node's runtime files (bird's) stay in the lab's work directory, removed with it.
            config.setdefault("state_dir", os.path.join(lab.workdir, name))
            # SNAT and masquerade allocate ports from 32768..65535: keep the node's own
            # ephemeral ports out of that range (what a Cilium node operator does too).
            set_sysctl(self.netns, "net.ipv4.ip_local_port_range", "10000 29999")
            self.cgroup = fs.make_cgroup(f"{lab.prefix}-{name}")
            cfg = DatapathConfig(node_name=f"{lab.prefix}-{name}", pod_cidr=pod_cidr, host_routing=host_routing,
                                 **config)
            self.datapath = Datapath(cfg, netns=self.netns, cgroup=self.cgroup)
        except BaseException:
            self.close()
            raise

    def add_pod(self, name: str, ip: str | None = None, **endpoint_kw: Any) -> Pod:
        """A pod namespace on this node, with an address from the node's pod CIDR.

        Raises :class:`ValidationError` if the pod exists already or its namespace does, and what
        ``Datapath.add_endpoint`` raises (the namespace is removed again then).
        """
        if name in self.pods:
            raise ValidationError(f"pod {name!r} exists already on {self.name}")
        assert self.datapath is not None
        ns = nsmod.create(f"{self.lab.prefix}-{self.name}-{name}")
        try:
            ep = self.datapath.add_endpoint(ns, name=name, ip=ip, **endpoint_kw)
        except BaseException:
            nsmod.remove(ns)
            raise
        pod = Pod(self, name, ns, ep)
        self.pods[name] = pod
        return pod

    def remove_pod(self, name: str) -> None:
        """Remove a pod: its processes, its endpoint, then its namespace.

        Raises ``KeyError`` for a pod this node does not have, and what ``Datapath.remove_endpoint`` raises.
        """
        pod = self.pods.pop(name)
        self.lab.processes.stop_in({pod.netns})
        assert self.datapath is not None
        self.datapath.remove_endpoint(pod.endpoint)
        nsmod.remove(pod.netns)

    def run(self, *argv: str, timeout: float = 30.0) -> Any:
        """Run a command in the node namespace (and cgroup): a ``CompletedProcess``; raises as :meth:`Host.run`."""
        return procs.run(self.netns, argv, self.cgroup, timeout=timeout)

    @property
    def bird(self) -> Bird | None:
        """The node's BGP speaker (run by its datapath with BGP routing), or None."""
        routing = self.datapath.routing if self.datapath is not None else None
        return routing.bird if isinstance(routing, BgpRoutes) else None

    @property
    def info(self) -> NodeInfo:
        """This node as the cluster store records it (only for a node on the underlay)."""
        assert self.datapath is not None and self.ip is not None, f"{self.name} has no underlay"
        return NodeInfo(self.name, self.ip, self.datapath.config.pod_cidr)

    def close(self) -> None:
        """Close the datapath (its BGP speaker too), remove pods, the namespace and the cgroup.

        Raises what closing the datapath raises; safe to call twice.
        """
        self.lab.processes.stop_in({self.netns, *(p.netns for p in self.pods.values())})
        if self.datapath is not None:
            self.datapath.close()
            self.datapath = None
        for pod in self.pods.values():
            nsmod.remove(pod.netns)
        self.pods.clear()
        nsmod.remove(self.netns)
        if self.cgroup:
            fs.remove_cgroup(self.cgroup, kill_pids=[])
            self.cgroup = None

    def __repr__(self) -> str:
        return f"<Node {self.name} pods={list(self.pods)}>"
