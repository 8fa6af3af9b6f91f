"""The agent's container-id table on disk, so an agent started after a crash knows its containers.

The datapath's own state (``ciliumlite.node.state``) knows endpoints by address and pod namespace;
only the agent knows which container (``CNI_CONTAINERID``) each one belongs to, and a runtime's
``DEL`` names the container. This file keeps that join: ``<run dir>/agent-endpoints.json``, one
JSON object rewritten atomically (temp file, fsync, rename, fsync of the directory) after every
change, with ``"end"`` written last so a file cut short does not parse or lacks it.

A record is written *before* the datapath makes the endpoint (``ip`` still null) and again once it
exists: an agent killed in between leaves a record that restore matches to the endpoint by its
pod namespace and interface, so no endpoint is left without its container. A file that does not
parse, carries a newer version or names another node is refused with :class:`EndpointStateError`
and never trusted (the agent then starts with an empty table and says so).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

from ciliumlite.bpf.errors import CiliumliteError

#: The layout this code writes and reads; a higher one was written by a newer ciliumlite.
TABLE_VERSION = 1
TABLE_FILE = "agent-endpoints.json"
#: The fields of one record (``ip`` and ``endpoint_id`` are null while the endpoint is being made).
FIELDS = ("container_id", "netns", "ifname", "name", "labels", "netns_inode", "gateway", "mtu", "created",
          "ip", "endpoint_id")


class EndpointStateError(CiliumliteError):
    """The agent's endpoint table on disk cannot be trusted (``reason``: corrupt, version, other-node)."""

    def __init__(self, message: str, *, reason: str, path: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path


def table_path(run_dir: str) -> str:
    """Where an agent whose run dir is ``run_dir`` keeps its table."""
    return os.path.join(run_dir, TABLE_FILE)


def write(path: str, node: str, records: list[dict[str, Any]]) -> None:
    """Replace the table at ``path`` atomically. Raises ``OSError`` (the old file stays then)."""
    d = os.path.dirname(path) or "."
    os.makedirs(d, mode=0o700, exist_ok=True)
    text = json.dumps({"version": TABLE_VERSION, "node": node, "endpoints": records, "end": True}, default=str)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read(path: str, node: str) -> list[dict[str, Any]]:
    """The records at ``path`` (empty when there is no file).

    Raises :class:`EndpointStateError` for a file that does not parse or lacks fields (corrupt,
    truncated), a newer version, or another node's table.
    """
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EndpointStateError(f"the agent's endpoint table {path} is corrupt or truncated ({exc}): not trusted",
                                 reason="corrupt", path=path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("version"), int) or data.get("end") is not True:
        raise EndpointStateError(f"the agent's endpoint table {path} is incomplete: not trusted", reason="corrupt",
                                 path=path)
    if data["version"] > TABLE_VERSION:
        raise EndpointStateError(f"the agent's endpoint table {path} has version {data['version']}, newer than "
                                 f"{TABLE_VERSION}: start the release that wrote it", reason="version", path=path)
    if data.get("node") != node:
        raise EndpointStateError(f"the agent's endpoint table {path} is of node {data.get('node')!r}, not {node!r}",
                                 reason="other-node", path=path)
    records = data.get("endpoints")
    if not isinstance(records, list) or not all(isinstance(r, dict) and set(FIELDS) <= set(r) for r in records):
        raise EndpointStateError(f"the agent's endpoint table {path} has malformed records: not trusted",
                                 reason="corrupt", path=path)
    return records


def remove(path: str) -> None:
    """Remove the table and any temp file beside it; no error if it is gone."""
    d, base = os.path.dirname(path) or ".", os.path.basename(path)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(d):
            if name == base or name.startswith(f".{base}."):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(d, name))


__all__ = ["TABLE_FILE", "TABLE_VERSION", "EndpointStateError", "read", "remove", "table_path", "write"]
