"""Security labels: what an identity is made of.

A label is Cilium's ``source:key=value`` (``pkg/labels``): the source says where it came from
(``k8s`` for a pod's or namespace's Kubernetes labels, ``reserved`` for the reserved identities,
``cidr`` for a CIDR identity). A pod's security-relevant labels are its own labels, its
namespace's name and its namespace's labels, so two pods with equal labels in one namespace share
an identity, and relabelling a namespace gives all of its pods a new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from ciliumlite.bpf.errors import ValidationError

#: Where a Kubernetes pod or namespace label comes from.
SOURCE_K8S = "k8s"
#: The labels of the reserved identities (``reserved:host``, ``reserved:world``, ...).
SOURCE_RESERVED = "reserved"
#: A CIDR identity's prefix label (``cidr:192.0.2.0/24``).
SOURCE_CIDR = "cidr"
#: In a selector: a key of any source (``app`` selects ``k8s:app`` and any other ``*:app``).
SOURCE_ANY = "any"

#: The label that names a pod's namespace (``k8s:io.kubernetes.pod.namespace=<ns>``).
POD_NAMESPACE = "io.kubernetes.pod.namespace"
#: The prefix of a pod's copies of its namespace's labels.
NAMESPACE_LABELS = "io.cilium.k8s.namespace.labels."
#: The label the API server puts on every namespace, its name (Kubernetes 1.21+).
NAMESPACE_NAME = "kubernetes.io/metadata.name"


@dataclass(frozen=True, order=True)
class Label:
    """One ``source:key=value`` label."""

    source: str
    key: str
    value: str = ""

    @classmethod
    def parse(cls, text: str, default_source: str = SOURCE_ANY) -> Label:
        """``source:key=value``, ``key=value`` or ``source:key`` (an empty value); without a
        source, ``default_source``. Raises :class:`ValidationError` for an empty key."""
        key, _, value = text.partition("=")
        source, key = split_source(key, default_source)
        if not key:
            raise ValidationError(f"label {text!r} has no key (write source:key=value)")
        return cls(source, key, value)

    def __str__(self) -> str:
        return f"{self.source}:{self.key}" + (f"={self.value}" if self.value else "")


def split_source(key: str, default_source: str = SOURCE_ANY) -> tuple[str, str]:
    """``k8s:app`` -> ``("k8s", "app")``; a key without ``:`` gets ``default_source``
    (Kubernetes label keys cannot hold a colon, so the first one ends the source)."""
    source, sep, rest = key.partition(":")
    return (source, rest) if sep else (default_source, key)


class Labels:
    """An immutable, hashable set of labels (an identity's, or an endpoint's security labels)."""

    __slots__ = ("_by_key", "_labels")

    def __init__(self, labels: Iterable[Label] = ()) -> None:
        self._labels = frozenset(labels)
        by_key: dict[str, list[Label]] = {}
        for label in self._labels:
            by_key.setdefault(label.key, []).append(label)
        self._by_key = by_key

    @classmethod
    def parse(cls, texts: Iterable[str], default_source: str = SOURCE_K8S) -> Labels:
        """From ``source:key=value`` strings (``cilium identity get``'s format)."""
        return cls(Label.parse(t, default_source) for t in texts)

    @classmethod
    def from_mapping(cls, labels: Mapping[str, str], default_source: str = SOURCE_K8S) -> Labels:
        """From ``{"source:key": value}`` (the store's form, :meth:`as_dict`); keys without a
        source get ``default_source``."""
        out = []
        for key, value in labels.items():
            source, bare = split_source(key, default_source)
            out.append(Label(source, bare, value))
        return cls(out)

    def as_dict(self) -> dict[str, str]:
        """``{"source:key": value}``: the form ``ClusterStore.allocate_identity`` takes."""
        return {f"{lb.source}:{lb.key}": lb.value for lb in sorted(self._labels)}

    def with_key(self, key: str, source: str = SOURCE_ANY) -> list[Label]:
        """The labels with ``key`` (of ``source``, or of any source)."""
        found = self._by_key.get(key, [])
        return found if source == SOURCE_ANY else [lb for lb in found if lb.source == source]

    def has_source(self, source: str) -> bool:
        """Whether any label comes from ``source``."""
        return any(lb.source == source for lb in self._labels)

    def __iter__(self) -> Iterator[Label]:
        return iter(sorted(self._labels))

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, label: object) -> bool:
        return label in self._labels

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Labels) and self._labels == other._labels

    def __hash__(self) -> int:
        return hash(self._labels)

    def __str__(self) -> str:
        """Cilium's sorted label-array form: ``k8s:a=b;k8s:c=d;``."""
        return "".join(f"{lb};" for lb in self)

    def __repr__(self) -> str:
        return f"Labels({str(self)!r})"


def pod_labels(namespace: str, labels: Mapping[str, str] | None = None,
               namespace_labels: Mapping[str, str] | None = None) -> Labels:
    """A pod's security labels: ``k8s:<k>=<v>`` for each of its labels,
    ``k8s:io.kubernetes.pod.namespace=<ns>``, and ``k8s:io.cilium.k8s.namespace.labels.<k>=<v>``
    for each label of its namespace, which always includes ``kubernetes.io/metadata.name=<ns>``
    (the API server sets it on every namespace; a NetworkPolicy selects a namespace by name
    through it). Raises :class:`ValidationError` for an empty namespace."""
    if not namespace:
        raise ValidationError("a pod's security labels need its namespace (got an empty name)")
    ns_labels = {NAMESPACE_NAME: namespace, **(namespace_labels or {})}
    out = [Label(SOURCE_K8S, k, v) for k, v in (labels or {}).items()]
    out.append(Label(SOURCE_K8S, POD_NAMESPACE, namespace))
    out += [Label(SOURCE_K8S, NAMESPACE_LABELS + k, v) for k, v in ns_labels.items()]
    return Labels(out)


def cidr_labels(prefix: str) -> Labels:
    """A CIDR identity's labels: its prefix and ``reserved:world`` (it is outside the cluster, so
    the ``world`` entity selects it, as in Cilium)."""
    return Labels([Label(SOURCE_CIDR, prefix), Label(SOURCE_RESERVED, "world")])
