"""BGP through bird2: render a node's (or the leaf's) bird config, run bird in a namespace, read its state.

In native routing every node announces its pod CIDR over eBGP to a leaf router, and installs the pod
CIDRs it learns from the leaf in its kernel (``proto bird``). ciliumlite drives BIRD 2 for that:

>>> cfg = BgpConfig(router_id="10.0.0.11", asn=65011, peers=(BgpPeer("leaf", "10.0.0.254", 65001),),
...                 announce=("10.244.1.0/24",))
>>> with Bird("lab-worker1", cfg, "/tmp/lab/worker1") as bird:   # doctest: +SKIP
...     bird.wait_established(timeout=5)
...     bird.routes(protocol="leaf")
['10.244.2.0/24']

``Bird`` starts ``bird -f -c CONF -s SOCK -P PIDFILE`` inside the namespace as a child of this
process (or, with ``daemonize=True``, lets bird fork into the background as the seed's
``systemctl`` setup does). ``stop()`` ends exactly the pid bird wrote to *our* pidfile (checked
against its command line) and waits until it is gone.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

from ciliumlite.bpf.errors import CiliumliteError, NotSupportedError, ValidationError
from ciliumlite.bpf.netns import netns_path, preexec

__all__ = [
    "ASN_MAX", "BgpConfig", "BgpError", "BgpPeer", "BgpSession", "Bird", "leaf_config", "parse_protocols",
    "parse_routes", "render_bird_config",
]

#: The largest 4-byte AS number.
ASN_MAX = 4294967295

#: Names of the protocols every rendered config defines; a peer cannot use them.
INTERNAL_PROTOCOLS = frozenset({"device1", "direct1", "kernel1", "static1"})

_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_INSTALL_HINT = "apt-get install bird2"
#: Replies of ``birdc configure`` that mean the new config was accepted.
_RECONFIG_OK = ("Reconfigured", "Reconfiguration in progress", "queueing new config")


class BgpError(CiliumliteError):
    """bird or birdc failed. ``output`` holds what bird itself said (stderr, reply or log lines)."""

    def __init__(self, message: str, *, output: str = "") -> None:
        self.output = output.rstrip()
        text = message
        if self.output:
            text += "\n--- bird says ---\n" + self.output
        super().__init__(text)


# --------------------------------------------------------------------------------------------- config


def _ipv4(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what}: expected an IPv4 address as a string, not {value!r}")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValidationError(f"{what}: {value!r} is not an IPv4 address") from None


def _unicast(value: object, what: str) -> str:
    addr = _ipv4(value, what)
    ip = ipaddress.IPv4Address(addr)
    if ip.is_unspecified or ip.is_multicast or addr == "255.255.255.255":
        raise ValidationError(f"{what}: {addr} is not a unicast address")
    return addr


def _asn(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ASN_MAX:
        raise ValidationError(f"{what}: AS number must be an integer in 1..{ASN_MAX}, not {value!r}")
    return value


def _cidr(value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"announce: expected an IPv4 CIDR string, not {value!r}")
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError as exc:
        raise ValidationError(f"announce: {value!r} is not an IPv4 network ({exc})") from None


def _seconds(value: object, what: str, low: int, high: int = 65535) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValidationError(f"{what} must be an integer number of seconds in {low}..{high}, not {value!r}")
    return value


@dataclass(frozen=True)
class BgpPeer:
    """One BGP neighbour: ``name`` becomes the bird protocol name (a bird symbol, e.g. ``leaf``)."""

    name: str
    address: str
    asn: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SYMBOL.fullmatch(self.name):
            raise ValidationError(f"BGP peer name {self.name!r}: use a letter or '_' then letters, digits, '_' "
                                  "(at most 64; it becomes a bird protocol name)")
        if self.name in INTERNAL_PROTOCOLS:
            raise ValidationError(f"BGP peer name {self.name!r} is taken by the rendered config "
                                  f"({', '.join(sorted(INTERNAL_PROTOCOLS))})")
        object.__setattr__(self, "address", _unicast(self.address, f"BGP peer {self.name} address"))
        _asn(self.asn, f"BGP peer {self.name}")


@dataclass(frozen=True)
class BgpConfig:
    """What one BGP speaker (a node or the leaf) does.

    ``announce`` are the CIDRs this router originates (a node's pod CIDR). ``import_routes`` installs
    the routes learned over BGP in the kernel. Timers are in seconds; the defaults converge in about
    a second and notice a silent peer within ``hold_time`` (bird's own defaults: 240/80/5/120).
    ``route_reflect_like`` makes the router re-advertise everything it learned to every peer (the
    leaf); otherwise only ``announce`` is exported. ``local_address`` pins the session's source
    address (``local <ip> as <asn>``); by default bird picks it from the route to the peer.
    """

    router_id: str
    asn: int
    peers: tuple[BgpPeer, ...]
    announce: tuple[str, ...] = ()
    import_routes: bool = True
    hold_time: int = 9
    keepalive: int = 3
    connect_delay: int = 1
    connect_retry: int = 2
    route_reflect_like: bool = False
    local_address: str | None = None

    def __post_init__(self) -> None:
        router_id = _ipv4(self.router_id, "router_id")
        if router_id == "0.0.0.0":
            raise ValidationError("router_id must not be 0.0.0.0")
        object.__setattr__(self, "router_id", router_id)
        _asn(self.asn, "asn")
        raw_peers: object = self.peers
        if isinstance(raw_peers, (str, bytes)) or not isinstance(raw_peers, Iterable):
            raise ValidationError(f"peers: expected a sequence of BgpPeer, not {raw_peers!r}")
        peers = tuple(raw_peers)
        for p in peers:
            if not isinstance(p, BgpPeer):
                raise ValidationError(f"peers: expected BgpPeer, not {p!r}")
        for attr in ("name", "address"):
            values = [getattr(p, attr) for p in peers]
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValidationError(f"peers: duplicate {attr} {', '.join(dup)}")
        object.__setattr__(self, "peers", peers)
        raw_announce: object = self.announce
        if isinstance(raw_announce, (str, bytes)) or not isinstance(raw_announce, Iterable):
            raise ValidationError(f"announce: expected a sequence of CIDRs, not {raw_announce!r}")
        object.__setattr__(self, "announce", tuple(dict.fromkeys(_cidr(c) for c in raw_announce)))
        hold = _seconds(self.hold_time, "hold_time", 3)
        keep = _seconds(self.keepalive, "keepalive", 1)
        if keep > hold:
            raise ValidationError(f"keepalive ({keep}) must be at most hold_time ({hold})")
        _seconds(self.connect_delay, "connect_delay", 0)
        _seconds(self.connect_retry, "connect_retry", 1)
        if self.local_address is not None:
            object.__setattr__(self, "local_address", _unicast(self.local_address, "local_address"))


def leaf_config(router_id: str, asn: int, peers: Iterable[BgpPeer], *, hold_time: int = 9,
                keepalive: int = 3, connect_delay: int = 1, connect_retry: int = 2) -> BgpConfig:
    """The leaf router's config: one eBGP session per node, every learned route re-advertised to every
    node (and installed in the leaf's kernel so it can forward), nothing originated."""
    return BgpConfig(router_id=router_id, asn=asn, peers=tuple(peers), announce=(), import_routes=True,
                     hold_time=hold_time, keepalive=keepalive, connect_delay=connect_delay,
                     connect_retry=connect_retry, route_reflect_like=True)


def _quoted(path: str, what: str) -> str:
    if any(c in path for c in '"\\\n\r'):
        raise ValidationError(f"{what} {path!r}: bird strings cannot hold quotes, backslashes or newlines")
    return f'"{path}"'


def render_bird_config(cfg: BgpConfig, *, log_path: str | None) -> str:
    """The bird2 config text for ``cfg`` (logging everything to ``log_path``; None: no log file).

    Shape (as in the seed's native-routing notes, with the kernel export restricted to BGP routes):
    ``router id``; ``protocol device``; ``protocol direct`` (disabled); ``protocol kernel`` exporting
    only ``RTS_BGP`` routes; ``protocol static`` with ``route <cidr> blackhole;`` per announced CIDR
    (how bird originates a prefix; never exported to the kernel, where the node has the more
    specific per-pod routes); one ``protocol bgp`` per peer.
    """
    if not isinstance(cfg, BgpConfig):
        raise ValidationError(f"expected a BgpConfig, not {cfg!r}")
    role = "leaf: re-advertises every learned route" if cfg.route_reflect_like else "announces its own CIDRs"
    out = [
        f"# Rendered by ciliumlite.bgp for router {cfg.router_id} (AS {cfg.asn}; {role}). Do not edit:",
        "# Bird.reload() rewrites this file and runs `birdc configure`.",
        f"router id {cfg.router_id};",
    ]
    if log_path is not None:
        out.append(f"log {_quoted(log_path, 'log path')} all;")
    out += [
        "# Dates in `show protocols` / `show route` so that they parse the same on every day.",
        "timeformat protocol iso long ms;",
        "timeformat route iso long ms;",
        "",
        "# Interface state, needed to resolve the next hop of directly connected peers.",
        "protocol device device1 { scan time 5; }",
        "",
        "# Connected routes are not announced (as in the seed).",
        "protocol direct direct1 { disabled; ipv4; }",
        "",
    ]
    kernel_export = "where source = RTS_BGP" if cfg.import_routes else "none"
    out += [
        "# Only routes learned over BGP go to the kernel (proto bird); the static blackholes never do.",
        "# persist off: bird removes its kernel routes when it stops.",
        "protocol kernel kernel1 {",
        "  learn off;",
        "  persist off;",
        "  merge paths on;",
        f"  ipv4 {{ import none; export {kernel_export}; }};",
        "}",
        "",
    ]
    if cfg.announce:
        out += ["# What this router originates: one blackhole per CIDR (more specific kernel routes win).",
                "protocol static static1 {", "  ipv4;"]
        out += [f"  route {cidr} blackhole;" for cidr in cfg.announce]
        out += ["}", ""]
    export = "all" if cfg.route_reflect_like else "where source = RTS_STATIC"
    local = f"local {cfg.local_address} as {cfg.asn};" if cfg.local_address else f"local as {cfg.asn};"
    for peer in cfg.peers:
        out += [
            f"protocol bgp {peer.name} {{",
            f"  {local}",
            f"  neighbor {peer.address} as {peer.asn};",
            f"  hold time {cfg.hold_time}; keepalive time {cfg.keepalive};",
            f"  connect delay time {cfg.connect_delay}; connect retry time {cfg.connect_retry};",
            "  error wait time 1, 5;",
            f"  ipv4 {{ import all; export {export}; }};",
            "}",
            "",
        ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class BgpSession:
    """One row of ``birdc show protocols`` (every protocol, not only BGP)."""

    name: str
    proto: str
    table: str
    state: str
    since: str
    info: str = ""

    @property
    def is_bgp(self) -> bool:
        """A BGP session (not device, kernel, static...)."""
        return self.proto == "BGP"

    @property
    def established(self) -> bool:
        """The BGP session is up."""
        return self.is_bgp and self.info.startswith("Established")


_PROTO_ROW = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d{4}-\d{2}-\d{2} \d{1,2}:\d{2}:\d{2}(?:\.\d+)?|\S+)"
                        r"(?:\s+(.*?))?\s*$")
_ROUTE_ROW = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}/\d{1,2})\s")


def parse_protocols(text: str) -> list[BgpSession]:
    """The rows of ``birdc show protocols`` output (the banner and header are skipped)."""
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Name ")) or line[0].isspace():
            continue
        m = _PROTO_ROW.match(line)
        if m:
            rows.append(BgpSession(m[1], m[2], m[3], m[4], m[5], m[6] or ""))
    return rows


def parse_routes(text: str) -> list[str]:
    """The distinct IPv4 prefixes of ``birdc show route`` output, sorted."""
    found = {m[1] for m in map(_ROUTE_ROW.match, text.splitlines()) if m}
    return sorted(found, key=ipaddress.IPv4Network)


def _explain(output: str, config_text: str) -> str:
    """bird's message, plus the config line it points at (``file:LINE:COL message``)."""
    out = output.strip()
    m = re.search(r"\.conf:(\d+):(\d+)", out)
    if m:
        lines = config_text.splitlines()
        n = int(m[1])
        if 1 <= n <= len(lines):
            out += f"\n(config line {n}: {lines[n - 1].strip()})"
    return out


# --------------------------------------------------------------------------------------------- the daemon


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
        not come up within ``start_timeout`` seconds, ``NotSupportedError`` if bird2 is missing.
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
        # It has ended; give PID 1 a moment to reap it, so that the pid really is gone.
        deadline = time.monotonic() + 5.0
        while _proc_state(pid) == "Z" and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, *, keep_files: bool = False) -> None:
        """End our bird (only the pid from our pidfile, checked against its command line), wait until
        it is gone and remove the files in ``workdir``. Safe to call twice."""
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
        """Run ``birdc -s SOCK ARGS...`` and return its output; ``BgpError`` if birdc reports an error.

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
        back (bird keeps running it) and ``BgpError`` carries bird's message."""
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
        """Every protocol of ``birdc show protocols`` (use ``.is_bgp`` / ``.established``)."""
        return parse_protocols(self.birdc("show", "protocols"))

    def routes(self, *, protocol: str | None = None) -> list[str]:
        """The prefixes in bird's table (``show route``), or only those from ``protocol`` (a peer name)."""
        args = ["show", "route"]
        if protocol is not None:
            if not _SYMBOL.fullmatch(protocol):
                raise ValidationError(f"protocol name {protocol!r} is not a bird symbol")
            args += ["protocol", protocol]
        return parse_routes(self.birdc(*args))

    def wait_established(self, timeout: float = 10.0, interval: float = 0.1) -> list[BgpSession]:
        """Poll until every BGP session is Established and return them; ``BgpError`` with the last
        ``show protocols`` table (and log tail) otherwise."""
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
