"""The pytest plugin's tiers: unit tests need no root and get no leak check (bpf/integration ones do)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

INNER = '''
import os
import pytest

pytestmark = pytest.mark.{tier}


def test_inner():
    # Leaves two fds open: the leak check (bpf/integration tiers, as root) must notice; unit must not care.
    os.pipe()
'''


def run_inner(tmp_path: Path, tier: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner_tier.py").write_text(INNER.format(tier=tier))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "test_inner_tier.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_unit_tier_runs_without_root_requirements_or_leak_check(tmp_path: Path):
    res = run_inner(tmp_path, "unit")
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout + res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the leak check only runs as root")
def test_bpf_tier_gets_the_leak_check(tmp_path: Path):
    res = run_inner(tmp_path, "bpf")
    assert res.returncode != 0, res.stdout + res.stderr
    assert "left behind:" in res.stdout and "fds:" in res.stdout, res.stdout + res.stderr
