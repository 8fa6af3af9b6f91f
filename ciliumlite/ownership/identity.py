"""Who a process is: its pid *and* its start time, so that a reused pid is never taken for ours.

A pid alone names a process only while it lives: after it exits the kernel hands the number to the
next process that forks. ``/proc/<pid>/stat`` field 22 (start time, in clock ticks since boot) does
not change for the life of a process and two processes with one pid never share it within one
boot; the boot id (``/proc/sys/kernel/random/boot_id``) tells one boot from the next. Signals go
through a pidfd opened *before* the start time is checked, so the process checked is the one
signalled.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
from dataclasses import dataclass
from typing import Any

_GONE_STATES = ("Z", "X", "x")  # zombie or dead: exited, only the parent's wait is missing


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and ')': split after the last one.
    _, sep, rest = text.rpartition(")")
    return rest.split() if sep else None


def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot), or None if no such process."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None  # fields[0] is field 3
    except (IndexError, ValueError):
        return None


def state(pid: int) -> str | None:
    """The state letter of ``pid`` (``R``, ``S``, ``Z``...), or None if there is no such process."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


@functools.lru_cache(maxsize=1)
def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``; '' if the kernel does not say)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` ([] for a kernel thread, a zombie or no such process)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def netns_inode_of(pid: int) -> int | None:
    """The inode of the network namespace ``pid`` is in, or None if it cannot be read."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def all_pids() -> list[int]:
    """Every pid in ``/proc`` right now."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


@functools.lru_cache(maxsize=4)
def _me(pid: int) -> ProcessId | None:
    return ProcessId.of(pid)


@dataclass(frozen=True)
class ProcessId:
    """One process for as long as it lives: pid, start time and boot.

    Raises nothing itself; :meth:`from_dict` raises ``ValueError`` for a malformed mapping.
    """

    pid: int
    start: int
    boot: str = ""

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The identity of the running process ``pid``, or None if it has gone."""
        st = start_time(pid)
        return None if st is None else cls(pid, st, boot_id())

    @classmethod
    def me(cls) -> ProcessId:
        """This process (read once per pid: a forked child is another process). Raises ``OSError``
        if ``/proc`` is not mounted."""
        me = _me(os.getpid())
        if me is None:
            raise OSError("cannot read /proc/self/stat (is /proc mounted?)")
        return me

    @classmethod
    def from_dict(cls, raw: Any) -> ProcessId:
        """From :meth:`as_dict`'s form. Raises ``ValueError`` if ``raw`` is not one."""
        if not isinstance(raw, dict):
            raise ValueError(f"a process identity is a mapping, not {type(raw).__name__}")
        pid, st, boot = raw.get("pid"), raw.get("start"), raw.get("boot", "")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ValueError(f"bad pid {pid!r}")
        if not isinstance(st, int) or isinstance(st, bool) or st < 0:
            raise ValueError(f"bad start time {st!r}")
        if not isinstance(boot, str):
            raise ValueError(f"bad boot id {boot!r}")
        return cls(pid, st, boot)

    def as_dict(self) -> dict[str, Any]:
        """``{"pid", "start", "boot"}`` for a JSON record."""
        return {"pid": self.pid, "start": self.start, "boot": self.boot}

    def alive(self) -> bool:
        """This very process still runs: same boot, same start time at that pid, not exited."""
        if self.boot and self.boot != boot_id():
            return False
        fields = _stat_fields(self.pid)
        if not fields:
            return False
        try:
            same = int(fields[19]) == self.start
        except (IndexError, ValueError):
            return False
        return same and fields[0] not in _GONE_STATES

    def kill(self, timeout: float = 5.0) -> bool:
        """SIGKILL this process if it is still this one, and wait up to ``timeout`` s until it has exited.

        Returns True if it was signalled, False if it had gone or the pid is someone else's now.
        Raises ``PermissionError`` if it may not be signalled.
        """
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return False
        try:
            # Checked after the pidfd is open: the pidfd names the process we just checked.
            if not self.alive():
                return False
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                return False
            poller = select.poll()
            poller.register(fd, select.POLLIN)  # a pidfd turns readable when its process exits
            poller.poll(int(timeout * 1000))
            return True
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)


def daemon_entries(*daemons: Any) -> list[dict[str, Any]]:
    """Record entries of running daemons (objects with ``pid`` and ``socket_path``, such as a
    ``Bird``): name, pid, start time and the control socket their command line names."""
    out = []
    for d in daemons:
        pid = getattr(d, "pid", None)
        ident = ProcessId.of(pid) if isinstance(pid, int) else None
        if ident is not None:
            out.append({"name": type(d).__name__.lower(), **ident.as_dict(),
                        "match": str(getattr(d, "socket_path", "") or "")})
    return out
