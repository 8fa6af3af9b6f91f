"""A Kubernetes Node read and checked into a :class:`~ciliumlite.manifests.model.KubeNode`."""

from __future__ import annotations

import ipaddress

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.store import NodeInfo
from ciliumlite.manifests.fields import (
    Doc,
    Fields,
)
from ciliumlite.manifests.meta import (
    _NAME_RULES,
    NODE_SPEC_IGNORED,
    NODE_STATUS_IGNORED,
    _metadata,
)
from ciliumlite.manifests.model import (
    KubeNode,
)

# ---------------------------------------------------------------------------------------------
# Node


def _node(top: Fields, doc: Doc, namespace: str) -> KubeNode:
    top.only(("apiVersion", "kind", "metadata", "spec", "status"))
    ref, _, _ = _metadata(top, doc, "Node", None, *_NAME_RULES["Node"], "Node name")
    spec = top.obj("spec", required="the Node's spec with its podCIDR (no controller-manager allocates one here)")
    assert spec is not None
    spec.only(("podCIDR", "podCIDRs"), ignored=NODE_SPEC_IGNORED)
    single = spec.text("podCIDR")
    listed = spec.strs("podCIDRs", max_items=2)
    if single and listed and listed[0][1] != single:
        raise doc.error(listed[0][0], f"{listed[0][1]!r} must be the same as spec.podCIDR ({single!r})")
    cidr_path, cidr = "", ""
    for path, value in listed or ([(spec.at("podCIDR"), single)] if single else []):
        try:
            net = ipaddress.ip_network(value)
        except ValueError as exc:
            raise doc.error(path, f"{value!r} is not a CIDR ({exc})") from None
        if net.version == 6:
            doc.warn(path, "the IPv6 pod CIDR is ignored: ciliumlite pods are IPv4")
        elif not cidr:
            cidr_path, cidr = path, str(net)
    if not cidr:
        spec.fail("podCIDR", "required: the node's IPv4 pod CIDR (no controller-manager allocates one here)")

    status = top.obj("status", required="status.addresses with the node's InternalIP (the kubelet writes it "
                                        "in a real cluster)")
    assert status is not None
    status.only(("addresses",), ignored=NODE_STATUS_IGNORED)
    found: dict[str, tuple[str, str]] = {}
    for a in status.objs("addresses"):
        a.only(("type", "address"))
        types = ("InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS")
        if not a.has("type"):
            a.fail("type", f"required: one of {', '.join(types)}")
        kind = a.choice("type", types, "")
        address = a.text("address", required="the address")
        if kind in ("InternalIP", "ExternalIP"):
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                a.fail("address", f"{address!r} is not an IP address (an {kind} is one)")
            if ip.version == 4 and kind not in found:
                found[kind] = (a.at("address"), str(ip))
    # Cilium's choice of a node's address: the InternalIP, else the ExternalIP.
    chosen = found.get("InternalIP") or found.get("ExternalIP")
    if chosen is None:
        status.fail("addresses", "required: an InternalIP (or ExternalIP) IPv4 address, the node's underlay address")
    try:
        info = NodeInfo(ref.name, chosen[1], cidr)
    except ValidationError as exc:
        raise doc.error(cidr_path, str(exc)) from None
    return KubeNode(ref, info, chosen[0], cidr_path)


