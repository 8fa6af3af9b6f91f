"""Reports of a run: counts, the ``--json`` document and a JUnit XML file."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from ciliumlite.connectivity.framework import ScenarioResult

__all__ = ["results_to_json", "summary", "write_junit"]


def summary(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """Counts (``total``, ``passed``, ``failed``, ``skipped``) and the total ``seconds``."""
    return {"total": len(results), "passed": sum(r.status == "passed" for r in results),
            "failed": sum(r.status == "failed" for r in results),
            "skipped": sum(r.status == "skipped" for r in results),
            "seconds": round(sum(r.seconds for r in results), 3)}


def results_to_json(results: Sequence[ScenarioResult], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"config": ..., "summary": ..., "results": [...]}`` (what ``--json`` prints), plain JSON types."""
    return {"config": dict(config or {}), "summary": summary(results), "results": [r.as_dict() for r in results]}


def write_junit(results: Sequence[ScenarioResult], path: str, *, suite: str = "connectivity-test",
                properties: dict[str, Any] | None = None) -> None:
    """Write a JUnit XML report to ``path``: one ``testsuite``, one ``testcase`` per scenario.

    A failed scenario carries a ``failure`` element, a skipped one a ``skipped`` element; every
    case has its detail lines as ``system-out`` and its ``counts`` as its properties, and
    ``properties`` (e.g. the lab's configuration) become the suite's properties. Raises
    :class:`OSError` if ``path`` cannot be written.
    """
    s = summary(results)
    counts = {"tests": str(s["total"]), "failures": str(s["failed"]), "skipped": str(s["skipped"]),
              "errors": "0", "time": f"{s['seconds']:.3f}"}
    root = ET.Element("testsuites", {"name": "ciliumlite", **counts})
    ts = ET.SubElement(root, "testsuite", {"name": suite, **counts})
    if properties:
        props = ET.SubElement(ts, "properties")
        for k, v in properties.items():
            ET.SubElement(props, "property", name=str(k), value=str(v))
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname=f"ciliumlite.{suite}", name=r.name, time=f"{r.seconds:.3f}")
        if r.counts:  # what the scenario measured (broken connections, lost datagrams, ...)
            props = ET.SubElement(tc, "properties")
            for k, v in r.counts.items():
                ET.SubElement(props, "property", name=k, value=str(v))
        if r.status == "failed":
            # Only the failed checks in the message (JUnit viewers show it on one line); all of them below.
            fail = ET.SubElement(tc, "failure", message="; ".join(d[2:] for d in r.failures)[:500] or "failed",
                                 type="ScenarioFailed")
            fail.text = "\n".join(r.details)
        elif r.status == "skipped":
            ET.SubElement(tc, "skipped", message=r.skipped or "")
        out = ET.SubElement(tc, "system-out")
        out.text = "\n".join(r.details)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
