"""The scenario framework: named checks, what they saw, the registry and ``--test`` selection.

A :class:`Scenario` is a named function of a context that returns a :class:`ScenarioResult`; the
function collects its checks in a :class:`Checks`. :func:`scenario` registers one in
:data:`SCENARIOS` and :func:`select` picks scenarios by pattern, as ``cilium connectivity test
--test`` does. Nothing here knows about labs or datapaths: a context is anything that says which of
its setup parts failed (:class:`ScenarioContext`).
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from ciliumlite.bpf.errors import ValidationError

__all__ = ["SCENARIOS", "Checks", "Scenario", "ScenarioContext", "ScenarioResult", "Status", "scenario", "select"]

Status = Literal["passed", "failed", "skipped"]


@dataclass
class ScenarioResult:
    """What one scenario saw: ``ok``, the evidence (``details``) and how long it took.

    ``skipped`` holds the reason when the scenario does not apply to the lab's configuration
    (e.g. DSR in SNAT mode); a skipped result is ``ok`` and never hides a datapath failure.
    ``counts`` are the numbers a scenario measured (e.g. ``broken_connections``), for reports.
    """

    name: str
    ok: bool
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None
    description: str = ""
    cilium: str = ""
    acceptance: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        """``passed``, ``failed`` or ``skipped``."""
        if self.skipped is not None:
            return "skipped"
        return "passed" if self.ok else "failed"

    @property
    def failures(self) -> list[str]:
        """The detail lines of the checks that failed."""
        return [d for d in self.details if d.startswith("✘")]

    def as_dict(self) -> dict[str, Any]:
        """The result as plain JSON types (one entry of ``--json``'s ``results``)."""
        return {"name": self.name, "status": self.status, "ok": self.ok, "seconds": round(self.seconds, 3),
                "details": list(self.details), "skipped": self.skipped, "description": self.description,
                "cilium": self.cilium, "acceptance": self.acceptance, "counts": dict(self.counts)}


class Checks:
    """Collects the checks of one scenario: ``expect`` records pass/fail lines, ``note`` evidence,
    ``count`` numbers for the report."""

    def __init__(self) -> None:
        self.ok = True
        self.details: list[str] = []
        self.counts: dict[str, int] = {}

    def expect(self, cond: bool, text: str) -> bool:
        """Record a check and return ``cond``; the scenario fails if any check fails."""
        self.details.append(("✔ " if cond else "✘ ") + text)
        self.ok = self.ok and cond
        return cond

    def note(self, text: str) -> None:
        """Record evidence that is not a check."""
        self.details.append("· " + text)

    def count(self, name: str, n: int) -> None:
        """Add ``n`` to the count ``name`` (it exists from the first call, also with 0)."""
        self.counts[name] = self.counts.get(name, 0) + n

    def result(self) -> ScenarioResult:
        """The scenario's result (``Scenario.run`` fills in name and timing).

        A scenario that recorded no check at all fails: evidence alone proves nothing.
        """
        if not any(d[0] in "✔✘" for d in self.details):
            self.expect(False, "the scenario checked nothing")
        return ScenarioResult("", self.ok, self.details, counts=dict(self.counts))


class ScenarioContext(Protocol):
    """What the framework needs of the context scenarios run in: which setup parts failed."""

    @property
    def setup_errors(self) -> Mapping[str, str]:
        """Setup part (e.g. ``"services"``) -> why it failed; empty when everything was set up."""
        ...


C = TypeVar("C", bound=ScenarioContext)


@dataclass(frozen=True)
class Scenario(Generic[C]):
    """A named check: ``function(ctx)`` runs it and returns a :class:`ScenarioResult`.

    ``applies(ctx)`` returns why the scenario does not apply to this lab (it is then skipped), or
    None. ``needs`` names setup parts (``"services"``) whose failure fails the scenario up front.
    """

    name: str
    description: str
    function: Callable[[C], ScenarioResult]
    cilium: str = ""
    acceptance: str = ""
    applies: Callable[[C], str | None] | None = None
    needs: frozenset[str] = frozenset()

    def run(self, ctx: C) -> ScenarioResult:
        """Run it and return its result, named and timed.

        Never raises for an ``Exception``: a scenario that raises (or whose ``applies`` raises) is a
        failed result carrying the error, so the scenarios after it still run. ``BaseException``
        (Ctrl-C) propagates.
        """
        t0 = time.monotonic()
        try:
            res = self._run(ctx)
        except Exception as exc:
            res = ScenarioResult(self.name, False, [f"✘ {type(exc).__name__}: {exc}"])
        res.name = self.name
        res.description, res.cilium, res.acceptance = self.description, self.cilium, self.acceptance
        res.seconds = time.monotonic() - t0
        return res

    def _run(self, ctx: C) -> ScenarioResult:
        why_not = self.applies(ctx) if self.applies else None
        if why_not is not None:
            return ScenarioResult(self.name, True, [f"· skipped: {why_not}"], skipped=why_not)
        if broken := [f"{part}: {ctx.setup_errors[part]}" for part in sorted(self.needs) if part in ctx.setup_errors]:
            return ScenarioResult(self.name, False, [f"✘ setup failed, {b}" for b in broken])
        return self.function(ctx)


#: Every registered scenario by name, in registration order (the order of a run).
#: ``ciliumlite.connectivity.scenarios`` fills it when it is imported, which importing
#: ``ciliumlite.connectivity`` does.
SCENARIOS: dict[str, Scenario[Any]] = {}

# A pattern with one of these is a regular expression even if it also has glob characters.
_REGEX_HINT = re.compile(r"[\^$()|+\\]|\.[*+]")


def scenario(name: str, description: str, *, cilium: str, acceptance: str,
             applies: Callable[[C], str | None] | None = None,
             needs: Iterable[str] = ()) -> Callable[[Callable[[C], ScenarioResult]], Callable[[C], ScenarioResult]]:
    """A decorator registering its function in :data:`SCENARIOS` as scenario ``name``.

    The function is returned unchanged. Raises :class:`ValidationError` when ``name`` is taken.
    """
    def deco(fn: Callable[[C], ScenarioResult]) -> Callable[[C], ScenarioResult]:
        if name in SCENARIOS:
            raise ValidationError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(name, description, fn, cilium, acceptance, applies, frozenset(needs))
        return fn
    return deco


def select(pattern: str | Sequence[str] | None,
           scenarios: Iterable[Scenario[Any]] | None = None) -> list[Scenario[Any]]:
    """The scenarios matching ``pattern`` (like ``cilium connectivity test --test``), in order.

    ``scenarios`` is the pool (default: every registered one). ``pattern`` is one string or several
    (a string may hold several separated by commas); a leading ``!`` excludes. A pattern with ``*``,
    ``?`` or ``[`` and none of the regex signs ``^ $ ( ) | + \\`` / ``.*`` / ``.+`` is a shell glob
    matched against the whole name (``pod-to-*``); anything else is a regular expression searched in
    the name, as in Cilium (``pod-to-pod`` also selects ``pod-to-pod-no-frag``; ``^pod-to-pod/``
    does not). No include pattern means every scenario.

    Raises :class:`ValidationError` when nothing is selected or a pattern is not a valid regular
    expression.
    """
    pool = list(SCENARIOS.values() if scenarios is None else scenarios)
    if pattern is None:
        return pool
    items = [pattern] if isinstance(pattern, str) else list(pattern)
    parts = [p.strip() for item in items for p in item.split(",") if p.strip()]
    include = [p for p in parts if not p.startswith("!")]
    exclude = [p[1:] for p in parts if p.startswith("!")]
    chosen = [s for s in pool if (not include or any(_matches(s.name, p) for p in include))
              and not any(_matches(s.name, p) for p in exclude)]
    if not chosen:
        raise ValidationError(f"no scenario matches {pattern!r} (scenarios: {', '.join(s.name for s in pool)})")
    return chosen


def _matches(name: str, pat: str) -> bool:
    if not _REGEX_HINT.search(pat) and any(ch in pat for ch in "*?["):
        return fnmatch.fnmatchcase(name, pat)
    try:
        return re.search(pat, name) is not None
    except re.error as exc:
        raise ValidationError(f"--test {pat!r} is not a valid regular expression: {exc}") from None
