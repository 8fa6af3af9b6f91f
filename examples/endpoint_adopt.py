"""A Datapath without a lab: drive a namespace you made, and adopt a veth made outside ciliumlite.

This is what a CNI plugin does next to a container runtime: the runtime creates the pod's namespace
and a veth, and the datapath takes the host end over (``adopt=True``) instead of making its own.
Here the "node" is a fresh namespace too, so nothing touches the root namespace::

    sudo .venv/bin/python examples/endpoint_adopt.py

It makes one node namespace and two pod namespaces (unique ``cl<run id>…`` names), a ``Datapath``
in the node, a pod the datapath creates itself and a pod whose veth we create by hand and adopt;
then it pings between the pods, removes the adopted endpoint (the veth stays: it is the
runtime's), closes the datapath and removes the namespaces in ``finally``.
"""

from __future__ import annotations

import subprocess
import sys

from pyroute2 import IPRoute

from ciliumlite import Datapath, DatapathConfig
from ciliumlite.bpf import netns
from ciliumlite.testing import unique_name

POD_CIDR = "10.244.7.0/24"
ADOPTED_IP = "10.244.7.20"
HOST_IF = "veth-adopt"   # the "runtime's" host-side name; the pod side is eth0


def ping(src_ns: str, dst: str) -> bool:
    """Three pings from a namespace (``ip netns exec``)."""
    res = subprocess.run(["ip", "netns", "exec", src_ns, "ping", "-n", "-c", "3", "-i", "0.05", "-W", "2", dst],
                         capture_output=True, text=True, timeout=30)
    return res.returncode == 0


def main() -> int:
    made: list[str] = []
    dp: Datapath | None = None
    try:
        node_ns = netns.create(unique_name("node"))
        made.append(node_ns)
        pod_a = netns.create(unique_name("poda"))
        made.append(pod_a)
        pod_b = netns.create(unique_name("podb"))
        made.append(pod_b)

        dp = Datapath(DatapathConfig(node_name=node_ns, pod_cidr=POD_CIDR), netns=node_ns)
        print(dp)

        # A pod the datapath wires itself: it creates lxc… <-> eth0 and allocates an address.
        ep_a = dp.add_endpoint(pod_a, name="made-by-datapath")

        # A pod whose veth "the runtime" made: host end in the node namespace, eth0 in the pod.
        with IPRoute(netns=node_ns) as ipr:
            ipr.link("add", ifname=HOST_IF, kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod_b})
        ep_b = dp.add_endpoint(pod_b, name="adopted", ifname=HOST_IF, adopt=True, ip=ADOPTED_IP)

        for ep in dp.endpoints():
            row = ep.as_row()
            print(f"endpoint {row['id']} {row['name']}: {row['ipv4']} on {row['ifname']} "
                  f"(identity {row['identity']}, program {row['program']}, adopted {ep.adopted})")

        ok_ab = ping(pod_a, str(ep_b.ip))
        ok_ba = ping(pod_b, str(ep_a.ip))
        print(f"ping {ep_a.name} -> {ep_b.name}: {'ok' if ok_ab else 'FAILED'}; "
              f"{ep_b.name} -> {ep_a.name}: {'ok' if ok_ba else 'FAILED'}")

        dp.remove_endpoint(ep_b)
        with IPRoute(netns=node_ns) as ipr:
            still_there = bool(ipr.link_lookup(ifname=HOST_IF))
        print(f"removed the adopted endpoint; its veth {HOST_IF} is still there: {still_there}")
        print(f"endpoints left: {[e.name for e in dp.endpoints()]}")
        return 0 if ok_ab and ok_ba and still_there else 1
    finally:
        if dp is not None:
            dp.close(remove=True)
        for ns in reversed(made):
            netns.remove(ns)


if __name__ == "__main__":
    sys.exit(main())
