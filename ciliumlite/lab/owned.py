"""Making and removing a lab's namespaces, cgroups and directories through its record.

Each thing is recorded before it is made (by name) and once made (by inode), and dropped from the
record only after it is gone: a crash at any point leaves a record that covers what exists.
"""

from __future__ import annotations

import os
import shutil

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.ownership.record import Entry, Record, name_in_scope


def _ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def make_netns(record: Record, name: str) -> str:
    """Create namespace ``name`` as the record's. Raises as ``netns.create`` (``ValidationError`` if
    it exists already: it is someone else's then, and is not recorded)."""
    entry = record.add("netns", name)
    try:
        nsmod.create(name)
    except ValidationError:
        record.drop("netns", entry)
        raise
    except BaseException:
        nsmod.remove(name)  # it did not exist before (create checks): whatever was made is ours
        record.drop("netns", entry)
        raise
    record.update(entry, ino=_ino(os.path.join(nsmod.NETNS_RUN_DIR, name)))
    return name


def remove_netns(record: Record, name: str) -> None:
    """Remove one of the record's namespaces, then forget it. Raises as ``netns.remove``."""
    nsmod.remove(name)
    record.drop_name("netns", name)


def make_cgroup(record: Record, name: str) -> str:
    """Create child cgroup ``name`` as the record's. Raises as ``fs.make_cgroup``."""
    path = os.path.join(fs.cgroup2_root(), name)
    existed = os.path.isdir(path)
    entry = record.add("cgroups", path)
    try:
        fs.make_cgroup(name)
    except BaseException:
        if not existed:
            record.drop("cgroups", entry)
        raise
    record.update(entry, ino=_ino(path))
    return path


def remove_cgroup(record: Record, path: str) -> None:
    """Remove one of the record's cgroups (its processes are ended first), then forget it.

    Raises ``OSError`` if it cannot be removed (it stays recorded then).
    """
    fs.remove_cgroup(path, kill_pids=fs.cgroup_pids(path))
    record.drop_name("cgroups", path)


def make_workdir(record: Record, path: str) -> str:
    """Create directory ``path`` (mode 0700) as the record's. Raises :class:`ValidationError` if it
    exists already (it is not ours then), ``OSError`` if it cannot be made."""
    entry = record.add("workdirs", path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        record.drop("workdirs", entry)
        raise ValidationError(f"{path} exists already: not this lab's") from None
    except BaseException:
        record.drop("workdirs", entry)
        raise
    record.update(entry, ino=_ino(path))
    return path


def remove_workdir(record: Record, path: str) -> None:
    """Remove one of the record's directories with what is in it, then forget it."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.exists(path):
        record.drop_name("workdirs", path)


def claim(record: Record, kind: str, name: str, **fields: object) -> Entry:
    """Record something another part makes (a datapath's pins, its registry entry, its bird).

    A path the caller chose outside the lab's prefix (``pin_root=...``) is not the lab's to
    remove: it is not recorded, and the entry returned is not in the record.
    """
    if kind != "processes" and not name_in_scope(name, record.prefix):
        return {"name": name}
    return record.add(kind, name, **fields)


def settle(record: Record, kind: str, entry: Entry, path: str | None) -> None:
    """After the part has made it: note the inode of ``path`` or, if it was not made, forget it."""
    ino = _ino(path) if path else None
    if ino is None:
        record.drop(kind, entry)
    else:
        record.update(entry, ino=ino)
