"""The bpf SDK alone: a tc program that counts packets on a veth, with no Cilium in sight.

Loads ``tests/bpf/objects/test_tc.o`` (built by ``make build`` from ``tests/bpf/progs/test_tc.c``),
attaches its ``tc_count`` program on the ingress of one end of a veth pair, pings across the pair and
reads the program's ``tc_counters`` array map through a typed record. Run as root::

    sudo .venv/bin/python examples/sdk_tc_counter.py

The veth pair lives in two fresh namespaces (``ciliumlite.testing.VethPair``: ``10.0.0.1/24`` in
the first, ``10.0.0.2/24`` in the second) that are removed at the end, also on failure.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from ciliumlite.bpf import U32, U64, BpfObject, Record
from ciliumlite.testing import VethPair

OBJECT = Path(__file__).resolve().parent.parent / "tests" / "bpf" / "objects" / "test_tc.o"
SLOT_INGRESS, SLOT_EGRESS = 0, 2   # the slots tc_count writes (see test_tc.c)
PINGS = 5


@dataclass(frozen=True, slots=True)
class Counter(Record, c_name="counter"):
    """``struct counter { __u64 packets; __u64 bytes; }``: checked against the object's BTF."""

    packets: Annotated[int, U64]
    bytes: Annotated[int, U64]


def main() -> int:
    if not OBJECT.exists():
        print(f"{OBJECT} is missing: run `make build` first", file=sys.stderr)
        return 2
    pair = VethPair.create("ex")
    try:
        with BpfObject.load_file(OBJECT) as obj:
            print(obj)
            counters = obj.map("tc_counters", key=U32, value=Counter)
            # Count what arrives on veth-b in the second namespace (tcx where the kernel has it).
            with obj.program("tc_count").attach_tc(pair.dev_b, "ingress", netns=pair.ns_b) as link:
                print(f"attached: {link.point}")
                ping = subprocess.run(["ip", "netns", "exec", pair.ns_a, "ping", "-n", "-c", str(PINGS),
                                       "-i", "0.05", "-W", "2", pair.ip_b],
                                      capture_output=True, text=True, timeout=30)
                print(ping.stdout.strip().splitlines()[-2] if ping.stdout.strip() else ping.stderr)
                ingress = counters[SLOT_INGRESS]
                print(f"tc_count on {pair.dev_b} ingress: {ingress.packets} packets, {ingress.bytes} bytes "
                      f"(egress slot: {counters[SLOT_EGRESS].packets})")
            print(f"detached: {link.closed}")
        return 0 if ping.returncode == 0 and ingress.packets >= PINGS else 1
    finally:
        pair.remove()


if __name__ == "__main__":
    sys.exit(main())
