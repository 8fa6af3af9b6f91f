"""Services: a ClusterIP reached through socket LB, and a NodePort reached from outside (SNAT mode).

Builds two nodes with native routing (static routes, no BGP) and three pods: ``client`` and
``web-a`` on node-a, ``web-b`` on node-b. Two services are programmed on both nodes:

* ``web``, ClusterIP 10.96.0.10:80 -> web-a:8080 and web-b:8080. The client's ``connect()`` is
  rewritten to a backend by socket LB (``cgroup/connect4``), and ``getpeername()`` still reports
  the ClusterIP (``cgroup/getpeername4``). No packet ever carries the ClusterIP, so there is no
  conntrack entry for these connections.
* ``echo``, NodePort 30080 -> web-b:8080 only. From the outside host (203.0.113.10), node-b has the
  backend locally, so web-b sees the real client; node-a must forward to node-b, and in SNAT mode it
  rewrites the source to its own address, so web-b sees 10.0.0.11. The reply comes back to node-a,
  which undoes both translations.

Run as root::

    sudo .venv/bin/python examples/services.py

docs/services.md walks each of these paths packet by packet. The lab is removed when the ``with``
block ends, also on failure.
"""

from __future__ import annotations

import sys

from ciliumlite import Backend, Frontend, Service
from ciliumlite.datapath.reasons import Reason
from ciliumlite.lab import Lab

PORT = 8080


def main() -> int:
    ok = True
    with Lab("services") as lab:
        cluster = lab.cluster(["node-a", "node-b"], routing="native", bgp=False)   # SNAT is the default LB mode
        a, b = cluster.node("node-a"), cluster.node("node-b")
        assert a.datapath is not None and b.datapath is not None
        client, web_a, web_b = a.add_pod("client"), a.add_pod("web-a"), b.add_pod("web-b")
        for web in (web_a, web_b):
            web.ensure_echo_server(PORT)      # answers "payload|<server name>|<client ip>:<port>"

        cluster.upsert_service(Service("web", Frontend("10.96.0.10", 80),
                                       [Backend(web_a.ip, PORT), Backend(web_b.ip, PORT)]))
        cluster.upsert_service(Service("echo", Frontend("10.96.0.20", PORT), [Backend(web_b.ip, PORT)],
                                       type="NodePort", node_port=30080))
        print(f"service web: ClusterIP 10.96.0.10:80 -> web-a {web_a.ip}:{PORT}, web-b {web_b.ip}:{PORT}")
        print(f"service echo: NodePort 30080 on every node -> web-b {web_b.ip}:{PORT} (on {b.name})")

        # -- ClusterIP through socket LB -----------------------------------------------------------
        before = a.datapath.conntrack()
        for _ in range(4):
            r = client.tcp_echo("10.96.0.10", 80)
            ok &= r.ok and r.peer == ("10.96.0.10", 80)
            peer = f"{r.peer[0]}:{r.peer[1]}" if r.peer else "-"
            print(f"client {client.ip} -> 10.96.0.10:80 (socket LB): answered by {r.server or r.error}, "
                  f"getpeername() = {peer}, backend saw {r.seen_client.split(':')[0] or '-'}")
        new_ct = [k for k in a.datapath.conntrack() if k not in before and "10.96.0.10" in (str(k.saddr), str(k.daddr))]
        print(f"socket LB on {a.name}: {a.datapath.count(Reason.LB_SOCK_XLATE)} connect() translated, "
              f"{a.datapath.count(Reason.LB_SOCK_REVXLATE)} getpeername()/recvmsg() translated back; "
              f"conntrack entries with the ClusterIP: {len(new_ct)}")

        # -- NodePort from outside the cluster, SNAT mode ------------------------------------------
        world = lab.outside()
        for node, why in ((a, f"remote backend: SNAT to {a.ip}"), (b, "local backend: client IP kept")):
            r = world.tcp_echo(node.ip or "", 30080)
            saw = r.seen_client.split(":")[0]
            ok &= r.ok and r.server == "web-b" and saw == (world.ip if node is b else a.ip)
            print(f"world {world.ip} -> {node.name} {node.ip}:30080: answered by {r.server or r.error} on {b.name}, "
                  f"backend saw {saw or '-'} ({why})")

        nat = a.datapath.maps.snat if a.datapath.maps else None
        for key, val in sorted((nat.items() if nat else []), key=lambda kv: kv[0].flags):
            kind = "IN " if key.flags & 1 else "OUT"
            what = "XLATE_DST" if key.flags & 1 else "XLATE_SRC"
            print(f"  {a.name} NAT {kind} {key.saddr}:{key.sport} -> {key.daddr}:{key.dport} "
                  f"{what} {val.to_addr}:{val.to_port}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
