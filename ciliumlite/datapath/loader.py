"""Find the compiled datapath objects and load them with a node's pin directory and config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ciliumlite.bpf import BpfObject
from ciliumlite.bpf.errors import NotSupportedError

OBJECTS_ENV = "CILIUMLITE_OBJECTS"


def object_path(name: str) -> Path:
    """Path of a compiled datapath object (``bpf_lxc`` -> .../ciliumlite/objects/bpf_lxc.o)."""
    base = Path(os.environ[OBJECTS_ENV]) if OBJECTS_ENV in os.environ else \
        Path(str(resources.files("ciliumlite") / "objects"))
    path = base / f"{name}.o"
    if not path.is_file():
        raise NotSupportedError(f"datapath object {path} is missing", feature=f"{name}.o",
                                hint="build it: `make build` (or pip install . which runs CMake)")
    return path


def load(name: str, pin_root: str, config: Mapping[str, Any] | None = None,
         node_config: Mapping[str, Any] | None = None) -> BpfObject:
    """Open ``name``.o with maps pinned (and shared) under ``pin_root``, set .rodata, load.

    ``config`` must name variables the object has; ``node_config`` is the node-wide set from
    config.h, of which each object receives the variables it declares.
    """
    obj = BpfObject(object_path(name), pin_root=pin_root)
    try:
        obj.rodata.update({k: v for k, v in (node_config or {}).items() if k in obj.rodata})
        obj.rodata.update(config or {})
        return obj.load()
    except BaseException:
        obj.close()
        raise
