"""Lab nodes run by their own agent process: the nodes of ``Lab(store="etcd")``.

An :class:`AgentNode` is a lab :class:`~ciliumlite.lab.node.Node` (namespace, child cgroup, port on
the fabric, pods) whose datapath is not an object of this process: ``ciliumlite agent`` runs it,
started through the lab's process group in the node's namespace and cgroup (:class:`AgentProc`),
with etcd in the fabric as its kvstore. ``node.datapath`` is None; ``node.view``
(:class:`~ciliumlite.lab.view.PinnedView`) reads the datapath from its pins and the agent's API.
Pods are made the way a container runtime makes them: the lab execs the CNI plugin
(``python -m ciliumlite.cni``) with the ``CNI_*`` environment and the network config on stdin, and
the agent makes the endpoint. An :class:`AgentCluster` writes services to etcd and waits until every
agent has programmed them; nodes join and leave by starting and stopping their agents.

What an agent makes is in the lab's record before it starts (its pins, registry entry and bird, as
for an in-process node; the agent process itself through the process group), so a killed lab is
swept like any other. On close an agent gets SIGTERM and removes its datapath itself
(``--remove-datapath-on-exit``); what a SIGKILLed agent left (bird, pins, registry entry) is removed
by the node.
"""

from __future__ import annotations

from ciliumlite.lab.agent_cluster import (
    AgentCluster as AgentCluster,
)
from ciliumlite.lab.agent_cluster import (
    _poll as _poll,
)
from ciliumlite.lab.agent_cluster import (
    _recent_errors as _recent_errors,
)
from ciliumlite.lab.agent_cluster import (
    build_cluster as build_cluster,
)
from ciliumlite.lab.agent_cluster import (
    wait_converged as wait_converged,
)
from ciliumlite.lab.agent_cluster import (
    wait_forgotten as wait_forgotten,
)
from ciliumlite.lab.agent_cluster import (
    wait_services as wait_services,
)
from ciliumlite.lab.agent_node import (
    AgentNode as AgentNode,
)
from ciliumlite.lab.agent_proc import (
    _FLAGGED as _FLAGGED,
)
from ciliumlite.lab.agent_proc import (
    AGENT_ARGV as AGENT_ARGV,
)
from ciliumlite.lab.agent_proc import (
    CNI_ARGV as CNI_ARGV,
)
from ciliumlite.lab.agent_proc import (
    CNI_NETWORK as CNI_NETWORK,
)
from ciliumlite.lab.agent_proc import (
    CNI_RETRY_FOR as CNI_RETRY_FOR,
)
from ciliumlite.lab.agent_proc import (
    CNI_TIMEOUT as CNI_TIMEOUT,
)
from ciliumlite.lab.agent_proc import (
    CONVERGE_TIMEOUT as CONVERGE_TIMEOUT,
)
from ciliumlite.lab.agent_proc import (
    READY_TIMEOUT as READY_TIMEOUT,
)
from ciliumlite.lab.agent_proc import (
    ROUTING_FLAG as ROUTING_FLAG,
)
from ciliumlite.lab.agent_proc import (
    STOP_TIMEOUT as STOP_TIMEOUT,
)
from ciliumlite.lab.agent_proc import (
    TRY_AGAIN_LATER as TRY_AGAIN_LATER,
)
from ciliumlite.lab.agent_proc import (
    AgentProc as AgentProc,
)
from ciliumlite.lab.agent_proc import (
    CniCallError as CniCallError,
)
from ciliumlite.lab.agent_proc import (
    LabTimeout as LabTimeout,
)
from ciliumlite.lab.agent_proc import (
    _bgp_config as _bgp_config,
)
from ciliumlite.lab.agent_proc import (
    agent_argv as agent_argv,
)
from ciliumlite.lab.agent_proc import (
    remove_datapath_leftovers as remove_datapath_leftovers,
)
from ciliumlite.lab.agent_proc import (
    stop_agents as stop_agents,
)

__all__ = ["AGENT_ARGV", "CNI_ARGV", "AgentCluster", "AgentNode", "AgentProc", "CniCallError", "LabTimeout",
           "agent_argv", "remove_datapath_leftovers", "stop_agents", "wait_converged", "wait_forgotten",
           "wait_services"]

