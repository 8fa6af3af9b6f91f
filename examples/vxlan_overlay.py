"""VXLAN overlay: two nodes on one underlay, pod-to-pod traffic encapsulated by BPF.

Builds a two-node cluster with ``routing="vxlan"``: each node gets a ``cilium_vxlan`` device, and
learns the other node's pod CIDR as an entry of its tunnel map (``cilium_tunnel_map``). A pod's
security identity travels in the VXLAN VNI. Run as root::

    sudo .venv/bin/python examples/vxlan_overlay.py

The lab (node, pod, fabric namespaces) is removed when the ``with`` block ends, also on failure.
"""

from __future__ import annotations

import sys

from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Lab


def main() -> int:
    with Lab("vxlan") as lab:
        cluster = lab.cluster(["node-a", "node-b"], routing="vxlan")
        a, b = cluster.node("node-a"), cluster.node("node-b")
        client, server = a.add_pod("client"), b.add_pod("server")
        assert a.datapath is not None and b.datapath is not None

        for node, dp in ((a, a.datapath), (b, b.datapath)):
            # The other node's pod CIDR -> its underlay address: where to send the VXLAN packet.
            print(f"{node.name}: underlay {node.ip}, pod CIDR {dp.config.pod_cidr}, tunnel map {dp.tunnel.entries()}")

        ping = client.ping(server, count=3, interval=0.05)
        tcp = client.tcp_echo(server, 80)
        udp = client.udp_echo(server, 53)
        print(f"{a.name}/client {client.ip} -> {b.name}/server {server.ip}: ping {ping.received}/{ping.transmitted}, "
              f"TCP {'ok' if tcp.ok else tcp.error}, UDP {'ok' if udp.ok else udp.error}")
        print(f"the server saw the client as {tcp.seen_client} (no NAT between pods)")
        print(f"client identity (the VNI on the wire): {client.endpoint.identity}")
        print(f"encapsulated by BPF on {a.name}: {a.datapath.count(Reason.ENCAPSULATED)} packets")
        return 0 if ping.ok and tcp.ok and udp.ok else 1


if __name__ == "__main__":
    sys.exit(main())
