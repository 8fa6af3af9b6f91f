"""Upgrades of a running node to a build with another map layout, under counted traffic.

The topology and the traffic are test_restore.py's (imported: two VXLAN nodes, pods a1/a2 on A
and b1 on B, a ClusterIP and a NodePort backed by b1; long-lived TCP connections, a stream of new
ones and numbered UDP datagrams, counted as broken / failed / lost). Node A is built by a child
process, which detaches it; this module adopts it and upgrades it, in order:

1. to ``layout-break`` (``CILIUMLITE_LAYOUT_BREAK``: a wider ``endpoint_key``, a one-entry
   ``cilium_node_map``): refused by ``reload`` and by ``restore``, with the kernel's view of the
   node (links, programs, pins, map ids) unchanged and the node forwarding;
2. to ``layout-next`` (``CILIUMLITE_LAYOUT_NEXT``: ``ct_entry`` with an appended field,
   ``cilium_lxc`` twice as large) under traffic: 0 broken connections, 0 failed connects, 0 lost
   datagrams, printed; every entry copied (the new field zero), the old maps freed, a restore
   after it, and the downgrade back (conntrack started empty with a warning, the endpoints kept).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import test_restore as harness
from test_restore import Topo, Traffic, _check, _kernel_view, _probe

from ciliumlite.bpf import BpfObject, Map, inventory
from ciliumlite.datapath import loader, migrate
from ciliumlite.lab import owned
from ciliumlite.node import Datapath
from ciliumlite.testing.resources import session_record

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

CT_MAPS = ("cilium_ct4_global", "cilium_ct_any4_global")
#: test_restore's two nodes (tcx links and clsact filters), set up again for this module.
node = harness.topo


def _variant(name: str) -> str:
    path = loader.object_path("bpf_lxc").parent / name
    if not (path / "bpf_lxc.o").is_file():
        pytest.fail(f"{path} is not built (cmake -S . -B build && cmake --build build builds the layout variants)")
    return str(path)


@contextlib.contextmanager
def owned_a(topo: Topo) -> Iterator[Datapath]:
    """Node A owned by this process for one test (its builder, the child, detaches it first)."""
    if topo.child is not None:
        assert topo.child.stdin is not None
        topo.child.stdin.close()  # the child detaches A and exits
        topo.child.wait(timeout=30)
        topo.child = None
    if topo.dp_a is None:
        topo.dp_a = Datapath.restore(topo.cfg_a.node_name)
    try:
        yield topo.dp_a
    finally:
        topo.cfg_a = topo.dp_a.config  # what a restore must name from now on
        topo.dp_a.detach()
        topo.dp_a = None


def _pins(topo: Topo) -> dict[str, int]:
    """Node A's pinned maps by name -> map id."""
    out = {}
    for pin in sorted(Path(topo.cfg_a.pin_dir).iterdir()):
        if pin.is_file() and not pin.name.startswith("cilium_calls"):
            with contextlib.suppress(Exception), Map.open_pinned(str(pin)) as m:
                out[pin.name] = m.info.id
    return out


def _late_endpoint(topo: Topo, dp: Datapath) -> None:
    """An endpoint added (and removed) after the upgrade: a load of the node's current build."""
    record = session_record()
    ns = owned.make_netns(record, f"{topo.prefix}-late")
    try:
        ep = dp.add_endpoint(ns, name="late", ip="10.244.61.20")
        dp.remove_endpoint(ep)
    finally:
        owned.remove_netns(record, ns)


@pytest.mark.no_leak_check  # a failed refusal would have swapped programs: the test compares the kernel itself
def test_a_refused_upgrade_leaves_the_datapath_untouched(node: Topo, bpffs_dir: str) -> None:
    topo = node
    broken = _variant("layout-break")
    with owned_a(topo) as dp:
        before, pins = _kernel_view(topo), _pins(topo)
        traffic = Traffic(topo)
        time.sleep(1.0)
        with pytest.raises(migrate.MigrationError) as exc:
            dp.reload(replace(dp.config, objects_dir=broken))
        time.sleep(1.0)
        counts = traffic.stop()
        print(f"\nrefused: {exc.value}")
        _check("refused upgrade", counts)
        refused = {c.name: c for c in exc.value.changes}
        assert set(refused) == {"cilium_lxc", "cilium_node_map"}, exc.value
        assert "key" in refused["cilium_lxc"].describe() and "20" in refused["cilium_lxc"].describe()
        assert "24" in refused["cilium_lxc"].describe()
        assert "max_entries 16384 -> 1" in refused["cilium_node_map"].describe()
        assert "holds 2 entries" in refused["cilium_node_map"].reason
        assert _kernel_view(topo) == before and _pins(topo) == pins  # same links, programs, pins and maps
        assert not migrate.stale_staging_pins(topo.cfg_a.pin_dir)
        assert dp.config.objects_dir == ""
        _probe(topo)
        _late_endpoint(topo, dp)  # later loads take the old build: its pins still fit
    # The same upgrade through restore (a new agent with the new build): refused, A detached again.
    before = _kernel_view(topo)
    with pytest.raises(migrate.MigrationError):
        Datapath.restore(replace(topo.cfg_a, objects_dir=broken))
    assert _kernel_view(topo) == before and _pins(topo) == pins
    _probe(topo)
    # What an upgrade killed before its swap leaves (a new map at <name>:next that no program
    # uses): the next restore removes it and adopts the node as it runs.
    debris = f"{topo.cfg_a.pin_dir}/cilium_node_map{migrate.STAGING_SUFFIX}"
    with BpfObject(loader.object_path("bpf_lxc", broken), pin_root=bpffs_dir) as obj:  # its other maps: private
        obj.set_pin_path("cilium_node_map", debris)
        obj.load()
    with owned_a(topo):
        assert not Path(debris).exists() and _pins(topo) == pins
        _probe(topo)


@pytest.mark.no_leak_check  # an upgrade replaces programs and maps by design: the test checks its own leaks
def test_upgrade_to_a_changed_layout_keeps_every_connection(node: Topo) -> None:
    topo = node
    nxt = _variant("layout-next")
    with owned_a(topo) as dp:
        old_ids = _pins(topo)
        with Map.open_pinned(f"{topo.cfg_a.pin_dir}/cilium_lxc") as m:
            endpoints = {k: v for k, v in m.items()}
        traffic = Traffic(topo)
        time.sleep(1.0)  # connections established, conntrack and NAT entries made
        started = time.monotonic()
        report = dp.reload(replace(dp.config, objects_dir=nxt))
        took = time.monotonic() - started
        time.sleep(1.5)  # traffic on the new build
        counts = traffic.stop()
        for c in report.changes:
            print(f"\n  {c.describe()} (copied {c.copied}, caught up {c.caught_up})", end="")
        print(f"\nupgrade took {took * 1000:.0f} ms (fill {report.fill_s * 1000:.0f} ms, catch-up "
              f"{report.catch_up_s * 1000:.0f} ms)")
        _check("upgrade to layout-next", counts)
        assert sorted(report.migrated) == ["cilium_ct4_global", "cilium_ct_any4_global", "cilium_lxc"], report
        assert report.reset == []
        by_name = {c.name: c for c in report.changes}
        assert by_name["cilium_lxc"].copied == len(endpoints)
        assert by_name["cilium_ct4_global"].copied > 0  # the long-lived connections' entries
        new_ids = _pins(topo)
        assert set(new_ids) == set(old_ids) and not migrate.stale_staging_pins(topo.cfg_a.pin_dir)
        changed = {n for n in new_ids if new_ids[n] != old_ids[n]}
        assert changed == {"cilium_lxc", *CT_MAPS}
        assert not {old_ids[n] for n in changed} & inventory.map_ids()  # the old maps are freed
        with Map.open_pinned(f"{topo.cfg_a.pin_dir}/cilium_lxc") as m:
            assert m.max_entries == 131070 and {k: v for k, v in m.items()} == endpoints
        with Map.open_pinned(f"{topo.cfg_a.pin_dir}/cilium_ct4_global") as m:
            values = [v for _, v in m.items()]
            assert m.info.value_size == 64 and values and all(v[56:] == bytes(8) for v in values)
        assert dp.config.objects_dir == nxt
        _probe(topo)
    # A new owner adopts the upgraded node (the state names the new maps and the new build).
    with owned_a(topo) as dp:
        assert dp.config.objects_dir == nxt
        _probe(topo)
        _late_endpoint(topo, dp)  # an adopted node loads bpf_lxc for it: the new build's, on the new pins
        # The downgrade: conntrack cannot shrink its values, so it starts empty (and says so);
        # the endpoints fit the smaller cilium_lxc and are copied.
        with pytest.warns(migrate.MigrationWarning) as warned:
            back = dp.reload(replace(dp.config, objects_dir=""))
        assert sorted(n for n in CT_MAPS for w in warned if f": {n}: value" in str(w.message)) == list(CT_MAPS)
        assert sorted(back.reset) == list(CT_MAPS) and back.migrated == ["cilium_lxc"]
        with Map.open_pinned(f"{topo.cfg_a.pin_dir}/cilium_lxc") as m:
            assert m.max_entries == 65535 and {k: v for k, v in m.items()} == endpoints
        _probe(topo)
        assert set(_pins(topo)) == set(old_ids) and not migrate.stale_staging_pins(topo.cfg_a.pin_dir)
