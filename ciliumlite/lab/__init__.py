"""The lab: nodes and pods as network namespaces on one machine, each node with its own Datapath.

``Lab`` is the entry point; the other names are what it hands out (nodes, pods, clusters, BGP,
captures) and what their probes return. ``Lab(store="etcd")`` runs each node's datapath in its
own agent process over a real etcd (``AgentNode``, ``AgentCluster``, ``LabEtcd``); ``NodeView``
reads a node's datapath in either kind of lab.
"""

from ciliumlite.lab.agents import AgentCluster, AgentNode
from ciliumlite.lab.bgp import LabBgp
from ciliumlite.lab.capture import Capture, Frame
from ciliumlite.lab.cluster import LabCluster
from ciliumlite.lab.etcd import LabEtcd
from ciliumlite.lab.fabric import Fabric
from ciliumlite.lab.hosts import EchoResult, Host, PingResult, Pod
from ciliumlite.lab.lab import Lab
from ciliumlite.lab.node import Node
from ciliumlite.lab.view import NodeView

__all__ = ["AgentCluster", "AgentNode", "Capture", "EchoResult", "Fabric", "Frame", "Host", "Lab", "LabBgp",
           "LabCluster", "LabEtcd", "Node", "NodeView", "PingResult", "Pod"]
