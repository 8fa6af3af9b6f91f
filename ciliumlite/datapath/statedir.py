"""A directory of small JSON files, each replaced atomically: how a node's state is kept on disk.

One file per item (an endpoint, a service, a remote node) under ``<root>/<kind>/``, so a change
rewrites one small file and never the whole set: N changes cost O(N) bytes, not O(N^2) (Cilium
keeps one state directory per endpoint for the same reason, ``pkg/endpoint/restore.go``). Every
write goes to a temp file (a name starting with ``.``, which no reader ever opens), is fsynced,
renamed over the final name and the directory fsynced: a crash leaves the old file or the new
one, and at worst a temp file that is ignored and removed by the next full rewrite.

This module knows files and names only; what the files mean (versions, nodes, checks) is
:mod:`ciliumlite.node.state`'s, what the CLI reads of them :mod:`ciliumlite.datapath.registry`'s.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass

#: The kinds of item, one subdirectory each.
ITEM_KINDS = ("endpoints", "services", "remote_nodes", "prefilter", "policies")
TEMP_PREFIX = "."
SUFFIX = ".json"
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass
class WriteStats:
    """What a writer did to the disk: files replaced, bytes written, files removed."""

    files: int = 0
    bytes: int = 0
    removed: int = 0


def _fsync_dir(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write(directory: str, name: str, text: str, *, mode: int = 0o644, sync: bool = True,
                 stats: WriteStats | None = None) -> None:
    """Replace ``<directory>/<name>`` with ``text``: temp file, (fsync), rename, (fsync of the
    directory). Raises ``OSError`` when the directory cannot be written (the old file stays)."""
    data = text.encode()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{TEMP_PREFIX}{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, os.path.join(directory, name))
        if sync:
            _fsync_dir(directory)  # and the rename itself
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if stats is not None:
        stats.files += 1
        stats.bytes += len(data)


def remove_file(directory: str, name: str, *, sync: bool = True, stats: WriteStats | None = None) -> bool:
    """Remove ``<directory>/<name>`` (and make the removal durable); False if it was not there."""
    try:
        os.unlink(os.path.join(directory, name))
    except FileNotFoundError:
        return False
    if sync:
        _fsync_dir(directory)
    if stats is not None:
        stats.removed += 1
    return True


def item_file(key: str) -> str:
    """The file name of the item ``key``: letters, digits, ``_`` and ``-`` as they are, every other
    byte as ``%XX`` (so a name never starts with the temp prefix, nor holds a ``/``)."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in key) + SUFFIX


def item_key(filename: str) -> str | None:
    """The key an :func:`item_file` name stands for (None for a temp or foreign file)."""
    if filename.startswith(TEMP_PREFIX) or not filename.endswith(SUFFIX):
        return None
    stem = filename[: -len(SUFFIX)]
    out = bytearray()
    i = 0
    try:
        while i < len(stem):
            if stem[i] == "%":
                out.append(int(stem[i + 1:i + 3], 16))
                i += 3
            else:
                out += stem[i].encode()
                i += 1
        key = out.decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return key if item_file(key) == filename else None


def item_dir(root: str, kind: str) -> str:
    """``<root>/<kind>``."""
    return os.path.join(root, kind)


def list_items(root: str, kind: str) -> list[tuple[str, str]]:
    """(key, path) of every item file of ``kind``, sorted by file name; temp and foreign files are
    skipped (never read)."""
    d = item_dir(root, kind)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        key = item_key(name)
        if key is not None:
            out.append((key, os.path.join(d, name)))
    return out


def files(root: str) -> list[str]:
    """Every file of the layout under ``root`` (item files and temp files), for a cleanup; the
    files at the top (the node file) are the caller's to name."""
    out = []
    for kind in ITEM_KINDS:
        d = item_dir(root, kind)
        with contextlib.suppress(FileNotFoundError):
            out += [os.path.join(d, n) for n in sorted(os.listdir(d))
                    if n.endswith(SUFFIX) or n.startswith(TEMP_PREFIX)]
    with contextlib.suppress(FileNotFoundError):
        out += [os.path.join(root, n) for n in sorted(os.listdir(root)) if n.startswith(TEMP_PREFIX)]
    return out


def clear(root: str, *, stats: WriteStats | None = None) -> None:
    """Remove every item and temp file under ``root`` (the top-level files stay)."""
    for path in files(root):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            if stats is not None:
                stats.removed += 1
    for kind in ITEM_KINDS:
        with contextlib.suppress(FileNotFoundError):
            _fsync_dir(item_dir(root, kind))


def remove_tree(root: str) -> None:
    """Remove ``root`` with its item directories, once they hold nothing else; no error if gone."""
    clear(root)
    for kind in ITEM_KINDS:
        with contextlib.suppress(OSError):
            os.rmdir(item_dir(root, kind))


__all__ = ["ITEM_KINDS", "TEMP_PREFIX", "WriteStats", "atomic_write", "clear", "files", "item_dir", "item_file",
           "item_key", "list_items", "remove_file", "remove_tree"]
