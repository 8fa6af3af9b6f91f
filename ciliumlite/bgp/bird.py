"""The bird2 daemon: ``Bird`` starts bird in a network namespace, reloads it, reads its state
through birdc and stops exactly the process it started.

``Bird`` starts ``bird -f -c CONF -s SOCK -P PIDFILE`` inside the namespace as a child of this
process (or, with ``daemonize=True``, lets bird fork into the background as the seed's
``systemctl`` setup does). ``stop()`` ends exactly the pid bird wrote to *our* pidfile (checked
against its command line) and waits until it is gone. Finding bird2 and looking at a pid are in
``ciliumlite.bgp.proc``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from types import TracebackType

from ciliumlite.bgp.config import _SYMBOL, BgpConfig, _quoted, render_bird_config
from ciliumlite.bgp.errors import BgpError
from ciliumlite.bgp.proc import _binaries, _cmdline, _proc_state, _socket_ready, _tail
from ciliumlite.bgp.status import BgpSession, _explain, parse_protocols, parse_routes
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.bpf.netns import netns_path, preexec

__all__ = ["Bird"]

_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1
#: Replies of ``birdc configure`` that mean the new config was accepted.
_RECONFIG_OK = ("Reconfigured", "Reconfiguration in progress", "queueing new config")


@dataclass
class _Files:
    workdir: str
    config: str
    socket: str
    pid: str
    log: str
    out: str
    own_log: bool = True
    made_workdir: bool = False
    written: set[str] = field(default_factory=set)


class Bird:
    """One bird2 daemon in network namespace ``netns``, with its files in ``workdir``.

    Files: ``bird.conf`` (rendered from ``cfg``), ``bird.ctl`` (control socket), ``bird.pid``,
    ``bird.log`` (or ``log_path``), ``bird.out`` (stdout/stderr). ``stop()`` removes them (a
    ``log_path`` given by the caller is kept).

    By default bird runs in the foreground (``bird -f``) as a child of this process: ``stop()`` reaps
    it at once, and a bird someone forgot to stop shows up as a leaked child. ``daemonize=True`` runs
    plain ``bird -c -s -P`` instead: bird forks, is reparented to PID 1, and ``stop()`` waits until
    PID 1 has reaped it (about 1.5 s on the lab VM). Either way the pid comes from bird's pidfile and
    only that pid is ever signalled, after checking that its command line names our control socket.

    Nothing runs until ``start()`` (or ``with``). Raises ``ValidationError`` if ``cfg`` is not a
    ``BgpConfig``, ``netns`` is empty, the control socket path in ``workdir`` would not fit in
    ``sun_path``, or a path holds a character bird strings cannot (quote, backslash, newline).
    """

    def __init__(self, netns: str, cfg: BgpConfig, workdir: str, *, log_path: str | None = None,
                 daemonize: bool = False, start_timeout: float = 3.0) -> None:
        if not isinstance(cfg, BgpConfig):
            raise ValidationError(f"expected a BgpConfig, not {cfg!r}")
        if not isinstance(netns, str) or not netns:
            raise ValidationError(f"netns must be a namespace name or path, not {netns!r}")
        self.netns = netns
        self.cfg = cfg
        self.daemonize = daemonize
        self.start_timeout = start_timeout
        wd = os.path.abspath(workdir)
        self._f = _Files(wd, os.path.join(wd, "bird.conf"), os.path.join(wd, "bird.ctl"),
                         os.path.join(wd, "bird.pid"), os.path.abspath(log_path or os.path.join(wd, "bird.log")),
                         os.path.join(wd, "bird.out"), own_log=log_path is None)
        if len(self._f.socket.encode()) > _SUN_PATH_MAX:
            raise ValidationError(f"workdir {wd!r} is too long: the control socket path must fit in "
                                  f"{_SUN_PATH_MAX} bytes")
        for path, what in ((self._f.config, "workdir"), (self._f.log, "log path")):
            _quoted(path, what)
        self._pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def attach(cls, netns: str, cfg: BgpConfig, workdir: str) -> Bird | None:
        """A handle on a bird another process started with this ``workdir`` (a node agent's), found
        by the pid in its pidfile and checked against its command line; None if none runs there.

        The handle reads its state (``status``, ``routes``, ``wait_established``); ``stop()`` ends
        it (after its starter was killed, say). Raises ``ValidationError`` as the constructor does.
        """
        bird = cls(netns, cfg, workdir)
        pid = bird._pid_from_file()
        if not bird._alive_and_ours(pid):
            return None
        bird._pid = pid
        return bird

    # -- paths and state

    @property
    def workdir(self) -> str:
        """Directory holding the config, socket, pidfile and log."""
        return self._f.workdir

    @property
    def config_path(self) -> str:
        """The rendered config bird reads (and re-reads on ``reload``)."""
        return self._f.config

    @property
    def socket_path(self) -> str:
        """The control socket (``birdc -s``)."""
        return self._f.socket

    @property
    def pid_path(self) -> str:
        """The pidfile bird writes (and removes on a clean exit)."""
        return self._f.pid

    @property
    def log_path(self) -> str:
        """bird's log file (``log "..." all``)."""
        return self._f.log

    @property
    def pid(self) -> int | None:
        """The daemon's pid while it runs (read from the pidfile at start)."""
        return self._pid

    @property
    def running(self) -> bool:
        """The daemon we started is alive (not gone, not a zombie)."""
        if self._pid is None:
            return False
        if self._proc is not None and self._proc.poll() is not None:
            return False
        return _proc_state(self._pid) not in (None, "Z") and self._is_ours(self._pid)

    def _is_ours(self, pid: int) -> bool:
        argv = _cmdline(pid)
        return bool(argv) and os.path.basename(argv[0]).startswith("bird") and self._f.socket in argv

    def _alive_and_ours(self, pid: int | None) -> bool:
        return pid is not None and _proc_state(pid) not in (None, "Z") and self._is_ours(pid)

    def _pid_from_file(self) -> int | None:
        try:
            with open(self._f.pid) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of bird's log ('' if there is none)."""
        return _tail(self._f.log, lines)

    # -- files

    def _write(self, path: str, text: str) -> None:
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise BgpError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._f.written.add(path)

    def _prepare_workdir(self) -> None:
        try:
            if not os.path.isdir(self._f.workdir):
                os.makedirs(self._f.workdir, mode=0o755)
                self._f.made_workdir = True
        except OSError as exc:
            raise BgpError(f"cannot create bird's workdir {self._f.workdir}: {exc.strerror or exc}") from exc

    def _remove_leftovers(self) -> None:
        """A failed bird start leaves an empty pidfile and a dead control socket: remove them."""
        if self._alive_and_ours(self._pid_from_file()):
            return
        for path in (self._f.pid, self._f.socket):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _remove_files(self) -> None:
        paths = {self._f.config, self._f.socket, self._f.pid, self._f.out, f"{self._f.config}.tmp"}
        paths |= self._f.written
        if self._f.own_log:
            paths.add(self._f.log)
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._f.written.clear()
        if self._f.made_workdir:
            with contextlib.suppress(OSError):
                os.rmdir(self._f.workdir)
            self._f.made_workdir = os.path.isdir(self._f.workdir)

    # -- lifecycle

    def start(self) -> Bird:
        """Write the config and start bird in the namespace; return once it answers on its socket.

        Raises ``BgpError`` with bird's own message (a config error, an unwritable log...) if it does
        not come up within ``start_timeout`` seconds, and also if it runs already, another bird runs
        with this ``workdir`` or the workdir cannot be made; ``NotSupportedError`` if bird2 is
        missing; ``ValidationError`` if the namespace does not exist.
        """
        bird, _ = _binaries()
        if self.running:
            raise BgpError(f"bird for {self.netns} is running already (pid {self._pid})")
        path = netns_path(self.netns)
        if path and not os.path.exists(path):
            raise ValidationError(f"network namespace {self.netns!r} does not exist ({path})")
        text = render_bird_config(self.cfg, log_path=self._f.log)
        self._prepare_workdir()
        other = self._pid_from_file()
        if self._alive_and_ours(other):
            raise BgpError(f"another bird (pid {other}) runs with workdir {self._f.workdir}; stop it first")
        self._remove_leftovers()
        self._write(self._f.config, text)
        argv = [bird, "-c", self._f.config, "-s", self._f.socket, "-P", self._f.pid]
        if self.daemonize:
            self._start_daemon(argv, text)
        else:
            self._start_child([*argv, "-f"], text)
        return self

    def _start_daemon(self, argv: list[str], text: str) -> None:
        try:
            # bird parses the config, opens its log and socket, then forks: the parent exits at once.
            r = subprocess.run(argv, preexec_fn=preexec(self.netns), capture_output=True, text=True,
                               timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            self._remove_leftovers()
            raise BgpError(f"cannot run {' '.join(argv)} in netns {self.netns}: {exc}") from exc
        if r.returncode != 0:
            self._remove_leftovers()
            raise BgpError(f"bird did not start in netns {self.netns} (exit status {r.returncode}); "
                           f"config {self._f.config}", output=_explain(r.stderr + r.stdout, text))
        self._wait_up(text)

    def _start_child(self, argv: list[str], text: str) -> None:
        try:
            with open(self._f.out, "wb") as out:
                self._f.written.add(self._f.out)
                self._proc = subprocess.Popen(argv, preexec_fn=preexec(self.netns), stdout=out,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            self._remove_leftovers()
            raise BgpError(f"cannot run {' '.join(argv)} in netns {self.netns}: {exc}") from exc
        self._wait_up(text)

    def _wait_up(self, text: str) -> None:
        """Wait for the pidfile and the control socket; on failure end what was started and raise."""
        deadline = time.monotonic() + self.start_timeout
        pid: int | None = None
        exited: int | None = None
        while True:
            if self._proc is not None:
                exited = self._proc.poll()
                if exited is not None:
                    break
            pid = self._pid_from_file()
            if pid is not None and self._is_ours(pid):
                if _proc_state(pid) in (None, "Z"):
                    break
                if _socket_ready(self._f.socket):
                    self._pid = pid
                    return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        said = "\n".join(filter(None, (_tail(self._f.out, 20), self.log_tail())))
        if exited is not None:
            what = f"bird did not start in netns {self.netns} (exit status {exited}); config {self._f.config}"
        else:
            what = (f"bird in netns {self.netns} did not come up within {self.start_timeout:g}s "
                    f"(pidfile {self._f.pid}, socket {self._f.socket})")
        self._kill(pid if pid is not None else (self._proc.pid if self._proc else None))
        self._remove_leftovers()
        raise BgpError(what, output=_explain(said, text))

    def _kill(self, pid: int | None, timeout: float = 5.0) -> None:
        """SIGTERM (bird withdraws its routes and removes its kernel routes), then SIGKILL; wait until
        the pid is gone (our child: reaped here; a daemon: reaped by PID 1, usually within 1.5 s)."""
        proc, self._proc = self._proc, None
        if proc is not None:  # our child (bird -f): its pid is the one in the pidfile
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(3.0)
            return
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 3.0)):
            if not self._alive_and_ours(pid):
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while _proc_state(pid) not in (None, "Z") and time.monotonic() < deadline:
                time.sleep(0.02)
        if self._alive_and_ours(pid):
            raise BgpError(f"bird (pid {pid}) in netns {self.netns} did not exit after SIGKILL")
        # It has ended; give PID 1 a moment to reap it, so that the pid really is gone. A bird
        # attached by a process that started it itself (a datapath detached and restored in one
        # process) is that process's child: reap it here, or it stays a zombie.
        deadline = time.monotonic() + 5.0
        while _proc_state(pid) == "Z" and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)

    def stop(self, *, keep_files: bool = False) -> None:
        """End our bird (only the pid from our pidfile, checked against its command line), wait until
        it is gone and remove the files in ``workdir``. Safe to call twice.

        Raises ``BgpError`` only if bird is still there after SIGKILL (the files are removed all the same, unless ``keep_files``)."""
        pid = self._pid if self._pid is not None else self._pid_from_file()
        try:
            if self._proc is not None or (pid is not None and self._is_ours(pid)):
                self._kill(pid)
        finally:
            self._pid = None
            if not keep_files:
                self._remove_files()

    def __enter__(self) -> Bird:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- control

    def birdc(self, *args: str, timeout: float = 5.0) -> str:
        """Run ``birdc -s SOCK ARGS...`` and return its output; ``BgpError`` if birdc cannot run, times
        out or reports an error, ``NotSupportedError`` if bird2 is missing.

        The control socket is a path on the filesystem, so birdc needs no namespace switch."""
        _, birdc = _binaries()
        argv = [birdc, "-s", self._f.socket, *args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BgpError(f"{' '.join(argv)}: {exc}") from exc
        if r.returncode != 0:
            raise BgpError(f"birdc {' '.join(args)} failed for {self.netns} (exit status {r.returncode})",
                           output=(r.stdout + r.stderr))
        return r.stdout

    def reload(self, cfg: BgpConfig) -> None:
        """Rewrite the config and ``birdc configure``. On a rejection the previous config file is put
        back (bird keeps running it) and ``BgpError`` carries bird's message.

        Also raises ``BgpError`` if bird is not running or its config file cannot be read or written,
        ``ValidationError`` if ``cfg`` is not a ``BgpConfig``."""
        if not isinstance(cfg, BgpConfig):
            raise ValidationError(f"expected a BgpConfig, not {cfg!r}")
        if not self.running:
            raise BgpError(f"bird for {self.netns} is not running; start() it first")
        text = render_bird_config(cfg, log_path=self._f.log)
        try:
            with open(self._f.config) as f:
                previous = f.read()
        except OSError as exc:
            raise BgpError(f"cannot read the running config {self._f.config}: {exc.strerror or exc}") from exc
        self._write(self._f.config, text)
        try:
            reply = self.birdc("configure")
            if not any(line.strip().endswith(_RECONFIG_OK) for line in reply.splitlines()):
                raise BgpError(f"birdc configure for {self.netns} did not reconfigure", output=reply)
        except BgpError as exc:
            self._write(self._f.config, previous)
            raise BgpError(f"bird in {self.netns} rejected the new config and keeps the previous one",
                           output=_explain(exc.output or str(exc), text)) from None
        self.cfg = cfg

    def status(self) -> list[BgpSession]:
        """Every protocol of ``birdc show protocols`` (use ``.is_bgp`` / ``.established``).

        Raises ``BgpError`` if birdc fails (see ``Bird.birdc``)."""
        return parse_protocols(self.birdc("show", "protocols"))

    def routes(self, *, protocol: str | None = None) -> list[str]:
        """The prefixes in bird's table (``show route``), or only those from ``protocol`` (a peer name).

        Raises ``ValidationError`` if ``protocol`` is not a bird symbol, ``BgpError`` if birdc fails."""
        args = ["show", "route"]
        if protocol is not None:
            if not _SYMBOL.fullmatch(protocol):
                raise ValidationError(f"protocol name {protocol!r} is not a bird symbol")
            args += ["protocol", protocol]
        return parse_routes(self.birdc(*args))

    def wait_established(self, timeout: float = 10.0, interval: float = 0.1) -> list[BgpSession]:
        """Poll until every BGP session is Established and return them.

        Raises ``BgpError`` with the last ``show protocols`` table if they are not Established within
        ``timeout`` seconds, or with bird's log tail if bird is not running (or stops meanwhile)."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if not self.running:
                raise BgpError(f"bird for {self.netns} is not running", output=self.log_tail())
            try:
                last = self.birdc("show", "protocols")
                sessions = [s for s in parse_protocols(last) if s.is_bgp]
                if all(s.established for s in sessions):
                    return sessions
                pending = ", ".join(f"{s.name} ({s.info or s.state})" for s in sessions if not s.established)
            except BgpError as exc:
                last, pending = str(exc), "unknown (birdc failed)"
            if time.monotonic() >= deadline:
                raise BgpError(f"BGP sessions of {self.netns} not Established within {timeout:g}s: {pending}",
                               output=last)
            time.sleep(interval)

    def __repr__(self) -> str:
        state = f"pid {self._pid}" if self._pid else "stopped"
        mode = "daemon" if self.daemonize else "child"
        return f"<Bird {self.netns} AS{self.cfg.asn} {self.cfg.router_id} {mode} {state}>"
