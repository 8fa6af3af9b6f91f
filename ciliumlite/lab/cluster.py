"""A Cluster whose members are lab nodes (``Lab.cluster``): nodes join and leave it, services span it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.cluster import Cluster
from ciliumlite.lab.node import Node
from ciliumlite.policy import Policy
from ciliumlite.policy.rules import parse_policy_input

if TYPE_CHECKING:
    from ciliumlite.lab.hosts import Pod
    from ciliumlite.lab.lab import Lab


@public_methods_off_event_loop
class LabCluster:
    """A Cluster whose nodes are lab nodes: ``cluster.node("worker1").add_pod("client")``."""

    def __init__(self, lab: Lab, cluster: Cluster, nodes: list[Node]) -> None:
        self.lab = lab
        self.control = cluster
        self.members = {n.name: n for n in nodes}
        self._namespaces: dict[str, dict[str, str]] = {}
        for n in nodes:
            n.cluster = self

    def node(self, name: str) -> Node:
        """A member node by name. Raises :class:`ValidationError` for a node not in this cluster."""
        try:
            return self.members[name]
        except KeyError:
            raise ValidationError(f"no node {name!r} in this cluster ({', '.join(self.members)})") from None

    def add_node(self, name: str, **config: Any) -> Node:
        """Add a node: every other node learns its pod CIDR (tunnel entry or route).

        It gets the routing of the first member, and a BGP speaker if that one has one. Raises as
        :meth:`Lab.add_node` and ``Cluster.join`` (the node is removed again then), and as
        :meth:`LabBgp.start` (the node stays a member of the cluster store then).
        """
        first = next(iter(self.members.values()), None)
        routing = first.view.config.routing if first else "vxlan"
        bgp = first is not None and first.bird is not None
        node = self.lab.add_node(name, routing=routing, bgp=bgp, **config)
        assert node.datapath is not None
        try:
            self.control.join(node.info, node.datapath)
        except BaseException:
            self.lab.remove_node(name)
            raise
        if bgp:
            self.lab.bgp.start([node])
        self.members[name] = node
        node.cluster = self
        return node

    def remove_node(self, name: str) -> None:
        """Remove a node: its routes are withdrawn and its tunnel entries deleted on every other node.

        Raises ``KeyError`` for a node not in this cluster, and what closing the node or reloading
        the leaf raises.
        """
        node = self.members.pop(name)
        self.control.leave(name)
        had_bgp = node.bird is not None
        self.lab.remove_node(name)
        if had_bgp:  # the leaf drops the session to the node that has gone
            self.lab.bgp.reload()

    def restart_node(self, name: str) -> float:
        """Restart a member's owner (:meth:`Node.restart_datapath`: detach, restore) and join the
        restored datapath to the cluster again, which replays every node and service into it as a
        restarted agent's resync does. Returns the seconds the node had no owner. Raises
        ``KeyError`` for a node not in this cluster, and as :meth:`Node.restart_datapath`."""
        node = self.members[name]
        took = node.restart_datapath()
        assert node.datapath is not None
        self.control.join(node.info, node.datapath)
        return took

    def reload_node(self, name: str) -> float:
        """Replace every program of a member (:meth:`Node.reload_datapath`); the seconds it took."""
        return self.members[name].reload_datapath()

    def nodes(self) -> list[Node]:
        """The member nodes."""
        return list(self.members.values())

    def upsert_service(self, svc: Any) -> None:
        """Program a service on every node, like a Kubernetes Service plus EndpointSlice."""
        self.control.upsert_service(svc)

    def delete_service(self, name: str) -> None:
        """Remove a service from every node."""
        self.control.delete_service(name)

    # -- namespaces and network policy (nodes with enable_policy) -----------------------------------------
    def set_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """A Kubernetes namespace and its labels (``kubernetes.io/metadata.name`` is always there).

        Pods made in it from now on get identities from these labels; its existing pods are
        relabelled in place (:meth:`Node.relabel_pod <ciliumlite.lab.node.Node.relabel_pod>`:
        new identities, every node's ipcache and policy maps updated, no program reloaded).
        """
        self._namespaces[name] = dict(labels or {})
        for node in self.members.values():
            if node.datapath is None or not node.datapath.config.enable_policy:
                continue  # no identities from labels there
            for pod in [p for p in node.pods.values() if p.namespace == name]:
                node.relabel_pod(pod.name)

    def relabel_pod(self, pod: Pod, labels: Mapping[str, str]) -> Pod:
        """Give ``pod`` new labels, as ``kubectl label pod --overwrite`` does: see
        :meth:`Node.relabel_pod <ciliumlite.lab.node.Node.relabel_pod>`."""
        return pod.node.relabel_pod(pod.name, labels)

    def namespace_labels(self, name: str) -> dict[str, str]:
        """The labels of namespace ``name`` (none set: only its name label, added by the engine)."""
        return dict(self._namespaces.get(name, {}))

    def apply_policy(self, policy: str | Mapping[str, Any] | Policy | Iterable[Mapping[str, Any] | Policy]) -> list[Policy]:
        """Apply network policies on every node: YAML text (one or more documents), a manifest
        mapping, a parsed :class:`~ciliumlite.policy.Policy`, or a list of those. Returns them.

        Every policy is parsed before any is applied, so a bad one (a :class:`ValidationError`
        naming its field) applies nothing; each node has enforced them when this returns.
        """
        policies = parse_policy_input(policy)
        for pol in policies:
            self.control.put_policy(pol)
        return policies

    def delete_policy(self, key: str | Policy) -> None:
        """Remove a policy (a :class:`Policy` or its ``Kind/namespace/name`` key) from every node.
        Raises :class:`ValidationError` for a policy the cluster does not hold."""
        name = key.key if isinstance(key, Policy) else key
        if all(p.key != name for p in self.control.policies()):
            raise ValidationError(f"no policy {name!r} (the cluster holds: "
                                  f"{', '.join(p.key for p in self.control.policies()) or 'none'})")
        self.control.delete_policy(name)

    def policies(self) -> list[Policy]:
        """The policies the cluster holds, by key."""
        return list(self.control.policies())
