"""NetworkPolicy and CiliumNetworkPolicy documents: checked by :mod:`ciliumlite.policy.rules` (which
names the bad field), placed in their namespace, kept whole as a :class:`KubePolicy`."""

from __future__ import annotations

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.manifests.fields import Doc, Fields
from ciliumlite.manifests.meta import _NAME_RULES, _metadata
from ciliumlite.manifests.model import Kind, KubePolicy
from ciliumlite.policy.rules import parse_policy


def _policy(top: Fields, doc: Doc, namespace: str) -> KubePolicy:
    kind: Kind = "NetworkPolicy" if top.data.get("kind") == "NetworkPolicy" else "CiliumNetworkPolicy"
    ref, _, _ = _metadata(top, doc, kind, namespace, *_NAME_RULES[kind], f"{kind} name")
    manifest = dict(top.data)
    manifest["metadata"] = {**dict(top.data.get("metadata") or {}), "namespace": ref.namespace}
    try:
        policy = parse_policy(manifest)
    except ValidationError as exc:
        raise ref.origin.error("", str(exc)) from None
    return KubePolicy(ref, policy)
