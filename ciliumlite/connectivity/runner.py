"""The runner: :class:`ConnectivityTest` deploys the test workloads into a lab and runs scenarios."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ciliumlite.bpf.errors import CiliumliteError, ValidationError

# Importing drops registers every scenario select() picks: it imports disruption, which imports
# scenarios, so they register in the order a run takes them (the drops check last).
from ciliumlite.connectivity import drops  # noqa: F401
from ciliumlite.connectivity.context import ECHO_PORT, SERVICES, ConnectivityContext
from ciliumlite.connectivity.framework import Scenario, ScenarioResult, select
from ciliumlite.connectivity.policies import NAMESPACE, POD_LABELS
from ciliumlite.datapath.config import LB_MODE
from ciliumlite.lab import Lab, LabCluster, Node, Pod
from ciliumlite.service import Backend, Frontend, Service

__all__ = ["NODE_NAMES", "ConnectivityTest"]

#: The names of the nodes a fresh lab gets (``nodes`` of them).
NODE_NAMES = ("worker1", "worker2", "worker3", "worker4")


class ConnectivityTest:
    """Deploy the test workloads and run scenarios.

    ``target`` None builds a fresh lab (``Lab(name)``, ``nodes`` nodes in ``routing`` mode with
    ``load_balancer_mode=lb_mode``, ``bpf_masquerade=masquerade`` and, with ``policy`` (in-process
    labs only), ``enable_policy`` for the ``policy/*`` scenarios; ``kvstore="etcd"``:
    ``Lab(name, store="etcd")``, an agent process per node over etcd); ``close()`` removes it. A
    :class:`Lab` (with one cluster, or none: one is built in it) or a :class:`LabCluster` is used as
    it is: the workloads go onto its first two nodes and ``close()`` removes only what was added.

    Raises :class:`ValidationError` for options that cannot work together (e.g. DSR over VXLAN) or
    are out of range; nothing is built until :meth:`setup` (or :meth:`run`).
    """

    def __init__(self, target: Lab | LabCluster | None = None, *, routing: str = "vxlan", lb_mode: str = "snat",
                 nodes: int = 2, masquerade: bool = True, bgp: bool | None = None, name: str = "conn",
                 timeout: float = 2.0, extra_config: dict[str, Any] | None = None, kvstore: str = "memory",
                 policy: bool = True) -> None:
        if kvstore not in ("memory", "etcd"):
            raise ValidationError(f"kvstore must be memory or etcd, not {kvstore!r}")
        if routing not in ("vxlan", "native"):
            raise ValidationError(f"routing must be vxlan or native, not {routing!r}")
        if lb_mode not in LB_MODE:
            raise ValidationError(f"lb_mode must be one of {', '.join(LB_MODE)}, not {lb_mode!r}")
        if lb_mode != "snat" and routing != "native":
            raise ValidationError(f"lb_mode={lb_mode} needs routing=native (DSR cannot ride VXLAN)")
        if not 2 <= nodes <= len(NODE_NAMES):
            raise ValidationError(f"nodes must be 2..{len(NODE_NAMES)}, not {nodes}")
        if not 0.2 <= timeout <= 30:
            raise ValidationError(f"timeout must be 0.2..30 seconds, not {timeout}")
        self.target = target
        self.routing, self.lb_mode, self.n_nodes, self.masquerade, self.bgp = routing, lb_mode, nodes, masquerade, bgp
        self.name, self.timeout, self.kvstore = name, timeout, kvstore
        self.extra_config = dict(extra_config or {})
        self.policy = policy
        self.ctx: ConnectivityContext | None = None
        self._cl: LabCluster | None = None
        self._own_lab: Lab | None = None
        self._pods: list[Pod] = []
        self._services: list[str] = []

    # -- setup / teardown ---------------------------------------------------------------------------
    def _cluster(self) -> LabCluster:
        if isinstance(self.target, LabCluster):
            return self.target
        config = {"load_balancer_mode": self.lb_mode, "bpf_masquerade": self.masquerade,
                  **({"enable_policy": True} if self.policy else {}), **self.extra_config}
        if isinstance(self.target, Lab):
            lab = self.target
            if not lab.nodes:
                return lab.cluster(list(NODE_NAMES[:self.n_nodes]), routing=self.routing,  # type: ignore[arg-type]
                                   bgp=self.bgp, **config)
            if len(lab.clusters) != 1:
                raise ValidationError(f"{lab!r} has {len(lab.clusters)} clusters: pass the LabCluster to test")
            if lab.etcd is not None:  # its cluster's nodes are agents: the lab's AgentCluster drives them
                return lab.lab_clusters[0]
            members = [lab.nodes[n.name] for n in lab.clusters[0].nodes() if n.name in lab.nodes]
            return LabCluster(lab, lab.clusters[0], members)
        self._own_lab = Lab(self.name, store="etcd" if self.kvstore == "etcd" else None)
        try:
            return self._own_lab.cluster(list(NODE_NAMES[:self.n_nodes]), routing=self.routing,  # type: ignore[arg-type]
                                         bgp=self.bgp, **config)
        except BaseException:
            self._own_lab.close()
            self._own_lab = None
            raise

    def setup(self) -> ConnectivityContext:
        """Deploy (once) and return the context scenarios run in.

        Raises :class:`ValidationError` if the target cannot take the workloads (fewer than two
        nodes on the underlay, a pod name taken, a lab with several clusters) and
        :class:`CiliumliteError` if the lab cannot be built; what was deployed so far is removed
        first. A failure to program the services is not raised: it is recorded in
        ``ctx.setup_errors["services"]`` and fails the scenarios that need them.
        """
        if self.ctx is not None:
            return self.ctx
        try:
            self._cl = self._cluster()
            self.ctx = self._deploy(self._cl)
        except BaseException:
            self.close()
            raise
        return self.ctx

    def _add_pod(self, node: Node, name: str) -> Pod:
        if name in node.pods:
            raise ValidationError(f"{node.name} has a pod {name!r} already: the connectivity test deploys its own")
        # Cilium's labels, in Cilium's test namespace (an agent's pod gets it through the CNI plugin).
        pod = node.add_pod(name, namespace=NAMESPACE, labels=POD_LABELS[name])
        self._pods.append(pod)
        return pod

    def _deploy(self, cl: LabCluster) -> ConnectivityContext:
        nodes = sorted((n for n in cl.nodes() if n.ip), key=lambda n: n.index)
        if len(nodes) < 2:
            raise ValidationError("the connectivity test needs a cluster of at least 2 nodes on the underlay")
        first, second = nodes[0], nodes[1]
        client, client2 = self._add_pod(first, "client"), self._add_pod(first, "client2")
        echo_same, echo_other = self._add_pod(first, "echo-same"), self._add_pod(second, "echo-other")
        for pod in (echo_same, echo_other):
            pod.ensure_echo_server(ECHO_PORT)
        outside = cl.lab.outside()
        outside.ensure_echo_server(ECHO_PORT)
        ctx = ConnectivityContext(cl.lab, cl, nodes, client, client2, echo_same, echo_other, outside,
                                  timeout=self.timeout)
        if ctx.config.kube_proxy_replacement:
            try:
                for name, (vip, node_port, policy) in SERVICES.items():
                    backend = ctx.backend_pod(name)
                    for proto in ("TCP", "UDP") if policy == "Cluster" else ("TCP",):
                        svc_name = name if proto == "TCP" else f"{name}-udp"
                        svc = Service(svc_name, Frontend(vip, ECHO_PORT, proto), [Backend(backend.ip, ECHO_PORT)],
                                      type="NodePort", node_port=node_port, external_traffic_policy=policy)
                        self._services.append(svc_name)
                        cl.upsert_service(svc)
                        ctx.services[svc_name] = svc
            except CiliumliteError as exc:
                ctx.setup_errors["services"] = f"{type(exc).__name__}: {exc}"
        return ctx

    def close(self) -> None:
        """Remove what the test deployed (its whole lab, if it built one); closing twice is a no-op.

        Raises :class:`CiliumliteError` listing the services and pods that could not be removed
        from a lab the caller passed in (after trying every one).
        """
        cl, self._cl, self.ctx = self._cl, None, None
        if self._own_lab is not None:
            lab, self._own_lab = self._own_lab, None
            self._pods.clear()
            self._services.clear()
            lab.close()
            return
        errors = []
        if cl is not None:
            for svc in self._services:
                try:
                    cl.delete_service(svc)
                except CiliumliteError as exc:
                    errors.append(f"service {svc}: {exc}")
        for pod in self._pods:
            if pod.name in pod.node.pods:
                try:
                    pod.node.remove_pod(pod.name)
                except CiliumliteError as exc:
                    errors.append(f"pod {pod.name}: {exc}")
        self._services.clear()
        self._pods.clear()
        if errors:
            raise CiliumliteError("connectivity test cleanup: " + "; ".join(errors))

    def __enter__(self) -> ConnectivityTest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running -----------------------------------------------------------------------------------
    def scenarios(self, pattern: str | Sequence[str] | None = None) -> list[Scenario[Any]]:
        """The scenarios ``run(pattern)`` would run, in order (see :func:`select`; raises as it does)."""
        return select(pattern)

    def config(self) -> dict[str, Any]:
        """What was tested (for reports): the options before :meth:`setup`, the live configuration after."""
        if self.ctx is None:
            return {"routing": self.routing, "lb_mode": self.lb_mode, "masquerade": self.masquerade,
                    "nodes": self.n_nodes, "kvstore": self.kvstore}
        cfg = self.ctx.config
        return {"lab": self.ctx.lab.prefix, "kvstore": self.ctx.lab.kvstore, "routing": cfg.routing,
                "lb_mode": cfg.load_balancer_mode, "masquerade": cfg.bpf_masquerade, "socket_lb": cfg.socket_lb,
                "kube_proxy_replacement": cfg.kube_proxy_replacement, "nodes": [n.name for n in self.ctx.nodes],
                "pod_mtu": cfg.pod_mtu}

    def run(self, pattern: str | Sequence[str] | None = None,
            on_result: Callable[[ScenarioResult], None] | None = None) -> list[ScenarioResult]:
        """Run the selected scenarios (all by default) and return their results, in order.

        ``on_result`` is called with each result as soon as it is known. A failing scenario is a
        failed result, never an exception; raises as :func:`select` (bad pattern) and :meth:`setup`
        (deployment) do.
        """
        chosen = self.scenarios(pattern)
        ctx = self.setup()
        ctx.start_run()
        results = []
        for sc in chosen:
            res = sc.run(ctx)
            results.append(res)
            if on_result is not None:
                on_result(res)
        return results
