"""The context scenarios run in: the deployed workloads, the lab's configuration, and probes.

:class:`ConnectivityContext` holds what :class:`~ciliumlite.connectivity.ConnectivityTest`
deployed (client pods, echo pods, the outside host, the services) and sends requests between them:
:meth:`~ConnectivityContext.probes` (TCP/UDP, one :class:`Probe` each) and
:meth:`~ConnectivityContext.ping` (ICMP). The workload constants (:data:`ECHO_PORT`,
:data:`SERVICES`) describe the deployment both the runner and the scenarios rely on.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ciliumlite.bpf.errors import CiliumliteError
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import EchoResult, Host, Lab, LabCluster, Node, Pod, procs
from ciliumlite.service import Service

__all__ = ["ECHO_PORT", "SERVICES", "ConnectivityContext", "Probe", "Runner", "source_label", "with_context"]

#: The port every echo server (the echo pods and the outside host) serves TCP and UDP on.
ECHO_PORT = 8080
#: Service name -> (ClusterIP, node port, externalTrafficPolicy). Addresses from 10.96.0.0/12.
SERVICES: dict[str, tuple[str, int, Literal["Cluster", "Local"]]] = {
    "echo-same-node": ("10.96.77.10", 31970, "Cluster"),
    "echo-other-node": ("10.96.77.11", 31971, "Cluster"),
    "echo-other-node-local": ("10.96.77.12", 31972, "Local"),
}

#: Where a probe can start: a pod or the outside host, or a node's own network namespace.
Runner = Host | Node


def source_label(source: Runner) -> str:
    """How a probe names its source: the pod or host name, or ``node NAME``."""
    return f"node {source.name}" if isinstance(source, Node) else source.name


@dataclass(frozen=True)
class Probe:
    """One TCP/UDP request from a pod, a node or the outside host to an echo server.

    ``echo`` is the lab's reading of the answer (who answered, whom the server saw, the error);
    ``reply_from`` is where a UDP reply came from (``recvfrom()``), which the lab's reading omits.
    """

    source: str
    proto: str
    ip: str
    port: int
    echo: EchoResult
    reply_from: tuple[str, int] | None = None

    @property
    def ok(self) -> bool:
        """Whether the echo server answered."""
        return self.echo.ok

    @property
    def server(self) -> str:
        """The name of the echo server that answered ("" without an answer)."""
        return self.echo.server

    @property
    def peer(self) -> tuple[str, int] | None:
        """``getpeername()`` of the client socket: the address the client thinks it talks to."""
        return self.echo.peer

    @property
    def seen_ip(self) -> str:
        """The client address the echo server saw."""
        return self.echo.seen_client.rsplit(":", 1)[0]

    @property
    def target(self) -> str:
        """``ip:port/PROTO``."""
        return f"{self.ip}:{self.port}/{self.proto.upper()}"

    def __str__(self) -> str:
        if not self.ok:
            return f"{self.source} -> {self.target}: {self.echo.error or 'no answer'}"
        return f"{self.source} -> {self.target}: answered by {self.server}, seen as {self.seen_ip}"


@dataclass
class ConnectivityContext:
    """The deployed workloads and the lab's configuration, as scenarios see them.

    ``setup_errors`` names setup parts that failed (``"services"``); ``expected_drops`` and
    ``drops_before`` are what ``no-unexpected-packet-drops`` compares (see :meth:`start_run`).
    """

    lab: Lab
    cluster: LabCluster
    nodes: list[Node]
    client: Pod
    client2: Pod
    echo_same: Pod
    echo_other: Pod
    outside: Host
    services: dict[str, Service] = field(default_factory=dict)
    setup_errors: dict[str, str] = field(default_factory=dict)
    timeout: float = 2.0
    expected_drops: dict[int, str] = field(default_factory=dict)
    drops_before: dict[str, dict[tuple[int, int], int]] = field(default_factory=dict)

    @property
    def config(self) -> DatapathConfig:
        """The datapath configuration (of the first node; a lab's nodes share it).

        Raises :class:`ValueError` if the first node has no datapath (the runner never builds
        such a context).
        """
        try:
            return self.nodes[0].view.config
        except CiliumliteError:
            raise ValueError(f"node {self.nodes[0].name} has no datapath") from None

    @property
    def lb_mode(self) -> str:
        """snat, dsr or hybrid."""
        return self.config.load_balancer_mode

    def proto_mode(self, proto: str) -> str:
        """How NodePort traffic of ``proto`` reaches a remote backend: ``snat`` or ``dsr``."""
        if self.lb_mode == "hybrid":
            return "dsr" if proto.lower() == "tcp" else "snat"
        return self.lb_mode

    def protos_in(self, mode: str) -> list[str]:
        """The protocols whose NodePort traffic uses ``mode`` here."""
        return [p for p in ("tcp", "udp") if self.proto_mode(p) == mode]

    def backend_pod(self, svc: str) -> Pod:
        """The echo pod behind one of our services."""
        return self.echo_same if svc.startswith("echo-same") else self.echo_other

    def counter(self, node: Node, reason: Reason) -> int:
        """A datapath counter of ``node`` (read through ``node.view``, wherever the datapath runs)."""
        return node.view.count(reason)

    def drop_counts(self, node: Node) -> dict[tuple[int, int], int]:
        """``node``'s drop counters: (reason, direction) -> packets (empty without BPF)."""
        return {(m.reason, m.direction): m.packets for m in node.view.metrics() if m.is_drop}

    def start_run(self) -> None:
        """Begin a run: remember every node's drop counters, and no drop is expected yet."""
        self.drops_before = {n.name: self.drop_counts(n) for n in self.nodes}
        self.expected_drops = {}

    def expect_drop(self, reason: Reason, why: str) -> None:
        """Declare that a scenario provokes drops for ``reason`` on purpose."""
        self.expected_drops[int(reason)] = why

    # -- probes ------------------------------------------------------------------------------------
    def probe(self, source: Runner, proto: str, ip: str, port: int, timeout: float | None = None) -> Probe:
        """One request (see :meth:`probes`)."""
        return self.probes([(source, proto, ip, port)], timeout)[0]

    def probes(self, wanted: Sequence[tuple[Runner, str, str, int]], timeout: float | None = None) -> list[Probe]:
        """Run several requests at once and return one :class:`Probe` each, in order.

        Each is a TCP connect + send + read-to-EOF, or one UDP datagram and its echo, through the
        lab's probe script; it reports the reply, ``getpeername()`` and (UDP) ``recvfrom()``'s source.
        The probes are processes of the lab's process group, so closing the lab ends them too; each
        is ended and reaped here before this returns, also when it is interrupted. A probe that
        cannot start or does not finish is a failed :class:`Probe`, never an exception.
        """
        limit = self.timeout if timeout is None else timeout
        group = self.lab.processes
        started: list[tuple[str, str, str, int, subprocess.Popen[str] | None, str]] = []
        try:
            # Start them all before reading any: they run in parallel, so a batch takes one timeout.
            for source, proto, ip, port in wanted:
                argv = procs.python_script(procs.PROBE, proto, ip, str(port), f"conn-{proto}", str(limit))
                try:
                    proc: subprocess.Popen[str] | None = group.popen(source.netns, argv, source.cgroup)
                    err = ""
                except OSError as exc:
                    proc, err = None, f"could not start the probe: {exc}"
                started.append((source_label(source), proto, ip, port, proc, err))
            return [_finish(label, proto, ip, port, proc, err, limit) for label, proto, ip, port, proc, err in started]
        finally:
            for *_, proc, _err in started:
                if proc is not None:
                    group.stop(proc)

    def ping(self, source: Host, target: str, *, size: int | None = None, dont_fragment: bool = False,
             count: int = 2) -> tuple[bool, str]:
        """ICMP echo from a pod or host: (all answered, a one-line summary)."""
        res = source.ping(target, count=count, size=size, dont_fragment=dont_fragment, interval=0.05,
                          timeout=self.timeout)
        what = f"{source.name} -> {target} ICMP" + (f" {size}+28 bytes DF" if dont_fragment and size else "")
        if res.too_big:
            return False, f"{what}: refused, larger than the path MTU"
        return res.ok, f"{what}: {res.received}/{res.transmitted} answered"


def with_context(ctx: ConnectivityContext, **changes: Any) -> ConnectivityContext:
    """A copy of ``ctx`` with some workloads swapped (e.g. ``echo_other=`` a broken pod).

    Raises :class:`TypeError` for a name that is not a field of the context.
    """
    return dataclasses.replace(ctx, **changes)


def _finish(label: str, proto: str, ip: str, port: int, proc: subprocess.Popen[str] | None, err: str,
            limit: float) -> Probe:
    """Wait for one probe process and read its JSON line with the lab's parser."""
    if proc is None:
        return Probe(label, proto, ip, port, EchoResult(False, error=err))
    # The script gives up after ``limit``; the margin covers interpreter start-up on a busy machine.
    try:
        stdout, stderr = proc.communicate(timeout=limit + 10)
    except subprocess.TimeoutExpired:
        return Probe(label, proto, ip, port, EchoResult(False, error=f"the probe did not finish in {limit + 10:.0f}s"))
    try:
        raw = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Probe(label, proto, ip, port, EchoResult(False, error=f"probe failed: {stderr.strip()[-300:]}"))
    return Probe(label, proto, ip, port, EchoResult.parse(raw), _pair(raw.get("reply_from")))


def _pair(value: Any) -> tuple[str, int] | None:
    """An ``[address, port]`` JSON list as a tuple (None if it is not one)."""
    if isinstance(value, list) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
