"""Kubernetes manifests as users write them: Service, EndpointSlice, Endpoints and Node, YAML or JSON.

:func:`parse` and :func:`load` read one or many documents (YAML's ``---``, a JSON object, or a
``kind: List`` with ``items``), check each object the way the Kubernetes API server would (with the
field path and what is expected in every error), and turn it into ciliumlite values: a
:class:`KubeService` (one ciliumlite :class:`~ciliumlite.service.Service` per port, see
:meth:`KubeService.service_name`), a :class:`KubeEndpoints` (the backends), a :class:`KubeNode` (a
:class:`~ciliumlite.cluster.store.NodeInfo`). :func:`~ciliumlite.manifests.apply.apply` and
:func:`~ciliumlite.manifests.apply.delete` put them into a cluster store (all of them are
re-exported by :mod:`ciliumlite.manifests`).

There is no API server here: nothing allocates a ClusterIP, a node port or a pod CIDR, and no
controller turns a selector into endpoints. Those fields are required instead, and the error says so.

Unknown fields are errors (strict, like ``kubectl apply``'s default ``--validate=strict``), with
three kinds of exceptions, all accepted without a word: every ``metadata`` field of Kubernetes'
ObjectMeta (only name, namespace, labels and annotations are read); fields the API server writes
(a Service's ``status``, a Node's ``status`` apart from ``addresses``); and fields that exist in
Kubernetes but change nothing here (``spec.selector``, ``spec.ipFamilies``, an endpoint's
``nodeName``, ``zone``, ``hints``…). Fields that would change behaviour ciliumlite does not have
(``externalIPs``, ``internalTrafficPolicy: Local``, type ``LoadBalancer``…) are errors that say so.
With ``strict=False`` unknown fields and unsupported kinds become warnings instead.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster.store import NodeInfo
from ciliumlite.manifests.fields import (
    DNS1035_LABEL,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    IANA_SVC_NAME,
    Doc,
    Fields,
    ManifestError,
    check_name,
    key_path,
)
from ciliumlite.manifests.model import (
    SUPPORTED,
    EndpointGroup,
    EndpointPort,
    Kind,
    KubeEndpoints,
    KubeNode,
    KubeService,
    Manifest,
    Manifests,
    ObjectRef,
    Origin,
    ServicePort,
)
from ciliumlite.service import NODEPORT_RANGE, Backend, TrafficPolicy

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


# ---------------------------------------------------------------------------------------------
# Documents


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (which PyYAML would silently overwrite and
    Kubernetes' strict decoding refuses)."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a scalar",
                                                    key_node.start_mark) from None
        if first is not None:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (first on line {first})",
                                                    key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def documents(text: str, source: str = "<text>") -> list[tuple[int, Any]]:
    """The documents of ``text`` as ``(number from 1, value)``, empty ones left out: a JSON object
    (a file whose first character is ``{``) or a YAML stream. Raises :class:`ManifestError` with the
    line and column of a syntax error or a duplicate key."""
    if text.lstrip().startswith(("{", "[")):
        try:
            value = json.loads(text, object_pairs_hook=_json_pairs)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                                source=source) from None
        except ValueError as exc:
            raise ManifestError(f"JSON: {exc}", source=source) from None
        if isinstance(value, list):
            raise ManifestError("a JSON array is not a Kubernetes object: wrap the objects in "
                                '{"apiVersion": "v1", "kind": "List", "items": [...]}', source=source)
        return [(1, value)]
    out = []
    number = 0
    try:
        for number, value in enumerate(yaml.load_all(text, Loader=_Loader), start=1):
            if value is not None:  # an empty document (a trailing ---, comments only): kubectl skips it
                out.append((number, value))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ManifestError(f"YAML syntax error{where}: {exc.problem}", source=source,
                            document=number + 1) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"YAML error: {exc}", source=source, document=number + 1) from None
    return out


def parse(text: str, *, source: str = "<text>", strict: bool = True, namespace: str = "default") -> Manifests:
    """Every object of ``text`` (YAML or JSON, one or many documents, or a List), checked and mapped.

    ``source`` names the text in errors (a file name); ``namespace`` is the namespace of objects that
    name none. With ``strict=False`` unknown fields and unsupported kinds are warnings, not errors.

    Raises :class:`ManifestError`: for a syntax error, the first one; otherwise the first error of
    the first bad object, with every bad object's first error in :attr:`ManifestError.errors`.
    """
    items: list[Manifest]
    items, warnings = _read(text, source, strict, namespace, _object)
    return Manifests(items, warnings)


def parse_refs(text: str, *, source: str = "<text>", namespace: str = "default") -> list[ObjectRef]:
    """Which objects ``text`` names, for :func:`delete`: only apiVersion, kind, ``metadata.name`` and
    ``namespace`` (and an EndpointSlice's Service label) are checked, so a manifest that no longer
    validates can still be deleted. Other kinds are skipped. Raises :class:`ManifestError`."""
    refs, _ = _read(text, source, False, namespace, _ref)
    return refs


T = TypeVar("T")


def _read(text: str, source: str, strict: bool, namespace: str,
          make: Callable[[Any, str, Doc, str], T | None]) -> tuple[list[T], list[str]]:
    """``make`` applied to every object of every document, errors collected across objects."""
    out: list[T] = []
    warnings: list[str] = []
    errors: list[ManifestError] = []
    for number, value in documents(text, source):
        doc = Doc(source, number, strict)
        try:
            for prefix, item in _expand(value, doc):
                item_doc = Doc(source, number, strict)
                try:
                    made = make(item, prefix, item_doc, namespace)
                except ManifestError as exc:
                    errors.append(exc)
                else:
                    if made is not None:
                        out.append(made)
                finally:
                    warnings.extend(item_doc.warnings)
        except ManifestError as exc:
            errors.append(exc)
        warnings.extend(doc.warnings)
    if errors:
        raise ManifestError.combine(errors)
    return out, warnings


def _expand(value: object, doc: Doc) -> list[tuple[str, Any]]:
    """A document as ``(path prefix, object)``: itself, or the items of a ``kind: List``."""
    top = Fields(value, "", doc)
    if top.data.get("kind") != "List":
        return [("", value)]
    doc.kind = "List"
    top.only(("apiVersion", "kind", "items"), ignored=("metadata",))
    if top.text("apiVersion") != "v1":
        top.fail("apiVersion", f"a List is apiVersion 'v1', not {top.data.get('apiVersion')!r}")
    return top.items("items")


def _kind(top: Fields, doc: Doc) -> Kind | None:
    """The object's kind, checked with its apiVersion; None: a kind skipped (not strict)."""
    kind = top.text("kind", required="the object's kind (Service, EndpointSlice, Endpoints or Node)")
    doc.kind = kind
    api = top.text("apiVersion", required=f"the API version ({SUPPORTED.get(kind, 'v1')} for a {kind})")
    if kind not in SUPPORTED:
        message = (f"kind {kind!r} is not supported: ciliumlite apply takes Service, EndpointSlice, Endpoints "
                   f"and Node (and a List of them)")
        if doc.strict:
            top.fail("kind", message + "; --no-strict skips other kinds")
        doc.warn(top.at("kind"), message + ": skipped")
        return None
    if api != SUPPORTED[kind]:
        hint = " (discovery.k8s.io/v1beta1 is no longer served since Kubernetes 1.25)" \
            if kind == "EndpointSlice" and api.startswith("discovery.k8s.io/") else ""
        top.fail("apiVersion", f"a {kind} is apiVersion {SUPPORTED[kind]!r}, not {api!r}{hint}")
    return kind  # type: ignore[return-value]


def _object(value: object, prefix: str, doc: Doc, namespace: str) -> Manifest | None:
    top = Fields(value, prefix, doc)
    kind = _kind(top, doc)
    if kind is None:
        return None
    readers: dict[str, Callable[[Fields, Doc, str], Manifest]] = {
        "Service": _service, "EndpointSlice": _slice, "Endpoints": _endpoints, "Node": _node}
    return readers[kind](top, doc, namespace)


def _ref(value: object, prefix: str, doc: Doc, namespace: str) -> ObjectRef | None:
    top = Fields(value, prefix, doc)
    kind = _kind(top, doc)
    if kind is None:
        return None
    rule, max_len = _NAME_RULES[kind]
    ref, labels, _ = _metadata(top, doc, kind, None if kind == "Node" else namespace, rule, max_len,
                               f"{kind} name")
    if kind == "EndpointSlice":
        return ObjectRef(kind, ref.namespace, ref.name, ref.origin, _slice_service(top, labels))
    return ObjectRef(kind, ref.namespace, ref.name, ref.origin, ref.name if kind == "Endpoints" else "")


_NAME_RULES: dict[str, tuple[re.Pattern[str], int]] = {
    "Service": (DNS1035_LABEL, 63), "Endpoints": (DNS1035_LABEL, 63), "EndpointSlice": (DNS1123_SUBDOMAIN, 253),
    "Node": (DNS1123_SUBDOMAIN, 253)}


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


# ---------------------------------------------------------------------------------------------
# Service


def _service(top: Fields, doc: Doc, namespace: str) -> KubeService:
    top.only(("apiVersion", "kind", "metadata", "spec"), ignored=("status",))
    ref, _, annotations = _metadata(top, doc, "Service", namespace, *_NAME_RULES["Service"], "Service name")
    spec = top.obj("spec", required="the Service's spec (clusterIP and ports at least)")
    assert spec is not None
    svc_type = spec.choice("type", ("ClusterIP", "NodePort"), "ClusterIP", unsupported={
        "LoadBalancer": "no load-balancer controller assigns an external address here; use NodePort "
                        "(what a LoadBalancer Service is built on)",
        "ExternalName": "an ExternalName Service is a DNS alias, with no address to load-balance"})
    _refuse_unsupported(spec, svc_type)
    spec.only(("type", "clusterIP", "clusterIPs", "ports", "externalTrafficPolicy", "sessionAffinity",
               "sessionAffinityConfig", "internalTrafficPolicy", "externalIPs", "externalName",
               "loadBalancerSourceRanges", "loadBalancerClass", "healthCheckNodePort"), ignored=SERVICE_SPEC_IGNORED)
    cluster_ip = _cluster_ip(spec, doc)
    ports = _service_ports(spec, svc_type)

    etp: TrafficPolicy = "Cluster"
    if spec.has("externalTrafficPolicy"):
        value = spec.text("externalTrafficPolicy")
        if value == "Global":
            spec.fail("externalTrafficPolicy", "unsupported value 'Global': expected 'Cluster' or 'Local' ('Global' "
                      "was a value of the old service.beta.kubernetes.io/external-traffic annotation; the field "
                      "calls it 'Cluster')")
        if svc_type == "ClusterIP":
            spec.fail("externalTrafficPolicy", f"{value!r}: may only be set for externally-accessible services "
                      f"(type NodePort); a ClusterIP Service is reached from inside the cluster only")
        etp = spec.choice("externalTrafficPolicy", ("Cluster", "Local"), "Cluster")  # type: ignore[assignment]

    affinity = spec.choice("sessionAffinity", ("None", "ClientIP"), "None") == "ClientIP"
    timeout = 10800
    config = spec.obj("sessionAffinityConfig")
    if config is not None:
        if not affinity:
            spec.fail("sessionAffinityConfig", "must not be set when sessionAffinity is None")
        config.only(("clientIP",))
        client = config.obj("clientIP")
        if client is not None:
            client.only(("timeoutSeconds",))
            timeout = client.integer("timeoutSeconds", 1, 86400, what="seconds, Kubernetes' limit") or 10800

    maglev = False
    algo_path = key_path("metadata.annotations", LB_ALGORITHM_ANNOTATION)
    if LB_ALGORITHM_ANNOTATION in annotations:
        algo = annotations[LB_ALGORITHM_ANNOTATION]
        if algo not in ("random", "maglev"):
            top.fail(algo_path, f"unsupported value {algo!r}: expected 'random' or 'maglev'")
        maglev = algo == "maglev"
        if maglev and svc_type != "NodePort":
            # Cilium uses Maglev for north-south (NodePort) traffic only; socket LB picks at random.
            doc.warn(top.at(algo_path), "maglev applies to NodePort traffic only: a ClusterIP Service ignores it")
            maglev = False
    for key in sorted(annotations):
        if key.startswith("service.cilium.io/") and key != LB_ALGORITHM_ANNOTATION:
            doc.warn(top.at(key_path("metadata.annotations", key)), "a Cilium annotation ciliumlite does not implement: "
                     "ignored")
        if key.endswith("kubernetes.io/external-traffic"):
            doc.warn(top.at(key_path("metadata.annotations", key)), "the old external-traffic annotation is ignored (as "
                     "by Kubernetes today): use spec.externalTrafficPolicy")
    svc = KubeService(ref, svc_type, cluster_ip, ports, etp, affinity, timeout, maglev)  # type: ignore[arg-type]
    for p in ports:
        name = svc.service_name(p)
        if len(name) > MAX_SERVICE_NAME:
            top.fail("metadata.name", f"the ciliumlite service name {name!r} (namespace/name:port) is {len(name)} "
                     f"characters, at most {MAX_SERVICE_NAME}: shorten the namespace, name or port name")
    return svc


def _refuse_unsupported(spec: Fields, svc_type: str) -> None:
    """Fields that would change what the datapath does, which ciliumlite cannot do: errors, not silence."""
    if spec.items("externalIPs"):
        spec.fail("externalIPs", "not supported by ciliumlite: traffic to external IPs is not load-balanced here; "
                  "use type NodePort")
    if spec.text("externalName"):
        spec.fail("externalName", "only for type ExternalName, which ciliumlite does not support")
    spec.choice("internalTrafficPolicy", ("Cluster",), "Cluster", unsupported={
        "Local": "ciliumlite has no node-local scope for traffic from pods (externalTrafficPolicy: Local is "
                 "supported)"})
    for key in ("loadBalancerSourceRanges", "loadBalancerClass"):
        if spec.has(key) and spec.data[key] not in ([], ""):
            spec.fail(key, f"may only be used when type is 'LoadBalancer', not {svc_type!r}")
    if spec.data.get("healthCheckNodePort") not in (None, 0):
        spec.fail("healthCheckNodePort", "may only be set when type is 'LoadBalancer' and externalTrafficPolicy "
                  "is 'Local'")
    for path, family in spec.strs("ipFamilies", max_items=2):
        if family not in ("IPv4", "IPv6"):
            raise spec.doc.error(path, f"unsupported value {family!r}: expected 'IPv4' or 'IPv6'")
    families = [f for _, f in spec.strs("ipFamilies")]
    if families and "IPv4" not in families:
        spec.fail("ipFamilies", "an IPv6-only Service is not supported: ciliumlite services are IPv4")
    spec.choice("ipFamilyPolicy", ("SingleStack", "PreferDualStack"), "SingleStack", unsupported={
        "RequireDualStack": "ciliumlite services are IPv4 only; use SingleStack or PreferDualStack"})
    spec.string_map("selector")


def _cluster_ip(spec: Fields, doc: Doc) -> str:
    ips = spec.strs("clusterIPs", max_items=2)
    key = "clusterIP"
    value = spec.text("clusterIP")
    if not value and ips:  # the API server defaults clusterIP from clusterIPs[0]
        key, value = "clusterIPs[0]", ips[0][1]
    if ips and ips[0][1] != value:
        spec.fail("clusterIPs[0]", f"{ips[0][1]!r} must be the same as spec.clusterIP ({value!r})")
    if not value:
        spec.fail("clusterIP", "required: there is no API server here to allocate one; pick a free address of "
                  "your service CIDR (e.g. 10.96.0.10) and write it as spec.clusterIP")
    if value == "None":
        spec.fail(key, "'None' (a headless Service) is not supported: it has no virtual IP to load-balance")
    ip = _ipv4(spec, key, value, "a ClusterIP")
    for path, extra in ips[1:]:
        try:
            second = ipaddress.ip_address(extra)
        except ValueError:
            raise doc.error(path, f"{extra!r} is not an IP address") from None
        if second.version == 4:
            raise doc.error(path, "at most one address of each IP family (clusterIPs[0] is the IPv4 one)")
        doc.warn(path, "the IPv6 ClusterIP is ignored: ciliumlite services are IPv4")
    return ip


def _service_ports(spec: Fields, svc_type: str) -> tuple[ServicePort, ...]:
    entries = spec.objs("ports")
    if not entries:
        spec.fail("ports", "required: at least one port (a Service without ports has nothing to load-balance)")
    several = len(entries) > 1
    names: dict[str, str] = {}
    ports: dict[tuple[int, str], str] = {}
    node_ports: dict[tuple[int, str], str] = {}
    out = []
    for p in entries:
        p.only(("name", "protocol", "port", "targetPort", "nodePort"), ignored=("appProtocol",))
        name = _port_name(p, "name", required="a name for each port when a Service has several" if several else "")
        if name in names:
            p.fail("name", f"duplicate port name {name!r} ({names[name]} has it)")
        names[name] = p.path
        proto = p.choice("protocol", _PROTOCOLS, "TCP", unsupported=_NO_SCTP)
        port = p.integer("port", 1, 65535, required="the port clients connect to")
        assert port is not None
        if (port, proto) in ports:
            p.fail("port", f"duplicate port {port}/{proto} ({ports[port, proto]} has it)")
        ports[port, proto] = p.path
        target = _target_port(p, port)
        node_port = p.integer("nodePort", 0, 65535) or None
        if svc_type == "ClusterIP" and node_port is not None:
            p.fail("nodePort", "may not be used when type is 'ClusterIP' (set type: NodePort)")
        if svc_type == "NodePort":
            lo, hi = NODEPORT_RANGE
            if node_port is None:
                p.fail("nodePort", f"required for type NodePort: there is no API server here to allocate one; "
                       f"pick a free port in {lo}..{hi}")
            if not lo <= node_port <= hi:
                p.fail("nodePort", f"{node_port} is outside {lo}..{hi} (the node port range)")
            if (node_port, proto) in node_ports:
                p.fail("nodePort", f"duplicate node port {node_port}/{proto} ({node_ports[node_port, proto]} has it)")
            node_ports[node_port, proto] = p.path
        out.append(ServicePort(name, proto, port, target, node_port, p.path))  # type: ignore[arg-type]
    return tuple(out)


def _target_port(p: Fields, port: int) -> int | str:
    value = p.data.get("targetPort")
    if value is None:
        return port  # Kubernetes' default: the same as port
    if isinstance(value, str):
        if value.isdigit():
            p.fail("targetPort", f"{value!r} is a quoted number: write targetPort: {value} (a named port must "
                   f"contain a letter)")
        if len(value) > 15 or not IANA_SVC_NAME.match(value) or "--" in value or \
                not any(c.isalpha() for c in value):
            p.fail("targetPort", f"{value!r} is not a valid port name: at most 15 lower-case letters, digits and "
                   f"'-' (no '--'), with at least one letter")
        return value
    got = p.integer("targetPort", 1, 65535, what="a port number, or the name of an endpoint port")
    assert got is not None
    return got


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
    not_ready = 0
    for ep in top.objs("endpoints", max_items=1000):
        ep.only(("addresses", "conditions"), ignored=ENDPOINT_IGNORED)
        addresses = ep.strs("addresses", max_items=100)
        if not addresses:
            ep.fail("addresses", "required: at least one address")
        checked = [_ipv4(ep, f"addresses[{i}]", a, "a backend") for i, (_, a) in enumerate(addresses)]
        if len(addresses) > 1:
            doc.warn(ep.at("addresses"), "only the first address of an endpoint is used (as by kube-proxy)")
        is_ready = True
        conditions = ep.obj("conditions")
        if conditions is not None:
            conditions.only(("ready", "serving", "terminating"))
            conditions.flag("serving")
            conditions.flag("terminating")
            is_ready = conditions.flag("ready") is not False  # null: unknown, which consumers take as ready
        if is_ready:
            ready.append(checked[0])
        else:
            not_ready += 1
    group = EndpointGroup(_sorted_ips(ready), ports)
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


# ---------------------------------------------------------------------------------------------
# Files


def _files(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():  # like kubectl -f DIR: its .yaml, .yml and .json files, by name
            out.extend(sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml", ".json") and q.is_file()))
        else:
            out.append(p)
    return out


def load(paths: Sequence[str | Path], *, strict: bool = True, namespace: str = "default") -> Manifests:
    """Every object of the files (or directories: their ``.yaml``, ``.yml`` and ``.json`` files, by name).

    Raises :class:`ManifestError` with every bad object of every file (see :func:`parse`), and
    :class:`OSError` (:class:`FileNotFoundError`…) for a file that cannot be read.
    """
    out = Manifests()
    for part in _each_file(paths, lambda text, source: parse(text, source=source, strict=strict,
                                                              namespace=namespace)):
        out.extend(part)
    return out


def load_refs(paths: Sequence[str | Path], *, namespace: str = "default") -> list[ObjectRef]:
    """Which objects the files name, for :func:`~ciliumlite.manifests.apply.delete` (see :func:`parse_refs`).
    Raises :class:`ManifestError` and :class:`OSError` as :func:`load` does."""
    return [ref for part in _each_file(paths, lambda text, source: parse_refs(text, source=source,
                                                                              namespace=namespace))
            for ref in part]


def _each_file(paths: Sequence[str | Path], read: Callable[[str, str], T]) -> list[T]:
    """``read(text, source)`` of every file, errors collected across files."""
    out: list[T] = []
    errors: list[ManifestError] = []
    for path in _files(paths):
        try:
            out.append(read(path.read_text(encoding="utf-8"), str(path)))
        except ManifestError as exc:
            errors.extend(exc.errors)
        except UnicodeDecodeError as exc:
            errors.append(ManifestError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(path)))
    if errors:
        raise ManifestError.combine(errors)
    return out
