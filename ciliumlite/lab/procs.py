"""Processes inside pods and nodes: join the node's cgroup, enter the namespace, clean up by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ciliumlite.bpf.netns import preexec

HERE = Path(__file__).parent
ECHO = str(HERE / "_echo.py")
PROBE = str(HERE / "_probe.py")
CAPTURE = str(HERE / "_capture.py")


class ProcessGroup:
    """Processes a lab started; ``stop_all`` ends exactly those, by pid."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []
        self._netns: dict[int, str] = {}

    def popen(self, netns: str, argv: Sequence[str], cgroup: str | None = None) -> subprocess.Popen[str]:
        """Start ``argv`` in ``netns`` (and ``cgroup``), stdout piped, tracked for cleanup."""
        proc = subprocess.Popen(list(argv), preexec_fn=preexec(netns, cgroup), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self._procs.append(proc)
        self._netns[proc.pid] = netns
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> None:
        """End one process we started and reap it."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # not reaped yet (e.g. a stalled kernel teardown): never block the lab's cleanup
        # Close the pipes without reading them to EOF: a grandchild may still hold them open.
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        if proc in self._procs:
            self._procs.remove(proc)
        self._netns.pop(proc.pid, None)

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
        check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion in ``netns`` (and ``cgroup``), bounded by ``timeout``."""
    return subprocess.run(list(argv), preexec_fn=preexec(netns, cgroup), capture_output=True, text=True,
                          timeout=timeout, check=check, stdin=subprocess.DEVNULL)


def python_script(script: str, *args: str) -> list[str]:
    """argv running one of the lab's stdlib-only scripts with this interpreter, isolated and quick."""
    return [sys.executable, "-I", "-S", script, *args]
