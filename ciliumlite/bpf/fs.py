"""bpffs and cgroup v2 on the host: mount checks, private pin directories, child cgroups."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

from ciliumlite.bpf._ffi import lib
from ciliumlite.bpf.errors import NotSupportedError, ValidationError, check

BPFFS = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11
_CGROUP2_CANDIDATES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def _mounts() -> dict[str, str]:
    with open("/proc/self/mounts") as f:
        return {parts[1]: parts[2] for parts in (line.split() for line in f) if len(parts) > 2}


def bpffs_mounted(path: str = BPFFS) -> bool:
    """True when ``path`` is a bpf filesystem."""
    return _mounts().get(path) == "bpf"


def ensure_bpffs(path: str = BPFFS) -> str:
    """Mount bpffs at ``path`` if absent (root only); returns the path."""
    if bpffs_mounted(path):
        return path
    os.makedirs(path, exist_ok=True)
    rc = subprocess.run(["mount", "-t", "bpf", "bpf", path], capture_output=True, text=True)
    if rc.returncode != 0:
        raise NotSupportedError(f"cannot mount bpffs at {path}: {rc.stderr.strip()}", feature="bpffs",
                                hint="run as root, or mount it: mount -t bpf bpf /sys/fs/bpf")
    return path


def make_pin_dir(name: str, root: str = BPFFS) -> str:
    """Create ``root/name`` on bpffs for one datapath's or test's pins."""
    ensure_bpffs(root)
    if not name or ".." in name or name.startswith("/"):
        raise ValidationError(f"bad pin directory name {name!r}")
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    return path


def pin(fd: int, path: str, kind: str, name: str) -> str:
    """Pin the BPF object ``fd`` (a ``kind``: map, link, program, named ``name``) at ``path`` on
    bpffs; returns ``path``. Raises :class:`BpfError` with the errno (``EEXIST``: a pin is there)."""
    check(lib.bpf_obj_pin(fd, path.encode()), f"pin {kind}", f"{name} at {path}")
    return path


def unpin(path: str | None) -> None:
    """Remove a pin if it is there (the object lives on while anything else holds it)."""
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def remove_pin_dir(path: str) -> None:
    """Remove a pin directory and every pin below it (unlinking a pin drops the kernel reference)."""
    if not path.startswith(BPFFS + "/") or path.rstrip("/") == BPFFS:
        raise ValidationError(f"refusing to remove {path!r}: not a directory below {BPFFS}")
    shutil.rmtree(path, ignore_errors=True)


def cgroup2_root() -> str:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup/unified`` on hybrid hosts)."""
    mounts = _mounts()
    for cand in _CGROUP2_CANDIDATES:
        if mounts.get(cand) == "cgroup2":
            return cand
    raise NotSupportedError("no cgroup v2 mount found", feature="cgroup2",
                            hint="mount it: mount -t cgroup2 none /sys/fs/cgroup/unified")


def make_cgroup(name: str) -> str:
    """Create a child cgroup ``name`` under the cgroup v2 root (socket LB never goes on the root)."""
    if not name or name.startswith("/") or ".." in name:
        raise ValidationError(f"bad cgroup name {name!r}")
    path = os.path.join(cgroup2_root(), name)
    os.makedirs(path, exist_ok=True)
    return path


def cgroup_pids(path: str) -> list[int]:
    """Pids in a cgroup."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def remove_cgroup(path: str, *, kill_pids: list[int] | None = None) -> None:
    """Remove a child cgroup. ``kill_pids``: processes we started that may still be in it."""
    root = cgroup2_root()
    if not path.startswith(root + "/"):
        raise ValidationError(f"refusing to remove {path!r}: not a child of {root}")
    for pid in kill_pids or []:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for child in sorted((os.path.join(d, n) for d, ns, _ in os.walk(path) for n in ns), key=len, reverse=True):
        os.rmdir(child)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
