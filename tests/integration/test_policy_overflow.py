"""Policy map overflow on a live node (issue 17): a MapState bigger than ``policy_map_size`` is a
typed error and the endpoint keeps its previous policy; with ``policy_lockdown_on_overflow`` the
endpoint is locked down (deny-all both ways, dropped as ``Policy denied by denylist``) and
recovers when its policy fits again. Real TCP between two pods on one VXLAN node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Lab
from ciliumlite.lab.cluster import LabCluster
from ciliumlite.lab.hosts import Pod
from ciliumlite.node.datapath import Datapath
from ciliumlite.node.enforcement import LOCKDOWN
from ciliumlite.node.policy import PolicyOverflowError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAP_SIZE = 256


def many_ports_policy(n_ports: int) -> str:
    """Ingress to pod a from every pod of x on port 80 and ``n_ports - 1`` other ports that no
    prefix merges (every other port): 2 identities x n_ports entries + the egress allow-all."""
    ports = [80] + [3000 + 2 * i for i in range(n_ports - 1)]
    lines = "\n".join(f"    - {{protocol: TCP, port: {p}}}" for p in ports)
    return f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: big, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from:
    - podSelector: {{}}
    ports:
{lines}
"""


@dataclass
class Topo:
    cl: LabCluster
    dp: Datapath
    a: Pod
    b: Pod


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with Lab("pol-ovf") as lab:
        cl = lab.cluster(["n1"], routing="vxlan", bgp=False, enable_policy=True, policy_map_size=MAP_SIZE)
        cl.set_namespace("x", {"ns": "x"})
        a = cl.node("n1").add_pod("a", namespace="x", labels={"pod": "a"})
        b = cl.node("n1").add_pod("b", namespace="x", labels={"pod": "b"})
        for pod in (a, b):
            pod.ensure_echo_server(80)
        dp = cl.node("n1").datapath
        assert dp is not None
        yield Topo(cl, dp, a, b)


def reach(src: Pod, dst: Pod, port: int = 80) -> bool:
    return src.tcp_echo(dst, port, timeout=1.5).ok


def test_overflow_is_a_typed_error_and_keeps_the_previous_policy(topo: Topo) -> None:
    assert not topo.dp.config.policy_lockdown_on_overflow
    topo.cl.apply_policy(many_ports_policy(4))
    before = topo.dp.policy.get(topo.a.endpoint)
    assert before is not None and 2 * 4 < len(before) < MAP_SIZE
    topo.cl.apply_policy(many_ports_policy(200))  # 2 x 200 entries and more > 256
    sync = topo.dp.last_policy_sync
    assert sync is not None and set(sync.overflowed) == {"a"}, sync
    err = sync.overflowed["a"]
    assert isinstance(err, PolicyOverflowError) and err.entries > 400 and err.map_size == MAP_SIZE
    assert sync.locked_down == () and any(e.startswith("a: ") and f"{err.entries} entries" in e for e in sync.errors)
    assert topo.dp.policy.get(topo.a.endpoint) == before  # nothing of the new one written
    assert reach(topo.b, topo.a, 80)
    topo.cl.delete_policy("NetworkPolicy/x/big")


@pytest.mark.replaces_objects  # the reloads swap the programs the module's lab owns
def test_lockdown_denies_everything_then_recovers(topo: Topo) -> None:
    topo.dp.reload(dataclasses.replace(topo.dp.config, policy_lockdown_on_overflow=True))
    try:
        assert reach(topo.b, topo.a) and reach(topo.a, topo.b)
        deny0 = topo.dp.count(Reason.DROP_POLICY_DENY)
        prog_ids = {lk.info.prog_id for lk in topo.dp.attachments()}
        topo.cl.apply_policy(many_ports_policy(200))
        sync = topo.dp.last_policy_sync
        assert sync is not None and sync.locked_down == ("a",) and set(sync.overflowed) == {"a"}, sync
        assert topo.dp.policy.get(topo.a.endpoint) == LOCKDOWN
        assert not reach(topo.b, topo.a, 80)  # ingress of a
        assert not reach(topo.a, topo.b, 80)  # egress of a
        assert topo.dp.count(Reason.DROP_POLICY_DENY) > deny0
        topo.cl.apply_policy(many_ports_policy(3))  # fits again: a leaves lockdown
        sync = topo.dp.last_policy_sync
        assert sync is not None and sync.locked_down == () and not sync.overflowed and not sync.errors, sync
        state = topo.dp.policy.get(topo.a.endpoint)
        assert state is not None and 2 * 3 < len(state) < MAP_SIZE and state != LOCKDOWN
        assert reach(topo.b, topo.a, 80) and reach(topo.a, topo.b, 80)
        assert {lk.info.prog_id for lk in topo.dp.attachments()} == prog_ids  # map writes only
        topo.cl.delete_policy("NetworkPolicy/x/big")
    finally:
        topo.dp.reload(dataclasses.replace(topo.dp.config, policy_lockdown_on_overflow=False))
