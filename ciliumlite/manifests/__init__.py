"""Kubernetes manifests (Service, EndpointSlice, Endpoints, Node, NetworkPolicy, CiliumNetworkPolicy) read, checked and put into a
cluster store: :func:`load`/:func:`parse` then :func:`apply` or :func:`delete` (``ciliumlite apply -f``).
See docs/manifests.md."""

from ciliumlite.manifests.apply import Change, Result, apply, delete
from ciliumlite.manifests.fields import ManifestError
from ciliumlite.manifests.kubernetes import load, load_refs, parse, parse_refs
from ciliumlite.manifests.model import KubeEndpoints, KubeNode, KubePolicy, KubeService, Manifests, ObjectRef

__all__ = ["load", "parse", "load_refs", "parse_refs", "apply", "delete", "Change", "Result", "ManifestError",
           "Manifests", "ObjectRef", "KubeService", "KubeEndpoints", "KubeNode", "KubePolicy"]
