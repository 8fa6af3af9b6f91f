"""``ciliumlite prefilter list|update|delete`` as a separate process against a live lab.

Node a accelerates NodePort (bpf_xdp attached, so its prefilter maps are pinned), node b does not.
A CIDR the CLI denies is dropped at XDP (pings from the world stop, counted ``DROP_PREFILTER``), is
what the owning process's ``Datapath.prefilter`` lists and is in the node's state; one the owner
denies is what the CLI lists. Bad input is refused with a message naming it and changes nothing,
on any node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Any

import pytest

from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Host, Lab, Node
from ciliumlite.node import Datapath
from ciliumlite.node import state as state_mod

pytestmark = pytest.mark.integration

WORLD_NET = "203.0.113.0/24"


class Topo:
    def __init__(self, lab: Lab, a: Node, b: Node, world: Host) -> None:
        self.lab, self.a, self.b, self.world = lab, a, b, world
        assert a.datapath is not None and a.ip is not None
        self.dp: Datapath = a.datapath
        self.a_ip: str = a.ip


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with Lab("cli-pf") as lab:
        a = lab.add_node("a", routing="native", acceleration="native")
        b = lab.add_node("b", routing="native")
        world = lab.outside()
        t = Topo(lab, a, b, world)
        assert world.ping(t.a_ip, count=1).received == 1
        yield t


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ciliumlite.cli", "prefilter", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ))


def cli_json(*args: str) -> Any:
    res = cli(*args, "-o", "json")
    assert res.returncode == 0, f"{args}: rc={res.returncode}\n{res.stderr}"
    return json.loads(res.stdout)


def _nothing_denied(t: Topo) -> None:
    assert t.dp.prefilter.list() == []
    assert cli_json("list", "--lab", t.lab.prefix, "--node", "a") == []


def test_update_and_delete_through_the_pins_drop_and_allow_at_xdp(topo: Topo) -> None:
    t, lab = topo, topo.lab.prefix
    _nothing_denied(t)
    drops0 = t.dp.count(Reason.DROP_PREFILTER)
    rows = cli_json("update", "--lab", lab, "--node", "a", "--cidr", WORLD_NET, "--cidr", "192.0.2.7/32")
    assert {(r["cidr"], r["map"]) for r in rows} == {(WORLD_NET, "cilium_cidr_v4_dyn"),
                                                     ("192.0.2.7/32", "cilium_cidr_v4_fix")}
    assert {r["node"] for r in rows} == {f"{lab}-a"}
    try:
        # The owner sees the change, traffic is dropped at XDP, and the state keeps it for a restore.
        assert t.dp.prefilter.list() == [IPv4Network("192.0.2.7/32"), IPv4Network(WORLD_NET)]
        assert t.world.ping(t.a_ip, count=3, interval=0.05, timeout=0.5).received == 0
        assert t.dp.count(Reason.DROP_PREFILTER) - drops0 >= 3
        st = state_mod.read(t.dp.config)
        assert sorted(i["cidr"] for i in st["prefilter"]) == ["192.0.2.7/32", WORLD_NET]
        table = cli("list", "--lab", lab)
        assert table.returncode == 0 and "CIDR" in table.stdout and WORLD_NET in table.stdout, table
        left = cli_json("delete", "--lab", lab, "--node", "a", "--cidr", WORLD_NET)
        assert [r["cidr"] for r in left] == ["192.0.2.7/32"]
        assert t.world.ping(t.a_ip, count=3, interval=0.05).received == 3
        assert [i["cidr"] for i in state_mod.read(t.dp.config)["prefilter"]] == ["192.0.2.7/32"]
        # ... and can remove what the CLI added.
        t.dp.prefilter.remove("192.0.2.7/32")
    finally:
        for c in t.dp.prefilter.list():
            t.dp.prefilter.remove(c)
    _nothing_denied(t)


def test_what_the_owner_denies_the_cli_lists(topo: Topo) -> None:
    t = topo
    t.dp.prefilter.add("198.51.100.0/24")
    try:
        assert [r["cidr"] for r in cli_json("list", "--lab", t.lab.prefix)] == ["198.51.100.0/24"]
    finally:
        t.dp.prefilter.remove("198.51.100.0/24")
    res = cli("list", "--lab", t.lab.prefix)
    assert res.returncode == 0 and "(no denied CIDRs)" in res.stderr
    assert "no XDP prefilter maps" in res.stderr  # node b: a note, not an error


@pytest.mark.parametrize(("args", "message"), [
    (("update", "--node", "a", "--cidr", "198.51.100.7/24"), "has host bits set: did you mean 198.51.100.0/24"),
    (("update", "--node", "a", "--cidr", "192.0.2.0/24", "--cidr", "not-a-cidr"), "'not-a-cidr' is not an IPv4"),
    (("update", "--node", "a", "--cidr", "2001:db8::/32"), "'2001:db8::/32' is not an IPv4"),
    (("delete", "--node", "a", "--cidr", "192.0.2.0/24"), "prefilter has no 192.0.2.0/24"),
    (("update", "--node", "b", "--cidr", "192.0.2.0/24"), "has no XDP prefilter maps"),
    # Node a would take it, b cannot: checked on every node before a write to any.
    (("update", "--cidr", "192.0.2.0/24"), "has no XDP prefilter maps"),
])
def test_bad_input_is_refused_naming_it_and_changes_nothing(topo: Topo, args: tuple[str, ...],
                                                            message: str) -> None:
    res = cli(*args, "--lab", topo.lab.prefix)
    assert res.returncode == 1, res
    assert message in " ".join(res.stderr.split()), res.stderr
    _nothing_denied(topo)


def test_a_full_prefilter_is_refused_before_any_write(topo: Topo) -> None:
    from ciliumlite.node.prefilter import DYN_MAX

    args = [a for i in range(DYN_MAX + 1) for a in ("--cidr", f"10.{i // 256}.{i % 256}.0/24")]
    res = cli("update", "--lab", topo.lab.prefix, "--node", "a", *args)
    assert res.returncode == 1 and "at most" in " ".join(res.stderr.split()), res.stderr[-500:]
    _nothing_denied(topo)


def test_usage_errors() -> None:
    res = cli("update", "--cidr", "192.0.2.0/24")
    assert res.returncode == 2 and "needs --lab or --node" in " ".join(res.stderr.split()), res.stderr
    res = cli("delete", "--node", "x")
    assert res.returncode == 2 and "--cidr" in res.stderr, res.stderr
