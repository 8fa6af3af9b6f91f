"""The demo end to end, in both routing modes and both LB modes, as a newcomer runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ciliumlite.bpf import netns as nsmod
from ciliumlite.demo import run_demo
from ciliumlite.lab.naming import RUN_ID

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("routing", "lb_mode"), [("native", "dsr"), ("vxlan", "snat")])
def test_every_chapter_passes(routing: str, lb_mode: str) -> None:
    results, kept = run_demo(routing=routing, lb_mode=lb_mode)  # type: ignore[arg-type]
    assert kept is None
    failed = [(r.title, r.evidence) for r in results if not r.ok]
    assert not failed, failed
    titles = [r.title for r in results]
    assert len(titles) == 10 and titles[0] == "cluster built"
    by_title = {r.title: r for r in results}
    assert any("9a 08" in line for line in by_title["NodePort SNAT vs DSR"].evidence), "DSR option bytes shown"
    assert {"XDP prefilter (a denied CIDR dropped at XDP)", "NodePort accelerated at XDP",
            "socket acceleration (sockops + sk_msg)"} <= set(by_title)
    print({r.title: round(r.seconds, 2) for r in results})  # run time per chapter (-s shows it)
    assert not [n for n in nsmod.list_all() if f"cl{RUN_ID}" in n and "demo" in n]


def test_cli_json_keep_and_destroy() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "demo", "--json", "--keep", "--step", "status"],
                         capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    steps = json.loads(out.stdout)
    assert [s["ok"] for s in steps] == [True, True]
    labs = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "lab", "list"], capture_output=True, text=True,
                          timeout=30).stdout.split()
    assert labs, "the kept lab is listed"
    prefix = labs[-1]
    try:
        assert any(n.startswith(prefix + "-") for n in nsmod.list_all())
        eps = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "endpoint", "list", "--lab", prefix,
                              "--output", "json"], capture_output=True, text=True, timeout=60)
        assert eps.returncode == 0 and "10.244." in eps.stdout, eps.stderr
    finally:
        done = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "lab", "destroy", prefix],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not any(n.startswith(prefix + "-") for n in nsmod.list_all())


def test_unknown_kept_lab_is_an_error() -> None:
    out = subprocess.run([sys.executable, "-m", "ciliumlite.cli", "lab", "destroy", "nosuchlab"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "no kept lab" in out.stdout + out.stderr
