"""Nodes whose datapath is an agent process: the harness of tests/integration/test_agent.py and test_cni.py.

A :class:`~ciliumlite.lab.Lab` gives the fabric (underlay), the unique prefix and the process group;
an :class:`AgentLab` adds node namespaces and cgroups *without* an in-process Datapath, starts
``ciliumlite agent`` in each (through the lab's process group, in the node's namespace and
cgroup), makes pod namespaces, and removes all of it on close: agents stopped by pid, a kept
datapath's pins and registry entry, namespaces, the node's cgroups (also the v1 hierarchies a
container runtime made under the node's name). Everything is in the lab's ownership record
(:mod:`ciliumlite.lab.owned`) before it is made, so a crashed run is swept like any lab's.

Unlike ``Lab(store="etcd")`` (one agent per node, managed by the lab), the tests here start any
number of agents with any flags, also ones that must fail; the agent process, its command line
and the removal of what a kept datapath leaves are the lab's (:mod:`ciliumlite.lab.agents`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ciliumlite.agent.client import AgentClient
from ciliumlite.datapath import registry
from ciliumlite.datapath.config import PIN_BASE, RUN_BASE, DatapathConfig
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.lab import Lab, owned, procs
from ciliumlite.lab.agents import AGENT_ARGV, ROUTING_FLAG, AgentProc, agent_argv, remove_datapath_leftovers
from ciliumlite.lab.fabric import LEAF_IP, node_ip

AGENT = AGENT_ARGV
#: ``--routing-mode`` -> ``DatapathConfig.routing``.
ROUTING = {flag: routing for routing, flag in ROUTING_FLAG.items()}


@dataclass
class AgentNode:
    """A node namespace and cgroup, on the fabric or alone, that an agent drives."""

    name: str  # the full node name (<lab prefix>-<short>)
    short: str
    netns: str
    cgroup: str
    pod_cidr: str
    ip: str | None
    pods: list[str] = field(default_factory=list)

    @property
    def socket(self) -> str:
        """The agent's API socket (the default state dir)."""
        return f"{RUN_BASE}/{self.name}/agent.sock"

    def client(self, timeout: float = 60.0) -> AgentClient:
        """A client of this node's agent."""
        return AgentClient(self.socket, timeout=timeout)


class AgentLab:
    """Agent-driven nodes in ``lab`` (its fabric, prefix and process group); :meth:`close` removes them."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.nodes: dict[str, AgentNode] = {}
        self.agents: list[AgentProc] = []
        self._next = 0

    def add_node(self, short: str, *, underlay: bool = True) -> AgentNode:
        """A node namespace (on the fabric at 10.0.0.(11+i) with ``underlay``) and a child cgroup."""
        index = self._next
        self._next += 1
        name = f"{self.lab.prefix}-{short}"
        record = self.lab.record
        ns = owned.make_netns(record, name)
        node = AgentNode(name, short, ns, "", f"10.244.{index}.0/24", None)
        self.nodes[short] = node
        if underlay:
            node.ip = node_ip(index)
            self.lab.fabric_or_create().connect(ns, index, node.ip)
        set_sysctl(ns, "net.ipv4.ip_local_port_range", "10000 29999")  # SNAT ports stay free (as Lab nodes)
        node.cgroup = owned.make_cgroup(record, name)
        # What the agent's datapath makes: its pins and its registry entry (a kept datapath leaves them).
        owned.claim(record, "pin_dirs", f"{PIN_BASE}/{name}")
        owned.claim(record, "registry", name, dir=str(registry.run_dir()))
        return node

    def start_agent(self, node: AgentNode, *args: str, wait: bool = True, etcd: Any = None,
                    routing: str | None = None) -> AgentProc:
        """``ciliumlite agent`` for ``node`` in its namespace and cgroup (plus ``args``).

        ``etcd`` (an EtcdServer) selects the etcd kvstore with the lab's prefix as cluster name;
        otherwise the memory store. ``wait``: until its API is ready.
        """
        mode = routing or ("tunnel" if node.ip else "none")
        cfg = DatapathConfig(node_name=node.name, pod_cidr=node.pod_cidr, routing=ROUTING[mode],  # type: ignore[arg-type]
                             node_ip=node.ip or "0.0.0.0")
        if etcd is not None:
            argv = agent_argv(cfg, netns=node.netns, cgroup=node.cgroup, kvstore="etcd", endpoints=[etcd.url],
                              cluster=self.lab.prefix, lease_ttl=10)
        else:
            argv = agent_argv(cfg, netns=node.netns, cgroup=node.cgroup)
        argv += list(args)
        agent = AgentProc(self.lab.processes, node.name, node.socket, argv, node.netns, node.cgroup)
        self.agents.append(agent)
        if wait:
            agent.wait_ready()
        return agent

    def forget(self, agent: AgentProc) -> None:
        """Drop an agent that has exited from the lab's group (closing its pipes)."""
        self.lab.processes.stop(agent.proc)
        if agent in self.agents:
            self.agents.remove(agent)

    def add_pod(self, node: AgentNode, short: str) -> str:
        """A pod namespace for ``node`` (removed on close); the agent connects it."""
        ns = owned.make_netns(self.lab.record, f"{node.name}-{short}")
        node.pods.append(ns)
        return ns

    def remove_pod(self, node: AgentNode, ns: str) -> None:
        """Remove a pod namespace (its processes first)."""
        self.lab.processes.stop_in({ns})
        owned.remove_netns(self.lab.record, ns)
        node.pods.remove(ns)

    def run(self, ns: str, *argv: str, cgroup: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a command in a namespace (and cgroup)."""
        return procs.run(ns, argv, cgroup, timeout=timeout)

    def ping(self, ns: str, ip: str, count: int = 2) -> subprocess.CompletedProcess[str]:
        """ICMP from ``ns`` to ``ip``."""
        return self.run(ns, "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", ip)

    def echo_server(self, ns: str, port: int, name: str = "srv") -> None:
        """The lab's TCP/UDP echo server in ``ns`` (a process of the lab's group)."""
        proc = self.lab.processes.popen(ns, procs.python_script(procs.ECHO, name, str(port)))
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "ready", f"echo server in {ns}: {line!r}"

    def tcp_echo(self, ns: str, ip: str, port: int, payload: str = "hello", cgroup: str | None = None) -> str:
        """One TCP request/response from ``ns``: the reply line ('' when it failed)."""
        res = self.run(ns, *procs.python_script(procs.PROBE, "tcp", ip, str(port), payload, "3"), cgroup=cgroup)
        return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr

    @staticmethod
    def remove_kept_datapath(node: AgentNode) -> None:
        """What an agent that kept its datapath left: pins (detaching its links) and the registry entry."""
        remove_datapath_leftovers(node.name, f"{PIN_BASE}/{node.name}")
        # What Datapath.restore would read and the agent's endpoint table: the node's whole run dir.
        shutil.rmtree(f"{RUN_BASE}/{node.name}", ignore_errors=True)

    def close(self) -> None:
        """Stop every agent (SIGTERM, then SIGKILL), remove what they left, the namespaces and cgroups."""
        for node in self.nodes.values():
            self.stop_agents_of(node)  # every agent first: they may talk to each other while stopping
        for short in list(self.nodes):
            self.remove_node(short)

    def stop_agents_of(self, node: AgentNode) -> None:
        """SIGTERM (then SIGKILL) the agents of one node, by pid."""
        for agent in [a for a in self.agents if a.node == node.name]:
            with contextlib.suppress(Exception):
                if agent.proc.poll() is None:
                    os.kill(agent.proc.pid, signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        agent.proc.wait(timeout=30)
            self.forget(agent)

    def remove_pods(self, node: AgentNode) -> None:
        """Remove every pod namespace of ``node``."""
        for ns in list(node.pods):
            self.remove_pod(node, ns)

    def remove_node(self, short: str) -> None:
        """Stop its agents, remove what they kept, its pods, namespace and cgroups."""
        node = self.nodes.pop(short)
        self.stop_agents_of(node)
        record = self.lab.record
        self.remove_kept_datapath(node)
        record.drop_name("pin_dirs", f"{PIN_BASE}/{node.name}")
        record.drop_name("registry", node.name)
        self.remove_pods(node)
        self.lab.processes.stop_in({node.netns})
        owned.remove_netns(record, node.netns)
        if node.cgroup:
            owned.remove_cgroup(record, node.cgroup)
        remove_v1_cgroups(node.name)


def remove_v1_cgroups(name: str) -> None:
    """Remove the empty cgroups named ``name`` (and below) in the v1 hierarchies (runc makes them)."""
    for top in glob.glob(f"/sys/fs/cgroup/*/{name}"):
        for d, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(d)


@contextlib.contextmanager
def agent_lab(name: str) -> Iterator[AgentLab]:
    """A Lab with an AgentLab on it; both removed at the end (also on errors)."""
    with Lab(name) as lab:
        alab = AgentLab(lab)
        try:
            yield alab
        finally:
            alab.close()


__all__ = ["AGENT", "LEAF_IP", "AgentLab", "AgentNode", "AgentProc", "agent_lab", "remove_v1_cgroups"]
