"""A real etcd as a child process: free ports, its own data directory, stopped by pid.

:class:`EtcdServer` runs Debian's ``/usr/bin/etcd`` (``apt-get install etcd-server``) on
127.0.0.1, or on an address inside a network namespace (a lab's fabric: :mod:`ciliumlite.lab.etcd`),
and stops it by pid. The child gets ``PR_SET_PDEATHSIG(SIGKILL)``, so a process that crashes (or is
killed) takes its etcd with it; the next ``EtcdServer`` removes the data dirs such runs left.
It needs nothing but the standard library, so the lab (``ciliumlite demo --kvstore etcd``) runs it
without the test extras; :mod:`ciliumlite.testing.etcd` re-exports it with the pytest fixtures.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import TypeVar

from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import CiliumliteError, NotSupportedError, ValidationError

__all__ = ["ETCD_BINARY", "EtcdServer"]

ETCD_BINARY = "/usr/bin/etcd"
_PR_SET_PDEATHSIG = 1
T = TypeVar("T")


def _pdeathsig_preexec(then: Callable[[], None] | None = None) -> Callable[[], None]:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL it when the parent dies,
    # so no etcd outlives a crashed test process (the setting survives execve of a non-setuid binary).
    libc = ctypes.CDLL(None, use_errno=True)

    def _preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
        if then is not None:
            then()

    return _preexec


class _Spawner:
    """One long-lived thread that forks every etcd.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not the process: an
    etcd started from a short-lived thread (a ``threading.Timer``, a worker) would be killed
    with it. Forking from this daemon thread ties every etcd to the life of the process.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], object], queue.Queue[tuple[object, BaseException | None]]]] = \
            queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ciliumlite-etcd-spawner", daemon=True)
                self._thread.start()
        done: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=1)
        self._jobs.put((fn, done))
        result, error = done.get(timeout=60)
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def _loop(self) -> None:
        while True:
            fn, done = self._jobs.get()
            try:
                done.put((fn(), None))
            except BaseException as exc:  # handed to the caller
                done.put((None, exc))


_spawner = _Spawner()


def _free_port(host: str, netns: str | None) -> int:
    # Binding port 0 asks the kernel for a free one. Closing it leaves a tiny window in which
    # another process could take it; start() retries on a bind failure.
    with nsmod.entered(netns), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_DIR_PREFIX = "ciliumlite-etcd-"


def _sweep_stale_dirs() -> None:
    # A test process that was killed took its etcd with it (PDEATHSIG) but could not remove the
    # data dir: remove those whose owner process is gone. Dirs of live runs are left alone.
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        path = os.path.join(tmp, name)
        if not name.startswith(_DIR_PREFIX):
            continue
        try:
            with open(os.path.join(path, "owner.pid")) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if not os.path.exists(f"/proc/{owner}"):
            shutil.rmtree(path, ignore_errors=True)


class EtcdServer:
    """One etcd member, a child of this process, on free ports with a private data dir.

    Args:
        host: the address etcd listens on (clients and peers); 127.0.0.1 unless ``netns`` is given,
            in which case it must be an address of that namespace.
        netns: a named network namespace to run etcd in (entered with ``setns`` in the child, like
            ``ip netns exec`` but keeping the host's ``/sys``).
        binary: the etcd executable.
        extra_args: more etcd flags (e.g. ``["--auto-compaction-retention=1"]``).
        start: start at once (and wait until healthy).
        data_root: the directory to make the data dir in (default: the system's temporary
            directory); a lab gives its work directory, so the data go with the lab.

    Raises:
        NotSupportedError: ``binary`` is not installed.
        CiliumliteError: etcd did not become healthy (the message has the tail of its log).
    """

    def __init__(self, *, host: str = "127.0.0.1", netns: str | None = None, binary: str = ETCD_BINARY,
                 extra_args: Sequence[str] = (), start: bool = True, startup_timeout: float = 15.0,
                 data_root: str | None = None) -> None:
        if shutil.which(binary) is None:
            raise NotSupportedError(f"cannot start etcd: {binary} not found", feature="etcd-server",
                                    hint="apt-get install etcd-server etcd-client")
        if netns is None and host != "127.0.0.1" and not host.startswith("127."):
            raise ValidationError(f"etcd for tests listens on loopback only, not {host}; "
                                  "pass netns= to listen on an address inside a namespace")
        self.host = host
        self.netns = netns
        self.binary = binary
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        _sweep_stale_dirs()
        self.tmpdir = tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=data_root)
        with open(os.path.join(self.tmpdir, "owner.pid"), "w") as f:
            f.write(str(os.getpid()))
        self.data_dir = os.path.join(self.tmpdir, "data")
        self.log_path = os.path.join(self.tmpdir, "etcd.log")
        # Chosen now, so that url is known before start() (e.g. to start etcd after a client).
        self.client_port = _free_port(host, netns)
        self.peer_port = _free_port(host, netns)
        self._fresh = True  # no data dir yet: a port clash at the first start may pick new ports
        self._proc: subprocess.Popen[bytes] | None = None
        if start:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise

    # -- addresses -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The client URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.client_port}"

    @property
    def endpoints(self) -> list[str]:
        """``[url]``, the form :class:`ciliumlite.cluster.etcd.EtcdStore` takes."""
        return [self.url]

    @property
    def pid(self) -> int | None:
        """The etcd process id (None when not running)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the child process exists (also while paused)."""
        return self.pid is not None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start etcd (on the ports chosen at construction; the same ports and data dir after a
        :meth:`kill`) and wait until it is healthy.

        Raises:
            CiliumliteError: it exited or stayed unhealthy for ``startup_timeout`` seconds.
        """
        if self.running:
            return
        for attempt in range(3):
            self._spawn()
            try:
                self.wait_healthy(self.startup_timeout)
                self._fresh = False
                return
            except CiliumliteError:
                log = self.log_tail()
                self.kill()
                if not (self._fresh and "address already in use" in log and attempt < 2):
                    raise
                # Someone took a port between probing and binding: try other ports, from scratch
                # (the member's peer URL is recorded in its data dir).
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.client_port = _free_port(self.host, self.netns)
                self.peer_port = _free_port(self.host, self.netns)

    def _spawn(self) -> None:
        name = "cl-etcd"
        peer = f"http://{self.host}:{self.peer_port}"
        args = [
            self.binary, "--name", name, "--data-dir", self.data_dir,
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}", "--initial-cluster-state", "new",
            "--initial-cluster-token", f"cl-{os.getpid()}-{self.client_port}",
            *self.extra_args,
        ]
        then = nsmod.preexec(self.netns) if self.netns else None

        def spawn() -> subprocess.Popen[bytes]:
            with open(self.log_path, "ab") as log:
                return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=_pdeathsig_preexec(then), close_fds=True)

        self._proc = _spawner.run(spawn)

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Wait until ``/health`` answers ``{"health": "true"}``.

        Raises:
            CiliumliteError: etcd exited, or was not healthy within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                rc = None if self._proc is None else self._proc.returncode
                raise CiliumliteError(f"etcd exited (status {rc}) before it was healthy at {self.url}; "
                                      f"its log ends:\n{self.log_tail()}")
            try:
                # The socket is made inside etcd's namespace (setns of this thread only).
                with nsmod.entered(self.netns), self._opener().open(self.url + "/health", timeout=1.0) as resp:
                    body = json.loads(resp.read() or b"{}")
                if body.get("health") in ("true", True):
                    return
                last = str(body)
            except (OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise CiliumliteError(f"etcd at {self.url} not healthy after {timeout:.0f} s ({last}); "
                              f"its log ends:\n{self.log_tail()}")

    def _opener(self) -> urllib.request.OpenerDirector:
        # Never through an HTTP proxy from the environment: etcd is on loopback or in a namespace.
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def pause(self) -> None:
        """Freeze etcd (SIGSTOP): its sockets stay open but nothing answers, like a hung server."""
        if self._proc is not None and self.pid is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused etcd (SIGCONT)."""
        if self._proc is not None and self.pid is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL etcd, a crash: the data dir and the ports are kept for :meth:`restart`."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)  # also kills a paused (stopped) process
            proc.wait(timeout=10)
        self._proc = None

    def restart(self) -> None:
        """Start again after :meth:`kill` (or :meth:`stop_process`) on the same ports and data dir.

        Raises:
            CiliumliteError: it did not come back healthy.
        """
        self.kill()
        self.start()

    def stop_process(self, timeout: float = 5.0) -> None:
        """A clean shutdown: SIGTERM, then SIGKILL after ``timeout`` seconds (data dir kept)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._proc = None

    def stop(self) -> None:
        """Stop etcd by its pid (SIGTERM, then SIGKILL) and remove its data dir. Idempotent."""
        try:
            self.stop_process()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines etcd wrote (for error messages)."""
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    def etcdctl(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``etcdctl --endpoints URL ARGS...`` (API v3) and return its stdout.

        Raises:
            CiliumliteError: etcdctl failed (with its stderr).
        """
        env = {**os.environ, "ETCDCTL_API": "3"}
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            env.pop(var, None)
        res = subprocess.run(["etcdctl", "--endpoints", self.url, *args], capture_output=True, text=True,
                             timeout=timeout, env=env, preexec_fn=nsmod.preexec(self.netns) if self.netns else None)
        if res.returncode != 0:
            raise CiliumliteError(f"etcdctl {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def __enter__(self) -> EtcdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EtcdServer({self.url}, pid={self.pid}, data_dir={self.data_dir})"
