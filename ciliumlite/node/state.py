"""A node's control-plane state on disk, so a new process can adopt a running datapath.

The kernel keeps the datapath itself (pinned maps and links); what only the owning process knew
is kept in the versioned state directory ``<run dir>/state/`` (layout version 2):

- ``datapath.json``, the *node file*: the config, namespace, cgroup, owner, pins (the pin
  directory, the ``cilium_lxc`` map id, the node's own links), the underlay ifindex, the next
  endpoint id and socket LB's links;
- ``endpoints/<id>.json``, ``services/<name>.json``, ``remote_nodes/<name>.json``,
  ``prefilter/<cidr>.json``, ``policies/<kind/ns/name>.json``: one *item file* each (an endpoint with its link pin and kernel link
  id; a service with its backends, the Maglev tables' inputs, the table size being in the config;
  a remote node; a CIDR the XDP prefilter denies).

Each file is replaced atomically (temp file, fsync, rename, fsync of the directory:
:mod:`ciliumlite.datapath.statedir`), and a change rewrites only the files it touches: one item
file, plus the node file when a node-level field changed. Version 1 rewrote one file holding
everything after every change, so N ``upsert_service`` calls cost O(N^2) bytes (the last 1,000 of
10,000 services took 78-105 s). Every call changes one item, so after a crash each item file is
its old or its new self and the set is the state before or after that call, never a mix of two
calls. A temp file (half-written by a crash) is never read. A file with its final name that does
not parse, lacks its ``"end"`` field (written last), carries a newer version, names another node
or sits under the wrong name is refused with :class:`StateError`, never trusted (Cilium's
per-endpoint state directories, ``_next`` renames: ``pkg/endpoint/restore.go``). The reverse-NAT
and backend id allocations are not kept: they are read back from the LB maps on restore.

Migration: a version-1 file (``datapath.json`` holding everything) is read as it is; the first
save of the restored node writes the item files, then replaces the node file, so a crash in the
middle leaves the version-1 file in force. A ciliumlite that only reads version 1 refuses a
version-2 node file (``version``): restore with the release that wrote it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

from ciliumlite.bgp.config import BgpPeer
from ciliumlite.bpf.errors import CiliumliteError
from ciliumlite.datapath import statedir
from ciliumlite.datapath.config import DatapathConfig

#: The layout this code writes and reads. A file with a higher version was written by a newer
#: ciliumlite: refused (a downgrade must not guess at fields it does not know).
STATE_VERSION = 2
STATE_FILE = "datapath.json"
ITEM_KINDS = statedir.ITEM_KINDS
#: What the node file holds besides version, node and end (version 1 also held every item).
NODE_KEYS = ("config", "netns", "cgroup", "owner", "pins", "native_ifindex", "next_endpoint_id", "sock_links")
_V1_KEYS = ("config", "endpoints", "services", "sock_links", "remote_nodes", "pins", "end")
#: One change for :meth:`StateWriter.apply`: (kind, key, the item's new value, or None: it went).
Change = tuple[str, str, "dict[str, Any] | None"]


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
    """The node file."""
    return os.path.join(state_dir(config), STATE_FILE)


def item_path(config: DatapathConfig, kind: str, key: str) -> str:
    """The file of one item (``kind`` one of :data:`ITEM_KINDS`)."""
    return os.path.join(statedir.item_dir(state_dir(config), kind), statedir.item_file(key))


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, default=str)


class StateWriter:
    """Writes one node's state directory, one file per change.

    A writer starts *unsynced*: its first save is a full :meth:`rewrite` (a new node clears
    whatever an earlier node of that name left; a node restored from a version-1 file migrates).
    After a restore from a version-2 directory it is synced (:meth:`adopted`): what is on disk is
    what the node runs. ``stats`` counts what it wrote. ``sync=False`` skips the fsyncs (for
    measuring; a crash may then lose the last changes).
    """

    def __init__(self, config: DatapathConfig, *, sync: bool = True) -> None:
        self.config = config
        self.root = state_dir(config)
        self.sync = sync
        self.stats = statedir.WriteStats()
        self._synced = False
        self._node_text: str | None = None

    @property
    def synced(self) -> bool:
        """Whether the directory holds every item as this node has it (else the next save rewrites)."""
        return self._synced

    def adopted(self, state: dict[str, Any]) -> None:
        """The node was restored from ``state`` (what :func:`read` returned)."""
        self._synced = state.get("version") == STATE_VERSION

    def _ensure_dirs(self) -> None:
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        for kind in ITEM_KINDS:
            os.makedirs(statedir.item_dir(self.root, kind), mode=0o755, exist_ok=True)

    def put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        """Replace one item file."""
        text = _dumps({"version": STATE_VERSION, "node": self.config.node_name, "kind": kind, "key": key,
                       "value": value, "end": True})
        d = statedir.item_dir(self.root, kind)
        try:
            statedir.atomic_write(d, statedir.item_file(key), text, sync=self.sync, stats=self.stats)
        except FileNotFoundError:
            self._ensure_dirs()
            statedir.atomic_write(d, statedir.item_file(key), text, sync=self.sync, stats=self.stats)

    def drop(self, kind: str, key: str) -> None:
        """Remove one item file (no error if there is none)."""
        statedir.remove_file(statedir.item_dir(self.root, kind), statedir.item_file(key), sync=self.sync,
                             stats=self.stats)

    def apply(self, changes: Iterable[Change]) -> None:
        """Write (or remove) the item files of ``changes``."""
        for kind, key, value in changes:
            if value is None:
                self.drop(kind, key)
            else:
                self.put(kind, key, value)

    def write_node(self, node: dict[str, Any]) -> None:
        """Replace the node file with ``node`` (:data:`NODE_KEYS` at least; other node-level fields
        are kept as they are), unless it holds that already."""
        missing = [k for k in NODE_KEYS if k not in node]
        if missing:
            raise ValueError(f"a node file needs {', '.join(missing)}")
        text = _dumps({"version": STATE_VERSION, "node": self.config.node_name, **node, "end": True})
        if text == self._node_text and os.path.exists(os.path.join(self.root, STATE_FILE)):
            return
        self._ensure_dirs()
        statedir.atomic_write(self.root, STATE_FILE, text, sync=self.sync, stats=self.stats)
        self._node_text = text

    def rewrite(self, node: dict[str, Any] | None, items: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Make the directory hold exactly ``items`` and ``node`` (None: no node file, e.g. before
        the pins exist or with legacy host routing). Item files go first and the node file last,
        so a crash in the middle leaves the previous node file (a version-1 one is then still read
        whole; another node's is refused by its pins' ids) or none."""
        self._ensure_dirs()
        if node is None:
            statedir.remove_file(self.root, STATE_FILE, sync=self.sync, stats=self.stats)
            self._node_text = None
        statedir.clear(self.root, stats=self.stats)
        for kind in ITEM_KINDS:
            for key, value in items.get(kind, {}).items():
                self.put(kind, key, value)
        if node is not None:
            self._node_text = None
            self.write_node(node)
        self._synced = True

    def save(self, node: dict[str, Any] | None, changes: Iterable[Change],
             everything: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        """One change's writes: ``changes``' item files, then the node file if it changed. An
        unsynced writer rewrites from ``everything`` instead (required then)."""
        if not self._synced:
            if everything is None:
                raise ValueError("an unsynced state writer needs every item")
            self.rewrite(node, everything)
            return
        self.apply(changes)
        if node is not None:
            self.write_node(node)


def _load(path: str, config: DatapathConfig, what: str) -> dict[str, Any]:
    # One file, checked: parses to an object with a version this code reads, of this node, whole.
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise StateError(f"no datapath state for {config.node_name} at {path}", reason="missing",
                         path=path) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StateError(f"the {what} {path} is corrupt or truncated ({exc}): not trusted, nothing restored",
                         reason="corrupt", path=path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("version"), int) or isinstance(data["version"], bool):
        raise StateError(f"the {what} {path} has no version: not trusted", reason="corrupt", path=path)
    if data["version"] > STATE_VERSION:
        raise StateError(f"the {what} {path} has version {data['version']}, newer than {STATE_VERSION} that "
                         "this ciliumlite reads: restore with the release that wrote it", reason="version", path=path)
    if data.get("node") != config.node_name:
        raise StateError(f"the {what} {path} is of node {data.get('node')!r}, not {config.node_name!r}",
                         reason="other-node", path=path)
    if data.get("end") is not True:
        raise StateError(f"the {what} {path} lacks 'end' (cut short): not trusted", reason="corrupt", path=path)
    return data


def _items(config: DatapathConfig, kind: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for key, path in statedir.list_items(state_dir(config), kind):
        item = _load(path, config, f"{kind} state file")
        if item.get("kind") != kind or item.get("key") != key or not isinstance(item.get("value"), dict):
            raise StateError(f"the {kind} state file {path} holds {item.get('kind')!r} {item.get('key')!r}, not "
                             f"{kind} {key!r}: not trusted", reason="corrupt", path=path)
        out.append((key, item["value"]))
    return out


def read(config: DatapathConfig) -> dict[str, Any]:
    """The node's state, checked, in one dict: the node file's fields plus ``endpoints`` (a list,
    by id), ``services`` (by name) and ``remote_nodes`` (a list). A version-1 file is returned as
    it is (``version`` says which).

    Raises :class:`StateError`: ``missing`` (no node file), ``corrupt`` (a file does not parse, is
    not an object, lacks a field or ``end``, or sits under another item's name), ``version``
    (written by a newer ciliumlite), ``other-node`` (a file names another node)."""
    path = state_path(config)
    state = _load(path, config, "state file")
    keys: tuple[str, ...]
    if state["version"] < STATE_VERSION:
        keys = _V1_KEYS
    else:
        keys = NODE_KEYS
        state["endpoints"] = sorted((v for _, v in _items(config, "endpoints")), key=lambda e: int(e.get("id", 0)))
        state["services"] = dict(_items(config, "services"))
        state["remote_nodes"] = [v for _, v in _items(config, "remote_nodes")]
        state["prefilter"] = [v for _, v in _items(config, "prefilter")]
        state["policies"] = dict(_items(config, "policies"))  # what it enforced, described (policy get)
    for key in keys:
        if key not in state:
            raise StateError(f"the state file {path} lacks {key!r}: not trusted", reason="corrupt", path=path)
    return state


def remove(config: DatapathConfig) -> None:
    """Remove the node's state directory (its files and any temp file); no error if it is gone."""
    d = state_dir(config)
    statedir.remove_tree(d)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(d):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
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


__all__ = ["ITEM_KINDS", "NODE_KEYS", "STATE_VERSION", "Change", "StateError", "StateWriter", "config_from_json",
           "config_to_json", "item_path", "read", "remove", "state_dir", "state_path"]
