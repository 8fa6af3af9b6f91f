"""A node's control-plane state on disk, so a new process can adopt a running datapath.

The kernel keeps the datapath itself (pinned maps and links); what only the owning process knew
(the config, the endpoints with their link pins, the services with their backends (the Maglev
tables' inputs, with the table size in the config), the remote nodes) is kept in ``<run dir>/state/datapath.json``.
One file, not one per kind: a crash between two writes could otherwise pair endpoints and services
from different moments. It is written atomically (a temp file, fsync, rename, fsync of the
directory) after every change, so a crash leaves the old or the new state, never a mix. On
restore a file that does not parse (half-written by something else, truncated), that carries a
newer version than this code knows, or that names another node is refused with
:class:`StateError`, never trusted (Cilium's per-endpoint state directories, ``_next`` renames:
``pkg/endpoint/restore.go``). The reverse-NAT and backend id allocations are not kept here: they
are read back from the LB maps on restore, which a crash cannot leave out of step. The last field
written is ``"end"``, so a file cut short anywhere after its opening brace still fails to parse or
lacks it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from typing import Any

from ciliumlite.bgp.config import BgpPeer
from ciliumlite.bpf.errors import CiliumliteError
from ciliumlite.datapath.config import DatapathConfig

#: The layout of the state file this code writes and reads. A file with a higher version was
#: written by a newer ciliumlite: refused (a downgrade must not guess at fields it does not know).
STATE_VERSION = 1
STATE_FILE = "datapath.json"


class StateError(CiliumliteError):
    """A node's state or pins cannot be trusted for a restore (nothing was changed).

    ``reason`` is one of ``missing``, ``corrupt``, ``version``, ``other-node``, ``config``,
    ``pins`` or ``owner``; ``path`` the file or pin concerned.
    """

    def __init__(self, message: str, *, reason: str, path: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path


def state_dir(config: DatapathConfig) -> str:
    """The node's state directory: ``<run dir>/state``."""
    return os.path.join(config.run_dir, "state")


def state_path(config: DatapathConfig) -> str:
    """The node's state file."""
    return os.path.join(state_dir(config), STATE_FILE)


def write(config: DatapathConfig, state: dict[str, Any], raw: dict[str, str] | None = None) -> None:
    """Replace the node's state file atomically with ``state`` (plus its version and node name).

    ``raw`` adds fields already rendered as JSON text (the services, cached per service by the
    caller, so N changes do not cost N^2 renderings). Raises ``OSError`` when the directory
    cannot be written (the old file stays then).
    """
    d = state_dir(config)
    os.makedirs(d, mode=0o700, exist_ok=True)
    text = json.dumps({"version": STATE_VERSION, "node": config.node_name, **state}, default=str)
    if raw:
        text = text[:-1] + "".join(f", {json.dumps(k)}: {v}" for k, v in raw.items()) + "}"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{STATE_FILE}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, os.path.join(d, STATE_FILE))
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # and the rename itself
        finally:
            os.close(dfd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read(config: DatapathConfig) -> dict[str, Any]:
    """The node's state, checked. Raises :class:`StateError`: ``missing`` (no file), ``corrupt``
    (does not parse, or is not an object: a truncated or half-written file), ``version`` (written by
    a newer ciliumlite), ``other-node`` (the file names another node)."""
    path = state_path(config)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise StateError(f"no datapath state for {config.node_name} at {path}", reason="missing",
                         path=path) from None
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise StateError(f"the state file {path} is corrupt or truncated ({exc}): not trusted, nothing "
                         "restored", reason="corrupt", path=path) from exc
    if not isinstance(state, dict) or not isinstance(state.get("version"), int):
        raise StateError(f"the state file {path} has no version: not trusted", reason="corrupt", path=path)
    if state["version"] > STATE_VERSION:
        raise StateError(f"the state file {path} has version {state['version']}, newer than {STATE_VERSION} "
                         "that this ciliumlite reads: restore with the release that wrote it",
                         reason="version", path=path)
    if state.get("node") != config.node_name:
        raise StateError(f"the state file {path} is of node {state.get('node')!r}, not {config.node_name!r}",
                         reason="other-node", path=path)
    for key in ("config", "endpoints", "services", "sock_links", "remote_nodes", "pins", "end"):
        if key not in state:
            raise StateError(f"the state file {path} lacks {key!r}: not trusted", reason="corrupt", path=path)
    return state


def remove(config: DatapathConfig) -> None:
    """Remove the node's state directory (its file and any temp file); no error if it is gone."""
    d = state_dir(config)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(d):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, name))
    with contextlib.suppress(OSError):
        os.rmdir(d)
    with contextlib.suppress(OSError):  # the run dir too, if nothing else (bird) lives there
        os.rmdir(config.run_dir)


def config_to_json(config: DatapathConfig) -> dict[str, Any]:
    """The config as JSON values."""
    return dataclasses.asdict(config)


def config_from_json(data: dict[str, Any], path: str = "") -> DatapathConfig:
    """The config a :func:`config_to_json` dict describes. Raises :class:`StateError` (``corrupt``)."""
    try:
        fields = dict(data)
        fields["bgp_peers"] = tuple(BgpPeer(**p) for p in fields.get("bgp_peers", ()))
        return DatapathConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise StateError(f"the state file {path} holds a bad config: {exc}", reason="corrupt", path=path) from exc


__all__ = ["STATE_VERSION", "StateError", "config_from_json", "config_to_json", "read", "remove", "state_dir",
           "state_path", "write"]
