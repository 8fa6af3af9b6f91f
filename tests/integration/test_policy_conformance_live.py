"""Truth-table conformance of network policy on a live lab cluster (issue 17).

Namespaces x, y, z (labelled ``ns=<name>``) hold pods a, b, c (labelled ``pod=<name>``) serving TCP
and UDP echo on 80 and 81 (named ports ``serve-<port>-<proto>``). The nine pods are spread over
three nodes as a Latin square, so every node has one pod of each namespace and of each name, and
same-node and cross-node flows are both in every namespace pair::

    n1 (10.244.1.0/24): x/b .11  y/a .10  z/c .12
    n2 (10.244.2.0/24): x/c .12  y/b .11  z/a .10
    n3 (10.244.3.0/24): x/a .10  y/c .12  z/b .11

(x/b keeps 10.244.1.11, the address the ``ipBlock except one pod`` case names.) Each pod also has a
ClusterIP Service per (port, protocol) whose only backend is that pod.

Every case of ``tests/netpol_cases.py`` (the Kubernetes e2e / cyclonus ones the engine-only test
checks) is applied through ``LabCluster.apply_policy``; then every pod probes every other pod on
80 and 81, TCP and UDP, by pod IP and by ClusterIP, all at once (``netpol_probe.py``, 1 s
timeout), and each cell must equal the independent model's (``tests/netpol_model.py``, built from
the lab's real addresses). A pod's own address is left out: traffic to it never leaves the pod.
A cell the model allows but the probe saw blocked is probed once more with a 3 s timeout (a lost
first SYN is no policy verdict); any cell still wrong fails the case and prints its tables.

Cells per case: 9 x 8 pairs x 2 ports x 2 protocols = 288 by pod IP, 288 by ClusterIP.

The default run does VXLAN with socket LB on. The whole matrix (VXLAN and native routing, socket
LB on and off)::

    CILIUMLITE_CONFORMANCE=full CILIUMLITE_TEST_SHARED_HOST=1 .venv/bin/python -m pytest -q \\
        tests/integration/test_policy_conformance_live.py -p no:cacheprovider
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netpol_cases import CASES, NAMESPACES, POD_B_IP, PODS
from netpol_model import Cluster, serving
from netpol_model import Pod as ModelPod

from ciliumlite.lab import Lab, procs
from ciliumlite.lab.cluster import LabCluster
from ciliumlite.lab.hosts import Pod
from ciliumlite.service import Backend, Frontend, Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBE = str(Path(__file__).with_name("netpol_probe.py"))
PORTS = (80, 81)
PROTOS = ("TCP", "UDP")
TIMEOUT = 1.0
RETRY_TIMEOUT = 3.0
NODES = ("n1", "n2", "n3")

# (routing, socket LB); the default run is the first one only.
FULL = os.environ.get("CILIUMLITE_CONFORMANCE", "") == "full"
CONFIGS = [("vxlan", True), ("vxlan", False), ("native", True), ("native", False)] if FULL else [("vxlan", True)]


def placement(ns_index: int, pod_index: int) -> tuple[str, str]:
    """The node and address of pod ``pod_index`` of namespace ``ns_index`` (the Latin square)."""
    node = (ns_index + pod_index - 2) % 3 + 1
    return f"n{node}", f"10.244.{node}.{10 + pod_index}"


@dataclass
class Topo:
    """The lab cluster, its pods by ``ns/name``, each pod's ClusterIP, and what was measured."""

    lab: Lab
    cl: LabCluster
    pods: dict[str, Pod]
    cluster_ips: dict[str, str]
    model_pods: list[ModelPod]
    cells: int = 0
    retried: list[str] = field(default_factory=list)


@pytest.fixture(scope="module", params=CONFIGS, ids=[f"{r}-socklb-{'on' if s else 'off'}" for r, s in CONFIGS])
def topo(request: pytest.FixtureRequest) -> Iterator[Topo]:
    routing, socket_lb = request.param
    with Lab(f"npc-{routing[:3]}{int(socket_lb)}") as lab:
        cl = lab.cluster(["n1"], routing=routing, bgp=False, enable_policy=True, socket_lb=socket_lb,
                         pod_cidr="10.244.1.0/24")
        for i in (2, 3):
            cl.add_node(f"n{i}", enable_policy=True, socket_lb=socket_lb, pod_cidr=f"10.244.{i}.0/24")
        for ns in NAMESPACES:
            cl.set_namespace(ns, {"ns": ns})
        named = {p.name or "": f"{p.port}/{p.protocol}" for p in serving(PORTS, PROTOS)}
        pods: dict[str, Pod] = {}
        cluster_ips: dict[str, str] = {}
        model_pods = []
        for i, ns in enumerate(NAMESPACES, start=1):
            for j, name in enumerate(PODS):
                node, ip = placement(i, j)
                key = f"{ns}/{name}"
                pod = cl.node(node).add_pod(f"{ns}-{name}", ip, namespace=ns, labels={"pod": name},
                                            named_ports=named)
                pods[key] = pod
                model_pods.append(ModelPod(ns, name, {"pod": name}, pod.ip, serving(PORTS, PROTOS)))
                cluster_ips[key] = f"10.96.1.{10 * i + j}"
                for port in PORTS:
                    pod.ensure_echo_server(port)
                    for proto in PROTOS:
                        cl.upsert_service(Service(name=f"{ns}-{name}-{port}-{proto.lower()}",
                                                  frontend=Frontend(cluster_ips[key], port, proto),  # type: ignore[arg-type]
                                                  backends=[Backend(pod.ip, port)]))
        assert pods["x/b"].ip == POD_B_IP
        t = Topo(lab, cl, pods, cluster_ips, model_pods)
        # Warm up (neighbours, first SYNs) and check the plumbing: with no policy everything answers.
        _, wrong = check(t, [], timeout=RETRY_TIMEOUT)
        assert not wrong, "with no policy:\n" + "\n".join(wrong)
        yield t
        print(f"\n[{routing}, socket LB {'on' if socket_lb else 'off'}] {t.cells} cells compared over {len(CASES)} cases; "
              f"re-probed and then right: {len(t.retried)} {t.retried[:10]}")


# --- probing ------------------------------------------------------------------------------------

Cell = tuple[str, str, str, int, str]  # via ("ip" | "clusterip"), src, dst, port, proto


def targets(t: Topo, src: str) -> dict[str, tuple[Cell, str]]:
    """The probe keys of one source: ``key -> (cell, address)``."""
    out = {}
    for dst, pod in t.pods.items():
        if dst == src:
            continue
        for via, addr in (("ip", pod.ip), ("clusterip", t.cluster_ips[dst])):
            for port in PORTS:
                for proto in PROTOS:
                    out[f"{via} {dst} {port} {proto}"] = ((via, src, dst, port, proto), addr)
    return out


def probe(t: Topo, src: str, cells: dict[str, tuple[Cell, str]], timeout: float) -> dict[Cell, tuple[bool, str]]:
    """Probe ``cells`` from pod ``src`` at once: ``cell -> (answered by the right pod, detail)``."""
    spec = [[k, addr, cell[3], cell[4].lower()] for k, (cell, addr) in cells.items()]
    res = t.pods[src].run(*procs.python_script(PROBE, str(timeout), json.dumps(spec)), timeout=timeout + 30)
    try:
        raw: dict[str, dict[str, Any]] = json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"probe from {src} failed (rc {res.returncode}): {res.stderr.strip()}") from None
    out = {}
    for k, (cell, _) in cells.items():
        r = raw[k]
        want_server = t.pods[cell[2]].name
        if r["ok"] and r["server"] != want_server:
            out[cell] = (False, f"answered by {r['server']!r}, not {want_server!r}")
        else:
            out[cell] = (bool(r["ok"]), str(r["error"]))
    return out


def probe_all(t: Topo, per_source: dict[str, dict[str, tuple[Cell, str]]],
              timeout: float) -> dict[Cell, tuple[bool, str]]:
    """Every source's probes, the sources in parallel."""
    out: dict[Cell, tuple[bool, str]] = {}
    with ThreadPoolExecutor(max_workers=len(per_source) or 1) as pool:
        for part in pool.map(lambda s: probe(t, s, per_source[s], timeout), per_source):
            out.update(part)
    return out


def check(t: Topo, policies: list[dict[str, Any]], timeout: float = TIMEOUT,
          label: str = "") -> tuple[dict[Cell, bool], list[str]]:
    """Probe every cell with ``policies`` in force (already applied): the model's table, and the
    wrong cells in words (after one slower re-probe of the cells seen blocked but allowed)."""
    model = Cluster({ns: {"ns": ns} for ns in NAMESPACES}, t.model_pods, policies)
    by_key = {f"{p.namespace}/{p.name}": p for p in t.model_pods}
    per_source = {src: targets(t, src) for src in t.pods}
    want = {cell: model.allowed(by_key[cell[1]], by_key[cell[2]], cell[3], cell[4])
            for cells in per_source.values() for cell, _ in cells.values()}
    got = probe_all(t, per_source, timeout)
    retry = {src: {k: v for k, v in cells.items() if want[v[0]] and not got[v[0]][0]}
             for src, cells in per_source.items()}
    retry = {s: c for s, c in retry.items() if c}
    if retry and timeout < RETRY_TIMEOUT:
        again = probe_all(t, retry, RETRY_TIMEOUT)
        t.retried += [f"{label}: {fmt(c)} (first: {got[c][1]})" for c, (ok, _) in again.items() if ok]
        got.update(again)
    wrong = [f"{fmt(c)}: observed {'allowed' if got[c][0] else 'blocked'}, model "
             f"{'allowed' if want[c] else 'blocked'}{' (' + got[c][1] + ')' if got[c][1] else ''}"
             for c in sorted(want) if got[c][0] != want[c]]
    if wrong:
        wrong.append(tables(t, want, {c: v[0] for c, v in got.items()}))
    return want, wrong


def fmt(cell: Cell) -> str:
    via, src, dst, port, proto = cell
    return f"{src} -> {dst} {port}/{proto} by {via}"


def tables(t: Topo, want: dict[Cell, bool], got: dict[Cell, bool]) -> str:
    """The truth tables holding a wrong cell: rows sources, columns destinations; ``.`` allowed
    and ``x`` blocked as the model says, ``A`` allowed but the model blocks, ``B`` blocked but the
    model allows, ``-`` the pod itself."""
    names = list(t.pods)
    out = []
    for via in ("ip", "clusterip"):
        for port in PORTS:
            for proto in PROTOS:
                cells = [(via, s, d, port, proto) for s in names for d in names if s != d]
                if all(got[c] == want[c] for c in cells):
                    continue
                out.append(f"by {via}, {port}/{proto}:")
                out.append("        " + " ".join(f"{d:>3}" for d in names))
                for s in names:
                    row = []
                    for d in names:
                        c = (via, s, d, port, proto)
                        row.append("-" if s == d else ("." if want[c] else "x") if got[c] == want[c]
                                   else ("A" if got[c] else "B"))
                    out.append(f"  {s:>5} " + " ".join(f"{r:>3}" for r in row))
    return "\n".join(out)


# --- the cases -----------------------------------------------------------------------------------

@pytest.fixture
def clean(topo: Topo) -> Iterator[Topo]:
    yield topo
    for pol in topo.cl.policies():
        topo.cl.delete_policy(pol)


@pytest.mark.parametrize("case", sorted(CASES))
def test_case(clean: Topo, case: str) -> None:
    t = clean
    if CASES[case]:
        t.cl.apply_policy(CASES[case])
    want, wrong = check(t, CASES[case], label=case)
    t.cells += len(want)
    assert len(want) == 2 * 9 * 8 * len(PORTS) * len(PROTOS)
    assert not wrong, f"case {case!r}: {len(wrong) - 1} of {len(want)} cells wrong:\n" + "\n".join(wrong)


def test_probe_sees_blocked_flows(clean: Topo) -> None:
    # The table is not vacuous: checked against a model without the policy, default deny in x is
    # seen as exactly the flows into x blocked (6 sources outside x and 2 inside, per pod of x).
    t = clean
    t.cl.apply_policy(CASES["default deny ingress"])
    want, wrong = check(t, [])
    assert all(want.values())
    blocked = [w for w in wrong[:-1] if "observed blocked" in w]
    assert len(blocked) == len(wrong) - 1 == 2 * 3 * 8 * len(PORTS) * len(PROTOS), wrong[-1]
    assert all(" -> x/" in w for w in blocked)


def test_policies_removed_restores_everything(clean: Topo) -> None:
    # After the last case is deleted every flow is open again (deletion converges too).
    t = clean
    t.cl.apply_policy(CASES["default deny both"])
    for pol in t.cl.policies():
        t.cl.delete_policy(pol)
    _, wrong = check(t, [])
    assert not wrong, "\n".join(wrong)
