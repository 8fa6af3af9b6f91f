"""The soak (``ciliumlite.testing.soak``, ``make soak``) in a short smoke version.

40 s of churn under traffic on the 3-node VXLAN lab, a sample every 5 s: the recorder works
(samples with every map count, RSS and fds; traffic of every kind ran and was counted; churn
happened, node ``c`` left and joined; GC ran), the result files are written, no long-lived
connection broke that should not have, and nothing is left behind: no namespace, pin directory,
cgroup or process of the soak's lab (the plugin's leak check covers this test too). The growth
rules are not judged here: 40 s is warm-up (docs/testing.md, Soak).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ciliumlite.ownership.record import record_dir
from ciliumlite.testing import soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_soak_smoke_records_and_leaves_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    run = soak.Soak(seconds=40, sample=5, churn_interval=2.5, gc_interval=5, log=lines.append)
    result = run.run()
    md, js = soak.write(result, str(tmp_path / "soak.md"))

    samples = result["samples"]
    assert len(samples) >= 8
    assert sum(1 for line in lines if line.startswith("[soak ")) == len(samples)   # a line every sample
    for s in samples:
        assert set(soak.MAPS) <= set(s) and s["rss_kib"] > 0 and s["fds"] > 0
    last = samples[-1]
    assert last["ct"] > 0 and last["nat"] > 0 and last["revnat"] > 0 and last["lxc"] > 0
    summary = result["summary"]
    assert summary["long_lived_lines_checked"] > 100 and summary["bytes_checked"] > 0
    assert summary["new_connections"] > 100 and summary["udp_sent"] > 100
    assert summary["gc"]["runs"] >= 5
    events = {e["event"] for e in result["events"]}
    assert {"backend added", "backend terminating", "backend removed (terminated)", "node left",
            "node joined"} <= events
    assert summary["broken"] == 0, result["breaks"]
    assert json.loads(Path(js).read_text())["summary"] == summary
    assert "Verdict" in Path(md).read_text()

    prefix = run.lab_prefix
    assert prefix and not [n for n in os.listdir("/var/run/netns") if n.startswith(prefix)]
    pins = "/sys/fs/bpf/ciliumlite"
    assert not [p for p in (os.listdir(pins) if os.path.isdir(pins) else []) if p.startswith(prefix)]
    assert not os.path.exists(os.path.join(record_dir(), f"{prefix}.json"))
    assert not children(), "traffic or server processes left"


def children() -> list[str]:
    """Command lines of this process's live children."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                out.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "))
        except (OSError, IndexError, ValueError):
            continue
    return out
