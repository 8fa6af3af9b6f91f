"""The CNI plugin ``ciliumlite-cni`` (:mod:`ciliumlite.cni.plugin`): container runtimes exec it to
connect a container to the node's datapath through the node's agent."""

from ciliumlite.cni.plugin import PLUGIN_TYPE, SUPPORTED_VERSIONS, CniError, main

__all__ = ["PLUGIN_TYPE", "SUPPORTED_VERSIONS", "CniError", "main"]
