"""The documentation site builds with ``mkdocs build --strict`` and its API pages carry the docstrings.

mkdocstrings reads the sources statically (griffe), so this needs no root and loads nothing into the
kernel.
"""

from __future__ import annotations

import html
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def text_of(page: Path) -> str:
    """A built page's visible text, tags dropped and whitespace collapsed."""
    raw = re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8"))
    return re.sub(r"\s+", " ", html.unescape(raw))


def first_line(obj: object) -> str:
    """The first line of a docstring as it reads once rendered (``code`` marks dropped)."""
    doc = inspect.getdoc(obj)
    assert doc, f"{obj!r} has no docstring"
    return re.sub(r"\s+", " ", doc.split("\n\n")[0].replace("``", "").replace("`", "")).strip()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    return out


def test_every_nav_page_is_built(site: Path):
    for page in ("index.html", "getting-started/index.html", "design/index.html", "host-routing/index.html",
                 "multi-node/index.html", "bgp/index.html", "lab/index.html", "sdk/index.html", "cli/index.html",
                 "testing/index.html", "benchmarks/index.html", "api/index.html", "search/search_index.json"):
        assert (site / page).is_file(), page
    api = sorted(p.parent.name for p in (site / "api").glob("*/index.html"))
    assert {"ciliumlite", "bpf", "bpf.object", "bpf.map", "bpf.program", "bpf.link", "bpf.record", "bpf.errors",
            "bpf.features", "bpf.netns", "node", "endpoint", "service", "cluster", "lab", "bgp",
            "datapath.config", "datapath.records"} <= set(api)


def test_api_pages_carry_the_docstrings(site: Path):
    from ciliumlite.bpf.map import Map
    from ciliumlite.bpf.object import BpfObject
    from ciliumlite.lab import Lab
    from ciliumlite.node import Datapath

    obj_page = site / "api" / "bpf.object" / "index.html"
    node_page = site / "api" / "node" / "index.html"
    assert first_line(BpfObject) in text_of(obj_page)
    assert first_line(BpfObject.load_file) in text_of(obj_page)
    assert first_line(Datapath) in text_of(node_page)
    assert first_line(Datapath.add_endpoint) in text_of(node_page)
    assert first_line(Map.update_batch) in text_of(site / "api" / "bpf.map" / "index.html")
    assert first_line(Lab) in text_of(site / "api" / "lab" / "index.html")
    # mkdocstrings anchors, for links such as api/node/#ciliumlite.node.Datapath.add_endpoint
    raw = node_page.read_text(encoding="utf-8")
    assert 'id="ciliumlite.node.Datapath"' in raw and 'id="ciliumlite.node.Datapath.add_endpoint"' in raw
    assert "show_source" not in raw and "Source code in" not in raw  # show_source: false


def test_benchmarks_page_has_every_suite_and_chart(site: Path):
    page = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    # benchmark suites only: fuzz.md and soak.md are results of `make fuzz` / `make soak`, not suites
    for result in sorted(r for r in (ROOT / "benchmarks" / "results").glob("*.md")
                         if (ROOT / "benchmarks" / "suites" / f"{r.stem}.py").exists()):
        assert f'id="{result.stem}"' in page, result.stem
        assert f'src="../img/bench-{result.stem}.png"' in page, result.stem
        assert (site / "img" / f"bench-{result.stem}.png").is_file()


