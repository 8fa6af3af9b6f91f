"""Security labels, identities and selectors (ciliumlite.policy.labels, identity, selector)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath.reasons import Reason
from ciliumlite.policy import (
    LOCAL_IDENTITY_FLAG,
    MIN_IDENTITY,
    CidrIdentityAllocator,
    IdentityAllocator,
    IdentityExhaustedError,
    Label,
    Labels,
    MemoryIdentityAllocator,
    ReservedIdentity,
    pod_labels,
    reserved_labels,
)
from ciliumlite.policy.selector import (
    ENTITIES,
    cilium_keys,
    namespace_keys,
    parse_cidr_selector,
    parse_label_selector,
    pod_keys,
)
from ciliumlite.policy.verdict import DROP_POLICY, DROP_POLICY_DENY

pytestmark = pytest.mark.unit

POD = pod_labels("x", {"pod": "a", "app": "web"}, {"ns": "x", "team": "blue"})


def test_pod_labels() -> None:
    assert str(POD) == ("k8s:app=web;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x;"
                        "k8s:io.cilium.k8s.namespace.labels.ns=x;k8s:io.cilium.k8s.namespace.labels.team=blue;"
                        "k8s:io.kubernetes.pod.namespace=x;k8s:pod=a;")
    # The store's form round-trips, and equal label sets are equal (one identity).
    assert Labels.from_mapping(POD.as_dict()) == POD
    assert hash(pod_labels("x", {"app": "web", "pod": "a"}, {"team": "blue", "ns": "x"})) == hash(POD)
    assert pod_labels("x", {"pod": "a"}) != pod_labels("y", {"pod": "a"})
    with pytest.raises(ValidationError, match="namespace"):
        pod_labels("")


def test_label_parse() -> None:
    assert Label.parse("k8s:app=web") == Label("k8s", "app", "web")
    assert Label.parse("reserved:host") == Label("reserved", "host", "")
    assert Label.parse("app=web") == Label("any", "app", "web")
    assert str(Label("reserved", "host")) == "reserved:host"
    assert Labels.parse(["app=web"]) == Labels([Label("k8s", "app", "web")])


def test_reserved_identities_are_ciliums() -> None:
    assert [int(r) for r in ReservedIdentity] == list(range(9))
    assert str(reserved_labels(ReservedIdentity.REMOTE_NODE)) == "reserved:remote-node;"
    assert str(reserved_labels(ReservedIdentity.KUBE_APISERVER)) == "reserved:kube-apiserver;"
    # The verdict module keeps the drop codes without importing the datapath package.
    assert (DROP_POLICY, DROP_POLICY_DENY) == (Reason.DROP_POLICY, Reason.DROP_POLICY_DENY)


def test_memory_allocator() -> None:
    alloc = MemoryIdentityAllocator(first=MIN_IDENTITY, last=MIN_IDENTITY + 2)
    assert isinstance(alloc, IdentityAllocator)
    a, b = pod_labels("x", {"pod": "a"}), pod_labels("x", {"pod": "b"})
    ia = alloc.allocate(a)
    assert ia == MIN_IDENTITY and alloc.allocate(a) == ia  # equal labels share one
    ib = alloc.allocate(b)
    assert ib != ia and alloc.lookup(ib) == b and alloc.lookup_labels(a) == ia
    assert alloc.cache() == {ia: a, ib: b}
    assert not alloc.release(a)  # one reference left
    assert alloc.release(a) and alloc.lookup(ia) is None
    c, d, e = (pod_labels("y", {"pod": p}) for p in "cde")
    # A freed number is not reused before the range wraps.
    assert alloc.allocate(c) == MIN_IDENTITY + 2
    assert alloc.allocate(d) == ia
    with pytest.raises(IdentityExhaustedError, match="no identity left"):
        alloc.allocate(e)


def test_cidr_allocator() -> None:
    alloc = CidrIdentityAllocator()
    n1, n2, n3 = IPv4Network("192.0.2.0/24"), IPv4Network("192.0.2.128/25"), IPv4Network("198.51.100.0/24")
    first = alloc.sync([n1, n2, IPv4Network("0.0.0.0/0")])
    assert first[IPv4Network("0.0.0.0/0")] == ReservedIdentity.WORLD
    assert all(first[n] & LOCAL_IDENTITY_FLAG for n in (n1, n2)) and first[n1] != first[n2]
    second = alloc.sync([n1, n3])  # n1 keeps its number, n2 is freed
    assert second[n1] == first[n1] and n2 not in second and second[n3] not in (first[n1], first[n2])
    assert alloc.identities() == {n1: second[n1], n3: second[n3]}


def sel(obj: Any, keys: Any = pod_keys) -> Any:
    return parse_label_selector(obj, "spec.podSelector", keys)


@pytest.mark.parametrize(("selector", "matches"), [
    ({}, True),
    (None, True),
    ({"matchLabels": {"pod": "a"}}, True),
    ({"matchLabels": {"pod": "b"}}, False),
    ({"matchLabels": {"pod": "a", "app": "web"}}, True),
    ({"matchLabels": {"pod": "a", "app": "db"}}, False),
    ({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]}, True),
    ({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}, False),
    ({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["b"]}]}, True),
    ({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]}, False),
    ({"matchExpressions": [{"key": "nope", "operator": "NotIn", "values": ["a"]}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "nope", "operator": "Exists"}]}, False),
    ({"matchExpressions": [{"key": "nope", "operator": "DoesNotExist"}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
    ({"matchLabels": {"pod": "a"}, "matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
])
def test_pod_selector(selector: Any, matches: bool) -> None:
    assert sel(selector).matches(POD) is matches


def test_namespace_and_cilium_keys() -> None:
    assert sel({"matchLabels": {"team": "blue"}}, namespace_keys).matches(POD)
    assert sel({"matchLabels": {"kubernetes.io/metadata.name": "x"}}, namespace_keys).matches(POD)
    assert not sel({"matchLabels": {"team": "blue"}}, pod_keys).matches(POD)  # not a pod label
    # CNP keys: any source without a prefix, else exactly that source.
    assert sel({"matchLabels": {"app": "web"}}, cilium_keys).matches(POD)
    assert sel({"matchLabels": {"k8s:app": "web"}}, cilium_keys).matches(POD)
    assert not sel({"matchLabels": {"reserved:app": "web"}}, cilium_keys).matches(POD)
    host = reserved_labels(ReservedIdentity.HOST)
    assert sel({"matchLabels": {"reserved:host": ""}}, cilium_keys).matches(host)
    assert not sel({"matchLabels": {"reserved:host": ""}}, cilium_keys).matches(POD)


@pytest.mark.parametrize(("selector", "message"), [
    ({"matchLabel": {}}, r"spec.podSelector: unknown field 'matchLabel'"),
    ({"matchLabels": {"pod": 1}}, r"spec.podSelector.matchLabels.pod: value 1 is not a string"),
    ({"matchLabels": ["pod"]}, r"spec.podSelector.matchLabels: a mapping"),
    ({"matchExpressions": [{"key": "a", "operator": "Is", "values": ["b"]}]},
     r"spec.podSelector.matchExpressions\[0\].operator: 'Is' is not one of"),
    ({"matchExpressions": [{"key": "a", "operator": "In"}]},
     r"matchExpressions\[0\].values: operator In needs at least one value"),
    ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]},
     r"matchExpressions\[0\].values: operator Exists takes no values"),
    ({"matchExpressions": [{"operator": "Exists"}]}, r"matchExpressions\[0\].key: missing"),
    ("pod=a", r"spec.podSelector: a label selector is a mapping"),
])
def test_bad_selectors(selector: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        sel(selector)


def test_cidr_selector() -> None:
    block = parse_cidr_selector("10.244.1.7/16", ["10.244.1.0/24"], "ipBlock")
    assert str(block) == "10.244.0.0/16 except 10.244.1.0/24"  # host bits cleared, as Kubernetes accepts them
    assert block.contains(IPv4Address("10.244.2.1")) and not block.contains(IPv4Address("10.244.1.1"))
    assert block.selects_prefix(IPv4Network("10.244.2.0/24"))
    assert not block.selects_prefix(IPv4Network("10.244.1.128/25"))  # inside the except
    assert not block.selects_prefix(IPv4Network("10.0.0.0/8"))  # wider than the cidr
    with pytest.raises(ValidationError, match=r"ipBlock.except\[0\]: 10.0.0.0/8 is not inside the cidr 10.244.0.0/16"):
        parse_cidr_selector("10.244.0.0/16", ["10.0.0.0/8"], "ipBlock")
    with pytest.raises(ValidationError, match=r"ipBlock.cidr: '10.244.0.0' is not a CIDR"):
        parse_cidr_selector("10.244.0.0", [], "ipBlock")
    with pytest.raises(ValidationError, match=r"ipBlock.cidr: '10.244.0.0/33' is not a CIDR"):
        parse_cidr_selector("10.244.0.0/33", [], "ipBlock")
    v6 = parse_cidr_selector("2001:db8::/32", [], "ipBlock")
    assert not v6.ipv4 and v6.prefixes() == [] and not v6.contains(IPv4Address("10.0.0.1"))


def test_entities() -> None:
    host, world = reserved_labels(ReservedIdentity.HOST), reserved_labels(ReservedIdentity.WORLD)
    cidr_id = LOCAL_IDENTITY_FLAG | 1
    assert ENTITIES["host"](1, host) and not ENTITIES["host"](2, world)
    assert ENTITIES["world"](2, world) and ENTITIES["world"](cidr_id, world)
    assert not ENTITIES["world"](300, POD)
    assert ENTITIES["cluster"](300, POD) and ENTITIES["cluster"](1, host) and ENTITIES["cluster"](6, host)
    assert not ENTITIES["cluster"](2, world) and not ENTITIES["cluster"](cidr_id, world)
    assert not ENTITIES["none"](300, POD)
