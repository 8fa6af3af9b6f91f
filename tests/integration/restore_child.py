"""The owner of one node for test_restore.py, killed with SIGKILL by the test.

``python restore_child.py SPEC_JSON`` builds the node's ``Datapath`` (``spec["config"]``,
``netns``, ``cgroup``) with the endpoints ``spec["pods"]`` (``[pod netns, name, ip]``), the remote
nodes and services of the spec, prints ``ready`` and waits for stdin to close (or for its SIGKILL).
With ``spec["restore"]`` it adopts the node instead (``Datapath.restore``) and prints ``restored``.
"""

from __future__ import annotations

import json
import sys

from ciliumlite.cluster.store import NodeInfo
from ciliumlite.node import Datapath
from ciliumlite.node.state import config_from_json
from ciliumlite.service import Service


def main(spec: dict[str, object]) -> None:
    cfg = config_from_json(spec["config"])  # type: ignore[arg-type]  # BGP peers and all, as a restore reads it
    if spec.get("restore"):
        dp = Datapath.restore(cfg, netns=spec["netns"], cgroup=spec.get("cgroup"))  # type: ignore[arg-type]
        print("restored", flush=True)
    else:
        dp = Datapath(cfg, netns=spec["netns"], cgroup=spec.get("cgroup"))  # type: ignore[arg-type]
        for pod_netns, name, ip in spec["pods"]:  # type: ignore[attr-defined]
            dp.add_endpoint(pod_netns, name=name, ip=ip)
        for node in spec.get("remote", []):  # type: ignore[attr-defined]
            dp.add_remote_node(NodeInfo(**node))
        for svc in spec.get("services", []):  # type: ignore[attr-defined]
            dp.upsert_service(Service.from_dict(svc))
        print("ready", flush=True)
    sys.stdin.read()
    dp.detach()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
