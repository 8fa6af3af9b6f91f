"""ciliumlite.datapath.reasons mirrors csrc/include/ciliumlite/reasons.h and metrics.h exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ciliumlite.datapath.reasons import (
    DROP_MIN,
    SOURCE_FILES,
    Direction,
    Reason,
    describe,
    is_drop,
    source_file,
)

pytestmark = pytest.mark.unit

INCLUDE = Path(__file__).resolve().parents[2] / "csrc" / "include" / "ciliumlite"


def _enum_body(text: str, name: str) -> dict[str, int]:
    match = re.search(r"enum\s+" + name + r"\s*\{(.*?)\};", text, re.S)
    assert match, f"enum {name} not found"
    body = re.sub(r"/\*.*?\*/", "", match.group(1), flags=re.S)
    return {m[0]: int(m[1], 0) for m in re.findall(r"(\w+)\s*=\s*(\w+)", body)}


def test_reasons_match_header() -> None:
    c = _enum_body((INCLUDE / "reasons.h").read_text(), "cl_reason")
    expected = {(n[len("REASON_"):] if n.startswith("REASON_") else n): v for n, v in c.items()}
    assert {r.name: r.value for r in Reason} == expected


def test_directions_match_header() -> None:
    c = _enum_body((INCLUDE / "reasons.h").read_text(), "cl_metric_dir")
    assert {d.name: d.value for d in Direction} == {n[len("METRIC_"):]: v for n, v in c.items()}


def test_drop_min_matches_header() -> None:
    match = re.search(r"#define\s+DROP_MIN\s+(\d+)", (INCLUDE / "reasons.h").read_text())
    assert match and int(match[1]) == DROP_MIN


def test_source_files_match_header() -> None:
    c = re.findall(r'__cl_file_case\((\d+),\s*"([^"]+)"\)', (INCLUDE / "metrics.h").read_text())
    assert dict(SOURCE_FILES) == {int(i): n for i, n in c}


def test_every_reason_has_text() -> None:
    for r in Reason:
        assert r.text and describe(int(r)) == r.text


def test_drop_classification() -> None:
    assert not Reason.FORWARDED.is_drop and not Reason.TO_STACK.is_drop
    assert Reason.DROP_INVALID_SMAC.is_drop and Reason.DROP_TTL_EXCEEDED.is_drop
    assert all(r.is_drop == r.name.startswith("DROP_") for r in Reason)
    assert is_drop(250) and not is_drop(5)


def test_cilium_numbers() -> None:
    # Spot checks against Cilium's bpf/lib/common.h / pkg/monitor/api/drop.go.
    assert Reason.DROP_INVALID_SIP == 132 and describe(132) == "Invalid source ip"
    assert Reason.DROP_INVALID == 134 and Reason.DROP_UNKNOWN_L3 == 139
    assert Reason.DROP_TTL_EXCEEDED == 196


def test_unknown_values() -> None:
    assert describe(250) == "Unknown drop reason 250"
    assert describe(42) == "Unknown reason 42"
    assert source_file(1) == "bpf_lxc.c" and source_file(0) == "unknown"
