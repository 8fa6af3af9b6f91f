"""Processes inside pods and nodes: join the node's cgroup, enter the namespace, clean up by pid.

A group with a record (every Lab's) lists each process in it before starting it (command line and
namespace) and adds its pid and start time once it runs, so ``ciliumlite lab destroy`` finds it
after a crash, and never mistakes another process that got its pid for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ciliumlite.bpf.netns import preexec
from ciliumlite.ownership.identity import ProcessId

if TYPE_CHECKING:
    from ciliumlite.ownership.record import Entry, Record

HERE = Path(__file__).parent
ECHO = str(HERE / "_echo.py")
PROBE = str(HERE / "_probe.py")
CAPTURE = str(HERE / "_capture.py")


def describe(argv: Sequence[str]) -> str:
    """A short name for a process in a record: its argv with paths cut to their last part."""
    return " ".join(os.path.basename(a) if a.startswith("/") else a for a in argv if a not in ("-I", "-S"))[:80]


class ProcessGroup:
    """Processes a lab started; ``stop_all`` ends exactly those, by pid.

    With ``record``, each process is recorded before it starts and dropped once it has ended;
    every method then also raises ``OSError`` if the record cannot be written.
    """

    def __init__(self, record: Record | None = None) -> None:
        self._procs: list[subprocess.Popen[str]] = []
        self._netns: dict[int, str] = {}
        self._entries: dict[int, Entry] = {}
        self._record = record

    def _claim(self, netns: str, argv: Sequence[str]) -> Entry | None:
        if self._record is None:
            return None
        return self._record.add("processes", describe(argv), netns=netns, argv=list(argv))

    def _forget(self, entry: Entry | None) -> None:
        if self._record is not None and entry is not None:
            self._record.drop("processes", entry)

    def popen(self, netns: str, argv: Sequence[str], cgroup: str | None = None) -> subprocess.Popen[str]:
        """Start ``argv`` in ``netns`` (and ``cgroup``), stdout piped, tracked for cleanup.

        Raises ``OSError`` or ``subprocess.SubprocessError`` if it cannot start.
        """
        entry = self._claim(netns, argv)
        try:
            proc = subprocess.Popen(list(argv), preexec_fn=preexec(netns, cgroup), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        except BaseException:
            self._forget(entry)
            raise
        self._procs.append(proc)
        self._netns[proc.pid] = netns
        if entry is not None and self._record is not None:
            self._entries[proc.pid] = entry
            ident = ProcessId.of(proc.pid)
            if ident is not None:
                self._record.update(entry, pid=ident.pid, start=ident.start)
        return proc

    def run(self, netns: str, argv: Sequence[str], cgroup: str | None = None, timeout: float = 30.0,
            check: bool = False, *, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion in ``netns`` (and ``cgroup``), bounded by ``timeout``; recorded
        (by command line) while it runs. Raises as :func:`run`."""
        entry = self._claim(netns, argv)
        try:
            return run(netns, argv, cgroup, timeout=timeout, check=check, env=env, input=input)
        finally:
            self._forget(entry)

    def stop(self, proc: subprocess.Popen[str]) -> None:
        """End one process we started and reap it."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reaped = True
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            reaped = False  # not reaped yet (e.g. a stalled kernel teardown): never block the lab's cleanup
        # Close the pipes without reading them to EOF: a grandchild may still hold them open.
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        if proc in self._procs:
            self._procs.remove(proc)
        self._netns.pop(proc.pid, None)
        entry = self._entries.pop(proc.pid, None)
        if reaped:
            self._forget(entry)

    def running(self) -> list[subprocess.Popen[str]]:
        """The processes of this group still running."""
        return [p for p in self._procs if p.poll() is None]

    def stop_in(self, namespaces: set[str]) -> None:
        """End the processes started in any of ``namespaces``."""
        for proc in list(self._procs):
            if self._netns.get(proc.pid) in namespaces:
                self.stop(proc)

    def stop_all(self) -> None:
        """End every process still running that this group started."""
        for proc in list(self._procs):
            self.stop(proc)


def run(netns: str, argv: Sequence[str], cgroup: str | None = None, timeout: float = 30.0,
        check: bool = False, *, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion in ``netns`` (and ``cgroup``), bounded by ``timeout``; ``env``
    replaces the environment, ``input`` is written to its stdin (else stdin is empty).

    Raises ``subprocess.TimeoutExpired`` (the process is killed), ``OSError`` or
    ``subprocess.SubprocessError`` if it cannot start, ``CalledProcessError`` with ``check``.
    """
    stdin = subprocess.DEVNULL if input is None else None
    return subprocess.run(list(argv), preexec_fn=preexec(netns, cgroup), capture_output=True, text=True,
                          timeout=timeout, check=check, stdin=stdin, input=input, env=env)


def python_script(script: str, *args: str) -> list[str]:
    """argv running one of the lab's stdlib-only scripts with this interpreter, isolated and quick."""
    return [sys.executable, "-I", "-S", script, *args]
