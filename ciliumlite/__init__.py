"""ciliumlite: build and drive a Cilium-style eBPF datapath from Python.

The public names live here; the layers below are ``ciliumlite.bpf`` (the generic SDK),
``ciliumlite.datapath`` (records, config, loader) and ``ciliumlite.lab`` (namespaces as a cluster).
"""

from ciliumlite.bpf.errors import (
    BpfError,
    CiliumliteError,
    LayoutError,
    MapFullError,
    NotSupportedError,
    ValidationError,
    VerifierError,
)
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.endpoint import Endpoint
from ciliumlite.node import Datapath, Tunnel
from ciliumlite.service import Backend, Frontend, Service

__version__ = "0.1.0"

__all__ = [
    "Backend", "BpfError", "CiliumliteError", "Datapath", "DatapathConfig", "Endpoint", "Frontend", "LayoutError",
    "MapFullError", "Service", "Tunnel",
    "NotSupportedError", "ValidationError", "VerifierError", "__version__",
]
