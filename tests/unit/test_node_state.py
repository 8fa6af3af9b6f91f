"""The node's state directory: atomic files, one per change, and every untrustworthy file refused (no kernel)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ciliumlite.bgp.config import BgpPeer
from ciliumlite.datapath import registry, statedir
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.node import state
from ciliumlite.node.state import StateError, StateWriter

pytestmark = pytest.mark.unit

NODE = {"config": {}, "netns": None, "cgroup": None, "owner": {}, "pins": {}, "native_ifindex": 0,
        "next_endpoint_id": 3, "sock_links": []}
ITEMS: dict[str, dict[str, dict[str, Any]]] = {
    "endpoints": {"1": {"id": 1, "name": "a"}, "2": {"id": 2, "name": "b"}},
    "services": {"default/web": {"name": "default/web"}, "dns": {"name": "dns"}},
    "remote_nodes": {"n2": {"name": "n2", "ip": "192.0.2.2", "pod_cidr": "10.244.2.0/24"}},
}


def _cfg(tmp_path: Path, name: str = "n1") -> DatapathConfig:
    return DatapathConfig(node_name=name, state_dir=str(tmp_path / name))


def _written(tmp_path: Path, name: str = "n1") -> tuple[DatapathConfig, StateWriter]:
    cfg = _cfg(tmp_path, name)
    w = StateWriter(cfg, sync=False)
    w.save(NODE, (), ITEMS)  # unsynced: the first save rewrites everything
    return cfg, w


def _files(cfg: DatapathConfig) -> list[str]:
    root = Path(state.state_dir(cfg))
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_layout_roundtrip_and_no_temp_file_left(tmp_path: Path) -> None:
    cfg, _ = _written(tmp_path)
    assert _files(cfg) == ["datapath.json", "endpoints/1.json", "endpoints/2.json", "remote_nodes/n2.json",
                           "services/default%2Fweb.json", "services/dns.json"]
    got = state.read(cfg)
    assert got["version"] == state.STATE_VERSION == 2 and got["node"] == "n1" and got["next_endpoint_id"] == 3
    assert [e["name"] for e in got["endpoints"]] == ["a", "b"]
    assert got["services"] == ITEMS["services"] and got["remote_nodes"] == list(ITEMS["remote_nodes"].values())
    state.remove(cfg)
    assert not Path(cfg.run_dir).exists()


def test_item_names_roundtrip() -> None:
    for key in ("web", "default/web", ".hidden", "a b%c", "é", "x" * 63):
        name = statedir.item_file(key)
        assert "/" not in name and not name.startswith(".") and statedir.item_key(name) == key
    assert statedir.item_key(".web.json.abc") is None and statedir.item_key("web.txt") is None


def test_one_change_writes_one_file_whatever_the_number_of_items(tmp_path: Path) -> None:
    # The cost of one upsert is one item file (and no node file when nothing node-level changed),
    # the same bytes with 10 services as with 3,000: no change rewrites the others.
    cfg = _cfg(tmp_path)
    w = StateWriter(cfg, sync=False)
    w.save(NODE, (), {})
    costs = {}
    for n in (10, 3000):
        w.apply(("services", f"svc-{i:05d}", {"name": f"svc-{i:05d}", "port": 80}) for i in range(len(costs) * 10, n))
        before = (w.stats.files, w.stats.bytes, w.stats.removed)
        w.save(NODE, (("services", f"svc-{n:05d}", {"name": f"svc-{n:05d}", "port": 80}),))
        w.save(NODE, (("services", "svc-00000", None),))  # a delete removes one file
        w.save(NODE, (("services", "svc-00000", {"name": "svc-00000", "port": 80}),))
        costs[n] = (w.stats.files - before[0], w.stats.bytes - before[1], w.stats.removed - before[2])
    assert costs[10] == costs[3000] and costs[10][0] == 2 and costs[10][2] == 1, costs
    assert len(state.read(cfg)["services"]) == 3001
    before = w.stats.files
    w.save({**NODE, "next_endpoint_id": 4}, ())  # a node-level change: the node file alone
    w.save({**NODE, "next_endpoint_id": 4}, ())  # unchanged: nothing
    assert w.stats.files - before == 1


def test_registry_entry_is_written_only_when_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.RUN_DIR_ENV, str(tmp_path / "reg"))
    cfg, _ = _written(tmp_path)
    entry = {"node": "n1", "items": state.state_dir(cfg), "attachments": [{"program": "p", "where": "lo"}]}
    assert registry.publish("n1", entry) and not registry.publish("n1", entry)
    assert registry.publish("n1", {**entry, "pid": 2})  # changed
    registry.entry_path("n1").unlink()
    assert registry.publish("n1", {**entry, "pid": 2})  # gone (removed by someone): written again
    got = registry.with_items(json.loads(registry.entry_path("n1").read_text()))
    assert set(got["services"]) == {"default/web", "dns"} and set(got["remote_nodes"]) == {"n2"}
    registry.release("n1")


def test_registry_items_for_the_cli(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    w = StateWriter(cfg, sync=False)
    w.save(NODE, (), {"endpoints": {"7": {"id": 7, "row": {"id": 7, "ipv4": "10.244.1.7"},
                                          "attachment": {"program": "cil_from_container", "where": "lxc1 ingress"}}}})
    Path(statedir.item_dir(state.state_dir(cfg), "services"), "broken.json").write_text("{")
    items = registry.read_items(state.state_dir(cfg))
    assert items["endpoints"] == [{"id": 7, "ipv4": "10.244.1.7"}] and items["services"] == {}
    assert items["attachments"] == [{"program": "cil_from_container", "where": "lxc1 ingress"}]


@pytest.mark.parametrize("mangle, reason", [
    (lambda t: t[: len(t) // 2], "corrupt"),
    (lambda t: t[:-1], "corrupt"),
    (lambda t: "", "corrupt"),
    (lambda t: "[1, 2]", "corrupt"),
    (lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "end"}), "corrupt"),
    (lambda t: json.dumps({**json.loads(t), "version": state.STATE_VERSION + 1}), "version"),
    (lambda t: json.dumps({**json.loads(t), "version": True}), "corrupt"),
    (lambda t: json.dumps({**json.loads(t), "node": "n2"}), "other-node"),
])
@pytest.mark.parametrize("which", ["datapath.json", "endpoints/2.json", "services/dns.json", "remote_nodes/n2.json"])
def test_untrustworthy_files_are_refused(tmp_path: Path, mangle: Any, reason: str, which: str) -> None:
    cfg, _ = _written(tmp_path)
    path = Path(state.state_dir(cfg), which)
    path.write_text(mangle(path.read_text()))
    with pytest.raises(StateError) as exc:
        state.read(cfg)
    assert exc.value.reason == reason and exc.value.path == str(path)


def test_a_node_file_without_a_field_is_refused(tmp_path: Path) -> None:
    cfg, _ = _written(tmp_path)
    path = Path(state.state_path(cfg))
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "pins"}))
    with pytest.raises(StateError) as exc:
        state.read(cfg)
    assert exc.value.reason == "corrupt" and "pins" in str(exc.value)


def test_an_item_under_another_name_is_refused(tmp_path: Path) -> None:
    cfg, _ = _written(tmp_path)
    d = Path(statedir.item_dir(state.state_dir(cfg), "services"))
    (d / "dns.json").rename(d / "web.json")  # a file moved or copied by hand: its key says dns
    with pytest.raises(StateError) as exc:
        state.read(cfg)
    assert exc.value.reason == "corrupt" and exc.value.path == str(d / "web.json")


def test_a_half_written_temp_file_is_never_read(tmp_path: Path) -> None:
    cfg, _ = _written(tmp_path)
    d = statedir.item_dir(state.state_dir(cfg), "services")
    Path(d, ".extra.json.x1y2").write_text('{"version": 2, "no')  # a crash before the rename
    Path(state.state_dir(cfg), ".datapath.json.abc").write_text("{")
    assert set(state.read(cfg)["services"]) == {"default/web", "dns"}
    w = StateWriter(cfg, sync=False)
    w.save(NODE, (), ITEMS)  # the next full rewrite removes them
    assert not [f for f in _files(cfg) if "/." in f or f.startswith(".")]


def test_a_new_node_clears_what_an_earlier_node_of_its_name_left(tmp_path: Path) -> None:
    cfg, _ = _written(tmp_path)
    w = StateWriter(cfg, sync=False)  # a new Datapath: unsynced
    w.save(None, (), {})  # its first save, before its pins exist
    assert _files(cfg) == []
    with pytest.raises(StateError) as exc:
        state.read(cfg)
    assert exc.value.reason == "missing"


def test_an_unsynced_writer_needs_every_item(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        StateWriter(_cfg(tmp_path)).save(NODE, ())


def test_version_1_file_is_read_and_migrated(tmp_path: Path) -> None:
    # What ciliumlite wrote before the state directory: one file holding everything.
    cfg = _cfg(tmp_path)
    os.makedirs(state.state_dir(cfg))
    v1 = {"version": 1, "node": "n1", **NODE, "endpoints": list(ITEMS["endpoints"].values()),
          "remote_nodes": list(ITEMS["remote_nodes"].values()), "services": ITEMS["services"], "end": True}
    Path(state.state_path(cfg)).write_text(json.dumps(v1))
    got = state.read(cfg)
    assert got["version"] == 1 and got["services"] == ITEMS["services"] and len(got["endpoints"]) == 2
    w = StateWriter(cfg, sync=False)
    w.adopted(got)
    assert not w.synced
    w.save(NODE, (), ITEMS)  # the restored node's first save: item files, then the node file
    again = state.read(cfg)
    assert again["version"] == 2 and again["services"] == got["services"]
    assert again["endpoints"] == got["endpoints"] and again["remote_nodes"] == got["remote_nodes"]
    w2 = StateWriter(cfg, sync=False)
    w2.adopted(again)
    assert w2.synced


def test_version_1_file_cut_short_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    os.makedirs(state.state_dir(cfg))
    Path(state.state_path(cfg)).write_text(json.dumps({"version": 1, "node": "n1", **NODE, "end": True}))
    with pytest.raises(StateError) as exc:
        state.read(cfg)  # no endpoints, services or remote nodes: a version-1 file holds them
    assert exc.value.reason == "corrupt"


def test_missing_state(tmp_path: Path) -> None:
    with pytest.raises(StateError) as exc:
        state.read(_cfg(tmp_path))
    assert exc.value.reason == "missing"


def test_config_roundtrip_keeps_bgp_peers(tmp_path: Path) -> None:
    cfg = DatapathConfig(node_name="n1", routing="native", node_ip="192.0.2.1", bgp_asn=65001,
                         bgp_peers=(BgpPeer("leaf", "192.0.2.254", 65000),), extra_rodata={"x": 1})
    assert state.config_from_json(json.loads(json.dumps(state.config_to_json(cfg)))) == cfg
    with pytest.raises(StateError) as exc:
        state.config_from_json({"pod_cidr": "nonsense"})
    assert exc.value.reason == "corrupt"
