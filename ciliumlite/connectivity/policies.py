"""The network policy scenarios of ``cilium connectivity test`` (issue 17), after the traffic ones.

Each applies its policies to the lab's cluster (``LabCluster.apply_policy``: every node enforces
them when the call returns), probes what must pass and what must not, and removes them again,
also when a check fails, so the scenarios after it see an open cluster. The workloads carry
Cilium's labels in namespace ``cilium-test`` (:data:`POD_LABELS`): ``client`` and ``client2``
(``kind=client``; ``client2`` also ``other=client``), ``echo-same`` and ``echo-other``
(``kind=echo``). A denied packet is counted ``Policy denied`` (``DROP_POLICY``) or, for a deny
rule, ``Policy denied by denylist``; both are declared expected for ``no-unexpected-packet-drops``.

They apply only to a lab whose nodes enforce policy (``enable_policy``) in a cluster whose store
keeps policies (an in-process lab; an etcd lab's store keeps none yet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ciliumlite.cluster.cluster import keeps_policy
from ciliumlite.connectivity import scenarios  # noqa: F401  (the traffic scenarios register before these)
from ciliumlite.connectivity.context import ECHO_PORT, ConnectivityContext, Runner
from ciliumlite.connectivity.framework import Checks, ScenarioResult, scenario
from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab.hosts import Host

__all__ = ["NAMESPACE", "POD_LABELS"]

#: The namespace of the connectivity test's pods (Cilium's default).
NAMESPACE = "cilium-test"
#: The labels of each workload, as Cilium's connectivity test deploys them.
POD_LABELS: dict[str, dict[str, str]] = {
    "client": {"kind": "client", "name": "client"},
    "client2": {"kind": "client", "name": "client2", "other": "client"},
    "echo-same": {"kind": "echo", "name": "echo-same"},
    "echo-other": {"kind": "echo", "name": "echo-other"},
}


def _needs_policy(ctx: ConnectivityContext) -> str | None:
    if not ctx.config.enable_policy:
        return "network policy is off in this lab (enable_policy=False)"
    if not keeps_policy(ctx.cluster.control.store):
        return "this lab's store keeps no network policies"
    return None


def _cnp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def _netpol(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


@contextmanager
def _applied(ctx: ConnectivityContext, *manifests: dict[str, Any]) -> Iterator[None]:
    ctx.expect_drop(Reason.DROP_POLICY, "the policy scenarios deny traffic on purpose")
    ctx.expect_drop(Reason.DROP_POLICY_DENY, "the policy scenarios deny traffic on purpose")
    applied = ctx.cluster.apply_policy(list(manifests))
    try:
        yield
    finally:
        for policy in applied:
            ctx.cluster.delete_policy(policy)


def _tcp(ctx: ConnectivityContext, c: Checks, cases: list[tuple[Runner, str, bool]], why: str) -> None:
    """TCP echo probes (source, target address, whether it must pass), all in one batch."""
    got = ctx.probes([(src, "tcp", ip, ECHO_PORT) for src, ip, _ in cases])
    for (_, _, want), p in zip(cases, got, strict=True):
        c.expect(p.ok == want, f"{p} (want {'answered' if want else 'no answer'}: {why})")


def _ping(ctx: ConnectivityContext, c: Checks, src: Host, ip: str, want: bool, why: str) -> None:
    ok, text = ctx.ping(src, ip)
    c.expect(ok == want, f"{text} (want {'answered' if want else 'no answer'}: {why})")


def _denied_counted(ctx: ConnectivityContext, c: Checks, before: int, reason: Reason = Reason.DROP_POLICY) -> None:
    now = sum(ctx.counter(n, reason) for n in ctx.nodes)
    c.expect(now > before, f"{reason.name} counted {now - before} times on the nodes (want > 0)")


def _count(ctx: ConnectivityContext, reason: Reason = Reason.DROP_POLICY) -> int:
    return sum(ctx.counter(n, reason) for n in ctx.nodes)


def _policy_scenario(name: str, description: str, cilium: str) -> Callable[
        [Callable[[ConnectivityContext], ScenarioResult]], Callable[[ConnectivityContext], ScenarioResult]]:
    return scenario(name, description, cilium=cilium, acceptance="P", applies=_needs_policy)


@_policy_scenario("policy/all-ingress-deny", "a NetworkPolicy selecting every test pod, no ingress rule: nothing "
                  "reaches them, same node or across nodes, TCP or ICMP", "all-ingress-deny")
def all_ingress_deny(ctx: ConnectivityContext) -> ScenarioResult:
    """Default deny of ingress."""
    c = Checks()
    before = _count(ctx)
    with _applied(ctx, _netpol("all-ingress-deny", {"podSelector": {}, "policyTypes": ["Ingress"]})):
        _tcp(ctx, c, [(ctx.client, ctx.echo_same.ip, False), (ctx.client, ctx.echo_other.ip, False)],
             "ingress of every pod is denied")
        _ping(ctx, c, ctx.client, ctx.client2.ip, False, "ingress of every pod is denied")
    _denied_counted(ctx, c, before)
    return c.result()


@_policy_scenario("policy/all-egress-deny", "a NetworkPolicy selecting every test pod, no egress rule: they "
                  "reach nothing, not even the world", "all-egress-deny")
def all_egress_deny(ctx: ConnectivityContext) -> ScenarioResult:
    """Default deny of egress."""
    c = Checks()
    before = _count(ctx)
    with _applied(ctx, _netpol("all-egress-deny", {"podSelector": {}, "policyTypes": ["Egress"]})):
        _tcp(ctx, c, [(ctx.client, ctx.echo_same.ip, False), (ctx.client, ctx.echo_other.ip, False),
                      (ctx.client, ctx.outside.ip, False)], "egress of every pod is denied")
    _denied_counted(ctx, c, before)
    return c.result()


@_policy_scenario("policy/client-ingress", "ingress of client allowed only from other=client: client2 pings "
                  "client, echo-same cannot", "client-ingress")
def client_ingress(ctx: ConnectivityContext) -> ScenarioResult:
    """L3 allow by label (ICMP passes an L3-only rule)."""
    c = Checks()
    with _applied(ctx, _cnp("client-ingress", {"endpointSelector": {"matchLabels": {"kind": "client"}},
                                               "ingress": [{"fromEndpoints": [{"matchLabels": {"other": "client"}}]}]})):
        _ping(ctx, c, ctx.client2, ctx.client.ip, True, "client2 carries other=client")
        _ping(ctx, c, ctx.echo_same, ctx.client.ip, False, "echo-same does not")
    return c.result()


@_policy_scenario("policy/echo-ingress-from-other-client-deny", "echo allows every ingress but denies "
                  "other=client: client reaches echo, client2 does not (deny wins)",
                  "echo-ingress-from-other-client-deny")
def echo_ingress_from_other_client_deny(ctx: ConnectivityContext) -> ScenarioResult:
    """A deny rule beside a broader allow."""
    c = Checks()
    before = _count(ctx, Reason.DROP_POLICY_DENY)
    echo = {"matchLabels": {"kind": "echo"}}
    with _applied(ctx, _cnp("echo-ingress-allow", {"endpointSelector": echo, "ingress": [{"fromEntities": ["all"]}]}),
                  _cnp("echo-ingress-deny-other", {"endpointSelector": echo, "ingressDeny": [
                      {"fromEndpoints": [{"matchLabels": {"other": "client"}}]}]})):
        _tcp(ctx, c, [(ctx.client, ctx.echo_same.ip, True), (ctx.client, ctx.echo_other.ip, True),
                      (ctx.client2, ctx.echo_same.ip, False), (ctx.client2, ctx.echo_other.ip, False)],
             "client2 is denied by the deny rule, client is allowed")
    _denied_counted(ctx, c, before, Reason.DROP_POLICY_DENY)
    return c.result()


@_policy_scenario("policy/to-entities-world", "client's egress allowed only to the world entity: the outside host "
                  "answers, the echo pods do not", "to-entities-world")
def to_entities_world(ctx: ConnectivityContext) -> ScenarioResult:
    """Egress to the world entity (a missing ipcache entry is world)."""
    c = Checks()
    with _applied(ctx, _cnp("client-egress-to-world", {"endpointSelector": {"matchLabels": {"name": "client"}},
                                                       "egress": [{"toEntities": ["world"]}]})):
        _tcp(ctx, c, [(ctx.client, ctx.outside.ip, True), (ctx.client, ctx.echo_same.ip, False),
                      (ctx.client, ctx.echo_other.ip, False)], "only the world is allowed")
    return c.result()


@_policy_scenario("policy/to-cidr-external", "client's egress allowed to 203.0.113.0/24 except the outside host's "
                  "/32: refused; without the except: answered", "to-cidr-external")
def to_cidr_external(ctx: ConnectivityContext) -> ScenarioResult:
    """toCIDRSet with except, then without."""
    c = Checks()
    sel = {"matchLabels": {"name": "client"}}
    with _applied(ctx, _cnp("client-egress-to-cidr", {"endpointSelector": sel, "egress": [{"toCIDRSet": [
            {"cidr": "203.0.113.0/24", "except": [f"{ctx.outside.ip}/32"]}]}]})):
        _tcp(ctx, c, [(ctx.client, ctx.outside.ip, False)], "the outside host is in the except")
    with _applied(ctx, _cnp("client-egress-to-cidr", {"endpointSelector": sel, "egress": [
            {"toCIDR": ["203.0.113.0/24"]}]})):
        _tcp(ctx, c, [(ctx.client, ctx.outside.ip, True), (ctx.client, ctx.echo_same.ip, False)],
             "203.0.113.0/24 is allowed, the cluster is not")
    return c.result()


@_policy_scenario("policy/host-entity", "client's egress allowed only to the host entity: it pings its node, "
                  "not echo-same", "host-entity-egress")
def host_entity(ctx: ConnectivityContext) -> ScenarioResult:
    """Egress to the node the pod runs on."""
    c = Checks()
    node_ip = ctx.client.node.ip or ""
    with _applied(ctx, _cnp("client-egress-to-host", {"endpointSelector": {"matchLabels": {"name": "client"}},
                                                      "egress": [{"toEntities": ["host"]}]})):
        _ping(ctx, c, ctx.client, node_ip, True, "its node is the host entity")
        _ping(ctx, c, ctx.client, ctx.echo_same.ip, False, "echo-same is not")
    return c.result()
