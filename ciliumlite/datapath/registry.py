"""Where live datapaths describe themselves, so another process (the CLI) can find them.

Each Datapath writes ``<run dir>/<node name>.json`` (atomically) when its node-level fields change
(not per endpoint or service: the entry names the node's state directory, ``items``, whose item
files, one per endpoint, service and remote node, the CLI reads with :func:`read_items`; a
rewrite of every endpoint and service per change made N changes cost O(N^2)). The entry is
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
from pathlib import Path
from typing import Any

from ciliumlite.datapath import statedir

RUN_DIR_ENV = "CILIUMLITE_RUN_DIR"
DEFAULT_RUN_DIR = "/run/ciliumlite/datapaths"
#: The suffix of an entry whose datapath is closing (or crashed while closing).
CLOSING_SUFFIX = ".closing"
#: The text last written per node by this process: an unchanged entry is not written again.
_written: dict[str, str] = {}


def run_dir() -> Path:
    """The registry directory (``$CILIUMLITE_RUN_DIR`` or /run/ciliumlite/datapaths)."""
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))


def entry_path(node_name: str) -> Path:
    """The file of a live datapath's entry."""
    return run_dir() / f"{node_name}.json"


def publish(node_name: str, state: dict[str, Any], raw: dict[str, str] | None = None) -> bool:
    """Write (replace) the state of one datapath, unless its entry holds exactly that already.
    ``raw`` adds fields already rendered as JSON text. Returns whether it wrote.

    Raises ``OSError`` if the registry directory cannot be written.
    """
    d = run_dir()
    text = json.dumps(state, default=str)
    if raw:
        text = text[:-1] + "".join(f", {json.dumps(k)}: {v}" for k, v in raw.items()) + "}"
    path = d / f"{node_name}.json"
    if _written.get(str(path)) == text and path.exists():
        return False
    d.mkdir(parents=True, exist_ok=True)
    # Readable by the CLI without root (the BPF maps still need it). No fsync: the entry is a
    # listing for the CLI and the record of what to clean up, both rebuilt by the next write.
    statedir.atomic_write(str(d), path.name, text, mode=0o644, sync=False)
    _written[str(path)] = text
    return True


def read_items(state_root: str) -> dict[str, Any]:
    """What a datapath's state directory says for the CLI: ``endpoints`` (their rows, by id),
    ``services`` (by name), ``remote_nodes`` (by name) and ``attachments`` (the endpoints'); files
    that do not parse are skipped (the CLI shows what it can; a restore checks every file)."""
    # Every item kind has a slot (a kind the CLI does not show still must not fail the read);
    # endpoints are a list of rows, so their slot is set after the per-kind dicts.
    out: dict[str, Any] = {**{k: {} for k in statedir.ITEM_KINDS}, "endpoints": [], "attachments": []}
    for kind in statedir.ITEM_KINDS:
        for key, path in statedir.list_items(state_root, kind):
            try:
                with open(path) as f:
                    value = json.load(f).get("value")
            except (OSError, ValueError, AttributeError):
                continue
            if not isinstance(value, dict):
                continue
            if kind == "endpoints":
                if isinstance(value.get("row"), dict):
                    row = dict(value["row"])
                    # The labels (a dict, so not in the flat row): ``bpf policy get`` names identities by them.
                    if isinstance(value.get("labels"), dict) and "labels" not in row:
                        row["labels"] = value["labels"]
                    out["endpoints"].append(row)
                if isinstance(value.get("attachment"), dict):
                    out["attachments"].append(value["attachment"])
            else:
                out[kind][key] = value
    out["endpoints"].sort(key=lambda r: r.get("id", 0) if isinstance(r.get("id"), int) else 0)
    return out


def with_items(state: dict[str, Any]) -> dict[str, Any]:
    """A registry entry with the endpoints, services, remote nodes and every attachment filled in
    from the state directory it names (an entry without ``items`` is returned as it is)."""
    root = state.get("items") if isinstance(state, dict) else None
    if not isinstance(root, str) or not root:
        return state
    items = read_items(root)
    return {**state, "endpoints": items["endpoints"], "services": items["services"],
            "remote_nodes": items["remote_nodes"], "policies": items["policies"],
            "attachments": [*(state.get("attachments") or []), *items["attachments"]]}


def withdraw(node_name: str) -> None:
    """Take a datapath's entry out of the listing (it is closing): renamed ``<node>.closing``, it
    stays a record of what may still exist until :func:`release`. No error if there is none."""
    d = run_dir()
    _written.pop(str(d / f"{node_name}.json"), None)
    with contextlib.suppress(FileNotFoundError):
        os.replace(d / f"{node_name}.json", d / f"{node_name}{CLOSING_SUFFIX}")


def release(node_name: str) -> None:
    """Remove a datapath's entry for good (live or closing), once nothing it lists is left."""
    d = run_dir()
    _written.pop(str(d / f"{node_name}.json"), None)
    for name in (f"{node_name}.json", f"{node_name}{CLOSING_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()


def read_all() -> list[dict[str, Any]]:
    """Every registered datapath whose pin directory still exists (stale entries are skipped), with
    its items (:func:`with_items`)."""
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
        out.append(with_items(state))
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
