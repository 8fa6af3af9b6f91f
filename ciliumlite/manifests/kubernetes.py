"""Kubernetes manifests as users write them: Service, EndpointSlice, Endpoints, Node, NetworkPolicy
and CiliumNetworkPolicy, YAML or JSON.

:func:`parse` and :func:`load` read one or many documents (YAML's ``---``, a JSON object, or a
``kind: List`` with ``items``), check each object the way the Kubernetes API server would (with the
field path and what is expected in every error), and turn it into ciliumlite values: a
:class:`KubeService` (one ciliumlite :class:`~ciliumlite.service.Service` per port, see
:meth:`KubeService.service_name`), a :class:`KubeEndpoints` (the backends), a :class:`KubeNode` (a
:class:`~ciliumlite.cluster.store.NodeInfo`), a :class:`KubePolicy` (a
:class:`~ciliumlite.policy.Policy`). :func:`~ciliumlite.manifests.apply.apply` and
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

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ciliumlite.manifests.endpoints import _endpoints, _slice, _slice_service
from ciliumlite.manifests.fields import (
    Doc,
    Fields,
    ManifestError,
)
from ciliumlite.manifests.meta import (
    _NAME_RULES,
    _metadata,
)
from ciliumlite.manifests.meta import (
    ENDPOINT_IGNORED as ENDPOINT_IGNORED,
)
from ciliumlite.manifests.meta import (
    LB_ALGORITHM_ANNOTATION as LB_ALGORITHM_ANNOTATION,
)
from ciliumlite.manifests.meta import (
    MAX_SERVICE_NAME as MAX_SERVICE_NAME,
)
from ciliumlite.manifests.meta import (
    METADATA_FIELDS as METADATA_FIELDS,
)
from ciliumlite.manifests.meta import (
    NODE_SPEC_IGNORED as NODE_SPEC_IGNORED,
)
from ciliumlite.manifests.meta import (
    NODE_STATUS_IGNORED as NODE_STATUS_IGNORED,
)
from ciliumlite.manifests.meta import (
    SERVICE_NAME_LABEL as SERVICE_NAME_LABEL,
)
from ciliumlite.manifests.meta import (
    SERVICE_SPEC_IGNORED as SERVICE_SPEC_IGNORED,
)
from ciliumlite.manifests.model import (
    SUPPORTED,
    Kind,
    Manifest,
    Manifests,
    ObjectRef,
)
from ciliumlite.manifests.nodes import _node
from ciliumlite.manifests.policies import _policy
from ciliumlite.manifests.services import _service

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
    kind = top.text("kind", required="the object's kind (Service, EndpointSlice, Endpoints, Node, NetworkPolicy "
                                      "or CiliumNetworkPolicy)")
    doc.kind = kind
    api = top.text("apiVersion", required=f"the API version ({SUPPORTED.get(kind, 'v1')} for a {kind})")
    if kind not in SUPPORTED:
        message = (f"kind {kind!r} is not supported: ciliumlite apply takes Service, EndpointSlice, Endpoints, "
                   f"Node, NetworkPolicy and CiliumNetworkPolicy (and a List of them)")
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
        "Service": _service, "EndpointSlice": _slice, "Endpoints": _endpoints, "Node": _node,
        "NetworkPolicy": _policy, "CiliumNetworkPolicy": _policy}
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
