"""Where live datapaths describe themselves, so another process (the CLI) can find them.

Each Datapath writes ``<run dir>/<node name>.json`` (atomically) when it changes. The entry is
also the datapath's ownership record: it names the owner (pid and start time), the pin directory,
the state directory and the processes it started, and it is first written before the pin
directory is made. On close it is renamed ``<node name>.closing`` (:func:`withdraw`: the CLI no
longer lists it) and removed once everything is gone (:func:`release`), so a crash in the middle
of closing still leaves a record for ``ciliumlite cleanup``. The JSON names the pin directory; live
BPF state is always read from the pinned maps.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "CILIUMLITE_RUN_DIR"
DEFAULT_RUN_DIR = "/run/ciliumlite/datapaths"
#: The suffix of an entry whose datapath is closing (or crashed while closing).
CLOSING_SUFFIX = ".closing"


def run_dir() -> Path:
    """The registry directory (``$CILIUMLITE_RUN_DIR`` or /run/ciliumlite/datapaths)."""
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))


def entry_path(node_name: str) -> Path:
    """The file of a live datapath's entry."""
    return run_dir() / f"{node_name}.json"


def publish(node_name: str, state: dict[str, Any], raw: dict[str, str] | None = None) -> None:
    """Write (replace) the state of one datapath. ``raw`` adds fields already rendered as JSON text
    (large, rarely-changing parts such as the services, cached by the caller).

    Raises ``OSError`` if the registry directory cannot be written.
    """
    d = run_dir()
    d.mkdir(parents=True, exist_ok=True)
    text = json.dumps(state, default=str)
    if raw:
        text = text[:-1] + "".join(f", {json.dumps(k)}: {v}" for k, v in raw.items()) + "}"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{node_name}.")
    try:
        os.fchmod(fd, 0o644)  # readable by the CLI without root (the BPF maps still need it)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, d / f"{node_name}.json")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def withdraw(node_name: str) -> None:
    """Take a datapath's entry out of the listing (it is closing): renamed ``<node>.closing``, it
    stays a record of what may still exist until :func:`release`. No error if there is none."""
    d = run_dir()
    with contextlib.suppress(FileNotFoundError):
        os.replace(d / f"{node_name}.json", d / f"{node_name}{CLOSING_SUFFIX}")


def release(node_name: str) -> None:
    """Remove a datapath's entry for good (live or closing), once nothing it lists is left."""
    d = run_dir()
    for name in (f"{node_name}.json", f"{node_name}{CLOSING_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()


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


def read_records() -> list[tuple[Path, dict[str, Any] | None]]:
    """Every entry, live or closing, as (path, state); state is None for an unreadable file."""
    d = run_dir()
    if not d.is_dir():
        return []
    out: list[tuple[Path, dict[str, Any] | None]] = []
    for path in sorted(d.iterdir()):
        if path.name.startswith(".") or not path.name.endswith((".json", CLOSING_SUFFIX)):
            continue
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            state = None
        out.append((path, state if isinstance(state, dict) else None))
    return out
