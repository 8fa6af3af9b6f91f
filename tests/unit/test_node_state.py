"""The node state file: atomic writes, and every kind of untrustworthy file refused (no kernel)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ciliumlite.bgp.config import BgpPeer
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.node import state
from ciliumlite.node.state import StateError

pytestmark = pytest.mark.unit

BODY = {"config": {}, "endpoints": [], "sock_links": [], "remote_nodes": [], "pins": {}}


def _cfg(tmp_path: Path, name: str = "n1") -> DatapathConfig:
    return DatapathConfig(node_name=name, state_dir=str(tmp_path / name))


def test_roundtrip_with_raw_fields_and_no_temp_file_left(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    state.write(cfg, {**BODY, "endpoints": [{"id": 1}]}, raw={"services": '{"web": {"x": 1}}', "end": "true"})
    got = state.read(cfg)
    assert got["version"] == state.STATE_VERSION and got["node"] == "n1"
    assert got["endpoints"] == [{"id": 1}] and got["services"] == {"web": {"x": 1}}
    assert [p.name for p in Path(state.state_dir(cfg)).iterdir()] == [state.STATE_FILE]
    state.remove(cfg)
    assert not Path(cfg.run_dir).exists()


@pytest.mark.parametrize("mangle, reason", [
    (lambda t: t[: len(t) // 2], "corrupt"),
    (lambda t: t[:-1], "corrupt"),
    (lambda t: "", "corrupt"),
    (lambda t: "[1, 2]", "corrupt"),
    (lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "end"}), "corrupt"),
    (lambda t: json.dumps({**json.loads(t), "version": state.STATE_VERSION + 1}), "version"),
    (lambda t: json.dumps({**json.loads(t), "node": "n2"}), "other-node"),
])
def test_untrustworthy_files_are_refused(tmp_path: Path, mangle: object, reason: str) -> None:
    cfg = _cfg(tmp_path)
    state.write(cfg, BODY, raw={"services": "{}", "end": "true"})
    path = Path(state.state_path(cfg))
    path.write_text(mangle(path.read_text()))  # type: ignore[operator]
    with pytest.raises(StateError) as exc:
        state.read(cfg)
    assert exc.value.reason == reason and exc.value.path == str(path)


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
