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


def load(name: str, pin_root: str, config: Mapping[str, Any] | None = None) -> BpfObject:
    """Open ``name``.o with maps pinned (and shared) under ``pin_root``, set .rodata, load."""
    return BpfObject.load_file(object_path(name), config=config, pin_root=pin_root)
