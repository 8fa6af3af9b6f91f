"""What every kind of manifest shares: the object's metadata (identity, labels, annotations), the
fields accepted and ignored, IPv4 addresses and port names, checked as the Kubernetes API server would.

Used by :mod:`ciliumlite.manifests.services`, :mod:`~ciliumlite.manifests.endpoints` and
:mod:`~ciliumlite.manifests.nodes`; the names are re-exported by :mod:`ciliumlite.manifests.kubernetes`."""

from __future__ import annotations

import ipaddress
import re

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.manifests.fields import (
    DNS1035_LABEL,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    Doc,
    Fields,
    check_name,
)
from ciliumlite.manifests.model import (
    Kind,
    ObjectRef,
    Origin,
)
from ciliumlite.service import Backend

#: The label that ties an EndpointSlice to its Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: Cilium's per-service load-balancing algorithm annotation (``random`` or ``maglev``).
LB_ALGORITHM_ANNOTATION = "service.cilium.io/lb-algorithm"
#: The most characters of a ciliumlite service name (:class:`~ciliumlite.service.Service`).
MAX_SERVICE_NAME = 63

#: Every field of Kubernetes' ObjectMeta: accepted in any ``metadata``; only the first four are read.
METADATA_FIELDS = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
                   "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields",
                   "ownerReferences", "finalizers", "generateName", "selfLink")
#: ServiceSpec fields accepted and without effect here (no controller, IPv4 only, hints).
SERVICE_SPEC_IGNORED = ("selector", "publishNotReadyAddresses", "trafficDistribution", "ipFamilies",
                        "ipFamilyPolicy", "loadBalancerIP", "allocateLoadBalancerNodePorts")
#: NodeStatus fields the kubelet writes; only ``addresses`` is read.
NODE_STATUS_IGNORED = ("allocatable", "capacity", "conditions", "config", "daemonEndpoints", "declaredFeatures",
                       "features", "images", "nodeInfo", "phase", "runtimeHandlers", "volumesAttached",
                       "volumesInUse")
NODE_SPEC_IGNORED = ("providerID", "unschedulable", "taints", "configSource", "externalID")
ENDPOINT_IGNORED = ("hostname", "nodeName", "zone", "hints", "targetRef", "deprecatedTopology")
_PROTOCOLS = ("TCP", "UDP")
_NO_SCTP = {"SCTP": "it load-balances TCP and UDP only"}



_NAME_RULES: dict[str, tuple[re.Pattern[str], int]] = {
    "Service": (DNS1035_LABEL, 63), "Endpoints": (DNS1035_LABEL, 63), "EndpointSlice": (DNS1123_SUBDOMAIN, 253),
    "Node": (DNS1123_SUBDOMAIN, 253), "NetworkPolicy": (DNS1123_SUBDOMAIN, 253),
    "CiliumNetworkPolicy": (DNS1123_SUBDOMAIN, 253)}


def _metadata(top: Fields, doc: Doc, kind: Kind, namespace: str | None, rule: re.Pattern[str], max_len: int,
              what: str) -> tuple[ObjectRef, dict[str, str], dict[str, str]]:
    """The object's identity, labels and annotations. ``namespace`` None: a cluster-scoped kind."""
    meta = top.obj("metadata", required="metadata.name at least")
    assert meta is not None
    meta.only(METADATA_FIELDS)
    if not meta.has("name") and meta.has("generateName"):
        meta.fail("name", "required: generateName needs an API server to pick the name")
    name = check_name(meta, "name", rule, max_len, what)
    if namespace is None:
        ns = ""
        if meta.has("namespace"):
            doc.warn(meta.at("namespace"), f"a {kind} is cluster-scoped: metadata.namespace is ignored")
    else:
        ns = check_name(meta, "namespace", DNS1123_LABEL, 63, "namespace") if meta.has("namespace") else namespace
    doc.name = f"{ns}/{name}" if ns else name
    origin = Origin(doc.source, doc.document, kind, doc.name, top.path)
    labels = meta.string_map("labels")
    annotations = meta.string_map("annotations")
    return ObjectRef(kind, ns, name, origin), labels, annotations


def _ipv4(f: Fields, key: str, value: str, what: str) -> str:
    """``value`` (read from ``key``) as an IPv4 address a service or backend may use."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        f.fail(key, f"{value!r} is not an IP address ({what} must be an IPv4 address)")
    if addr.version != 4:
        f.fail(key, f"{value} is IPv6: not supported, ciliumlite services and pods are IPv4")
    try:
        Backend(str(addr), 1)  # the model's rule: no unspecified, multicast or broadcast address
    except ValidationError:
        f.fail(key, f"{addr} cannot be {what} (unspecified, multicast or broadcast)")
    return str(addr)


def _port_name(f: Fields, key: str, required: str = "") -> str:
    name = f.text(key, required=required)
    if name and (len(name) > 63 or not DNS1123_LABEL.match(name)):
        f.fail(key, f"{name!r} is not a valid port name: at most 63 lower-case letters, digits and '-', "
                    f"starting and ending with a letter or digit")
    return name


