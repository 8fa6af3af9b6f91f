"""``no-unexpected-packet-drops``: the drop counters of the whole run, registered after every other
scenario (it imports the modules of the others first), since it compares what they all did."""

from __future__ import annotations

from ciliumlite.connectivity import disruption  # noqa: F401  (registers the scenarios before this one)
from ciliumlite.connectivity.context import ConnectivityContext
from ciliumlite.connectivity.framework import Checks, ScenarioResult, scenario
from ciliumlite.datapath.reasons import describe

__all__: list[str] = []


@scenario("no-unexpected-packet-drops", "the datapath's drop counters did not move during the run, except for "
          "reasons a scenario provokes on purpose", cilium="no-unexpected-packet-drops", acceptance="A10")
def no_unexpected_packet_drops(ctx: ConnectivityContext) -> ScenarioResult:
    """Drop counters per node, before and after (run it last)."""
    c = Checks()
    for node in ctx.nodes:
        before = ctx.drops_before.get(node.name, {})
        now = ctx.drop_counts(node)
        moved = {k: v - before.get(k, 0) for k, v in now.items() if v > before.get(k, 0)}
        unexpected = {k: v for k, v in moved.items() if k[0] not in ctx.expected_drops}
        for (reason, direction), n in sorted(moved.items()):
            if reason in ctx.expected_drops:
                c.note(f"{node.name}: {n} x {describe(reason)} (dir {direction}), expected: "
                       f"{ctx.expected_drops[reason]}")
        text = ", ".join(f"{n} x {describe(r)} (reason {r}, dir {d})" for (r, d), n in sorted(unexpected.items()))
        c.expect(not unexpected, f"{node.name}: " + (text or "no unexpected drops"))
    return c.result()
