"""Where live datapaths describe themselves, so another process (the CLI) can find them.

Each Datapath writes ``<run dir>/<node name>.json`` (atomically) when it changes and removes it on
close. The JSON names the pin directory; live BPF state is always read from the pinned maps.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "CILIUMLITE_RUN_DIR"
DEFAULT_RUN_DIR = "/run/ciliumlite/datapaths"


def run_dir() -> Path:
    """The registry directory (``$CILIUMLITE_RUN_DIR`` or /run/ciliumlite/datapaths)."""
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))


def publish(node_name: str, state: dict[str, Any], raw: dict[str, str] | None = None) -> None:
    """Write (replace) the state of one datapath. ``raw`` adds fields already rendered as JSON text
    (large, rarely-changing parts such as the services, cached by the caller)."""
    d = run_dir()
    d.mkdir(parents=True, exist_ok=True)
    text = json.dumps(state, default=str)
    if raw:
        text = text[:-1] + "".join(f", {json.dumps(k)}: {v}" for k, v in raw.items()) + "}"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{node_name}.")
    os.fchmod(fd, 0o644)  # readable by the CLI without root (the BPF maps still need it)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, d / f"{node_name}.json")


def withdraw(node_name: str) -> None:
    """Remove a datapath's entry."""
    try:
        (run_dir() / f"{node_name}.json").unlink()
    except FileNotFoundError:
        pass


def read_all() -> list[dict[str, Any]]:
    """Every registered datapath whose pin directory still exists (stale entries are skipped)."""
    out: list[dict[str, Any]] = []
    d = run_dir()
    if not d.is_dir():
        return out
    for path in sorted(d.glob("*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if state.get("pin_dir") and not os.path.isdir(state["pin_dir"]):
            continue
        out.append(state)
    return out
