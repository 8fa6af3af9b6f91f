"""Native routing with BGP: each node announces its pod CIDR to a leaf router through bird.

Builds a two-node cluster with ``routing="native"``: the lab starts bird2 in every node namespace
and in the fabric (the leaf router, 10.0.0.254, AS 65001; node *i* is 10.0.0.(11+i), AS 65011+i).
Each node learns the other's pod CIDR over eBGP and installs it in its kernel (``proto bird``);
pod traffic leaves unencapsulated, forwarded by BPF through a FIB lookup. Run as root::

    sudo .venv/bin/python examples/native_bgp.py

Every bird process and namespace is removed when the ``with`` block ends, also on failure.
"""

from __future__ import annotations

import sys

from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Lab


def main() -> int:
    with Lab("bgp") as lab:
        cluster = lab.cluster(["node-a", "node-b"], routing="native")   # waits for BGP to be established
        a, b = cluster.node("node-a"), cluster.node("node-b")

        for node in (a, b):
            sessions = [s for s in node.bird.status() if s.is_bgp]
            print(f"{node.name} ({node.ip}): BGP sessions: "
                  + ", ".join(f"{s.name} {s.state} {s.info}".strip() for s in sessions))
            print(f"  routes learned by bird: {node.bird.routes(protocol='leaf')}")
            for line in node.run("ip", "route", "show", "proto", "bird").stdout.splitlines():
                print(f"  kernel route: {line.strip()}")
        if lab.leaf_bird is not None:
            print(f"leaf router: {', '.join(f'{s.name} {s.state}' for s in lab.leaf_bird.status() if s.is_bgp)}")

        client, server = a.add_pod("client"), b.add_pod("server")
        ping = client.ping(server, count=3, interval=0.05)
        tcp = client.tcp_echo(server, 80)
        print(f"{a.name}/client {client.ip} -> {b.name}/server {server.ip}: ping {ping.received}/{ping.transmitted}, "
              f"TCP {'ok' if tcp.ok else tcp.error}")
        assert a.datapath is not None
        print(f"FIB-redirected by BPF on {a.name}: {a.datapath.count(Reason.FIB_REDIRECT)} packets")
        established = all(s.established for n in (a, b) for s in n.bird.status() if s.is_bgp)
        return 0 if established and ping.ok and tcp.ok else 1


if __name__ == "__main__":
    sys.exit(main())
