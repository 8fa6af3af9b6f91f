"""A Kubernetes Service read and checked into a :class:`~ciliumlite.manifests.model.KubeService`."""

from __future__ import annotations

import ipaddress

from ciliumlite.manifests.fields import (
    IANA_SVC_NAME,
    Doc,
    Fields,
    key_path,
)
from ciliumlite.manifests.meta import (
    _NAME_RULES,
    _NO_SCTP,
    _PROTOCOLS,
    LB_ALGORITHM_ANNOTATION,
    MAX_SERVICE_NAME,
    SERVICE_SPEC_IGNORED,
    _ipv4,
    _metadata,
    _port_name,
)
from ciliumlite.manifests.model import (
    KubeService,
    ServicePort,
)
from ciliumlite.service import NODEPORT_RANGE, TrafficPolicy

# ---------------------------------------------------------------------------------------------
# Service


def _service(top: Fields, doc: Doc, namespace: str) -> KubeService:
    top.only(("apiVersion", "kind", "metadata", "spec"), ignored=("status",))
    ref, _, annotations = _metadata(top, doc, "Service", namespace, *_NAME_RULES["Service"], "Service name")
    spec = top.obj("spec", required="the Service's spec (clusterIP and ports at least)")
    assert spec is not None
    svc_type = spec.choice("type", ("ClusterIP", "NodePort", "LoadBalancer"), "ClusterIP", unsupported={
        "ExternalName": "an ExternalName Service is a DNS alias, with no address to load-balance"})
    _refuse_unsupported(spec, svc_type)
    spec.only(("type", "clusterIP", "clusterIPs", "ports", "externalTrafficPolicy", "sessionAffinity",
               "sessionAffinityConfig", "internalTrafficPolicy", "externalIPs", "externalName",
               "loadBalancerSourceRanges", "loadBalancerClass", "healthCheckNodePort"), ignored=SERVICE_SPEC_IGNORED)
    cluster_ip = _cluster_ip(spec, doc)
    ports = _service_ports(spec, svc_type)
    external_ips = _addresses(spec, spec.strs("externalIPs", max_items=64), {cluster_ip: "spec.clusterIP"},
                              "an external IP")
    lb_ips = _ingress_ips(top, doc, svc_type, {cluster_ip: "spec.clusterIP", **{ip: "spec.externalIPs"
                                                                               for ip in external_ips}})
    # Kubernetes' "externally accessible": a node port, a LoadBalancer, or external IPs.
    external = svc_type != "ClusterIP" or bool(external_ips)

    etp: TrafficPolicy = "Cluster"
    if spec.has("externalTrafficPolicy"):
        value = spec.text("externalTrafficPolicy")
        if value == "Global":
            spec.fail("externalTrafficPolicy", "unsupported value 'Global': expected 'Cluster' or 'Local' ('Global' "
                      "was a value of the old service.beta.kubernetes.io/external-traffic annotation; the field "
                      "calls it 'Cluster')")
        if not external:
            spec.fail("externalTrafficPolicy", f"{value!r}: may only be set for externally-accessible services "
                      f"(type NodePort or LoadBalancer, or with externalIPs); a ClusterIP Service is reached from "
                      f"inside the cluster only")
        etp = spec.choice("externalTrafficPolicy", ("Cluster", "Local"), "Cluster")  # type: ignore[assignment]
    itp: TrafficPolicy = spec.choice("internalTrafficPolicy", ("Cluster", "Local"),  # type: ignore[assignment]
                                     "Cluster")
    health = _health_check_node_port(spec, svc_type, etp, ports)

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
        if maglev and not external:
            # Cilium uses Maglev for north-south traffic only; socket LB picks at random.
            doc.warn(top.at(algo_path), "maglev applies to traffic from outside (NodePort, LoadBalancer, external "
                     "IPs) only: a ClusterIP Service ignores it")
            maglev = False
    for key in sorted(annotations):
        if key.startswith("service.cilium.io/") and key != LB_ALGORITHM_ANNOTATION:
            doc.warn(top.at(key_path("metadata.annotations", key)), "a Cilium annotation ciliumlite does not implement: "
                     "ignored")
        if key.endswith("kubernetes.io/external-traffic"):
            doc.warn(top.at(key_path("metadata.annotations", key)), "the old external-traffic annotation is ignored (as "
                     "by Kubernetes today): use spec.externalTrafficPolicy")
    svc = KubeService(ref, svc_type, cluster_ip, ports, etp, affinity, timeout, maglev,  # type: ignore[arg-type]
                      external_ips, lb_ips, itp, health)
    for p in ports:
        name = svc.service_name(p)
        if len(name) > MAX_SERVICE_NAME:
            top.fail("metadata.name", f"the ciliumlite service name {name!r} (namespace/name:port) is {len(name)} "
                     f"characters, at most {MAX_SERVICE_NAME}: shorten the namespace, name or port name")
    return svc


def _addresses(f: Fields, values: list[tuple[str, str]], taken: dict[str, str], what: str) -> tuple[str, ...]:
    """IPv4 addresses at ``values`` ((path, text) pairs under ``f``), none of them twice nor one of
    ``taken`` (address -> the field that has it)."""
    out: list[str] = []
    for path, text in values:
        rel = path[len(f.path) + 1:] if path.startswith(f.path + ".") else path
        ip = _ipv4(f, rel, text, what)
        if ip in taken:
            raise f.doc.error(path, f"Duplicate value: {ip!r} ({taken[ip]} has it)")
        taken[ip] = path
        out.append(ip)
    return tuple(out)


def _ingress_ips(top: Fields, doc: Doc, svc_type: str, taken: dict[str, str]) -> tuple[str, ...]:
    """``status.loadBalancer.ingress[].ip`` of a LoadBalancer Service: the addresses the load-balancer
    controller gave it (written by that controller; here by you). Other status is the API server's."""
    status = top.obj("status")
    lb = status.obj("loadBalancer") if status is not None else None
    entries = lb.objs("ingress", max_items=64) if lb is not None else []
    if entries and svc_type != "LoadBalancer":
        doc.warn(top.at("status.loadBalancer.ingress"), f"ignored: a {svc_type} Service has no LoadBalancer IPs")
        return ()
    values = []
    for e in entries:
        if not e.has("ip"):
            if e.has("hostname"):
                doc.warn(e.at("hostname"), "a hostname ingress is not load-balanced here (an address is needed)")
                continue
            e.fail("ip", "required: the LoadBalancer IP (or a hostname, which is ignored)")
        values.append((e.at("ip"), e.text("ip")))
    return _addresses(status, values, taken, "a LoadBalancer IP") if status is not None else ()


def _health_check_node_port(spec: Fields, svc_type: str, etp: str, ports: tuple[ServicePort, ...]) -> int | None:
    if spec.data.get("healthCheckNodePort") in (None, 0):
        return None
    if svc_type != "LoadBalancer" or etp != "Local":
        spec.fail("healthCheckNodePort", "may only be set when type is 'LoadBalancer' and externalTrafficPolicy "
                  "is 'Local'")
    lo, hi = NODEPORT_RANGE
    port = spec.integer("healthCheckNodePort", lo, hi, what="a port of the node port range")
    assert port is not None
    for p in ports:
        if p.node_port == port and p.protocol == "TCP":
            spec.fail("healthCheckNodePort", f"Duplicate value: {port} ({p.path}.nodePort has it)")
    return port


def _refuse_unsupported(spec: Fields, svc_type: str) -> None:
    """Fields that would change what the datapath does, which ciliumlite cannot do: errors, not silence."""
    if spec.text("externalName"):
        spec.fail("externalName", "only for type ExternalName, which ciliumlite does not support")
    if spec.has("loadBalancerClass") and spec.data["loadBalancerClass"] not in (None, "") and \
            svc_type != "LoadBalancer":
        spec.fail("loadBalancerClass", f"may only be used when type is 'LoadBalancer', not {svc_type!r}")
    if spec.has("loadBalancerSourceRanges") and spec.data["loadBalancerSourceRanges"] not in (None, []):
        if svc_type != "LoadBalancer":
            spec.fail("loadBalancerSourceRanges", f"may only be used when type is 'LoadBalancer', not {svc_type!r}")
        spec.fail("loadBalancerSourceRanges", "not supported by ciliumlite (Cilium's cilium_lb4_source_range): "
                  "traffic would be accepted from every source")
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
        lo, hi = NODEPORT_RANGE
        if svc_type == "NodePort" and node_port is None:
            p.fail("nodePort", f"required for type NodePort: there is no API server here to allocate one; "
                   f"pick a free port in {lo}..{hi}")
        # A LoadBalancer Service may go without (allocateLoadBalancerNodePorts: false): its
        # LoadBalancer IPs are served all the same.
        if node_port is not None:
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


