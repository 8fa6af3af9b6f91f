"""bird2 as processes: finding the ``bird`` and ``birdc`` executables (checked to be BIRD 2), and
looking at a pid (its state and command line in ``/proc``), a log's last lines and whether a
control socket answers. Nothing here starts or signals a process; ``Bird`` does.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess

from ciliumlite.bpf.errors import NotSupportedError

# Debian installs bird in /usr/sbin, which a non-root PATH (sudo -E, a venv shell) often lacks.
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_INSTALL_HINT = "apt-get install bird2"


def _find(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    for d in _SBIN_DIRS:
        cand = os.path.join(d, name)
        if os.access(cand, os.X_OK):
            return cand
    raise NotSupportedError(f"{name} (BIRD 2) was not found on PATH or in {', '.join(_SBIN_DIRS)}",
                            feature="bird2", hint=_INSTALL_HINT)


@functools.lru_cache(maxsize=1)
def _binaries() -> tuple[str, str]:
    """``(bird, birdc)``, checked to be BIRD 2 (cached once found)."""
    bird, birdc = _find("bird"), _find("birdc")
    try:
        r = subprocess.run([bird, "--version"], capture_output=True, text=True, timeout=5,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NotSupportedError(f"cannot run {bird} --version: {exc}", feature="bird2", hint=_INSTALL_HINT) from exc
    m = re.search(r"BIRD version (\d+)\.", r.stdout + r.stderr)
    if not m or int(m[1]) < 2:
        raise NotSupportedError(f"{bird} is not BIRD 2 ({(r.stdout + r.stderr).strip()!r})", feature="bird2",
                                hint=_INSTALL_HINT)
    return bird, birdc


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _proc_state(pid: int) -> str | None:
    """The process state letter (``Z`` for a zombie), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _tail(path: str, lines: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-lines:])
    except OSError:
        return ""


def _socket_ready(path: str) -> bool:
    """bird answers on its control socket (greeting ``0001 BIRD x.y.z ready.``)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return s.recv(64).startswith(b"0001")
    except OSError:
        return False
    finally:
        s.close()
