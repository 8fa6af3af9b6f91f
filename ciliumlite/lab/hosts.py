"""Hosts in a lab (pods and the outside client) and what their probes report: ping and echo results."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.endpoint import Endpoint
from ciliumlite.lab import procs

if TYPE_CHECKING:
    from ciliumlite.lab.lab import Lab
    from ciliumlite.lab.node import Node

_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) errors)?")
_PING_RTT = re.compile(r"= [\d.]+/([\d.]+)/")


@dataclass(frozen=True)
class PingResult:
    """Parsed ``ping`` output."""

    target: str
    transmitted: int
    received: int
    rtt_avg_ms: float | None
    errors: int = 0
    output: str = field(repr=False, default="")

    @classmethod
    def parse(cls, target: str, output: str) -> PingResult:
        """From iputils ``ping``'s stdout and stderr; no summary line (ping did not run) reads as 0 sent."""
        m = _PING_COUNTS.search(output)
        rtt = _PING_RTT.search(output)
        return cls(target, int(m.group(1)) if m else 0, int(m.group(2)) if m else 0,
                   float(rtt.group(1)) if rtt else None, int(m.group(3) or 0) if m else 0, output)

    @property
    def too_big(self) -> bool:
        """The packet was refused as larger than the path MTU (local error or frag-needed)."""
        return "message too long" in self.output or "Frag needed" in self.output

    @property
    def ok(self) -> bool:
        """Every echo request was answered."""
        return self.transmitted > 0 and self.received == self.transmitted


@dataclass(frozen=True)
class EchoResult:
    """One request/response to a lab echo server, as the probe script (``_probe.py``) reports it."""

    ok: bool
    reply: str = ""
    server: str = ""
    seen_client: str = ""
    peer: tuple[str, int] | None = None
    error: str = ""
    errno: int | None = None
    seconds: float = 0.0

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> EchoResult:
        """From the JSON line the probe prints (already decoded); missing keys read as empty.

        The echo server answers ``payload|server|client-ip:port``; a reply of another shape is kept
        whole in ``reply``, with ``server`` and ``seen_client`` empty.
        """
        reply = str(raw.get("reply", ""))
        parts = reply.rsplit("|", 2)
        server, seen = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
        peer = tuple(raw["peer"]) if raw.get("peer") else None
        return cls(bool(raw.get("ok")), parts[0] if len(parts) == 3 else reply, server, seen,
                   peer, str(raw.get("error", "")), raw.get("errno"), float(raw.get("seconds", 0.0)))

    @classmethod
    def from_output(cls, stdout: str, stderr: str) -> EchoResult:
        """From the probe's whole output: its last stdout line, or a failed result quoting ``stderr``
        when that is no JSON (the probe crashed or never ran)."""
        try:
            return cls.parse(json.loads(stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            return cls(False, error=f"probe failed: {stderr.strip()}")


@public_methods_off_event_loop
class Host:
    """Something in a namespace that runs commands and talks to others: a pod, or the outside client."""

    def __init__(self, lab: Lab, name: str, netns: str, ip: str, cgroup: str | None) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self._ip = ip
        self.cgroup = cgroup
        self._echo_ports: set[int] = set()

    @property
    def ip(self) -> str:
        """The host's IPv4 address."""
        return self._ip

    def run(self, *argv: str, timeout: float = 30.0) -> Any:
        """Run a command here (the namespace, and the node's cgroup for pods): a ``CompletedProcess``.

        A failing command is no error (read ``returncode``).

        Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds, ``OSError`` or
        ``subprocess.SubprocessError`` if it cannot start (no such program, the namespace is gone).
        """
        return self.lab.processes.run(self.netns, argv, self.cgroup, timeout=timeout)

    def popen(self, *argv: str) -> Any:
        """Start a long-running command here (a ``Popen``, stdout piped); the lab ends it on close.

        Raises as :meth:`run` if it cannot start.
        """
        return self.lab.processes.popen(self.netns, argv, self.cgroup)

    def ping(self, target: str | Host, count: int = 3, *, size: int | None = None, dont_fragment: bool = False,
             interval: float = 0.2, timeout: float = 2.0) -> PingResult:
        """Real ICMP echo from this host; parsed results (unanswered pings are a result, not an error).

        Raises ``subprocess.TimeoutExpired`` if ``ping`` itself hangs well past its own deadline.
        """
        dst = target.ip if isinstance(target, Host) else str(target)
        argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(timeout), dst]
        if size is not None:
            argv[1:1] = ["-s", str(size)]
        if dont_fragment:
            argv[1:1] = ["-M", "do"]
        res = self.run(*argv, timeout=count * (interval + timeout) + 5)
        return PingResult.parse(dst, res.stdout + res.stderr)

    def ensure_echo_server(self, port: int) -> None:
        """Start the lab echo server (TCP and UDP) on ``port`` in this host, once.

        Raises :class:`ValidationError` for a port outside 1..65535, :class:`CiliumliteError` if the
        server does not report ready (the port is taken, say).
        """
        if port in self._echo_ports:
            return
        if not 1 <= port <= 65535:
            raise ValidationError(f"port {port} is outside 1..65535")
        proc = self.popen(*procs.python_script(procs.ECHO, self.name, str(port)))
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise CiliumliteError(f"echo server on {self.name}:{port} did not start: {line!r} {err}")
        self._echo_ports.add(port)

    def _echo(self, proto: str, ip: str, port: int, payload: str, timeout: float) -> EchoResult:
        owner = self.lab.pod_by_ip(ip)
        if owner is not None:
            owner.ensure_echo_server(port)
        res = self.run(*procs.python_script(procs.PROBE, proto, ip, str(port), payload, str(timeout)),
                       timeout=timeout + 10)
        return EchoResult.from_output(res.stdout, res.stderr)

    def tcp_echo(self, ip: str | Host, port: int = 80, payload: str = "hello", timeout: float = 3.0) -> EchoResult:
        """Connect, send ``payload``, read the echo (the server in a lab pod is started as needed).

        A refused or timed-out connection is a result (``ok`` false); raises as
        :meth:`ensure_echo_server` when the target is a lab pod whose server cannot start.
        """
        return self._echo("tcp", ip.ip if isinstance(ip, Host) else ip, port, payload, timeout)

    def udp_echo(self, ip: str | Host, port: int = 80, payload: str = "hello", timeout: float = 3.0) -> EchoResult:
        """One UDP datagram and its echo; results and errors as :meth:`tcp_echo`."""
        return self._echo("udp", ip.ip if isinstance(ip, Host) else ip, port, payload, timeout)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.ip}>"


@public_methods_off_event_loop
class Pod(Host):
    """A pod: a network namespace joined to its node by a veth, with an endpoint in the datapath."""

    def __init__(self, node: Node, name: str, netns: str, endpoint: Endpoint, *, namespace: str = "default",
                 labels: dict[str, str] | None = None) -> None:
        super().__init__(node.lab, name, netns, str(endpoint.ip), node.cgroup)
        self.node = node
        self.endpoint = endpoint
        #: Its Kubernetes namespace and labels (what network policies select it by).
        self.namespace = namespace
        self.labels = labels or {}

    def __repr__(self) -> str:
        return f"<Pod {self.name} {self.ip} on {self.node.name}>"
