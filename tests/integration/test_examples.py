"""Every example in examples/ runs as root, does what it says, and leaves nothing behind.

Each script runs in its own process with this interpreter (the venv's), through a two-line runner
that first prints the process's run id (``cl<hex>``, the tag of every namespace, pin, cgroup and
work directory the process makes) and then runs the script as ``__main__``. Knowing the tag, the
test checks that the example removed everything it made, even with other runs on the machine.
The notebook is executed by nbclient (what nbmake uses) in a child process, and its outputs read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NOTEBOOK = EXAMPLES / "notebooks" / "latency_by_routing_mode.ipynb"
TIMEOUT = 120

RUNNER = """\
import os, runpy, sys
from ciliumlite.lab.naming import RUN_ID
print(f"example-run-tag cl{RUN_ID}", file=sys.stderr, flush=True)
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))   # as `python examples/x.py` would
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# script -> lines (regexes) its output must contain
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": [
        r"ping client 10\.244\.0\.\d+ -> server 10\.244\.0\.\d+: 3/3 replies",
        r"^\s+id\s+name\s+ipv4\s+identity",
        r"^\s+1\s+client\s+10\.244\.0\.\d+",
        r"forwarded by BPF: [1-9]\d* packets",
    ],
    "sdk_tc_counter.py": [
        r"<BpfObject test_tc loaded .*tc_counters",
        r"attached: (tcx|clsact) ingress on veth-b",
        r"5 packets transmitted, 5 received",
        r"tc_count on veth-b ingress: ([5-9]|\d\d+) packets",
        r"detached: True",
    ],
    "vxlan_overlay.py": [
        r"node-a: underlay 10\.0\.0\.11, pod CIDR 10\.244\.0\.0/24, tunnel map \{'10\.244\.1\.0': '10\.0\.0\.12'\}",
        r"node-a/client 10\.244\.0\.\d+ -> node-b/server 10\.244\.1\.\d+: ping 3/3, TCP ok, UDP ok",
        r"encapsulated by BPF on node-a: [1-9]\d* packets",
    ],
    "native_bgp.py": [
        r"node-a \(10\.0\.0\.11\): BGP sessions: leaf up Established",
        r"routes learned by bird: \['10\.244\.1\.0/24'\]",
        r"kernel route: 10\.244\.1\.0/24 via 10\.0\.0\.12 dev eth0",
        r"node-a/client 10\.244\.0\.\d+ -> node-b/server 10\.244\.1\.\d+: ping 3/3, TCP ok",
    ],
    "services.py": [
        r"^client 10\.244\.0\.\d+ -> 10\.96\.0\.10:80 \(socket LB\): answered by web-[ab], "
        r"getpeername\(\) = 10\.96\.0\.10:80, backend saw 10\.244\.0\.\d+$",
        r"socket LB on node-a: [1-9]\d* connect\(\) translated, [1-9]\d* getpeername\(\)/recvmsg\(\) translated back; "
        r"conntrack entries with the ClusterIP: 0",
        r"world 203\.0\.113\.10 -> node-a 10\.0\.0\.11:30080: answered by web-b on node-b, backend saw 10\.0\.0\.11 ",
        r"world 203\.0\.113\.10 -> node-b 10\.0\.0\.12:30080: answered by web-b on node-b, backend saw 203\.0\.113\.10 ",
        r"node-a NAT OUT 203\.0\.113\.10:\d+ -> 10\.244\.1\.\d+:8080 XLATE_SRC 10\.0\.0\.11:\d+",
    ],
    "map_to_pandas.py": [
        r"^key dtype: \[\('daddr', '>u4'\), \('saddr', '>u4'\), \('dport', '>u2'\)",
        r"^update_batch: 50000 entries in \d+\.\d ms$",
        r"^to_numpy: 50000 entries in \d+\.\d ms, values 56 bytes each$",
        r"^one entry as records: 10\.244\.0\.1:10000 -> 10\.96\.0\.\d+:(80|443) packets=\d+$",
        r"^\s*daddr\s+saddr\s+dport\s+sport\s+packets\s+bytes\s+rev_nat_index$",
        r"^\s*10\.96\.0\.\d+\s+10\.244\.0\.1\s+(80|443)\s+10000\s",
        r"^top services by bytes:$",
        r"^delete_batch: removed [1-9]\d* idle flows, \d+ left$",
    ],
    "endpoint_adopt.py": [
        r"endpoint 2 adopted: 10\.244\.7\.20 on veth-adopt \(.*program attached, adopted True\)",
        r"ping made-by-datapath -> adopted: ok; adopted -> made-by-datapath: ok",
        r"its veth veth-adopt is still there: True",
        r"endpoints left: \['made-by-datapath'\]",
    ],
}


def leftovers(tag: str) -> list[str]:
    """What a process tagged ``tag`` left: namespaces, bpffs pins, cgroups, lab work directories."""
    found = [f"netns {n}" for n in nsmod.list_all() if tag in n]
    for root, depth in ((fs.BPFFS, 3), (fs.cgroup2_root(), 1)):
        base = root.rstrip("/").count("/")
        for d, dirs, files in os.walk(root):
            if d.count("/") - base >= depth:
                dirs.clear()
            found += [os.path.join(d, n) for n in dirs + files if tag in n]
    tmp = tempfile.gettempdir()
    found += [os.path.join(tmp, n) for n in os.listdir(tmp) if n.startswith(tag)]
    return found


def run_example(path: Path, timeout: float = TIMEOUT) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run one example as __main__ in a child process; its result and its run tag."""
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    m = re.search(r"example-run-tag (cl[0-9a-f]+)", proc.stderr)
    assert m, f"no run tag from {path.name}: {proc.stderr[-2000:]}"
    return proc, m.group(1)


def test_every_example_is_covered():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(EXPECTED), "add the new example to EXPECTED (and check what it prints)"
    for name in scripts:
        text = (EXAMPLES / name).read_text()
        assert text.startswith('"""'), f"{name} has no module docstring"
        assert 'if __name__ == "__main__":' in text, f"{name} has no __main__ entry point"


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example(script: str):
    proc, tag = run_example(EXAMPLES / script)
    out = proc.stdout
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{proc.stderr[-3000:]}"
    for pattern in EXPECTED[script]:
        assert re.search(pattern, out, re.MULTILINE), f"{script}: no line matching {pattern!r} in\n{out}"
    assert leftovers(tag) == [], f"{script} left behind: {leftovers(tag)}"


NB_RUNNER = """\
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
try:
    NotebookClient(nb, timeout=int(sys.argv[3]), kernel_name="python3",
                   resources={"metadata": {"path": sys.argv[4]}}).execute()
finally:
    nbformat.write(nb, sys.argv[2])
"""


NB_LABS = re.compile(r"-nb-(same|vxlan|native)")


@pytest.mark.slow
def test_notebook(tmp_path: Path):
    before = {n for n in nsmod.list_all() if NB_LABS.search(n)}
    executed = tmp_path / "executed.ipynb"
    proc = subprocess.run([sys.executable, "-c", NB_RUNNER, str(NOTEBOOK), str(executed), str(TIMEOUT), str(ROOT)],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT + 60, stdin=subprocess.DEVNULL)
    left = sorted({n for n in nsmod.list_all() if NB_LABS.search(n)} - before)
    nb = json.loads(executed.read_text()) if executed.exists() else {"cells": []}
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"]
    assert proc.returncode == 0 and not errors, f"notebook failed: {errors}\n{proc.stderr[-3000:]}"
    assert not left, f"the notebook left behind: {left}"

    text = "".join("".join(o.get("text", "")) for o in outputs)
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert re.search(r"built, measured and removed 3 labs", text), text
    for arm in ("same node, bpf", "same node, legacy", "cross node, vxlan", "cross node, native"):
        assert re.search(rf"{arm}\s+\d+\.\d+ ms", text), f"no RTT for {arm}:\n{text}"
    assert "<b>Lab " in html and "<b>Datapath " in html, "the Lab and Datapath HTML reprs are missing"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no chart"
    assert "cleaned up: no namespace left" in text
