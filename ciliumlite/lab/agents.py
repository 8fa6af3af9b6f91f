"""Lab nodes run by their own agent process: the nodes of ``Lab(store="etcd")``.

An :class:`AgentNode` is a lab :class:`~ciliumlite.lab.node.Node` (namespace, child cgroup, port on
the fabric, pods) whose datapath is not an object of this process: ``ciliumlite agent`` runs it,
started through the lab's process group in the node's namespace and cgroup (:class:`AgentProc`),
with etcd in the fabric as its kvstore. ``node.datapath`` is None; ``node.view``
(:class:`~ciliumlite.lab.view.PinnedView`) reads the datapath from its pins and the agent's API.
Pods are made the way a container runtime makes them: the lab execs the CNI plugin
(``python -m ciliumlite.cni``) with the ``CNI_*`` environment and the network config on stdin, and
the agent makes the endpoint. An :class:`AgentCluster` writes services to etcd and waits until every
agent has programmed them; nodes join and leave by starting and stopping their agents.

What an agent makes is in the lab's record before it starts (its pins, registry entry and bird, as
for an in-process node; the agent process itself through the process group), so a killed lab is
swept like any other. On close an agent gets SIGTERM and removes its datapath itself
(``--remove-datapath-on-exit``); what a SIGKILLed agent left (bird, pins, registry entry) is removed
by the node.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ciliumlite.agent.client import SOCKET_NAME, AgentClient, AgentError, AgentUnavailable
from ciliumlite.agent.errors import AgentStartError
from ciliumlite.bgp import BgpConfig, Bird
from ciliumlite.bpf import fs
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.cluster import Cluster, NodeInfo
from ciliumlite.datapath import registry
from ciliumlite.datapath.config import DatapathConfig, HostRouting
from ciliumlite.endpoint import Endpoint
from ciliumlite.lab import owned
from ciliumlite.lab.cluster import LabCluster
from ciliumlite.lab.hosts import Pod
from ciliumlite.lab.node import Node
from ciliumlite.lab.view import NodeView, PinnedView
from ciliumlite.ownership.record import name_in_scope
from ciliumlite.service import Service

if TYPE_CHECKING:
    from ciliumlite.lab.etcd import LabEtcd
    from ciliumlite.lab.lab import Lab
    from ciliumlite.lab.procs import ProcessGroup

__all__ = ["AGENT_ARGV", "CNI_ARGV", "AgentCluster", "AgentNode", "AgentProc", "CniCallError", "LabTimeout",
           "agent_argv", "remove_datapath_leftovers", "stop_agents", "wait_converged", "wait_forgotten",
           "wait_services"]

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
            "bgp_asn", "bgp_peers"}


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


@public_methods_off_event_loop
class AgentNode(Node):
    """A lab node whose datapath is run by its own ``ciliumlite agent`` process, over the lab's etcd.

    Made by :meth:`Lab.add_node <ciliumlite.lab.Lab.add_node>` in an etcd lab. ``datapath`` is
    None; read the datapath through :attr:`view`, the agent through :meth:`client`. ``config`` is
    the :class:`DatapathConfig` the agent was started with; ``lease_ttl`` its etcd lease's TTL.
    Raises :class:`ValidationError` for a node off the underlay (``routing="none"``: etcd is
    reached over it) or a setting the agent has no flag for, and what starting a process raises.
    """

    def __init__(self, lab: Lab, name: str, index: int, pod_cidr: str, host_routing: HostRouting, *,
                 etcd: LabEtcd, lease_ttl: int, **config: Any) -> None:
        if config.get("routing", "none") == "none":
            raise ValidationError(f"node {name!r}: a node of an etcd lab is on the underlay (its agent reaches "
                                  "etcd over it): use routing='vxlan' or 'native'")
        self.agent: AgentProc | None = None
        self.config: DatapathConfig | None = None
        self.lease_ttl = lease_ttl
        self._etcd = etcd
        self._bird: Bird | None = None
        self._ready = False
        super().__init__(lab, name, index, pod_cidr, host_routing, **config)

    # -- the agent ----------------------------------------------------------------------------------
    def _start_datapath(self, cfg: DatapathConfig) -> None:
        argv = agent_argv(cfg, netns=self.netns, cgroup=self.cgroup, kvstore="etcd", endpoints=self._etcd.endpoints,
                          cluster=self.lab.prefix, lease_ttl=self.lease_ttl, remove_datapath_on_exit=True)
        self._claim_datapath(cfg)
        self.config = cfg
        self.agent = AgentProc(self.lab.processes, cfg.node_name, self.socket, argv, self.netns, self.cgroup)

    def ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the agent answers (it has built the datapath and joined the cluster), then
        record what it made (its pins' inode, its bird's pid). Raises :class:`AgentStartError`
        with the end of the agent's log."""
        if self._ready:
            return
        if self.agent is None or self.config is None:
            raise AgentStartError(f"{self.name} has no agent")
        self.agent.wait_ready(timeout)
        self._settle_datapath(self.config)
        self._ready = True

    def _cfg(self) -> DatapathConfig:
        if self.config is None:
            raise CiliumliteError(f"{self.name} has no agent")
        return self.config

    @property
    def socket(self) -> str:
        """The agent's API socket: ``<lab work dir>/<node>/agent.sock``."""
        return os.path.join(self._cfg().run_dir, SOCKET_NAME)

    def client(self, timeout: float = 30.0) -> AgentClient:
        """A client of the node's agent (its API on :attr:`socket`)."""
        return AgentClient(self.socket, timeout=timeout)

    def status(self) -> dict[str, Any]:
        """The agent's ``GET /v1/status``. Raises ``AgentUnavailable`` / ``AgentError``."""
        return self.client().status()

    @property
    def view(self) -> NodeView:
        """The datapath as its pins and the agent show it. Raises :class:`CiliumliteError` before
        the agent is started."""
        return PinnedView(self._cfg(), self.client())

    @property
    def bird(self) -> Bird | None:
        """A handle on the bird the agent's datapath runs (native routing with BGP), or None."""
        cfg = self.config
        if cfg is None or cfg.bgp_asn is None:
            return None
        if self._bird is None or not self._bird.running:
            self._bird = Bird.attach(self.netns, _bgp_config(cfg), os.path.join(cfg.run_dir, "bird"))
        return self._bird

    @property
    def info(self) -> NodeInfo:
        """This node as the agent records it in etcd (named ``<lab prefix>-<node>``)."""
        cfg = self._cfg()
        assert self.ip is not None
        return NodeInfo(cfg.node_name, self.ip, cfg.pod_cidr)

    def stop_agent(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the agent (SIGKILL after ``timeout`` s) and its exit status (None: no agent ran).

        A SIGTERMed agent deletes its keys (the others forget the node at once) and removes its
        datapath; the node's namespaces stay until :meth:`close`.
        """
        if self.agent is None:
            return None
        if not self.agent.running:
            return self.agent.wait_exit(1.0)
        return self.agent.stop(timeout)

    # -- pods, through the CNI plugin ---------------------------------------------------------------
    def _cni(self, command: str, container_id: str, netns: str, pod: str,
             labels: dict[str, str] | None = None) -> dict[str, Any] | None:
        """Exec the CNI plugin as a runtime does: the ``CNI_*`` environment and the config on stdin."""
        conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": CNI_NETWORK, "type": "ciliumlite-cni",
                                "agent_socket": self.socket}
        if labels:
            conf["labels"] = labels
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={pod}", "CNI_PATH": "/usr/lib/cni",
               "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        if "PYTHONPATH" in os.environ:  # a checkout run without installing: the plugin imports the same code
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        res = self.lab.processes.run(self.netns, CNI_ARGV, timeout=CNI_TIMEOUT, env=env, input=json.dumps(conf))
        out = res.stdout.strip()
        try:
            data = json.loads(out.splitlines()[-1]) if out else None
        except ValueError:
            raise CniCallError(command, None, f"not JSON: {out[-300:]!r}", res.stderr.strip()[-500:]) from None
        if res.returncode != 0:
            err = data if isinstance(data, dict) else {}
            raise CniCallError(command, err.get("code"), str(err.get("msg", f"exit status {res.returncode}")),
                               str(err.get("details", "")) or res.stderr.strip()[-500:])
        return data if isinstance(data, dict) else None

    def _cni_retrying(self, command: str, container_id: str, netns: str, pod: str,
                      labels: dict[str, str] | None = None) -> dict[str, Any] | None:
        """:meth:`_cni`, again with backoff while the plugin says "try again later" (for up to
        :data:`CNI_RETRY_FOR` seconds), as kubelet retries a pod sandbox."""
        deadline = time.monotonic() + CNI_RETRY_FOR
        delay = 0.5
        while True:
            try:
                return self._cni(command, container_id, netns, pod, labels)
            except CniCallError as exc:
                if exc.code != TRY_AGAIN_LATER or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 4.0)

    def _container_id(self, pod: str) -> str:
        return f"{self.lab.prefix}-{self.name}-{pod}"

    def add_pod(self, name: str, ip: str | None = None, **endpoint_kw: Any) -> Pod:
        """A pod namespace connected by the CNI plugin (ADD), its address from the agent.

        ``labels`` (the only endpoint setting the plugin passes; default ``{"name": name}``) give
        its identity, allocated cluster-wide through etcd. A "try again later" of the plugin (etcd
        slow or away) is retried for up to 30 s. Raises :class:`ValidationError` if the pod exists
        already or for ``ip`` and other settings (the agent allocates), and :class:`CniCallError`
        with the plugin's error; nothing of the pod is left then.
        """
        if name in self.pods:
            raise ValidationError(f"pod {name!r} exists already on {self.name}")
        unsupported = sorted(set(endpoint_kw) - {"labels"})
        if ip is not None or unsupported:
            raise ValidationError(f"pod {name!r}: {', '.join(['ip'] * (ip is not None) + unsupported)} cannot be "
                                  "set through the CNI plugin (the agent allocates the address and the identity)")
        labels = dict(endpoint_kw.get("labels") or {"name": name})
        ns = owned.make_netns(self.lab.record, f"{self.lab.prefix}-{self.name}-{name}")
        cid, path = self._container_id(name), f"/var/run/netns/{ns}"
        try:
            res = self._cni_retrying("ADD", cid, path, name, labels)
            got = self.client().endpoint(cid)
            if res is None or not any(str(i.get("address", "")).split("/")[0] == got["ip"] for i in res.get("ips", [])):
                raise CniCallError("ADD", None, f"the result {res!r} does not give the agent's address {got['ip']}")
        except BaseException:
            with contextlib.suppress(Exception):
                self._cni("DEL", cid, path, name)
            owned.remove_netns(self.lab.record, ns)
            raise
        ep = Endpoint(id=int(got["endpoint"]["id"]), name=name, ip=ipaddress.IPv4Address(got["ip"]), pod_netns=ns,
                      ifname=got["host_ifname"], ifindex=int(got["host_ifindex"]), mac=got["mac"],
                      node_mac=got["host_mac"], identity=int(got["identity"]), labels=dict(got["labels"]))
        pod = Pod(self, name, ns, ep)
        self.pods[name] = pod
        return pod

    def remove_pod(self, name: str) -> None:
        """Remove a pod: its processes, its endpoint (CNI DEL), then its namespace.

        Raises ``KeyError`` for a pod this node does not have, :class:`CniCallError` if the
        plugin fails (the namespace is removed all the same).
        """
        pod = self.pods.pop(name)
        self.lab.processes.stop_in({pod.netns})
        try:
            self._cni_retrying("DEL", self._container_id(name), f"/var/run/netns/{pod.netns}", name)
        finally:
            owned.remove_netns(self.lab.record, pod.netns)

    # -- teardown -----------------------------------------------------------------------------------
    def _remove_leftovers(self) -> None:
        cfg = self.config
        if cfg is None or (self.agent is not None and self.agent.running):
            return
        if not name_in_scope(cfg.pin_dir, self.lab.prefix):
            return  # a pin directory the caller chose outside the lab is not the lab's to remove
        remove_datapath_leftovers(cfg.node_name, cfg.pin_dir, self.bird)

    def close(self) -> None:
        """Stop the agent (SIGTERM: it removes its datapath), remove what a killed agent left, then
        the pods' and the node's namespaces and its cgroup. Safe to call twice.

        Raises :class:`CiliumliteError` naming what failed (the rest is removed).
        """
        failures = []
        try:
            self.stop_agent()
        except Exception as exc:
            failures.append(f"stopping the agent: {exc}")
        try:
            self._remove_leftovers()
        except Exception as exc:
            failures.append(f"removing what the agent left: {exc}")
        self._bird = None
        try:
            super().close()
        except Exception as exc:
            failures.append(str(exc))
        if failures:
            raise CiliumliteError(f"closing {self.name}: " + "; ".join(failures))

    def __repr__(self) -> str:
        state = f"agent pid {self.agent.pid}" if self.agent is not None and self.agent.running else "no agent"
        return f"<AgentNode {self.name} {state} pods={list(self.pods)}>"


# -- waiting for the cluster to converge ------------------------------------------------------------------

def _poll(what: str, check: Callable[[], tuple[bool, str]], timeout: float, interval: float = 0.05) -> float:
    """Call ``check`` until it reports done; the seconds it took. Raises :class:`LabTimeout` with
    its last word after ``timeout`` seconds."""
    t0 = time.monotonic()
    last = ""
    while True:
        try:
            done, last = check()
        except (AgentError, AgentUnavailable) as exc:
            done, last = False, str(exc)
        if done:
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            raise LabTimeout(f"{what}: not within {timeout:g} s ({last})")
        time.sleep(interval)


def _recent_errors(node: AgentNode) -> str:
    try:
        recent = node.status().get("errors", {}).get("recent", [])
    except (AgentError, AgentUnavailable, CiliumliteError):
        return ""
    return f"; {node.name}'s agent: {recent[-1]['message']}" if recent else ""


def wait_converged(nodes: Sequence[AgentNode], timeout: float = CONVERGE_TIMEOUT) -> float:
    """Wait until every node routes to every other one; the seconds it took. Raises :class:`LabTimeout`."""
    def check() -> tuple[bool, str]:
        for node in nodes:
            missing = {o.info.name for o in nodes if o is not node} - set(node.view.remote_nodes())
            if missing:
                return False, f"{node.name} does not know {', '.join(sorted(missing))}"
        return True, ""
    return _poll(f"{len(nodes)} agents knowing each other", check, timeout)


def wait_forgotten(nodes: Sequence[AgentNode], gone: str, timeout: float = CONVERGE_TIMEOUT) -> float:
    """Wait until no node routes to node ``gone`` any more; the seconds it took. Raises :class:`LabTimeout`."""
    def check() -> tuple[bool, str]:
        still = [n.name for n in nodes if gone in n.view.remote_nodes()]
        return not still, f"{', '.join(still)} still route to {gone}"
    return _poll(f"every node forgetting {gone}", check, timeout)


def wait_services(nodes: Sequence[AgentNode], services: Sequence[Service] = (), gone: Sequence[str] = (),
                  timeout: float = CONVERGE_TIMEOUT) -> float:
    """Wait until every node has programmed each of ``services`` as it is and none of ``gone``; the
    seconds it took. Raises :class:`LabTimeout` naming the first node that lags (and its agent's
    last error)."""
    want = {s.name: s for s in services}

    def check() -> tuple[bool, str]:
        for node in nodes:
            have = {s["name"]: s for s in node.client().services()}
            wrong = [n for n, svc in want.items() if n not in have or Service.from_dict(have[n]) != svc]
            wrong += [n for n in gone if n in have]
            if wrong:
                return False, f"{node.name}: {', '.join(wrong)} not as wanted{_recent_errors(node)}"
        return True, ""
    names = ", ".join([*want, *gone]) or "nothing"
    return _poll(f"services {names} on {len(nodes)} nodes", check, timeout)


@public_methods_off_event_loop
class AgentCluster(LabCluster):
    """The :class:`LabCluster` of an etcd lab: its nodes' agents join etcd themselves, so
    ``control`` is a :class:`~ciliumlite.cluster.Cluster` over the lab's client with no members.

    Every change returns once each node's agent has it: a service is written to etcd and waited
    for on every node; a node is added when every node routes to it, removed when none does.
    Each method raises :class:`LabTimeout` if that takes longer than ``timeout`` (30 s), and
    ``KvstoreError`` when etcd does not answer.
    """

    def __init__(self, lab: Lab, cluster: Cluster, nodes: list[AgentNode]) -> None:
        super().__init__(lab, cluster, list(nodes))

    def agent_nodes(self) -> list[AgentNode]:
        """The member nodes (every one an :class:`AgentNode`)."""
        return [n for n in self.members.values() if isinstance(n, AgentNode)]

    def add_node(self, name: str, **config: Any) -> Node:
        """Start a node's agent; return once every member routes to it and it to them.

        It gets the routing of the first member and a BGP speaker if that one has one; ``config``
        as :meth:`Lab.add_node <ciliumlite.lab.Lab.add_node>` (``lease_ttl=`` too). Raises as
        that, :meth:`LabBgp.start` and :func:`wait_converged`; the node is removed again then.
        """
        first = next(iter(self.members.values()), None)
        routing = first.view.config.routing if first is not None else "vxlan"
        bgp = first is not None and first.bird is not None
        node = self.lab.add_node(name, routing=routing, bgp=bgp, **config)
        try:
            if not isinstance(node, AgentNode):
                raise ValidationError(f"{name}: an AgentCluster takes nodes of an etcd lab")
            if bgp:
                self.lab.bgp.start([node])
            wait_converged([*self.agent_nodes(), node])
        except BaseException:
            self.lab.remove_node(name)
            raise
        self.members[name] = node
        return node

    def remove_node(self, name: str) -> None:
        """Stop the node's agent (its keys go with its lease: SIGTERM revokes it), remove the node,
        delete a record a killed agent left, and return once no member routes to it.

        Raises ``KeyError`` for a node not in this cluster, and as :meth:`Lab.remove_node` and
        :func:`wait_forgotten`.
        """
        node = self.members.pop(name)
        gone = node.info.name
        had_bgp = node.bird is not None
        self.lab.remove_node(name)
        with contextlib.suppress(CiliumliteError):  # etcd down: the record expires with the lease
            self.control.store.delete_node(gone)
        wait_forgotten(self.agent_nodes(), gone)
        if had_bgp:
            self.lab.bgp.reload()

    def upsert_service(self, svc: Any, timeout: float = CONVERGE_TIMEOUT) -> None:
        """Write ``svc`` to etcd and wait until every node has programmed it."""
        self.control.store.put_service(svc)
        wait_services(self.agent_nodes(), [svc], timeout=timeout)

    def delete_service(self, name: str, timeout: float = CONVERGE_TIMEOUT) -> None:
        """Delete a service from etcd and wait until no node has it."""
        self.control.store.delete_service(name)
        wait_services(self.agent_nodes(), gone=[name], timeout=timeout)


def build_cluster(lab: Lab, names: list[str], routing: str, bgp: bool, config: dict[str, Any]) -> AgentCluster:
    """``Lab.cluster`` of an etcd lab: start every node's agent at once, wait until each is ready,
    bring BGP up, then wait until every node routes to every other. Raises as
    :meth:`Lab.add_node`, :meth:`AgentNode.ready`, :meth:`LabBgp.start` and :func:`wait_converged`
    (what was made is removed with the lab)."""
    assert lab.etcd is not None and lab.etcd.store is not None
    cluster = Cluster(lab.etcd.store)
    lab.clusters.append(cluster)
    made = [lab.add_node(n, routing=routing, bgp=bgp, wait=False, **config) for n in names]
    nodes = [n for n in made if isinstance(n, AgentNode)]
    for node in nodes:
        node.ready()
    if bgp:
        lab.bgp.start(list(nodes))
    wait_converged(nodes)
    return AgentCluster(lab, cluster, nodes)
