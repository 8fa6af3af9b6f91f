"""A lab owner that dies by SIGKILL: run as a child process by test_lab_records.py.

``python lab_child.py SHAPE`` builds a lab of SHAPE (``small``: one node with two pods and a
two-node VXLAN cluster; ``full``: ``small`` plus a native-routing cluster with bird, a service and
echo servers, one node with classic tc so its programs outlive the process) and then SIGKILLs
itself, leaving everything behind as an OOM kill would. With ``LAB_CHILD_KILL_AT=N`` it SIGKILLs
itself during setup instead, just before the Nth rewrite of the lab's record: N-1 steps are
recorded and whatever was made since the last write exists (a namespace made but its inode not yet
recorded, say). It prints ``steps <n>`` (the writes of the whole setup) just before the final kill.

``python lab_child.py datapath NETNS POD_NETNS NODE_NAME`` instead runs one ``Datapath`` alone in
the namespace NETNS (classic tc, so its programs outlive it) with one endpoint in POD_NETNS, and
SIGKILLs itself: what ``ciliumlite cleanup --netns NETNS`` is for.
"""

from __future__ import annotations

import os
import signal
import sys

from ciliumlite.lab import Lab
from ciliumlite.ownership import record
from ciliumlite.service import Backend, Frontend, Service

KILL_AT = int(os.environ.get("LAB_CHILD_KILL_AT", "0"))
_steps = 0
_save = record.Record._save


def _counting_save(self: record.Record) -> None:
    global _steps
    _steps += 1
    if KILL_AT and _steps >= KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    _save(self)


record.Record._save = _counting_save  # type: ignore[method-assign]


def build(shape: str) -> None:
    lab = Lab("kid")
    single = lab.add_node("solo", tc_mode="clsact" if shape == "full" else "auto")
    a, b = single.add_pod("a"), single.add_pod("b")
    assert a.tcp_echo(b.ip, 80).ok  # an echo server in b
    vx = lab.cluster(["vx1", "vx2"], routing="vxlan")
    p1, p2 = vx.node("vx1").add_pod("p1"), vx.node("vx2").add_pod("p2")
    assert p1.tcp_echo(p2.ip, 8080).ok
    if shape == "full":
        nat = lab.cluster(["bg1", "bg2"], routing="native")
        q1, q2 = nat.node("bg1").add_pod("q1"), nat.node("bg2").add_pod("q2")
        assert q1.tcp_echo(q2.ip, 80).ok
        nat.upsert_service(Service(name="web", frontend=Frontend("10.96.0.10", 80), backends=[Backend(q2.ip, 80)]))
        assert q1.tcp_echo("10.96.0.10", 80).ok
    print(f"steps {_steps}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def datapath(netns: str, pod_netns: str, node_name: str) -> None:
    from ciliumlite.datapath.config import DatapathConfig
    from ciliumlite.node import Datapath

    dp = Datapath(DatapathConfig(node_name=node_name, pod_cidr="10.244.9.0/24", tc_mode="clsact"), netns=netns)
    dp.add_endpoint(pod_netns, name="pod")
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    if sys.argv[1:2] == ["datapath"]:
        datapath(*sys.argv[2:5])
    else:
        build(sys.argv[1] if len(sys.argv) > 1 else "small")
