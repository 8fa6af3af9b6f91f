"""Reading one Kubernetes object field by field, every failure naming its field path.

:class:`ManifestError` is the one error of :mod:`ciliumlite.manifests`; :class:`Fields` wraps a
mapping of a document with its path (``spec.ports[1]``) and reads typed values out of it, so a check
never has to build a path or a message by hand.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ciliumlite.bpf.errors import ValidationError

# Kubernetes' name rules (k8s.io/apimachinery/pkg/util/validation): the same patterns, so a name
# that the API server would refuse is refused here too.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


class ManifestError(ValidationError):
    """A manifest that cannot be applied: where (file, document, object, field path) and what is wrong.

    ``document`` counts from 1, as a person reading the file does; ``path`` is the field path in
    Kubernetes' notation (``spec.ports[1].nodePort``, ``metadata.labels[kubernetes.io/service-name]``),
    empty when the whole document is wrong. When several documents are wrong, the first error is
    raised and :attr:`errors` holds every one of them (``str()`` prints them all, one a line).
    """

    def __init__(self, problem: str, *, source: str = "<text>", document: int | None = None,
                 kind: str = "", name: str = "", path: str = "") -> None:
        self.problem = problem
        self.source = source
        self.document = document
        self.kind = kind
        self.name = name
        self.path = path
        self.errors: list[ManifestError] = [self]
        super().__init__(self.line)

    @property
    def line(self) -> str:
        """This error alone, as one line: ``FILE: document N (Kind ns/name): path: problem``."""
        where = self.source
        if self.document is not None:
            where += f": document {self.document}"
        if self.kind:
            where += f" ({self.kind} {self.name})" if self.name else f" ({self.kind})"
        return f"{where}: {self.path}: {self.problem}" if self.path else f"{where}: {self.problem}"

    def __str__(self) -> str:
        return "\n".join(e.line for e in self.errors)

    @classmethod
    def combine(cls, errors: list[ManifestError]) -> ManifestError:
        """The first of ``errors``, carrying all of them (``errors`` must not be empty)."""
        first = errors[0]
        first.errors = list(errors)
        return first


@dataclass
class Doc:
    """Where the object being read sits (file, document, kind, name) and what it has warned about."""

    source: str
    document: int
    strict: bool = True
    kind: str = ""
    name: str = ""
    warnings: list[str] = field(default_factory=list)

    def error(self, path: str, problem: str) -> ManifestError:
        """A :class:`ManifestError` at ``path`` of this object."""
        return ManifestError(problem, source=self.source, document=self.document, kind=self.kind,
                             name=self.name, path=path)

    def warn(self, path: str, message: str) -> None:
        """Record a warning at ``path`` (printed by the CLI like kubectl's ``Warning:`` lines)."""
        self.warnings.append(self.error(path, message).line)


def join(path: str, key: str) -> str:
    """``path`` + ``key``, a field name or a relative field path (``ports[0].port``)."""
    if not path:
        return key
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"


def key_path(path: str, key: str) -> str:
    """``path`` + a map key (a label or annotation key) in Kubernetes' notation: ``path[key]``."""
    return f"{path}[{key}]"


#: How a user calls each YAML/JSON type (bool before int: a bool is an int in Python).
_TYPE_NAMES: tuple[tuple[type, str], ...] = ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                                             (str, "a string"), (Mapping, "a mapping"), (list, "a list"))


def type_name(value: object) -> str:
    """What a YAML/JSON value is, in a user's words."""
    if value is None:
        return "null"
    return next((word for t, word in _TYPE_NAMES if isinstance(value, t)), type(value).__name__)


class Fields:
    """One mapping of a document at ``path``; each getter raises :class:`ManifestError` at the field."""

    def __init__(self, data: object, path: str, doc: Doc) -> None:
        if not isinstance(data, Mapping):
            raise doc.error(path, f"must be a mapping, not {type_name(data)}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.doc = doc

    def at(self, key: str) -> str:
        """The field path of ``key``."""
        return join(self.path, key)

    def fail(self, key: str, problem: str) -> NoReturn:
        """Raise a :class:`ManifestError` at ``key`` (``""``: this mapping itself)."""
        raise self.doc.error(self.at(key) if key else self.path, problem)

    def has(self, key: str) -> bool:
        """Whether ``key`` is present and not null (Kubernetes treats null as absent)."""
        return self.data.get(key) is not None

    def only(self, known: Iterable[str], ignored: Iterable[str] = ()) -> None:
        """Refuse (strict) or warn about (not strict) every field other than ``known`` and ``ignored``.

        ``ignored`` fields are accepted and have no effect here; they are not warned about.
        """
        allowed = set(known) | set(ignored)
        for key in self.data:
            if key in allowed:
                continue
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known here: {', '.join(sorted(allowed))})"
            if self.doc.strict:
                self.fail(str(key), f"unknown field{hint}")
            self.doc.warn(self.at(str(key)), f"unknown field, ignored{hint}")

    def text(self, key: str, default: str | None = None, *, required: str = "") -> str:
        """A string field; ``required`` is the message when it is absent (then it may not be empty)."""
        value = self.data.get(key)
        if value is None or (required and value == ""):
            if required:
                self.fail(key, f"required: {required}")
            return default if default is not None else ""
        if not isinstance(value, str):
            self.fail(key, f"must be a string, not {type_name(value)} ({value!r})")
        return value

    def integer(self, key: str, lo: int, hi: int, *, required: str = "", what: str = "") -> int | None:
        """An integer field in ``lo..hi`` (``None`` when absent and not required)."""
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(key, f"required: {required}")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            quoted = " (write it without quotes)" if isinstance(value, str) and value.isdigit() else ""
            self.fail(key, f"must be an integer, not {type_name(value)} ({value!r}){quoted}")
        if not lo <= value <= hi:
            self.fail(key, f"{value} is outside {lo}..{hi}{f' ({what})' if what else ''}")
        return value

    def flag(self, key: str) -> bool | None:
        """A boolean field (``None`` when absent or null)."""
        value = self.data.get(key)
        if value is not None and not isinstance(value, bool):
            self.fail(key, f"must be true or false, not {type_name(value)} ({value!r})")
        return value

    def choice(self, key: str, supported: tuple[str, ...], default: str, *,
               unsupported: Mapping[str, str] | None = None) -> str:
        """A string field that must be one of ``supported``; ``unsupported`` maps values Kubernetes
        accepts but ciliumlite does not to the reason why."""
        value = self.text(key, default)
        if value in supported:
            return value
        if unsupported and value in unsupported:
            self.fail(key, f"{value!r} is not supported by ciliumlite: {unsupported[value]}")
        expected = ", ".join(repr(v) for v in supported)
        self.fail(key, f"unsupported value {value!r}: expected {expected}")

    def obj(self, key: str, *, required: str = "") -> Fields | None:
        """A nested mapping (``None`` when absent and not required)."""
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(key, f"required: {required}")
            return None
        return Fields(value, self.at(key), self.doc)

    def items(self, key: str, *, max_items: int | None = None) -> list[tuple[str, Any]]:
        """A list field as ``(path, item)`` pairs (empty when absent)."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(key, f"must be a list, not {type_name(value)}")
        if max_items is not None and len(value) > max_items:
            self.fail(key, f"{len(value)} items, at most {max_items}")
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]

    def objs(self, key: str, *, max_items: int | None = None) -> list[Fields]:
        """A list of mappings."""
        return [Fields(item, path, self.doc) for path, item in self.items(key, max_items=max_items)]

    def strs(self, key: str, *, max_items: int | None = None) -> list[tuple[str, str]]:
        """A list of strings as ``(path, string)`` pairs."""
        out = []
        for path, item in self.items(key, max_items=max_items):
            if not isinstance(item, str):
                raise self.doc.error(path, f"must be a string, not {type_name(item)} ({item!r})")
            out.append((path, item))
        return out

    def string_map(self, key: str) -> dict[str, str]:
        """A ``map[string]string`` (labels, annotations, selectors): YAML's ``version: 1`` is an
        integer, which Kubernetes refuses there, and so does this."""
        sub = self.obj(key)
        if sub is None:
            return {}
        out = {}
        for k, v in sub.data.items():
            if not isinstance(v, str):
                raise self.doc.error(key_path(sub.path, str(k)), f"must be a string, not {type_name(v)} ({v!r}): "
                                                                 f"quote it")
            out[str(k)] = v
        return out


def check_name(f: Fields, key: str, rule: re.Pattern[str], max_len: int, what: str) -> str:
    """A required name field checked against one of Kubernetes' name rules."""
    value = f.text(key, required=f"the {what}")
    if len(value) > max_len:
        f.fail(key, f"{value!r} is {len(value)} characters, at most {max_len}")
    if not rule.match(value):
        shape = {DNS1035_LABEL.pattern: "lower-case letters, digits and '-', starting with a letter",
                 DNS1123_LABEL.pattern: "lower-case letters, digits and '-', starting and ending "
                                        "with a letter or digit",
                 DNS1123_SUBDOMAIN.pattern: "lower-case DNS labels separated by '.'"}[rule.pattern]
        f.fail(key, f"{value!r} is not a valid {what}: {shape}")
    return value
