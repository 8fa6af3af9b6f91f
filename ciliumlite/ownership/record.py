"""The ownership record: one JSON file per owner listing what it has made, kept true at every step.

An owner (a lab, a test session) writes its record when it starts and rewrites it (write to a
temporary file, then rename) **before** it creates each thing and **after** it removes one, so a
crash at any point leaves a record that covers everything that exists. Things are recorded by
name first; their inode (a namespace's, a cgroup's, a directory's) or their pid and start time
are added once they exist, so a name someone else reused later is not taken for ours.

The file, ``<record dir>/<name>.json`` (``$CILIUMLITE_LAB_DIR`` or ``/run/ciliumlite/labs``)::

    {"format": "ciliumlite-ownership/1", "kind": "lab", "name": "cl3f2a1-demo",
     "prefix": "cl3f2a1-demo", "owner": {"pid": 4242, "start": 987654, "boot": "…"},
     "argv": ["python", "script.py"], "created": 1733230000.1, "updated": 1733230004.2, "kept": false,
     "owns": {"processes": [{"name": "echo 80 in client", "netns": "cl3f2a1-demo-a-client",
                             "argv": ["…"], "pid": 4300, "start": 987700}],
              "netns": [{"name": "cl3f2a1-demo-a", "ino": 4026532571}],
              "cgroups": [{"name": "/sys/fs/cgroup/cl3f2a1-demo-a", "ino": 2310}],
              "pin_dirs": [{"name": "/sys/fs/bpf/ciliumlite/cl3f2a1-demo-a", "ino": 51}],
              "registry": [{"name": "cl3f2a1-demo-a", "dir": "/run/ciliumlite/datapaths"}],
              "workdirs": [{"name": "/tmp/cl3f2a1-demo", "ino": 77}]}}

Every name an owner records starts with its ``prefix`` (a path: its last part does); whoever
removes things checks that again. :func:`read` turns a file into a :class:`RecordInfo` and never
raises for bad content: a truncated or corrupt file comes back with ``error`` set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ciliumlite.ownership.identity import ProcessId

FORMAT = "ciliumlite-ownership/1"
RECORD_DIR_ENV = "CILIUMLITE_LAB_DIR"
DEFAULT_RECORD_DIR = "/run/ciliumlite/labs"
#: What a record lists, in the order things are removed.
KINDS = ("processes", "registry", "pin_dirs", "netns", "cgroups", "workdirs")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
Entry = dict[str, Any]


def record_dir() -> str:
    """Where records live: ``$CILIUMLITE_LAB_DIR`` or ``/run/ciliumlite/labs``."""
    return os.environ.get(RECORD_DIR_ENV) or DEFAULT_RECORD_DIR


def record_path(name: str, directory: str | None = None) -> str:
    """The file of record ``name``. Raises ``ValueError`` for a name that is not a plain file name."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad record name {name!r}")
    return os.path.join(directory or record_dir(), f"{name}.json")


def _write_atomically(path: str, data: dict[str, Any], *, exclusive: bool = False) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename (or, with
    ``exclusive``, hard-link: that fails with ``FileExistsError`` if ``path`` exists) it into place."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class Record:
    """The record of one live owner (this process), rewritten on every change.

    ``prefix`` is the start of every name the owner makes. Creating the record claims ``name``:
    raises ``FileExistsError`` if a record of that name exists already (pick another name), and
    ``OSError`` if the directory cannot be written; every later change raises ``OSError`` if the
    file cannot be rewritten. Methods are thread-safe.
    """

    def __init__(self, name: str, *, prefix: str, kind: str = "lab", directory: str | None = None) -> None:
        self.path = record_path(name, directory)
        self.name = name
        self.prefix = prefix
        self.kind = kind
        self.kept = False
        self.created = time.time()
        self.owner = ProcessId.me()
        self._owns: dict[str, list[Entry]] = {k: [] for k in KINDS}
        self._lock = threading.RLock()
        self._closed = False
        _write_atomically(self.path, self._data(), exclusive=True)

    def _data(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": self.kind, "name": self.name, "prefix": self.prefix,
                "owner": self.owner.as_dict(), "argv": sys.argv[:8], "created": self.created,
                "updated": time.time(), "kept": self.kept, "owns": self._owns}

    def _save(self) -> None:
        if not self._closed:
            _write_atomically(self.path, self._data())

    def add(self, kind: str, name: str, **fields: Any) -> Entry:
        """Record a thing about to be made (call it *before* making it); returns its entry.

        Raises ``ValueError`` for an unknown kind or a name outside the owner's prefix.
        """
        if kind not in self._owns:
            raise ValueError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
        if kind != "processes" and not name_in_scope(name, self.prefix):
            raise ValueError(f"{name!r} is not named after {self.prefix!r}")
        entry: Entry = {"name": name, **fields}
        with self._lock:
            self._owns[kind].append(entry)
            self._save()
        return entry

    def update(self, entry: Entry, **fields: Any) -> None:
        """Add what is known once the thing exists (an inode, a pid and start time)."""
        with self._lock:
            entry.update(fields)
            self._save()

    def drop(self, kind: str, entry: Entry) -> None:
        """Forget a thing (call it *after* removing it); no error if it is not recorded."""
        with self._lock:
            items = self._owns.get(kind, [])
            for i, e in enumerate(items):
                if e is entry:
                    del items[i]
                    self._save()
                    return

    def find(self, kind: str, name: str) -> Entry | None:
        """The entry of ``kind`` named ``name``, or None."""
        with self._lock:
            return next((e for e in self._owns.get(kind, []) if e.get("name") == name), None)

    def drop_name(self, kind: str, name: str) -> None:
        """Forget the thing of ``kind`` named ``name`` (after removing it)."""
        entry = self.find(kind, name)
        if entry is not None:
            self.drop(kind, entry)

    def entries(self, kind: str) -> list[Entry]:
        """A copy of the entries of ``kind``."""
        with self._lock:
            return [dict(e) for e in self._owns.get(kind, [])]

    def set_kept(self, kept: bool = True) -> None:
        """Mark the owner's things as left running on purpose (``Lab.keep``)."""
        with self._lock:
            self.kept = kept
            self._save()

    def close(self) -> None:
        """Remove the record file if nothing is listed any more; otherwise leave it for
        ``ciliumlite lab destroy`` (the owner could not remove everything). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            if any(self._owns.values()):
                self._save()
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            self._closed = True


def name_in_scope(name: str, prefix: str) -> bool:
    """A thing of an owner with ``prefix``: its name (a path: the last part) is the prefix or
    starts with ``prefix-``."""
    base = os.path.basename(name.rstrip("/")) if "/" in name else name
    return bool(prefix) and (base == prefix or base.startswith(prefix + "-"))


@dataclass
class RecordInfo:
    """A record as read from its file. ``error`` is set (and ``owns`` empty) when it is corrupt."""

    path: str
    name: str
    kind: str = "lab"
    prefix: str = ""
    owner: ProcessId | None = None
    argv: list[str] = field(default_factory=list)
    created: float | None = None
    updated: float | None = None
    kept: bool = False
    owns: dict[str, list[Entry]] = field(default_factory=dict)
    error: str = ""
    legacy: bool = False

    @property
    def owner_alive(self) -> bool:
        """The owner still runs (checked by pid and start time); False when unknown."""
        return self.owner is not None and self.owner.alive()

    @property
    def state(self) -> str:
        """``corrupt``, ``live`` (its owner runs), ``kept`` (left on purpose) or ``orphaned`` (owner gone)."""
        if self.error:
            return "corrupt"
        if self.owner_alive:
            return "live"
        return "kept" if self.kept else "orphaned"

    def holds(self) -> dict[str, int]:
        """How many things of each kind it lists (kinds with none left out)."""
        return {k: len(v) for k, v in self.owns.items() if v}

    def as_json(self) -> dict[str, Any]:
        """For ``ciliumlite lab list --json``."""
        return {"name": self.name, "kind": self.kind, "state": self.state, "path": self.path,
                "owner_pid": self.owner.pid if self.owner else None, "owner_alive": self.owner_alive,
                "created": self.created, "age_seconds": (time.time() - self.created) if self.created else None,
                "kept": self.kept, "holds": self.holds(), "owns": self.owns, "error": self.error,
                "legacy": self.legacy}


def _check_entry(kind: str, raw: Any) -> Entry:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ValueError(f"an entry of {kind} is not an object with a name: {raw!r:.80}")
    for key in ("ino", "pid", "start"):
        if raw.get(key) is not None and (not isinstance(raw[key], int) or isinstance(raw[key], bool)):
            raise ValueError(f"{kind} {raw['name']!r}: {key} is not a number")
    if kind == "processes":
        if raw.get("netns") is not None and not isinstance(raw["netns"], str):
            raise ValueError(f"process {raw['name']!r}: netns is not a name")
        argv = raw.get("argv")
        if argv is not None and not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            raise ValueError(f"process {raw['name']!r}: argv is not a list of strings")
        if raw.get("match") is not None and not isinstance(raw["match"], str):
            raise ValueError(f"process {raw['name']!r}: match is not a string")
    return raw


def _from_legacy(path: str, name: str, raw: dict[str, Any]) -> RecordInfo:
    """A manifest ``Lab.keep()`` wrote before records existed: a kept lab with no owner identity.
    Its pids carry no start time, so nothing will ever be signalled by them."""
    prefix = str(raw.get("prefix") or name)
    owns: dict[str, list[Entry]] = {k: [] for k in KINDS}
    owns["netns"] = [{"name": n} for n in raw.get("netns", []) if isinstance(n, str)]
    owns["cgroups"] = [{"name": c} for c in raw.get("cgroups", []) if isinstance(c, str)]
    owns["pin_dirs"] = [{"name": p} for p in raw.get("pin_dirs", []) if isinstance(p, str)]
    owns["registry"] = [{"name": n} for n in raw.get("nodes", []) if isinstance(n, str)]
    owns["processes"] = [{"name": f"pid {p}", "pid": p} for p in raw.get("pids", []) if isinstance(p, int)]
    if isinstance(raw.get("workdir"), str) and raw["workdir"]:
        owns["workdirs"] = [{"name": raw["workdir"]}]
    return RecordInfo(path, name, "lab", prefix, None, [], None, None, True, owns, legacy=True)


def parse(path: str, text: str) -> RecordInfo:
    """A record's text as a :class:`RecordInfo` (``error`` set if it is not a valid record)."""
    name = os.path.basename(path).removesuffix(".json")
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if "format" not in raw and "prefix" in raw and "owns" not in raw:
            return _from_legacy(path, name, raw)
        if raw.get("format") != FORMAT:
            raise ValueError(f"unknown format {raw.get('format')!r}")
        if raw.get("name") != name:
            raise ValueError(f"names {raw.get('name')!r}, not the file's {name!r}")
        prefix = raw.get("prefix")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("no prefix")
        owner = ProcessId.from_dict(raw.get("owner"))
        owns_raw = raw.get("owns")
        if not isinstance(owns_raw, dict):
            raise ValueError("no 'owns' object")
        owns: dict[str, list[Entry]] = {k: [] for k in KINDS}
        for kind, items in owns_raw.items():
            if kind not in owns or not isinstance(items, list):
                raise ValueError(f"unknown or malformed kind {kind!r}")
            owns[kind] = [_check_entry(kind, e) for e in items]
        created, updated = raw.get("created"), raw.get("updated")
        argv = raw.get("argv")
        return RecordInfo(path, name, str(raw.get("kind", "lab")), prefix, owner,
                          [str(a) for a in argv] if isinstance(argv, list) else [],
                          float(created) if isinstance(created, (int, float)) else None,
                          float(updated) if isinstance(updated, (int, float)) else None,
                          bool(raw.get("kept")), owns)
    except (ValueError, TypeError) as exc:
        return RecordInfo(path, name, prefix=name, error=str(exc) or type(exc).__name__)


def read(path: str) -> RecordInfo:
    """Read one record. Raises ``FileNotFoundError`` if it is gone and ``OSError`` if unreadable;
    bad content is no error (see :attr:`RecordInfo.error`)."""
    with open(path, errors="replace") as f:
        info = parse(path, f.read())
    if info.created is None:
        with contextlib.suppress(OSError):
            info.created = os.stat(path).st_mtime
    return info


def read_all(directory: str | None = None) -> list[RecordInfo]:
    """Every record in ``directory`` (default :func:`record_dir`), oldest first. Raises
    ``PermissionError`` if the directory is not readable."""
    d = directory or record_dir()
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        try:
            out.append(read(os.path.join(d, n)))
        except FileNotFoundError:
            continue  # removed while we listed the directory
    return sorted(out, key=lambda r: (r.created or 0.0, r.name))


def rewrite(info: RecordInfo, owns: dict[str, list[Entry]]) -> None:
    """Write ``info`` back with only ``owns`` left (after a partial removal), or remove the file
    when nothing is left. Raises ``OSError`` if it cannot be written."""
    if not any(owns.values()):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(info.path)
        return
    data = {"format": FORMAT, "kind": info.kind, "name": info.name, "prefix": info.prefix,
            "owner": info.owner.as_dict() if info.owner else None, "argv": info.argv,
            "created": info.created, "updated": time.time(), "kept": info.kept, "owns": owns}
    if info.owner is None:  # a legacy manifest keeps its own shape: no identity to write
        data = {"prefix": info.prefix, "netns": [e["name"] for e in owns.get("netns", [])],
                "cgroups": [e["name"] for e in owns.get("cgroups", [])],
                "pin_dirs": [e["name"] for e in owns.get("pin_dirs", [])],
                "nodes": [e["name"] for e in owns.get("registry", [])],
                "pids": [e["pid"] for e in owns.get("processes", []) if "pid" in e],
                "workdir": next((e["name"] for e in owns.get("workdirs", [])), "")}
    _write_atomically(info.path, data)
