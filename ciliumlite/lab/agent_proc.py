"""A lab agent's process: its ``ciliumlite agent`` argv (:func:`agent_argv`), the running process
(:class:`AgentProc`: start, ready, log, stop, kill), the lab's timeouts and errors, and what a
killed agent leaves behind (:func:`remove_datapath_leftovers`). Re-exported by :mod:`ciliumlite.lab.agents`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ciliumlite.agent.client import AgentClient, AgentError, AgentUnavailable
from ciliumlite.agent.errors import AgentStartError
from ciliumlite.bgp import BgpConfig, Bird
from ciliumlite.bpf import fs
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.datapath import registry
from ciliumlite.datapath.config import DatapathConfig

if TYPE_CHECKING:
    from ciliumlite.lab.procs import ProcessGroup



AGENT_ARGV = [sys.executable, "-m", "ciliumlite.cli", "agent"]
CNI_ARGV = [sys.executable, "-m", "ciliumlite.cni"]
#: An agent imports the package, loads four BPF objects and joins etcd: a few seconds, more when
#: several start at once on a busy machine.
READY_TIMEOUT = 90.0
#: SIGTERM to exit: the agent removes its endpoints and devices and revokes its lease.
STOP_TIMEOUT = 30.0
#: Until every agent has heard a change through etcd (a watch delivers it in milliseconds).
CONVERGE_TIMEOUT = 30.0
CNI_TIMEOUT = 90.0
#: The plugin's "try again later" (code 11: the agent or its kvstore did not answer in time): a
#: runtime retries the pod's sandbox, and so does the lab, for up to this long.
CNI_RETRY_FOR = 30.0
TRY_AGAIN_LATER = 11
CNI_NETWORK = "ciliumlite"
#: ``ciliumlite agent --routing-mode`` of each ``DatapathConfig.routing``.
ROUTING_FLAG = {"vxlan": "tunnel", "native": "native", "none": "none"}
#: DatapathConfig fields the agent's flags set; any other must keep its default.
_FLAGGED = {"node_name", "pod_cidr", "host_routing", "mtu", "state_dir", "node_ip", "routing", "underlay_device",
            "native_routing_cidr", "kube_proxy_replacement", "socket_lb", "bpf_masquerade", "load_balancer_mode",
            "bgp_asn", "bgp_peers", "enable_policy"}


class LabTimeout(CiliumliteError):
    """Something the lab waits for (an agent's answer, a change reaching every node) did not happen in time."""


class CniCallError(CiliumliteError):
    """The CNI plugin failed: ``code`` and ``msg`` are the spec's error (None when it printed none)."""

    def __init__(self, command: str, code: int | None, msg: str, details: str = "") -> None:
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        super().__init__(f"CNI {command} failed" + (f" (code {code})" if code is not None else "") + f": {msg}"
                         + (f": {details}" if details else ""))


def agent_argv(cfg: DatapathConfig, *, netns: str | None = None, cgroup: str | None = None, kvstore: str = "memory",
               endpoints: Sequence[str] = (), cluster: str | None = None, lease_ttl: int | None = None,
               remove_datapath_on_exit: bool = False) -> list[str]:
    """The ``ciliumlite agent`` command line that runs the datapath ``cfg`` describes.

    Raises :class:`ValidationError` for a setting the agent has no flag for (``tc_mode``,
    ``extra_rodata``, ``monitor_trace``, ...: they must keep their defaults).
    """
    default = DatapathConfig()
    for f in fields(DatapathConfig):
        if f.name not in _FLAGGED and getattr(cfg, f.name) != getattr(default, f.name):
            raise ValidationError(f"{f.name}={getattr(cfg, f.name)!r}: the agent has no flag for it "
                                  "(an in-process Lab() node takes every DatapathConfig setting)")
    argv = [*AGENT_ARGV, "--node", cfg.node_name, "--pod-cidr", cfg.pod_cidr, "--routing-mode",
            ROUTING_FLAG[cfg.routing], "--node-ip", cfg.node_ip, "--devices", cfg.underlay_device, "--mtu",
            str(cfg.mtu), "--ipv4-native-routing-cidr", cfg.native_routing_cidr, "--bpf-lb-mode",
            cfg.load_balancer_mode,
            "--enable-bpf-masquerade" if cfg.bpf_masquerade else "--disable-bpf-masquerade",
            "--bpf-lb-sock" if cfg.socket_lb else "--no-bpf-lb-sock",
            "--enable-policy", "default" if cfg.enable_policy else "never",
            "--kube-proxy-replacement" if cfg.kube_proxy_replacement else "--no-kube-proxy-replacement",
            "--enable-host-legacy-routing" if cfg.host_routing == "legacy" else "--disable-host-legacy-routing",
            "--kvstore", kvstore]
    if cfg.state_dir:
        argv += ["--state-dir", cfg.state_dir]
    if cfg.bgp_asn is not None:
        argv += ["--bgp-asn", str(cfg.bgp_asn)]
        for p in cfg.bgp_peers:
            argv += ["--bgp-peer", f"{p.name}={p.address}:{p.asn}"]
    if netns is not None:
        argv += ["--netns", netns]
    if cgroup is not None:
        argv += ["--cgroup", cgroup]
    if endpoints:
        argv += ["--kvstore-endpoints", ",".join(endpoints)]
    if cluster is not None:
        argv += ["--cluster-name", cluster]
    if lease_ttl is not None:
        argv += ["--kvstore-lease-ttl", str(lease_ttl)]
    if remove_datapath_on_exit:
        argv.append("--remove-datapath-on-exit")
    return argv


class AgentProc:
    """One ``ciliumlite agent`` process, started through a lab's process group in ``netns`` (and
    ``cgroup``); ``socket`` is where its API will listen.

    What it writes (its log, on stderr) is collected by threads: a full pipe would block it.
    Raises ``OSError`` or ``subprocess.SubprocessError`` if it cannot start.
    """

    def __init__(self, group: ProcessGroup, node: str, socket: str, argv: Sequence[str], netns: str,
                 cgroup: str | None = None) -> None:
        self.group = group
        self.node = node
        self.socket = socket
        self.argv = list(argv)
        self.proc = group.popen(netns, self.argv, cgroup)
        self._lines: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(pipe,), name=f"agent-log-{node}", daemon=True)
                         for pipe in (self.proc.stderr, self.proc.stdout) if pipe is not None]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: Any) -> None:
        with contextlib.suppress(ValueError, OSError):  # the pipe was closed under us (the process stopped)
            for line in pipe:
                self._lines.append(line)

    @property
    def pid(self) -> int:
        """The agent's pid."""
        return self.proc.pid

    @property
    def running(self) -> bool:
        """The process has not exited."""
        return self.proc.poll() is None

    @property
    def log(self) -> str:
        """What the agent wrote so far."""
        return "".join(self._lines)

    def log_tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of :attr:`log`."""
        return "".join(self._lines[-lines:])

    def client(self, timeout: float = 60.0) -> AgentClient:
        """A client of the agent's API."""
        return AgentClient(self.socket, timeout=timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the API answers ``healthz`` with ok (the agent joined the cluster).

        Raises :class:`AgentStartError` with the end of its log if it exits first or is not ready
        within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if not self.running:
                self._join()
                raise AgentStartError(f"agent of {self.node} exited with status {self.proc.returncode}; "
                                      f"its log ends:\n{self.log_tail()}")
            try:
                health = self.client(timeout=5).healthz()
                if health.get("status") == "ok":
                    return
                last = str(health)
            except (AgentUnavailable, AgentError) as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise AgentStartError(f"agent of {self.node} not ready after {timeout:g} s ({last}); "
                                      f"its log ends:\n{self.log_tail()}")
            time.sleep(0.1)

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the exit status; the process is then forgotten by the group.

        Raises :class:`CiliumliteError` if it still runs after ``timeout`` seconds.
        """
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CiliumliteError(f"agent of {self.node} still runs after {timeout:g} s:\n{self.log_tail()}") from None
        self._join()
        self.group.stop(self.proc)
        return rc

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (by pid) and the exit status. Raises as :meth:`wait_exit`."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.wait_exit(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds: always ends it. Returns the exit status."""
        try:
            return self.terminate(timeout)
        except CiliumliteError:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL (a crash: nothing of its own cleanup runs) and the exit status."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        return self.wait_exit(10.0)


def stop_agents(agents: Iterable[AgentProc], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every running agent first (they may talk to etcd and to each other while stopping),
    then wait for each, SIGKILLing one that is still there after ``timeout`` seconds."""
    running = [a for a in agents if a.running]
    for agent in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for agent in running:
        try:
            agent.wait_exit(max(0.1, deadline - time.monotonic()))
        except CiliumliteError:
            agent.kill()


def remove_datapath_leftovers(node_name: str, pin_dir: str, bird: Bird | None = None) -> list[str]:
    """What an agent that did not remove its datapath left (it kept it, or it was killed): its
    bird (stopped by the pid in its pidfile), its pin directory (maps and pinned links: the
    programs detach) and its registry entry. Returns what was removed.

    Raises :class:`ValidationError` for a pin directory outside ``/sys/fs/bpf``.
    """
    removed = []
    if bird is not None:
        bird.stop()
        removed.append(f"bird of {node_name}")
    if os.path.isdir(pin_dir):
        fs.remove_pin_dir(pin_dir)
        removed.append(pin_dir)
    closing = registry.run_dir() / f"{node_name}{registry.CLOSING_SUFFIX}"
    if registry.entry_path(node_name).exists() or closing.exists():
        registry.withdraw(node_name)
        registry.release(node_name)
        removed.append(f"registry entry {node_name}")
    return removed


def _bgp_config(cfg: DatapathConfig) -> BgpConfig:
    # What the agent's datapath gives its bird (ciliumlite.node.routing.BgpRoutes).
    assert cfg.bgp_asn is not None
    return BgpConfig(router_id=cfg.node_ip, asn=cfg.bgp_asn, peers=cfg.bgp_peers, announce=(cfg.pod_cidr,))


