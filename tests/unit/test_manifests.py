"""Kubernetes manifests: the mapping to ciliumlite values, every validation error (with its field
path), and apply/delete against the in-memory store. The manifests are YAML and JSON as users
write them; examples/manifests/ is loaded as it ships."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cluster import InMemoryStore, NodeInfo
from ciliumlite.manifests import (
    KubeEndpoints,
    KubeNode,
    KubeService,
    ManifestError,
    apply,
    delete,
    load,
    load_refs,
    parse,
    parse_refs,
)
from ciliumlite.service import Backend, Frontend, Service

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "manifests"


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def service(spec: str = "", *, name: str = "web", namespace: str = "demo", meta: str = "") -> str:
    """A Service manifest; ``spec`` replaces the default spec (one ClusterIP port)."""
    spec = spec or """\
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            targetPort: 8080
        """
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
            + textwrap.indent(y(meta).rstrip("\n") + "\n" if meta else "", "  ") + "spec:\n" + textwrap.indent(y(spec), "  "))


def endpoint_slice(body: str = "", *, name: str = "web-1", svc: str = "web", namespace: str = "demo") -> str:
    body = body or """\
        addressType: IPv4
        ports:
          - port: 8080
        endpoints:
          - addresses: [10.244.1.5]
        """
    return (f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {svc}\n" + y(body))


def node(body: str = "", *, name: str = "worker1") -> str:
    body = body or """\
        spec:
          podCIDR: 10.244.1.0/24
        status:
          addresses:
            - {type: InternalIP, address: 10.0.0.12}
        """
    return f"apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n" + y(body)


def error_of(text: str, **kw: object) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse(text, source="m.yaml", **kw)  # type: ignore[arg-type]
    return info.value


def applied(*texts: str, store: InMemoryStore | None = None) -> tuple[InMemoryStore, list[str]]:
    store = store or InMemoryStore()
    result = apply(store, parse("---\n".join(texts), source="m.yaml"))
    return store, result.lines()


def by_name(store: InMemoryStore) -> dict[str, Service]:
    return {s.name: s for s in store.services()}


def backends(svc: Service) -> list[tuple[str, int]]:
    return [(b.ip, b.port) for b in svc.backends]


# ---------------------------------------------------------------------------------------------
# The mapping


def test_the_examples_map_to_services_backends_and_nodes():
    docs = load([EXAMPLES])
    assert docs.warnings == []
    kinds = [type(m).__name__ for m in docs]
    assert kinds == ["KubeService", "KubeEndpoints", "KubeNode", "KubeNode", "KubeNode", "KubeService",
                     "KubeEndpoints"]  # dns.json, nodes.yaml, web.yaml, by file name
    store = InMemoryStore()
    result = apply(store, docs)
    assert result.lines() == ["service/kube-dns created", "endpoints/kube-dns created", "node/k8s-master created",
                              "node/worker1 created", "node/worker3 created", "service/web created",
                              "endpointslice.discovery.k8s.io/web-x7k2p created"]
    svcs = by_name(store)
    http = svcs["demo/web:http"]
    assert http.frontend == Frontend("10.96.100.10", 80, "TCP")
    assert http.type == "NodePort" and http.node_port == 30080
    assert http.external_traffic_policy == "Local" and http.maglev
    assert http.session_affinity and http.affinity_timeout == 600
    # targetPort "http" is resolved through the slice's port names; the not-ready endpoint is left out.
    assert backends(http) == [("10.244.1.10", 8080), ("10.244.2.11", 8080)]
    assert backends(svcs["demo/web:metrics"]) == [("10.244.1.10", 9090), ("10.244.2.11", 9090)]
    assert svcs["demo/web:metrics"].node_port == 30090
    dns = svcs["kube-system/kube-dns:dns"]
    assert dns.frontend == Frontend("10.96.0.10", 53, "UDP") and dns.type == "ClusterIP"
    assert backends(dns) == [("10.244.0.2", 53), ("10.244.0.3", 53)]
    assert svcs["kube-system/kube-dns:dns-tcp"].frontend.protocol == "TCP"
    assert store.nodes() == [NodeInfo("k8s-master", "10.0.0.11", "10.244.0.0/24"),
                             NodeInfo("worker1", "10.0.0.12", "10.244.1.0/24"),
                             NodeInfo("worker3", "10.0.0.13", "10.244.2.0/24")]
    # What the store keeps survives the kvstore's JSON (EtcdStore stores to_dict()).
    for svc in store.services():
        again = Service.from_dict(json.loads(json.dumps(svc.to_dict())))
        assert again == svc and again.labels == svc.labels


def test_multi_document_yaml_with_empty_documents_and_comments():
    text = "# services\n---\n" + service() + "---\n# nothing here\n---\n" + endpoint_slice() + "---\n"
    docs = parse(text)
    assert [type(m) for m in docs] == [KubeService, KubeEndpoints]
    svc = docs.items[0]
    assert isinstance(svc, KubeService) and svc.ref.namespace == "demo" and svc.ref.name == "web"
    store, lines = applied(text)
    assert lines == ["service/web created", "endpointslice.discovery.k8s.io/web-1 created"]
    (only,) = store.services()
    assert only.name == "demo/web"  # one unnamed port: <namespace>/<name>
    assert backends(only) == [("10.244.1.5", 8080)]


def test_json_object_and_json_list():
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
           "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 443, "targetPort": 8443}]}}
    (svc,) = parse(json.dumps(obj), namespace="prod")
    assert isinstance(svc, KubeService) and svc.ref.namespace == "prod"  # no namespace: the default one
    assert svc.ports[0].target_port == 8443
    lst = {"apiVersion": "v1", "kind": "List", "items": [obj, {
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "api"},
        "subsets": [{"addresses": [{"ip": "10.244.3.4"}], "ports": [{"port": 8443}]}]}]}
    store, lines = applied(json.dumps(lst, indent=2))
    assert lines == ["service/api created", "endpoints/api created"]
    assert backends(by_name(store)["default/api"]) == [("10.244.3.4", 8443)]


def test_yaml_list_items_are_read_and_their_errors_have_the_item_path():
    text = y("""
        apiVersion: v1
        kind: List
        items:
          - apiVersion: v1
            kind: Node
            metadata: {name: w1}
            spec: {podCIDR: 10.244.1.0/24}
            status: {addresses: [{type: InternalIP, address: 10.0.0.12}]}
          - apiVersion: v1
            kind: Service
            metadata: {name: web}
            spec:
              clusterIP: 10.96.0.20
              ports: [{port: 0}]
        """)
    err = error_of(text)
    assert err.path == "items[1].spec.ports[0].port" and err.kind == "Service" and err.name == "default/web"
    assert "0 is outside 1..65535" in err.problem
    assert str(err) == "m.yaml: document 1 (Service default/web): items[1].spec.ports[0].port: 0 is outside 1..65535"


def test_named_target_port_resolves_through_endpoint_port_names():
    svc = service("""\
        clusterIP: 10.96.0.20
        ports:
          - {name: web, port: 80, targetPort: http-alt}
          - {name: admin, port: 81, targetPort: 9000}
        """)
    # Kubernetes names slice ports after the Service ports ("admin"); a port named as the
    # targetPort ("http-alt") resolves the named target.
    sl = endpoint_slice("""\
        addressType: IPv4
        ports:
          - {name: http-alt, port: 8081}
          - {name: admin, port: 9001}
        endpoints:
          - addresses: [10.244.1.5]
        """)
    store, _ = applied(svc, sl)
    svcs = by_name(store)
    assert backends(svcs["demo/web:web"]) == [("10.244.1.5", 8081)]
    assert backends(svcs["demo/web:admin"]) == [("10.244.1.5", 9001)]  # the slice's number, not targetPort's


def test_a_slice_without_ports_serves_the_numeric_target_port():
    sl = endpoint_slice("""\
        addressType: IPv4
        endpoints:
          - addresses: [10.244.1.7]
        """)
    store, _ = applied(service(), sl)
    assert backends(by_name(store)["demo/web"]) == [("10.244.1.7", 8080)]


def test_a_slice_port_matching_nothing_is_a_warning_not_a_backend():
    svc = service("""\
        clusterIP: 10.96.0.20
        ports: [{name: http, port: 80, targetPort: 8080}]
        """)
    store = InMemoryStore()
    result = apply(store, parse(svc + "---\n" + endpoint_slice()))  # the slice's port is unnamed
    assert backends(by_name(store)["demo/web:http"]) == []
    (warning,) = result.warnings
    assert "endpointslice.discovery.k8s.io/web-1: no port named 'http'/TCP" in warning


def test_not_ready_endpoints_are_not_backends():
    sl = endpoint_slice("""\
        addressType: IPv4
        ports: [{port: 8080}]
        endpoints:
          - addresses: [10.244.1.5]
            conditions: {ready: true}
          - addresses: [10.244.1.6]
            conditions: {ready: false, serving: false, terminating: false}
          - addresses: [10.244.1.7]
            conditions: {}          # ready unknown: taken as ready, as Kubernetes says consumers should
          - addresses: [10.244.1.8]
            conditions: {ready: null}
        """)
    (eps,) = parse(sl)
    assert isinstance(eps, KubeEndpoints) and eps.not_ready == 1
    store, _ = applied(service(), sl)
    assert backends(by_name(store)["demo/web"]) == [("10.244.1.5", 8080), ("10.244.1.7", 8080),
                                                     ("10.244.1.8", 8080)]


def test_endpoints_subsets_and_not_ready_addresses():
    svc = service("""\
        clusterIP: 10.96.0.21
        ports:
          - {name: http, port: 80}
          - {name: grpc, port: 90, targetPort: 9090}
        """, name="api")
    eps = y("""
        apiVersion: v1
        kind: Endpoints
        metadata: {name: api, namespace: demo}
        subsets:
          - addresses: [{ip: 10.244.1.5, nodeName: worker1}, {ip: 10.244.2.5}]
            notReadyAddresses: [{ip: 10.244.2.6}]
            ports: [{name: http, port: 8080}, {name: grpc, port: 9090}]
          - addresses: [{ip: 10.244.3.5}]
            ports: [{name: http, port: 8888}]
        """)
    store, lines = applied(svc, eps)
    assert lines == ["service/api created", "endpoints/api created"]
    svcs = by_name(store)
    assert backends(svcs["demo/api:http"]) == [("10.244.1.5", 8080), ("10.244.2.5", 8080), ("10.244.3.5", 8888)]
    assert backends(svcs["demo/api:grpc"]) == [("10.244.1.5", 9090), ("10.244.2.5", 9090)]


def test_endpoints_and_endpoint_slices_of_one_service_are_merged_without_duplicates():
    eps = y("""
        apiVersion: v1
        kind: Endpoints
        metadata: {name: web, namespace: demo}
        subsets:
          - addresses: [{ip: 10.244.1.5}, {ip: 10.244.1.9}]
            ports: [{port: 8080}]
        """)
    store, _ = applied(service(), endpoint_slice(), eps)  # a mirrored slice repeats 10.244.1.5
    assert backends(by_name(store)["demo/web"]) == [("10.244.1.5", 8080), ("10.244.1.9", 8080)]


def test_several_slices_add_up_and_each_can_change_alone():
    a = endpoint_slice(name="web-a")
    b = endpoint_slice("""\
        addressType: IPv4
        ports: [{port: 8080}]
        endpoints: [{addresses: [10.244.2.5]}]
        """, name="web-b")
    store, _ = applied(service(), a, b)
    assert backends(by_name(store)["demo/web"]) == [("10.244.1.5", 8080), ("10.244.2.5", 8080)]
    b2 = b.replace("10.244.2.5", "10.244.2.6")
    _, lines = applied(b2, store=store)
    assert lines == ["endpointslice.discovery.k8s.io/web-b configured"]
    assert backends(by_name(store)["demo/web"]) == [("10.244.1.5", 8080), ("10.244.2.6", 8080)]


def test_node_mapping_internal_ip_dual_stack_and_external_ip():
    text = node("""\
        spec:
          podCIDR: 10.244.1.0/24
          podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]
          providerID: kind://docker/kind/worker1
        status:
          addresses:
            - {type: Hostname, address: worker1}
            - {type: InternalIP, address: "fc00:f853::2"}
            - {type: InternalIP, address: 10.0.0.12}
            - {type: ExternalIP, address: 203.0.113.12}
          conditions: [{type: Ready, status: "True"}]
        """)
    docs = parse(text)
    (n,) = docs
    assert isinstance(n, KubeNode) and n.info == NodeInfo("worker1", "10.0.0.12", "10.244.1.0/24")
    assert any("IPv6 pod CIDR is ignored" in w for w in docs.warnings)
    ext = parse(node("""\
        spec: {podCIDR: 10.244.2.0/24}
        status: {addresses: [{type: ExternalIP, address: 203.0.113.13}]}
        """, name="edge")).items[0]
    assert isinstance(ext, KubeNode) and ext.info.ip == "203.0.113.13"  # no InternalIP: the ExternalIP


def test_harmless_fields_of_a_kubectl_get_dump_are_accepted():
    text = y("""
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          namespace: demo
          uid: 0b1c9a4e-5a5d-4c2e-8f0e-1d2c3b4a5f60
          resourceVersion: "1234"
          creationTimestamp: "2024-05-02T09:14:07Z"
          generation: 1
          labels: {app: web}
          annotations:
            kubectl.kubernetes.io/last-applied-configuration: |
              {"apiVersion":"v1","kind":"Service"}
          managedFields:
            - manager: kubectl-client-side-apply
              operation: Update
        spec:
          type: ClusterIP
          clusterIP: 10.96.0.20
          clusterIPs: [10.96.0.20]
          ipFamilies: [IPv4]
          ipFamilyPolicy: SingleStack
          internalTrafficPolicy: Cluster
          selector: {app: web}
          sessionAffinity: None
          publishNotReadyAddresses: false
          ports:
            - {name: http, port: 80, protocol: TCP, targetPort: 8080, appProtocol: http}
        status:
          loadBalancer: {}
        """)
    docs = parse(text)
    assert len(docs) == 1 and docs.warnings == []


def test_maglev_annotation_and_its_limits():
    nodeport = """\
        type: NodePort
        clusterIP: 10.96.0.20
        externalTrafficPolicy: Cluster
        ports: [{port: 80, nodePort: 30080}]
        """
    (svc,) = parse(service(nodeport, meta="annotations: {service.cilium.io/lb-algorithm: maglev}"))
    assert isinstance(svc, KubeService) and svc.maglev
    (svc,) = parse(service(nodeport, meta="annotations: {service.cilium.io/lb-algorithm: random}"))
    assert isinstance(svc, KubeService) and not svc.maglev
    docs = parse(service(meta="annotations: {service.cilium.io/lb-algorithm: maglev}"))
    assert not docs.items[0].maglev  # type: ignore[union-attr]
    assert "maglev applies to traffic from outside" in docs.warnings[0]
    assert "metadata.annotations[service.cilium.io/lb-algorithm]" in docs.warnings[0]
    docs = parse(service(meta="annotations: {service.cilium.io/forwarding-mode: dsr}"))
    assert "does not implement: ignored" in docs.warnings[0]


# ---------------------------------------------------------------------------------------------
# Validation: every error names the field


NODEPORT = "type: NodePort\nclusterIP: 10.96.0.20\n"
CASES = [
    # (manifest, field path, words of the problem)
    (service().replace("apiVersion: v1", "apiVersion: apps/v1"), "apiVersion", "a Service is apiVersion 'v1'"),
    (endpoint_slice().replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"), "apiVersion",
     "no longer served since Kubernetes 1.25"),
    (service().replace("kind: Service\n", ""), "kind", "required"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n", "kind", "'Deployment' is not supported"),
    (service().replace("  name: web\n", ""), "metadata.name", "required"),
    (service().replace("  name: web\n", "  generateName: web-\n"), "metadata.name", "generateName needs an API server"),
    (service(name="Web"), "metadata.name", "not a valid Service name"),
    (service(name="1web"), "metadata.name", "starting with a letter"),
    (service(namespace="Demo_1"), "metadata.namespace", "not a valid namespace"),
    (service(meta="labels: {version: 1}"), "metadata.labels[version]", "quote it"),
    (service(meta="uid: x\nowner: me\n"), "metadata.owner", "unknown field"),
    (service(name="a" * 40, namespace="b" * 30), "metadata.name", "at most 63"),
    (service() + "extra: 1\n", "extra", "unknown field"),
    (service("clusterIP: 10.96.0.20\nports: [{port: 80, nodeport: 30080}]\n"), "spec.ports[0].nodeport",
     "did you mean 'nodePort'?"),
    (service("type: LoadBalancer\nclusterIP: 10.96.0.20\nports: [{port: 80, nodePort: 80}]\n"),
     "spec.ports[0].nodePort", "80 is outside 30000..32767"),
    (service("type: ExternalName\nexternalName: db.example.com\n"), "spec.type", "'ExternalName' is not supported"),
    (service("type: Headless\nclusterIP: 10.96.0.20\nports: [{port: 80}]\n"), "spec.type",
     "unsupported value 'Headless': expected 'ClusterIP', 'NodePort'"),
    (service("ports: [{port: 80}]\n"), "spec.clusterIP", "no API server here to allocate one"),
    (service("clusterIP: None\nports: [{port: 80}]\n"), "spec.clusterIP", "headless"),
    (service("clusterIP: 10.96.0.300\nports: [{port: 80}]\n"), "spec.clusterIP", "not an IP address"),
    (service("clusterIP: fd00::10\nports: [{port: 80}]\n"), "spec.clusterIP", "IPv6: not supported"),
    (service("clusterIP: 0.0.0.0\nports: [{port: 80}]\n"), "spec.clusterIP", "cannot be a ClusterIP"),
    (service("clusterIP: 10.96.0.20\nclusterIPs: [10.96.0.21]\nports: [{port: 80}]\n"), "spec.clusterIPs[0]",
     "must be the same as spec.clusterIP"),
    (service("clusterIP: 10.96.0.20\n"), "spec.ports", "at least one port"),
    (service("clusterIP: 10.96.0.20\nports: [{port: 0}]\n"), "spec.ports[0].port", "0 is outside 1..65535"),
    (service("clusterIP: 10.96.0.20\nports: [{port: 70000}]\n"), "spec.ports[0].port", "outside 1..65535"),
    (service("clusterIP: 10.96.0.20\nports: [{port: \"80\"}]\n"), "spec.ports[0].port",
     "must be an integer, not a string ('80') (write it without quotes)"),
    (service("clusterIP: 10.96.0.20\nports: [{targetPort: 80}]\n"), "spec.ports[0].port", "required"),
    (service("clusterIP: 10.96.0.20\nports: [{name: a, port: 80}, {port: 81}]\n"), "spec.ports[1].name",
     "required: a name for each port"),
    (service("clusterIP: 10.96.0.20\nports: [{name: a, port: 80}, {name: a, port: 81}]\n"), "spec.ports[1].name",
     "duplicate port name 'a' (spec.ports[0] has it)"),
    (service("clusterIP: 10.96.0.20\nports: [{name: a, port: 80}, {name: b, port: 80}]\n"), "spec.ports[1].port",
     "duplicate port 80/TCP"),
    (service("clusterIP: 10.96.0.20\nports: [{name: Http, port: 80}]\n"), "spec.ports[0].name",
     "not a valid port name"),
    (service("clusterIP: 10.96.0.20\nports: [{port: 80, protocol: SCTP}]\n"), "spec.ports[0].protocol",
     "'SCTP' is not supported by ciliumlite"),
    (service("clusterIP: 10.96.0.20\nports: [{port: 80, protocol: tcp}]\n"), "spec.ports[0].protocol",
     "unsupported value 'tcp': expected 'TCP', 'UDP'"),
    (service("clusterIP: 10.96.0.20\nports: [{port: 80, targetPort: 0}]\n"), "spec.ports[0].targetPort",
     "0 is outside 1..65535"),
    (service("clusterIP: 10.96.0.20\nports: [{port: 80, targetPort: \"8080\"}]\n"), "spec.ports[0].targetPort",
     "a quoted number"),
    (service("clusterIP: 10.96.0.20\nports: [{port: 80, targetPort: web_http}]\n"), "spec.ports[0].targetPort",
     "not a valid port name"),
    (service("clusterIP: 10.96.0.20\nports: [{port: 80, targetPort: my-long-port-name}]\n"),
     "spec.ports[0].targetPort", "at most 15"),
    (service("clusterIP: 10.96.0.20\nports: [{port: 80, nodePort: 30080}]\n"), "spec.ports[0].nodePort",
     "may not be used when type is 'ClusterIP'"),
    (service(NODEPORT + "ports: [{port: 80}]\n"), "spec.ports[0].nodePort", "required for type NodePort"),
    (service(NODEPORT + "ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 40000}]\n"),
     "spec.ports[1].nodePort", "40000 is outside 30000..32767 (the node port range)"),
    (service(NODEPORT + "ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]\n"),
     "spec.ports[1].nodePort", "duplicate node port 30080/TCP"),
    (service("clusterIP: 10.96.0.20\nexternalTrafficPolicy: Local\nports: [{port: 80}]\n"),
     "spec.externalTrafficPolicy", "may only be set for externally-accessible services"),
    (service(NODEPORT + "externalTrafficPolicy: Global\nports: [{port: 80, nodePort: 30080}]\n"),
     "spec.externalTrafficPolicy", "'Global' was a value of the old service.beta.kubernetes.io/external-traffic"),
    (service(NODEPORT + "externalTrafficPolicy: local\nports: [{port: 80, nodePort: 30080}]\n"),
     "spec.externalTrafficPolicy", "expected 'Cluster', 'Local'"),
    (service("clusterIP: 10.96.0.20\nsessionAffinity: Cookie\nports: [{port: 80}]\n"), "spec.sessionAffinity",
     "expected 'None', 'ClientIP'"),
    (service("clusterIP: 10.96.0.20\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\nports: [{port: 80}]\n"),
     "spec.sessionAffinityConfig", "must not be set when sessionAffinity is None"),
    (service("clusterIP: 10.96.0.20\nsessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}"
             "\nports: [{port: 80}]\n"), "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "outside 1..86400"),
    (service("clusterIP: 10.96.0.20\nsessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeout: 9}}"
             "\nports: [{port: 80}]\n"), "spec.sessionAffinityConfig.clientIP.timeout", "did you mean 'timeoutSeconds'"),
    (service(meta="annotations: {service.cilium.io/lb-algorithm: roundrobin}"),
     "metadata.annotations[service.cilium.io/lb-algorithm]", "expected 'random' or 'maglev'"),
    (service("clusterIP: 10.96.0.20\nexternalIPs: [198.51.100.7, 198.51.100.7]\nports: [{port: 80}]\n"),
     "spec.externalIPs[1]", "Duplicate value: '198.51.100.7' (spec.externalIPs[0] has it)"),
    (service("clusterIP: 10.96.0.20\nexternalIPs: [10.96.0.20]\nports: [{port: 80}]\n"),
     "spec.externalIPs[0]", "Duplicate value: '10.96.0.20' (spec.clusterIP has it)"),
    (service("clusterIP: 10.96.0.20\nexternalIPs: [198.51.100.300]\nports: [{port: 80}]\n"),
     "spec.externalIPs[0]", "'198.51.100.300' is not an IP address"),
    (service("clusterIP: 10.96.0.20\nexternalIPs: [224.0.0.1]\nports: [{port: 80}]\n"),
     "spec.externalIPs[0]", "224.0.0.1 cannot be an external IP"),
    (service("clusterIP: 10.96.0.20\ninternalTrafficPolicy: Nearby\nports: [{port: 80}]\n"),
     "spec.internalTrafficPolicy", "unsupported value 'Nearby'"),
    (service("type: LoadBalancer\nclusterIP: 10.96.0.20\nports: [{port: 80, nodePort: 30080}]\n") +
     "status: {loadBalancer: {ingress: [{ip: 203.0.113.80}, {ip: 203.0.113.80}]}}\n",
     "status.loadBalancer.ingress[1].ip", "Duplicate value: '203.0.113.80'"),
    (service("type: LoadBalancer\nclusterIP: 10.96.0.20\nports: [{port: 80, nodePort: 30080}]\n") +
     "status: {loadBalancer: {ingress: [{ip: 203.0.113.999}]}}\n",
     "status.loadBalancer.ingress[0].ip", "is not an IP address"),
    (service("type: LoadBalancer\nclusterIP: 10.96.0.20\nexternalTrafficPolicy: Local\nhealthCheckNodePort: 30080\n"
             "ports: [{port: 80, nodePort: 30080}]\n"), "spec.healthCheckNodePort",
     "Duplicate value: 30080 (spec.ports[0].nodePort has it)"),
    (service("type: LoadBalancer\nclusterIP: 10.96.0.20\nexternalTrafficPolicy: Local\nhealthCheckNodePort: 8080\n"
             "ports: [{port: 80, nodePort: 30080}]\n"), "spec.healthCheckNodePort", "outside 30000..32767"),
    (service("type: LoadBalancer\nclusterIP: 10.96.0.20\nhealthCheckNodePort: 30081\n"
             "ports: [{port: 80, nodePort: 30080}]\n"), "spec.healthCheckNodePort",
     "only be set when type is 'LoadBalancer' and externalTrafficPolicy is 'Local'"),
    (service("type: LoadBalancer\nclusterIP: 10.96.0.20\nloadBalancerSourceRanges: [198.51.100.0/24]\n"
             "ports: [{port: 80}]\n"), "spec.loadBalancerSourceRanges", "not supported by ciliumlite"),
    (service(NODEPORT + "loadBalancerSourceRanges: [10.0.0.0/8]\nports: [{port: 80, nodePort: 30080}]\n"),
     "spec.loadBalancerSourceRanges", "may only be used when type is 'LoadBalancer'"),
    (service("clusterIP: 10.96.0.20\nipFamilies: [IPv6]\nports: [{port: 80}]\n"), "spec.ipFamilies",
     "IPv6-only Service is not supported"),
    (service("clusterIP: 10.96.0.20\nselector: {tier: 1}\nports: [{port: 80}]\n"), "spec.selector[tier]", "quote it"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: [1]\n", "spec", "must be a mapping, not a list"),
    # EndpointSlice
    (endpoint_slice().replace("    kubernetes.io/service-name: web\n", "    app: web\n"),
     "metadata.labels[kubernetes.io/service-name]", "required: it names the Service"),
    (endpoint_slice().replace("addressType: IPv4\n", ""), "addressType", "required"),
    (endpoint_slice().replace("addressType: IPv4", "addressType: IPv6"), "addressType",
     "'IPv6' is not supported by ciliumlite"),
    (endpoint_slice().replace("10.244.1.5", "10.244.1.500"), "endpoints[0].addresses[0]", "not an IP address"),
    (endpoint_slice().replace("10.244.1.5", "224.0.0.5"), "endpoints[0].addresses[0]", "cannot be a backend"),
    (endpoint_slice().replace("[10.244.1.5]", "[]"), "endpoints[0].addresses", "at least one address"),
    (endpoint_slice().replace("[10.244.1.5]", "[10.244.1.5]\n    conditions: {ready: \"true\"}"),
     "endpoints[0].conditions.ready", "must be true or false, not a string"),
    (endpoint_slice().replace("[10.244.1.5]", "[10.244.1.5]\n    node: worker1"), "endpoints[0].node",
     "unknown field"),
    (endpoint_slice().replace("  - port: 8080", "  - name: http"), "ports[0].port", "a null port"),
    (endpoint_slice().replace("  - port: 8080", "  - {name: a, port: 1}\n  - {name: a, port: 2}"), "ports[1].name",
     "duplicate port name 'a'"),
    # Endpoints
    ("apiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets:\n- addresses: [{ip: 10.244.1.5}]\n"
     "  ports: [{port: 80}, {port: 81}]\n", "subsets[0].ports[0].name", "required: a name for each port"),
    ("apiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets:\n- addresses: [{hostname: a}]\n",
     "subsets[0].addresses[0].ip", "required"),
    ("apiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets:\n- notReadyAddresses: [{ip: bogus}]\n",
     "subsets[0].notReadyAddresses[0].ip", "not an IP address"),
    # Node
    (node("spec: {podCIDR: 10.244.1.0/24}\n"), "status", "required: status.addresses with the node's InternalIP"),
    (node("spec: {podCIDR: 10.244.1.0/24}\nstatus: {addresses: [{type: Hostname, address: w1}]}\n"),
     "status.addresses", "an InternalIP (or ExternalIP) IPv4 address"),
    (node("spec: {}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.12}]}\n"), "spec.podCIDR",
     "no controller-manager allocates one here"),
    (node("spec: {podCIDR: 10.244.1.1/24}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.12}]}\n"),
     "spec.podCIDR", "has host bits set"),
    (node("spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.9.0/24]}\n"
          "status: {addresses: [{type: InternalIP, address: 10.0.0.12}]}\n"), "spec.podCIDRs[0]",
     "must be the same as spec.podCIDR"),
    (node("spec: {podCIDR: 10.244.1.0/24}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.312}]}\n"),
     "status.addresses[0].address", "not an IP address"),
    (node("spec: {podCIDR: 10.244.1.0/24}\nstatus: {addresses: [{type: PrivateIP, address: 10.0.0.12}]}\n"),
     "status.addresses[0].type", "unsupported value 'PrivateIP'"),
    (node("spec: {podCIDR: 10.244.1.0/24}\nstatus: {adresses: []}\n"), "status.adresses", "did you mean 'addresses'"),
]


@pytest.mark.parametrize(("text", "path", "words"), CASES, ids=[f"{c[1]}:{c[2][:30]}" for c in CASES])
def test_validation_errors_name_the_field(text: str, path: str, words: str):
    err = error_of(text)
    assert isinstance(err, ValidationError)
    assert err.path == path, str(err)
    assert words in err.problem, str(err)
    assert err.source == "m.yaml" and err.document == 1
    assert f": {path}: " in str(err)


def test_error_lines_name_file_document_kind_and_object():
    text = service() + "---\n" + service(NODEPORT + "ports: [{port: 80, nodePort: 40000}]\n", name="api")
    err = error_of(text)
    assert str(err) == ("m.yaml: document 2 (Service demo/api): spec.ports[0].nodePort: 40000 is outside "
                        "30000..32767 (the node port range)")


def test_every_bad_document_is_reported():
    text = "---\n".join([service("clusterIP: 10.96.0.20\nports: [{port: 0}]\n"), service(name="ok"),
                         endpoint_slice().replace("addressType: IPv4", "addressType: FQDN"), node("spec: {}\n")])
    err = error_of(text)
    assert [(e.document, e.path) for e in err.errors] == [(1, "spec.ports[0].port"), (3, "addressType"),
                                                          (4, "spec.podCIDR")]
    assert len(str(err).splitlines()) == 3


def test_yaml_and_json_syntax_errors_and_duplicate_keys_have_a_line():
    err = error_of("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n   namespace: x\n")
    assert "YAML syntax error at line 5" in err.problem
    err = error_of(service() + "---\n" + service().replace("  namespace: demo\n", "  namespace: demo\n  name: x\n"))
    assert err.document == 2 and "duplicate key 'name' (first on line 15)" in err.problem
    err = error_of('{"apiVersion": "v1",\n "kind": "Service",\n "kind": "Service"}')
    assert "duplicate key 'kind'" in err.problem
    err = error_of('{"apiVersion": "v1",\n "kind": }')
    assert err.problem.startswith("JSON syntax error at line 2")
    err = error_of('[{"apiVersion": "v1", "kind": "Service"}]')
    assert '"kind": "List"' in err.problem
    err = error_of("just a string\n")
    assert err.problem == "must be a mapping, not a string"


def test_not_strict_turns_unknown_fields_and_kinds_into_warnings():
    text = (service("clusterIP: 10.96.0.20\nports: [{port: 80, nodeport: 30080}]\n")
            + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n")
    docs = parse(text, source="m.yaml", strict=False)
    assert len(docs) == 1
    assert any("spec.ports[0].nodeport: unknown field, ignored; did you mean 'nodePort'?" in w for w in docs.warnings)
    assert any("'Deployment' is not supported" in w and "skipped" in w for w in docs.warnings)


def test_load_reads_directories_and_reports_every_file(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(service("clusterIP: 10.96.0.20\nports: [{port: 0}]\n"))
    (tmp_path / "b.json").write_text('{"apiVersion": "v1"}')
    (tmp_path / "notes.txt").write_text("not a manifest")
    with pytest.raises(ManifestError) as info:
        load([tmp_path])
    assert [(Path(e.source).name, e.path) for e in info.value.errors] == [("a.yaml", "spec.ports[0].port"),
                                                                         ("b.json", "kind")]
    with pytest.raises(FileNotFoundError):
        load([tmp_path / "missing.yaml"])


# ---------------------------------------------------------------------------------------------
# apply and delete


def test_a_service_without_endpoints_has_no_backends_until_its_slice_comes():
    store, lines = applied(service())
    assert lines == ["service/web created"] and backends(by_name(store)["demo/web"]) == []
    _, lines = applied(endpoint_slice(), store=store)  # alone: merged into the stored Service
    assert lines == ["endpointslice.discovery.k8s.io/web-1 created"]
    assert backends(by_name(store)["demo/web"]) == [("10.244.1.5", 8080)]
    # The Service applied again (a new targetPort) keeps the slice's backends.
    _, lines = applied(service("clusterIP: 10.96.0.20\nports: [{port: 8000, targetPort: 8080}]\n"), store=store)
    assert lines == ["service/web configured"]
    svc = by_name(store)["demo/web"]
    assert svc.frontend.port == 8000 and backends(svc) == [("10.244.1.5", 8080)]


def test_applying_the_same_files_again_writes_nothing():
    store, _ = applied(service(), endpoint_slice(), node())
    events: list[str] = []
    store.watch(lambda ev, obj: events.append(ev))
    _, lines = applied(service(), endpoint_slice(), node(), store=store)
    assert lines == ["service/web unchanged", "endpointslice.discovery.k8s.io/web-1 unchanged", "node/worker1 unchanged"]
    assert events == []


def test_a_port_removed_or_renamed_removes_its_service():
    two = service("clusterIP: 10.96.0.20\nports: [{name: http, port: 80}, {name: admin, port: 81}]\n")
    store, _ = applied(two)
    assert sorted(by_name(store)) == ["demo/web:admin", "demo/web:http"]
    events: list[tuple[str, str]] = []
    store.watch(lambda ev, obj: events.append((ev, obj.name)))
    _, lines = applied(service("clusterIP: 10.96.0.20\nports: [{port: 80}]\n"), store=store)
    assert lines == ["service/web configured"]
    assert sorted(by_name(store)) == ["demo/web"]
    # The old services go first: the new one takes over the frontend of demo/web:http.
    assert events == [("service-delete", "demo/web:admin"), ("service-delete", "demo/web:http"),
                      ("service-upsert", "demo/web")]


def test_a_slice_whose_service_is_nowhere_is_refused():
    store = InMemoryStore()
    with pytest.raises(ManifestError) as info:
        apply(store, parse(endpoint_slice(), source="s.yaml"))
    err = info.value
    assert err.path == "metadata.labels[kubernetes.io/service-name]"
    assert "Service demo/web is neither in this apply nor in the store" in err.problem
    eps = "apiVersion: v1\nkind: Endpoints\nmetadata: {name: db}\nsubsets: []\n"
    with pytest.raises(ManifestError) as info:
        apply(store, parse(eps))
    assert info.value.path == "metadata.name"


def test_clashes_with_the_store_are_found_before_anything_is_written():
    store = InMemoryStore()
    store.put_service(Service("legacy", Frontend("10.96.0.20", 80)))
    store.put_node(NodeInfo("worker9", "10.0.0.12", "10.244.9.0/24"))
    text = "---\n".join([node(), service(), endpoint_slice()])
    with pytest.raises(ManifestError) as info:
        apply(store, parse(text, source="m.yaml"))
    got = {(e.kind, e.path, e.problem) for e in info.value.errors}
    assert ("Service", "spec.ports[0].port", "frontend 10.96.0.20:80/TCP is already used by service legacy") in got
    assert ("Node", "status.addresses[0].address", "10.0.0.12 is already the address of node worker9") in got
    assert [s.name for s in store.services()] == ["legacy"] and [n.name for n in store.nodes()] == ["worker9"]


def test_node_port_and_pod_cidr_clashes_inside_one_apply():
    a = service(NODEPORT + "ports: [{port: 80, nodePort: 30080}]\n", name="a")
    b = service(NODEPORT.replace("10.96.0.20", "10.96.0.21") + "ports: [{port: 80, nodePort: 30080}]\n", name="b")
    n2 = node("spec: {podCIDR: 10.244.1.128/25}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.13}]}\n",
              name="worker2")
    with pytest.raises(ManifestError) as info:
        apply(InMemoryStore(), parse("---\n".join([a, b, node(), n2])))
    problems = sorted((e.name, e.path, e.problem) for e in info.value.errors)
    assert len(problems) == 2  # each pair once
    assert ("demo/a", "spec.ports[0].nodePort", "node port 30080/TCP is already used by service demo/b") in problems
    assert ("worker1", "spec.podCIDR", "10.244.1.0/24 overlaps the pod CIDR of node worker2 (10.244.1.128/25)") \
        in problems


def test_a_name_taken_by_a_service_not_made_from_the_manifest_is_refused():
    store = InMemoryStore()
    store.put_service(Service("demo/web", Frontend("10.96.0.99", 80)))
    with pytest.raises(ManifestError) as info:
        apply(store, parse(service()))
    assert info.value.path == "metadata.name" and "was not made from this Service" in info.value.problem


def test_the_same_object_twice_is_refused():
    with pytest.raises(ManifestError) as info:
        apply(InMemoryStore(), parse(service() + "---\n" + service(), source="m.yaml"))
    assert info.value.document == 2 and "Service demo/web appears twice (m.yaml, document 1)" in info.value.problem


def test_too_many_backends_is_a_manifest_error():
    ips = [f"10.244.{i // 250}.{i % 250 + 1}" for i in range(1025)]

    def big(name: str, part: list[str]) -> str:  # a slice holds at most 1000 endpoints
        return endpoint_slice("addressType: IPv4\nports: [{port: 8080}]\nendpoints:\n"
                              + "".join(f"  - addresses: [{ip}]\n" for ip in part), name=name)

    with pytest.raises(ManifestError) as info:
        apply(InMemoryStore(), parse("---\n".join([service(), big("big-1", ips[:1000]), big("big-2", ips[1000:])])))
    assert info.value.name == "demo/big-2" and "1025 backends, at most 1024" in info.value.problem


def test_dry_run_writes_nothing():
    store = InMemoryStore()
    result = apply(store, parse("---\n".join([service(), endpoint_slice(), node()])), dry_run=True)
    assert result.lines() == ["service/web created (dry run)", "endpointslice.discovery.k8s.io/web-1 created (dry run)",
                              "node/worker1 created (dry run)"]
    assert store.services() == [] and store.nodes() == []


def test_delete_service_slice_and_node():
    text = "---\n".join([service("clusterIP: 10.96.0.20\nports: [{name: a, port: 80}, {name: b, port: 81}]\n"),
                         endpoint_slice("addressType: IPv4\nports: [{name: a, port: 8080}, {name: b, port: 8081}]\n"
                                        "endpoints: [{addresses: [10.244.1.5]}]\n"), node()])
    store, _ = applied(text)
    # A slice alone: its backends leave the Service, which stays.
    result = delete(store, parse_refs(endpoint_slice()))
    assert result.lines() == ["endpointslice.discovery.k8s.io/web-1 deleted"]
    assert [backends(s) for s in store.services()] == [[], []]
    assert [c.action for c in delete(store, parse_refs(endpoint_slice())).changes] == ["not found"]
    result = delete(store, parse_refs(text))
    assert [c.action for c in result.changes] == ["deleted", "not found", "deleted"]
    assert store.services() == [] and store.nodes() == []


def test_delete_reads_only_the_identity_and_supports_dry_run():
    store, _ = applied(service(), endpoint_slice())
    broken = service("clusterIP: nonsense\nports: [{port: 0}]\nbogus: 1\n")  # no longer valid, still deletable
    result = delete(store, parse_refs(broken), dry_run=True)
    assert result.lines() == ["service/web deleted (dry run)"] and len(store.services()) == 1
    assert delete(store, parse_refs(broken)).changes[0].services == ("demo/web",)
    assert store.services() == []


def test_delete_a_service_and_its_slice_together():
    store, _ = applied(service(), endpoint_slice())
    refs = load_refs([]) + parse_refs(service() + "---\n" + endpoint_slice())
    assert [c.line() for c in delete(store, refs).changes] == ["service/web deleted",
                                                              "endpointslice.discovery.k8s.io/web-1 deleted"]
    assert store.services() == []


def test_watchers_see_the_applied_services():
    store = InMemoryStore()
    seen: list[Service] = []
    store.watch(lambda ev, obj: seen.append(obj) if ev == "service-upsert" else None)
    applied(service(), endpoint_slice(), store=store)
    assert [(s.name, s.backends) for s in seen] == [("demo/web", (Backend("10.244.1.5", 8080),))]
    assert seen[0].labels["k8s.ciliumlite.io/namespace"] == "demo"


# ---------------------------------------------------------------------------------------------
# LoadBalancer, externalIPs, internalTrafficPolicy, healthCheckNodePort, terminating endpoints

LB_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.40
  externalIPs: [198.51.100.7]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  healthCheckNodePort: 30400
  loadBalancerClass: example.com/lb
  ports:
    - {name: http, port: 80, targetPort: 8080, nodePort: 30401}
    - {name: admin, port: 81, targetPort: 8081, nodePort: 30402}
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.80}, {hostname: lb.example.com}]
"""


def test_load_balancer_service_becomes_external_frontends():
    docs = parse(LB_SERVICE, source="lb.yaml")
    assert any("a hostname ingress is not load-balanced here" in w for w in docs.warnings)
    store, lines = applied(LB_SERVICE)
    assert lines == ["service/shop created"]
    http, admin = by_name(store)["demo/shop:http"], by_name(store)["demo/shop:admin"]
    assert (http.type, http.node_port, http.external_ips, http.load_balancer_ips) == \
        ("LoadBalancer", 30401, ("198.51.100.7",), ("203.0.113.80",))
    assert (http.external_traffic_policy, http.internal_traffic_policy) == ("Local", "Local")
    # one health check per Kubernetes Service: on its first port's service
    assert (http.health_check_node_port, admin.health_check_node_port) == (30400, None)
    assert applied(LB_SERVICE, store=store)[1] == ["service/shop unchanged"]


def test_load_balancer_without_node_ports_and_external_ips_on_a_cluster_ip():
    store, _ = applied(service("type: LoadBalancer\nclusterIP: 10.96.0.41\nports: [{port: 80}]\n") +
                       "status: {loadBalancer: {ingress: [{ip: 203.0.113.81}]}}\n",
                       service("clusterIP: 10.96.0.42\nexternalIPs: [198.51.100.8]\nexternalTrafficPolicy: Local\n"
                               "ports: [{port: 80}]\n", name="ext"))
    lb, ext = by_name(store)["demo/web"], by_name(store)["demo/ext"]
    assert (lb.node_port, lb.load_balancer_ips) == (None, ("203.0.113.81",))
    assert (ext.type, ext.external_ips, ext.external_traffic_policy) == ("ClusterIP", ("198.51.100.8",), "Local")


def test_terminating_endpoints_are_terminating_backends():
    sl = endpoint_slice("""\
        addressType: IPv4
        ports: [{port: 8080}]
        endpoints:
          - addresses: [10.244.1.5]
            conditions: {ready: true}
          - addresses: [10.244.1.6]
            conditions: {ready: false, serving: true, terminating: true}
          - addresses: [10.244.1.7]
            conditions: {ready: false, serving: false, terminating: true}   # no longer serving: not a backend
        """)
    store, _ = applied(service(), sl)
    svc = by_name(store)["demo/web"]
    assert [(b.ip, b.terminating) for b in svc.backends] == [("10.244.1.5", False), ("10.244.1.6", True)]


def test_external_addresses_and_health_check_ports_clash_with_other_services():
    store, _ = applied(LB_SERVICE)
    with pytest.raises(ManifestError, match=r"frontend 198\.51\.100\.7:80/TCP is already used by service demo/shop:http"):
        apply(store, parse(service("clusterIP: 198.51.100.7\nports: [{port: 80}]\n", name="other"), source="o.yaml"))
    with pytest.raises(ManifestError, match=r"spec.ports\[0\].nodePort: node port 30400/TCP is already used by service "
                                            r"demo/shop:http"):
        apply(store, parse(service("type: NodePort\nclusterIP: 10.96.0.50\nports: [{port: 80, nodePort: 30400}]\n",
                                   name="other"), source="o.yaml"))
    assert sorted(by_name(store)) == ["demo/shop:admin", "demo/shop:http"]
