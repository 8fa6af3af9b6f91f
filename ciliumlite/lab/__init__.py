"""The lab: nodes and pods as network namespaces on one machine, each node with its own Datapath."""

from ciliumlite.lab.lab import EchoResult, Host, Lab, LabCluster, Node, PingResult, Pod

__all__ = ["EchoResult", "Host", "Lab", "LabCluster", "Node", "PingResult", "Pod"]
