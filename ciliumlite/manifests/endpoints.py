"""A Kubernetes EndpointSlice or (legacy) Endpoints read and checked into a
:class:`~ciliumlite.manifests.model.KubeEndpoints`."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ciliumlite.manifests.fields import (
    DNS1035_LABEL,
    Doc,
    Fields,
    key_path,
)
from ciliumlite.manifests.meta import (
    _NAME_RULES,
    _NO_SCTP,
    _PROTOCOLS,
    ENDPOINT_IGNORED,
    SERVICE_NAME_LABEL,
    _ipv4,
    _metadata,
    _port_name,
)
from ciliumlite.manifests.model import (
    EndpointGroup,
    EndpointPort,
    KubeEndpoints,
    ObjectRef,
)

# ---------------------------------------------------------------------------------------------
# EndpointSlice and Endpoints


def _endpoint_ports(f: Fields, key: str, *, names_required: bool) -> tuple[EndpointPort, ...]:
    entries = f.objs(key, max_items=100)
    seen: dict[str, str] = {}
    out = []
    for p in entries:
        p.only(("name", "port", "protocol"), ignored=("appProtocol",))
        need = "a name for each port when there are several (the Service port's name)"
        name = _port_name(p, "name", required=need if names_required and len(entries) > 1 else "")
        if name in seen:
            p.fail("name", f"duplicate port name {name!r} ({seen[name]} has it)")
        seen[name] = p.path
        number = p.integer("port", 1, 65535, required="the port backends listen on (a null port, 'all ports', "
                                                      "is not supported)")
        assert number is not None
        out.append(EndpointPort(name, p.choice("protocol", _PROTOCOLS, "TCP", unsupported=_NO_SCTP),  # type: ignore[arg-type]
                                number))
    return tuple(out)


def _slice(top: Fields, doc: Doc, namespace: str) -> KubeEndpoints:
    top.only(("apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"))
    ref, labels, _ = _metadata(top, doc, "EndpointSlice", namespace, *_NAME_RULES["EndpointSlice"], "EndpointSlice name")
    service = _slice_service(top, labels)
    if not top.has("addressType"):
        top.fail("addressType", "required: IPv4")
    top.choice("addressType", ("IPv4",), "IPv4", unsupported={"IPv6": "ciliumlite services and pods are IPv4",
                                                             "FQDN": "backends must be IPv4 addresses"})
    ports = _endpoint_ports(top, "ports", names_required=False)
    ready: list[str] = []
    terminating: list[str] = []
    not_ready = 0
    for ep in top.objs("endpoints", max_items=1000):
        ep.only(("addresses", "conditions"), ignored=ENDPOINT_IGNORED)
        addresses = ep.strs("addresses", max_items=100)
        if not addresses:
            ep.fail("addresses", "required: at least one address")
        checked = [_ipv4(ep, f"addresses[{i}]", a, "a backend") for i, (_, a) in enumerate(addresses)]
        if len(addresses) > 1:
            doc.warn(ep.at("addresses"), "only the first address of an endpoint is used (as by kube-proxy)")
        is_ready, dying = True, False
        conditions = ep.obj("conditions")
        if conditions is not None:
            conditions.only(("ready", "serving", "terminating"))
            serving = conditions.flag("serving")
            is_ready = conditions.flag("ready") is not False  # null: unknown, which consumers take as ready
            # Terminating and still serving (null: as ready says): a terminating backend, as Cilium
            # and kube-proxy read it. Terminating and no longer serving is no backend at all.
            dying = not is_ready and conditions.flag("terminating") is True and serving is not False
        if is_ready:
            ready.append(checked[0])
        elif dying:
            terminating.append(checked[0])
        else:
            not_ready += 1
    group = EndpointGroup(_sorted_ips(ready), ports, _sorted_ips(terminating))
    return KubeEndpoints(ObjectRef("EndpointSlice", ref.namespace, ref.name, ref.origin, service), (group,), not_ready)


def _slice_service(top: Fields, labels: dict[str, str]) -> str:
    """The Service an EndpointSlice belongs to: its ``kubernetes.io/service-name`` label."""
    label_path = key_path("metadata.labels", SERVICE_NAME_LABEL)
    service = labels.get(SERVICE_NAME_LABEL, "")
    if not service:
        top.fail(label_path, "required: it names the Service this EndpointSlice belongs to")
    if len(service) > 63 or not DNS1035_LABEL.match(service):
        top.fail(label_path, f"{service!r} is not a valid Service name")
    return service


def _sorted_ips(ips: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(ips), key=ipaddress.IPv4Address))


def _endpoints(top: Fields, doc: Doc, namespace: str) -> KubeEndpoints:
    top.only(("apiVersion", "kind", "metadata", "subsets"))
    ref, _, _ = _metadata(top, doc, "Endpoints", namespace, *_NAME_RULES["Endpoints"],
                          "Endpoints name (the name of its Service)")
    groups = []
    not_ready = 0
    for subset in top.objs("subsets"):
        subset.only(("addresses", "notReadyAddresses", "ports"))
        ports = _endpoint_ports(subset, "ports", names_required=True)
        ready = []
        for key in ("addresses", "notReadyAddresses"):
            for a in subset.objs(key):
                a.only(("ip",), ignored=("hostname", "nodeName", "targetRef"))
                ip = _ipv4(a, "ip", a.text("ip", required="the endpoint's IPv4 address"), "a backend")
                if key == "addresses":
                    ready.append(ip)
                else:
                    not_ready += 1
        groups.append(EndpointGroup(_sorted_ips(ready), ports))
    return KubeEndpoints(ObjectRef("Endpoints", ref.namespace, ref.name, ref.origin, ref.name), tuple(groups),
                         not_ready)


