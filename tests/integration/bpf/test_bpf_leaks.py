"""Many open/load/attach/close cycles leave no fds, programs, maps, links, qdiscs, filters or pins."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ciliumlite.bpf import BpfObject, ClsactLink, FdLink, fs, inventory
from ciliumlite.testing import VethPair

pytestmark = pytest.mark.integration

CYCLES = 200


# What test_tc.o creates, by the names the kernel reports. Only these are compared, so that other
# processes loading and unloading BPF objects on the same host meanwhile do not count as our leaks.
OUR_PROGS = {"tc_count", "tc_drop_udp_port", "tc_swap_macs"}
OUR_MAPS = {"tc_counters", "test_tc.rodata"}


def bpftool(kind: str) -> list[dict[str, Any]]:
    res = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout or "[]")


def state() -> dict[str, set[Any]]:
    progs = {p["id"] for p in bpftool("prog") if p.get("name") in OUR_PROGS}
    return {
        "fds": set(os.listdir("/proc/self/fd")),
        "progs": progs,
        "maps": {m["id"] for m in bpftool("map") if m.get("name") in OUR_MAPS},
        "links": {ln["id"] for ln in bpftool("link") if ln.get("prog_id") in progs},
        "pins": {os.path.join(d, n) for d, dirs, files in os.walk(fs.BPFFS) for n in dirs + files
                 if n in OUR_MAPS or n in OUR_PROGS},
    }


def new_since(before: dict[str, set[Any]], now: dict[str, set[Any]]) -> dict[str, list[Any]]:
    """What exists now and did not before; and fds that changed either way."""
    out = {k: sorted(now[k] - before[k])[:10] for k in ("progs", "maps", "links", "pins")}
    out["fds"] = sorted(now["fds"] ^ before["fds"])
    return {k: v for k, v in out.items() if v}


def settled(before: dict[str, set[Any]], timeout: float = 5.0) -> dict[str, list[Any]]:
    """Leaks once the kernel's deferred frees of programs and maps have had time to catch up."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        leaks = new_since(before, state())
        if not leaks or time.monotonic() > deadline:
            return leaks
        time.sleep(0.1)


def cycle(path: Path, i: int, pair: VethPair, port: int, ns_tools: Any, check: bool) -> None:
    mode = "tcx" if i % 2 == 0 else "clsact"
    obj = BpfObject(path)
    try:
        obj.rodata["drop_port"] = port
        obj.load()
        link = obj.program("tc_drop_udp_port").attach_tc(pair.dev_a, "ingress", netns=pair.ns_a, mode=mode)
        try:
            if check:  # now and then, make sure the cycle really attached something
                if mode == "tcx":
                    assert isinstance(link, FdLink) and link.info.id in inventory.link_ids()
                else:
                    assert isinstance(link, ClsactLink)
                    assert "clsact" in ns_tools.qdiscs(pair.ns_a, pair.dev_a)
                    assert "tc_drop_udp_port" in ns_tools.filters(pair.ns_a, pair.dev_a, "ingress")
        finally:
            link.close()
    finally:
        obj.close()


@pytest.mark.slow
def test_attach_detach_cycles_leak_nothing(veth_pair: VethPair, traffic: Any, test_objects: Path, ns_tools: Any):
    path = test_objects / "test_tc.o"
    for i in range(2):  # warm caches (pyroute2 imports, kernel BTF) before measuring
        cycle(path, i, veth_pair, traffic.DROP_PORT, ns_tools, check=True)
    time.sleep(0.2)
    gc.collect()
    before = state()

    for i in range(CYCLES):
        cycle(path, i, veth_pair, traffic.DROP_PORT, ns_tools, check=i % 40 < 2)

    assert settled(before) == {}, "left behind after the cycles"
    assert "clsact" not in ns_tools.qdiscs(veth_pair.ns_a, veth_pair.dev_a)
    assert ns_tools.filters(veth_pair.ns_a, veth_pair.dev_a, "ingress") == ""
    assert traffic.udp(traffic.DROP_PORT) == traffic.N
