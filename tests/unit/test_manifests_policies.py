"""NetworkPolicy and CiliumNetworkPolicy through ``ciliumlite apply -f`` (the manifests layer): read,
checked (errors name the field), written to a store that keeps policies, applied again, deleted."""

from __future__ import annotations

import pytest

from ciliumlite.cluster import InMemoryStore
from ciliumlite.manifests import KubePolicy, ManifestError, apply, delete, parse, parse_refs

pytestmark = pytest.mark.unit

NETPOL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 80}]
"""

CNP = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-world}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEntities: [world]
"""


class NodesOnly:
    """A store without endpoints and policies (like EtcdStore today)."""

    def __init__(self) -> None:
        self._mem = InMemoryStore()
        self.nodes, self.services, self.put_node = self._mem.nodes, self._mem.services, self._mem.put_node
        self.put_service, self.delete_service = self._mem.put_service, self._mem.delete_service


def test_policies_are_parsed_in_their_namespace() -> None:
    items = list(parse(NETPOL + "---" + CNP))
    assert [type(m) for m in items] == [KubePolicy, KubePolicy]
    web, world = items
    assert isinstance(web, KubePolicy) and isinstance(world, KubePolicy)
    assert web.key == "NetworkPolicy/shop/web" and world.key == "CiliumNetworkPolicy/default/to-world"
    assert str(web.ref) == "networkpolicy.networking.k8s.io/web"


def test_apply_again_configure_and_delete() -> None:
    store = InMemoryStore()
    assert apply(store, parse(NETPOL)).lines() == ["networkpolicy.networking.k8s.io/web created"]
    assert [p.key for p in store.policies()] == ["NetworkPolicy/shop/web"]
    assert apply(store, parse(NETPOL)).lines() == ["networkpolicy.networking.k8s.io/web unchanged"]
    assert apply(store, parse(NETPOL.replace("port: 80", "port: 8080"))).lines() == \
        ["networkpolicy.networking.k8s.io/web configured"]
    assert apply(store, parse(CNP), dry_run=True).lines() == ["ciliumnetworkpolicy.cilium.io/to-world created (dry run)"]
    assert len(store.policies()) == 1
    res = delete(store, parse_refs(NETPOL + "---" + CNP))
    assert res.lines() == ["networkpolicy.networking.k8s.io/web deleted", "ciliumnetworkpolicy.cilium.io/to-world not found"]
    assert store.policies() == []


def test_a_bad_policy_names_its_field_and_nothing_is_written() -> None:
    store = InMemoryStore()
    with pytest.raises(ManifestError, match="port") as err:
        apply(store, parse(CNP + "---" + NETPOL.replace("port: 80", "port: 99999")))
    assert "NetworkPolicy shop/web" in str(err.value), err.value
    assert store.policies() == []


def test_a_store_without_policies_refuses_them() -> None:
    with pytest.raises(ManifestError, match="keeps no network policies"):
        apply(NodesOnly(), parse(NETPOL))  # type: ignore[arg-type]
