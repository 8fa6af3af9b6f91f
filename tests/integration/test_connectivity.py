"""The connectivity test (``ciliumlite.connectivity``): the full scenario matrix in two labs, the report
formats, ``--test`` selection, a scenario that must fail, and the CLI command.

One lab per mode is shared by the module: VXLAN with SNAT NodePort, and native routing (BGP) with
DSR, both with BPF masquerade. The fixture runs every scenario once; ``test_scenario`` then checks
each result, so a failure shows that scenario's evidence.

Service scenarios are skipped (with the reason) only when the compiled datapath lacks the feature
(:func:`ciliumlite.connectivity.datapath_features`) or a live node does not attach the program the
feature needs; everything else must pass.
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cli.connectivity import register
from ciliumlite.connectivity import (
    SCENARIOS,
    Checks,
    ConnectivityTest,
    ScenarioResult,
    datapath_features,
    results_to_json,
    select,
    with_context,
    write_junit,
)
from ciliumlite.connectivity.disruption import under_traffic
from ciliumlite.lab import owned

pytestmark = pytest.mark.integration

MODES = {
    "vxlan-snat": {"routing": "vxlan", "lb_mode": "snat"},
    "native-dsr": {"routing": "native", "lb_mode": "dsr"},
}
FEATURES = datapath_features()
#: Scenario -> the datapath features it needs (see datapath_features()).
NEEDS: dict[str, tuple[str, ...]] = {
    "pod-to-service/tcp": ("socket-lb",),
    "pod-to-service/udp": ("socket-lb",),
    "pod-to-itself-via-service": ("socket-lb",),
    "pod-to-local-nodeport": ("socket-lb",),
    "pod-to-remote-nodeport": ("nodeport",),
    "outside-to-nodeport/snat": ("nodeport",),
    "outside-to-nodeport/dsr": ("nodeport", "dsr"),
    "outside-to-nodeport/local": ("nodeport",),
    "pod-to-world": ("masquerade",),
}
#: Scenario -> a program every node must have attached for it to work.
ATTACHED = {"pod-to-world": "cil_to_netdev", "outside-to-nodeport/dsr": "cil_to_netdev"}


def scenario_params() -> list[object]:
    params: list[object] = []
    for name in SCENARIOS:
        missing = [f for f in NEEDS.get(name, ()) if not FEATURES.get(f)]
        params.append(pytest.param(name, marks=pytest.mark.skipif(
            bool(missing), reason=f"the compiled datapath lacks {', '.join(missing)} (datapath_features())")))
    return params


@dataclass
class Run:
    mode: str
    ct: ConnectivityTest
    results: dict[str, ScenarioResult]
    seconds: float


@pytest.fixture(scope="module", params=list(MODES))
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    mode = request.param
    with ConnectivityTest(name=f"ct-{mode[:6]}", **MODES[mode]) as ct:
        t0 = time.monotonic()
        results = ct.run()
        assert ct.ctx is not None
        record = ct.ctx.lab.record.path
        yield Run(mode, ct, {r.name: r for r in results}, time.monotonic() - t0)
    # A clean run leaves no lab record behind (the record lists what is left; nothing is).
    assert not os.path.exists(record), f"{record} left: {Path(record).read_text()}"


@pytest.mark.parametrize("name", scenario_params())
def test_scenario(run: Run, name: str) -> None:
    res = run.results[name]
    if res.skipped is not None:
        assert res.ok and res.status == "skipped"
        pytest.skip(f"{name} does not apply to {run.mode}: {res.skipped}")
    program = ATTACHED.get(name)
    ctx = run.ct.ctx
    assert ctx is not None
    if program and not res.ok:
        unattached = [n.name for n in ctx.nodes if n.datapath is not None
                      and all(lk.program != program for lk in n.datapath.attachments())]
        if unattached:
            pytest.skip(f"bpf_host.o has {program} but Datapath does not attach it on {', '.join(unattached)} "
                        f"(ciliumlite/node/): {name} cannot work yet")
    assert res.ok, f"{name} failed in {run.mode}:\n" + "\n".join(res.details)


def test_every_scenario_ran(run: Run) -> None:
    assert list(run.results) == list(SCENARIOS)
    skipped = {n for n, r in run.results.items() if r.status == "skipped"}
    # native-dsr runs BGP: its agent restart adopts the running bird (Datapath.restore), so it runs too.
    assert skipped == ({"outside-to-nodeport/dsr"} if run.mode == "vxlan-snat" else {"outside-to-nodeport/snat"})
    for r in run.results.values():
        assert r.seconds >= 0 and r.details and r.cilium and r.description
        assert all(d[:2] in ("✔ ", "✘ ", "· ") for d in r.details), r.details
        assert r.ok == (not r.failures)
    assert run.seconds < 60, f"the run took {run.seconds:.0f}s"


def test_json_and_junit(run: Run, tmp_path: Path) -> None:
    results = list(run.results.values())
    doc = json.loads(json.dumps(results_to_json(results, run.ct.config())))
    assert set(doc) == {"config", "summary", "results"}
    assert doc["config"]["routing"] == MODES[run.mode]["routing"]
    assert doc["config"]["lb_mode"] == MODES[run.mode]["lb_mode"]
    s = doc["summary"]
    assert s["total"] == len(SCENARIOS) == s["passed"] + s["failed"] + s["skipped"]
    assert [r["name"] for r in doc["results"]] == list(SCENARIOS)
    for r in doc["results"]:
        assert set(r) == {"name", "status", "ok", "seconds", "details", "skipped", "description", "cilium",
                          "acceptance", "counts"}
        assert r["status"] in ("passed", "failed", "skipped")

    path = tmp_path / "junit.xml"
    write_junit(results, str(path), properties=run.ct.config())
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == list(SCENARIOS)
    assert int(suite.get("tests", "-1")) == len(cases)
    assert int(suite.get("failures", "-1")) == s["failed"] == sum(c.find("failure") is not None for c in cases)
    assert int(suite.get("skipped", "-1")) == s["skipped"] == sum(c.find("skipped") is not None for c in cases)
    assert {p.get("name") for p in suite.iter("property")} >= {"routing", "lb_mode", "masquerade"}
    for c, r in zip(cases, results, strict=True):
        assert float(c.get("time", "-1")) == pytest.approx(r.seconds, abs=0.001)
        assert {p.get("name"): int(p.get("value", "-1")) for p in c.iterfind("properties/property")} == r.counts
        assert (c.findtext("system-out") or "").splitlines() == r.details


def test_selection(run: Run) -> None:
    names = [s.name for s in select("pod-to-pod*")]
    assert names == ["pod-to-pod/same-node", "pod-to-pod/cross-node", "pod-to-pod-no-frag"]
    assert [s.name for s in select("^pod-to-pod/")] == ["pod-to-pod/same-node", "pod-to-pod/cross-node"]
    assert [s.name for s in select(["outside-*", "!*/dsr"])] == ["outside-to-nodeport/snat",
                                                                 "outside-to-nodeport/local"]
    assert [s.name for s in select("client-to-client,host-to-pod")] == ["client-to-client", "host-to-pod"]
    assert len(select("!no-*")) == len(SCENARIOS) - 4
    assert [s.name for s in select("no-interrupted-connections")] == [
        "no-interrupted-connections/node-churn", "no-interrupted-connections/agent-restart",
        "no-interrupted-connections/program-replacement"]
    with pytest.raises(ValidationError, match="no scenario matches"):
        select("nothing-like-this")
    # Against the live lab: only what was selected runs.
    results = run.ct.run("client-to-client")
    assert [r.name for r in results] == ["client-to-client"] and results[0].ok, results[0].details


def test_a_broken_endpoint_fails(run: Run) -> None:
    """pod-to-pod against a pod whose endpoint was removed from the datapath must fail."""
    ctx = run.ct.ctx
    assert ctx is not None
    node = ctx.echo_other.node
    victim = node.add_pod("victim")
    try:
        victim.ensure_echo_server(8080)
        control = SCENARIOS["pod-to-pod/cross-node"].run(with_context(ctx, echo_other=victim))
        assert control.ok, control.details
        assert node.datapath is not None
        node.datapath.remove_endpoint(victim.endpoint)
        res = SCENARIOS["pod-to-pod/cross-node"].run(with_context(ctx, echo_other=victim))
        assert not res.ok and res.status == "failed"
        assert len(res.failures) == 2, res.details
        assert all(victim.ip in line for line in res.failures)
    finally:
        ctx.lab.processes.stop_in({victim.netns})
        node.pods.pop("victim", None)
        assert node.datapath is not None
        if victim.endpoint in node.datapath.endpoints():  # the test failed before removing it
            node.datapath.remove_endpoint(victim.endpoint)
        owned.remove_netns(ctx.lab.record, victim.netns)  # and out of the lab's record (nsmod.remove kept it)


DISRUPTIONS = ["no-interrupted-connections/node-churn", "no-interrupted-connections/agent-restart",
               "no-interrupted-connections/program-replacement"]


@pytest.mark.parametrize("name", DISRUPTIONS)
def test_no_interrupted_connections_counts(run: Run, name: str) -> None:
    """Every path of the traffic ran across the disruption and none lost anything (the counts say so)."""
    res = run.results[name]
    if res.skipped is not None:
        pytest.skip(f"{name} does not apply to {run.mode}: {res.skipped}")
    print(f"[counts] {run.mode} {name}: {res.counts}")
    counts = res.counts
    assert counts["broken_connections"] == counts["connect_failures"] == counts["lost_datagrams"] == 0, res.details
    assert counts["exchanges"] > 0 and counts["connections"] > 0 and counts["datagrams"] > 0
    checked = [d for d in res.details if d.startswith("✔ ")]
    for path in ("pod-to-pod same-node", "pod-to-pod cross-node", "ClusterIP", "NodePort"):
        assert sum(path in d for d in checked) == 3, (path, res.details)  # long-lived, new, UDP
    if name.endswith("program-replacement"):
        assert counts["reloads"] == 3 * len(run.ct.ctx.nodes if run.ct.ctx else [])


def test_a_real_interruption_is_counted(run: Run) -> None:
    """The control: for 4 s the client's node cannot reach echo-other (VXLAN: it forgets echo-other's
    node; native routing, whose routes bird keeps: a blackhole route to the pod), under the same
    traffic, so every path to echo-other breaks, and the scenario's counts must show it."""
    ctx = run.ct.ctx
    assert ctx is not None
    node, other = ctx.client.node, ctx.echo_other.node
    dp = node.datapath
    assert dp is not None
    info = dp.remote_nodes[other.name]
    blackhole = ("ip", "route", "add", "blackhole", f"{ctx.echo_other.ip}/32")

    def cut(c: Checks) -> None:
        if run.mode == "vxlan-snat":
            dp.remove_remote_node(info)
        else:
            assert node.run(*blackhole).returncode == 0
        try:
            time.sleep(4)  # longer than the traffic's 3 s answer timeout
        finally:
            if run.mode == "vxlan-snat":
                dp.add_remote_node(info)
            else:
                node.run("ip", "route", "del", "blackhole", f"{ctx.echo_other.ip}/32")

    res = under_traffic(ctx, cut)
    assert not res.ok, res.details
    counts = res.counts
    assert counts["broken_connections"] >= 2 and counts["connect_failures"] >= 1 and counts["lost_datagrams"] >= 1, \
        res.details
    failed, passed = res.failures, [d for d in res.details if d.startswith("✔ ")]
    assert all("same-node" not in d for d in failed) and sum("same-node" in d for d in passed) == 3, res.details
    assert any("cross-node" in d for d in failed) and any("ClusterIP" in d for d in failed), res.details
    again = SCENARIOS["pod-to-pod/cross-node"].run(ctx)
    assert again.ok, again.details  # the route is back


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so typer keeps the command name in argv
        """Unused."""

    return app


def test_cli_list_and_bad_options(cli: typer.Typer) -> None:
    res = CliRunner().invoke(cli, ["connectivity-test", "--list", "--json", "--test", "outside-*"])
    assert res.exit_code == 0, res.output
    assert [s["name"] for s in json.loads(res.stdout)] == [s.name for s in select("outside-*")]
    res = CliRunner().invoke(cli, ["connectivity-test", "--routing", "vxlan", "--lb-mode", "dsr"])
    assert res.exit_code == 2 and "needs --routing native" in res.output
    res = CliRunner().invoke(cli, ["connectivity-test", "--test", "no-such-scenario"])
    assert res.exit_code == 2 and "no scenario matches" in res.output


def test_cli_run(cli: typer.Typer, tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    res = CliRunner().invoke(cli, ["connectivity-test", "--test", "^pod-to-pod/", "--json", "--junit", str(junit)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [r["name"] for r in doc["results"]] == ["pod-to-pod/same-node", "pod-to-pod/cross-node"]
    assert doc["summary"]["passed"] == 2 and doc["config"]["routing"] == "vxlan"
    assert len(ET.parse(junit).getroot().findall("testsuite/testcase")) == 2


def test_existing_lab_is_left_as_it_was() -> None:
    """Run against a lab the caller built: the workloads come and go, the lab stays."""
    from ciliumlite.lab import Lab

    with Lab("ct-own") as lab:
        cl = lab.cluster(["a", "b"], routing="vxlan")
        mine = cl.node("a").add_pod("mine")
        with ConnectivityTest(lab) as ct:
            results = ct.run("^pod-to-(pod|service)/")
            assert [r.name for r in results] == ["pod-to-pod/same-node", "pod-to-pod/cross-node",
                                                 "pod-to-service/tcp", "pod-to-service/udp"]
            assert all(r.ok for r in results), [r.details for r in results if not r.ok]
            assert ct.ctx is not None and ct.ctx.client.node is cl.node("a")
        assert [p.name for p in lab.pods()] == ["mine"] and mine.node is cl.node("a")
        assert cl.control.services() == []
        assert mine.ping(cl.node("b").add_pod("other"), count=1).ok
