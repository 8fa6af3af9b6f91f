"""An :class:`AgentCluster`: lab agents over etcd, and waiting until every agent has a change
(:func:`wait_converged`, :func:`wait_forgotten`, :func:`wait_services`). Re-exported by
:mod:`ciliumlite.lab.agents`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ciliumlite.agent.client import AgentError, AgentUnavailable
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.cluster import Cluster
from ciliumlite.lab.cluster import LabCluster
from ciliumlite.lab.node import Node
from ciliumlite.node.policy import PolicyMaps
from ciliumlite.policy import Policy
from ciliumlite.service import Service

if TYPE_CHECKING:
    from ciliumlite.lab.hosts import Pod
    from ciliumlite.lab.lab import Lab

from ciliumlite.lab.agent_node import AgentNode
from ciliumlite.lab.agent_proc import (
    CONVERGE_TIMEOUT,
    LabTimeout,
)

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


def wait_identities(nodes: Sequence[AgentNode], want: Mapping[str, int], timeout: float = CONVERGE_TIMEOUT) -> float:
    """Wait until every node that enforces policy maps each address of ``want`` to its identity in
    its pinned ipcache; the seconds it took. An agent's sync writes the ipcache after the policy
    maps, so a node that shows the identity has the policy that follows from it too."""
    enforcing = [n for n in nodes if n.view.config.enable_policy]

    def check() -> tuple[bool, str]:
        for node in enforcing:
            cfg = node.view.config
            maps = PolicyMaps(cfg.pin_dir, cfg.policy_map_size)
            try:
                have = {str(e.prefix.network_address): e.identity for e in maps.list() if e.prefix.prefixlen == 32}
            finally:
                maps.close()
            wrong = [f"{ip} is {have.get(ip)}, not {ident}" for ip, ident in want.items() if have.get(ip) != ident]
            if wrong:
                return False, f"{node.name}'s ipcache: {', '.join(wrong)}{_recent_errors(node)}"
        return True, ""
    return _poll(f"identities of {', '.join(want) or 'nothing'} on {len(enforcing)} nodes", check, timeout)


def wait_policies(nodes: Sequence[AgentNode], policies: Sequence[Policy] = (), gone: Sequence[str] = (),
                  timeout: float = CONVERGE_TIMEOUT) -> float:
    """Wait until every node that enforces policy has synced each of ``policies`` as it is (its
    state directory's ``policies`` items) and none of ``gone``; the seconds it took. Raises
    :class:`LabTimeout` naming the first node that lags (and its agent's last error)."""
    want = {p.key: p.describe() for p in policies}
    enforcing = [n for n in nodes if n.view.config.enable_policy]

    def check() -> tuple[bool, str]:
        for node in enforcing:
            have = node.view.policies()
            wrong = [k for k, d in want.items() if have.get(k) != d] + [k for k in gone if k in have]
            if wrong:
                return False, f"{node.name}: {', '.join(wrong)} not as wanted{_recent_errors(node)}"
        return True, ""
    names = ", ".join([*want, *gone]) or "nothing"
    return _poll(f"policies {names} on {len(enforcing)} nodes", check, timeout)


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

    def restart_node(self, name: str) -> float:
        """SIGKILL a member's agent and start a new one (:meth:`AgentNode.restart_agent`); return
        once every member routes to it again, with the seconds from the kill to ready. Raises
        ``KeyError`` for a node not in this cluster, and as that and :func:`wait_converged`."""
        node = self.members[name]
        if not isinstance(node, AgentNode):
            raise ValidationError(f"{name}: an AgentCluster takes nodes of an etcd lab")
        took = node.restart_agent()
        wait_converged(self.agent_nodes())
        return took

    def upsert_service(self, svc: Any, timeout: float = CONVERGE_TIMEOUT) -> None:
        """Write ``svc`` to etcd and wait until every node has programmed it."""
        self.control.store.put_service(svc)
        wait_services(self.agent_nodes(), [svc], timeout=timeout)

    def delete_service(self, name: str, timeout: float = CONVERGE_TIMEOUT) -> None:
        """Delete a service from etcd and wait until no node has it."""
        self.control.store.delete_service(name)
        wait_services(self.agent_nodes(), gone=[name], timeout=timeout)

    # -- network policy: through etcd, enforced by each agent (nodes with enable_policy) ---------------
    def set_namespace(self, name: str, labels: Mapping[str, str] | None = None,
                      timeout: float = CONVERGE_TIMEOUT) -> None:
        """Record namespace ``name``'s labels in etcd; pods made from now on take them. Its
        existing pods are relabelled by their agents (as a Kubernetes controller would tell
        them), and this returns once every enforcing node's ipcache has their new identities.
        Raises :class:`ValidationError` for a store that keeps no namespaces, :class:`LabTimeout`."""
        store = self.control.store
        if not callable(getattr(store, "put_namespace", None)):
            raise ValidationError(f"this cluster's store ({type(store).__name__}) keeps no namespaces")
        store.put_namespace(name, labels)  # type: ignore[attr-defined]
        self._namespaces[name] = dict(labels or {})
        pods = [(n, p) for n in self.agent_nodes() if n.view.config.enable_policy
                for p in n.pods.values() if p.namespace == name]
        for node, pod in pods:
            node.relabel_pod(pod.name)
        wait_identities(self.agent_nodes(), {p.ip: p.endpoint.identity for _, p in pods}, timeout=timeout)

    def relabel_pod(self, pod: Pod, labels: Mapping[str, str], timeout: float = CONVERGE_TIMEOUT) -> Pod:
        """Give ``pod`` new labels through its agent (:meth:`AgentNode.relabel_pod`) and wait until
        every enforcing node's ipcache maps it to its new identity (that node's policy maps were
        written in the same sync). Raises :class:`ValidationError` for a pod of another cluster,
        :class:`AgentError`, :class:`LabTimeout`."""
        node = pod.node
        if not isinstance(node, AgentNode) or self.members.get(node.name) is not node:
            raise ValidationError(f"pod {pod.name} is not on a node of this cluster")
        node.relabel_pod(pod.name, labels)
        wait_identities(self.agent_nodes(), {pod.ip: pod.endpoint.identity}, timeout=timeout)
        return pod

    def apply_policy(self, policy: str | Mapping[str, Any] | Policy | Iterable[Mapping[str, Any] | Policy],
                     timeout: float = CONVERGE_TIMEOUT) -> list[Policy]:
        """Write the policies to etcd (parsed first: a bad one writes none) and wait until every
        node with ``enable_policy`` enforces them. Raises as :meth:`LabCluster.apply_policy` and
        :func:`wait_policies`."""
        policies = super().apply_policy(policy)
        wait_policies(self.agent_nodes(), policies, timeout=timeout)
        return policies

    def delete_policy(self, key: str | Policy, timeout: float = CONVERGE_TIMEOUT) -> None:
        """Delete a policy from etcd and wait until no node enforces it."""
        name = key.key if isinstance(key, Policy) else key
        super().delete_policy(name)
        wait_policies(self.agent_nodes(), gone=[name], timeout=timeout)


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
