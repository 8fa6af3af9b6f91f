"""The lab: nodes and pods as network namespaces on one machine, each node with its own Datapath.

``Lab`` is the entry point; the other names are what it hands out (nodes, pods, clusters, BGP,
captures) and what their probes return.
"""

from ciliumlite.lab.bgp import LabBgp
from ciliumlite.lab.capture import Capture, Frame
from ciliumlite.lab.cluster import LabCluster
from ciliumlite.lab.fabric import Fabric
from ciliumlite.lab.hosts import EchoResult, Host, PingResult, Pod
from ciliumlite.lab.lab import Lab
from ciliumlite.lab.node import Node

__all__ = ["Capture", "EchoResult", "Fabric", "Frame", "Host", "Lab", "LabBgp", "LabCluster", "Node", "PingResult",
           "Pod"]
