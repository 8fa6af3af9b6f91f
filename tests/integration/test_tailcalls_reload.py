"""bpf_host's calls map across Datapath.reload() and Datapath.restore() on the real kernel.

A native-routing node (bpf_host on its underlay ``ul0``) in a namespace of its own. A reload
loads a fresh ``cilium_calls_host``, filled with the new object's tail programs before any attach
point is swapped, and replaces the node's pin only after the swap: no pending pin is left and the
old map is freed. A restored node holds no fd of the calls map (its running programs hold it, the
pin keeps it filled), and a reload of the restored node replaces it the same way. Counted traffic
through the tail calls across kill -9, restore and reloads is tests/integration/test_restore.py's
(its NodePort SNAT connections run tail_nodeport_snat and tail_nodeport_fwd).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from ciliumlite.bpf import ProgInfo, inventory
from ciliumlite.bpf.map import Map
from ciliumlite.datapath import tailcalls
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.node import Datapath
from ciliumlite.testing.resources import unique_name

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

SPEC = tailcalls.CALLS["bpf_host"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _calls_map_id(pin_dir: str) -> int:
    with Map.open_pinned(SPEC.pin_path(pin_dir)) as m:
        return m.info.id


def _slot_names(pin_dir: str) -> dict[int, str]:
    return {slot: ProgInfo.from_id(pid).name for slot, pid in tailcalls.pinned_slots(pin_dir, "bpf_host").items()}


#: What the kernel calls each slot's program (it keeps the first 15 bytes of a name).
WANT = {slot: name[:15] for slot, name in SPEC.slots.items()}


def _my_map_ids() -> set[int]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
                if line.startswith("map_id:"):
                    out.add(int(line.split()[1]))
    return out


def _gone(map_id: int) -> bool:
    # A map goes when its last program is freed, after an RCU grace period: bounded wait.
    deadline = time.monotonic() + 10
    while map_id in inventory.map_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    return map_id not in inventory.map_ids()


def _reload_and_check(dp: Datapath, pin_dir: str) -> None:
    old_map, old_slots = _calls_map_id(pin_dir), tailcalls.pinned_slots(pin_dir, "bpf_host")
    dp.reload()
    assert not os.path.exists(SPEC.pin_path(pin_dir, pending=True))
    new_slots = tailcalls.pinned_slots(pin_dir, "bpf_host")
    assert set(new_slots) == set(SPEC.slots) and set(new_slots.values()).isdisjoint(old_slots.values())
    assert _slot_names(pin_dir) == WANT
    assert _calls_map_id(pin_dir) != old_map and _gone(old_map), "the replaced calls map is freed"


def test_reload_and_restore_replace_the_calls_map(netns: str, tmp_path: Path) -> None:
    _ip("-n", netns, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
    _ip("-n", netns, "addr", "add", "192.0.2.41/24", "dev", "ul0")
    for dev in ("ul0", "ul0p", "lo"):
        _ip("-n", netns, "link", "set", dev, "up")
    cfg = DatapathConfig(node_name=unique_name("tc"), pod_cidr="10.244.71.0/24", node_ip="192.0.2.41",
                         routing="native", underlay_device="ul0", bpf_masquerade=True, state_dir=str(tmp_path / "run"))
    dp: Datapath | None = Datapath(cfg, netns)
    try:
        assert dp is not None
        pin_dir = cfg.pin_dir
        assert _slot_names(pin_dir) == WANT
        _reload_and_check(dp, pin_dir)
        dp.detach()
        dp = None
        dp = Datapath.restore(cfg, netns=netns)
        assert _calls_map_id(pin_dir) not in _my_map_ids(), "a restored node needs no fd of the calls map"
        assert _slot_names(pin_dir) == WANT
        _reload_and_check(dp, pin_dir)
    finally:
        if dp is None:
            dp = Datapath.restore(cfg, netns=netns)
        dp.close(remove=True)
