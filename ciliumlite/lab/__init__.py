"""The lab: nodes and pods as network namespaces on one machine, each node with its own Datapath."""

from ciliumlite.lab.lab import EchoResult, Lab, Node, PingResult, Pod

__all__ = ["EchoResult", "Lab", "Node", "PingResult", "Pod"]
