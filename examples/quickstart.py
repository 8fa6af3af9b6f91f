"""Quickstart: two pods on one node, a ping between them, and the node's endpoints table.

Run as root from the repository root (after ``make build``)::

    sudo .venv/bin/python examples/quickstart.py

A ``Lab`` makes every namespace it needs under a unique ``cl<run id>…`` prefix and removes all of it
when the ``with`` block ends, also when something in it fails. Nothing touches the root namespace.
"""

from __future__ import annotations

import sys

from ciliumlite.datapath.reasons import Reason
from ciliumlite.endpoint import ENDPOINT_COLUMNS
from ciliumlite.lab import Lab


def main() -> int:
    with Lab("quickstart") as lab:
        node = lab.add_node("worker3")                   # a node namespace with its own Datapath
        client, server = node.add_pod("client"), node.add_pod("server")
        assert node.datapath is not None

        ping = client.ping(server, count=3, interval=0.05)   # same node: BPF proxy ARP + redirect_peer
        print(f"ping {client.name} {client.ip} -> {server.name} {server.ip}: "
              f"{ping.received}/{ping.transmitted} replies, avg {ping.rtt_avg_ms} ms")

        print(f"\nendpoints on {node.name} (like `cilium endpoint list`):")
        columns = [c for c in ENDPOINT_COLUMNS if c not in ("netns", "node_mac")]
        rows = [[str(ep.as_row()[c]) for c in columns] for ep in node.datapath.endpoints()]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        for line in (columns, *rows):
            print(("  " + "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True))).rstrip())

        print(f"\nforwarded by BPF: {node.datapath.count(Reason.FORWARDED)} packets, "
              f"ARP answered by BPF: {node.datapath.count(Reason.ARP_REPLY)}")
        return 0 if ping.ok else 1


if __name__ == "__main__":
    sys.exit(main())
