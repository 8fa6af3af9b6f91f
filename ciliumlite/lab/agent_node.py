"""An :class:`AgentNode`: a lab node whose datapath is run by its own agent process over the lab's
etcd, with pods made through the CNI plugin. Re-exported by :mod:`ciliumlite.lab.agents`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ciliumlite.agent.client import SOCKET_NAME, AgentClient
from ciliumlite.agent.endpoints import NAMESPACE_LABEL
from ciliumlite.agent.errors import AgentStartError
from ciliumlite.bgp import Bird
from ciliumlite.bpf.errors import CiliumliteError, NotSupportedError, ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.cluster import NodeInfo
from ciliumlite.datapath.config import DatapathConfig, HostRouting
from ciliumlite.endpoint import Endpoint
from ciliumlite.lab import owned
from ciliumlite.lab.hosts import Pod
from ciliumlite.lab.node import Node
from ciliumlite.lab.view import NodeView, PinnedView
from ciliumlite.ownership.record import name_in_scope

if TYPE_CHECKING:
    from ciliumlite.lab.etcd import LabEtcd
    from ciliumlite.lab.lab import Lab

from ciliumlite.lab.agent_proc import (
    CNI_ARGV,
    CNI_NETWORK,
    CNI_RETRY_FOR,
    CNI_TIMEOUT,
    READY_TIMEOUT,
    STOP_TIMEOUT,
    TRY_AGAIN_LATER,
    AgentProc,
    CniCallError,
    _bgp_config,
    agent_argv,
    remove_datapath_leftovers,
)


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

    def restart_agent(self, timeout: float = READY_TIMEOUT) -> float:
        """Crash the agent (SIGKILL: none of its cleanup runs, its datapath keeps forwarding) and
        start a new one with the same command line, which restores the datapath and the endpoint
        table at start; return once it answers, with the seconds from the kill to ready.

        Raises :class:`NotSupportedError` (before killing anything) for legacy host routing (no
        pinned programs to adopt; a BGP node's bird is adopted by the new agent), :class:`CiliumliteError` without a running agent, and
        :class:`AgentStartError` (with the new agent's log) when it does not come up.
        """
        cfg = self._cfg()
        if cfg.host_routing != "bpf":
            raise NotSupportedError("an agent restart needs BPF host routing (legacy host routing keeps no "
                                    "pinned programs to adopt)", feature="restore")
        old = self.agent
        if old is None or not old.running:
            raise CiliumliteError(f"{self.name} has no running agent to restart")
        old.kill()
        t0 = time.monotonic()
        self._ready = False
        self.agent = AgentProc(self.lab.processes, cfg.node_name, self.socket, old.argv, self.netns, self.cgroup)
        self.ready(timeout)
        return time.monotonic() - t0

    def reload_datapath(self) -> float:
        """Replace every program of the node through its agent (``POST /v1/datapath/reload``);
        the seconds it took. Raises ``AgentError`` / ``AgentUnavailable``."""
        t0 = time.monotonic()
        self.client(timeout=120).reload()
        return time.monotonic() - t0

    def restart_datapath(self) -> float:
        """The agent's restart (:meth:`restart_agent`): the agent owns this node's datapath."""
        return self.restart_agent()

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
        its identity, allocated cluster-wide through etcd; ``namespace`` (default ``default``) is
        passed as its ``io.kubernetes.pod.namespace`` label, so an agent with policy gives it the
        identity of its security labels (the namespace's labels as :meth:`AgentCluster.set_namespace
        <ciliumlite.lab.agents.AgentCluster.set_namespace>` recorded them). A "try again later" of the plugin (etcd
        slow or away) is retried for up to 30 s. Raises :class:`ValidationError` if the pod exists
        already or for ``ip`` and other settings (the agent allocates), and :class:`CniCallError`
        with the plugin's error; nothing of the pod is left then.
        """
        if name in self.pods:
            raise ValidationError(f"pod {name!r} exists already on {self.name}")
        unsupported = sorted(set(endpoint_kw) - {"labels", "namespace"})
        if ip is not None or unsupported:
            raise ValidationError(f"pod {name!r}: {', '.join(['ip'] * (ip is not None) + unsupported)} cannot be "
                                  "set through the CNI plugin (the agent allocates the address and the identity)")
        labels = dict(endpoint_kw.get("labels") or {"name": name})
        namespace = str(endpoint_kw.get("namespace") or "default")
        if "namespace" in endpoint_kw:
            labels[NAMESPACE_LABEL] = namespace
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
        pod = Pod(self, name, ns, ep, namespace=namespace,
                  labels={k: v for k, v in labels.items() if k != NAMESPACE_LABEL})
        self.pods[name] = pod
        return pod

    def relabel_pod(self, name: str, labels: Mapping[str, str] | None = None) -> Pod:
        """Give pod ``name`` new ``labels`` (None: keep them; its namespace's labels changed)
        through its agent (``PATCH /v1/endpoint/{id}/labels``): a new identity in place, the
        endpoint record published. Returns when this node has it; the other agents follow through
        etcd (:meth:`AgentCluster.relabel_pod <ciliumlite.lab.agents.AgentCluster.relabel_pod>`
        waits for them). Raises ``KeyError`` for a pod this node does not have, :class:`AgentError`."""
        pod = self.pods[name]
        own = None if labels is None else {**labels, NAMESPACE_LABEL: pod.namespace}
        got = self.client().relabel_endpoint(self._container_id(name), own)
        pod.endpoint.identity = int(got["identity"])
        pod.endpoint.labels = dict(got["labels"])
        if labels is not None:
            pod.labels = dict(labels)
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


