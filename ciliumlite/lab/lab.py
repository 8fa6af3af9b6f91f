"""Lab, Node and Pod: a cluster in network namespaces, torn down completely on exit."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.datapath.config import DatapathConfig, HostRouting
from ciliumlite.endpoint import Endpoint
from ciliumlite.lab import procs
from ciliumlite.node import Datapath

CLUSTER_POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")


@dataclass(frozen=True)
class PingResult:
    """Parsed ``ping`` output."""

    target: str
    transmitted: int
    received: int
    rtt_avg_ms: float | None
    output: str = field(repr=False, default="")

    @property
    def ok(self) -> bool:
        """Every echo request was answered."""
        return self.transmitted > 0 and self.received == self.transmitted


@dataclass(frozen=True)
class EchoResult:
    """One request/response to a lab echo server."""

    ok: bool
    reply: str = ""
    server: str = ""
    seen_client: str = ""
    peer: tuple[str, int] | None = None
    error: str = ""
    errno: int | None = None
    seconds: float = 0.0

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> EchoResult:
        """From the JSON line the probe prints."""
        reply = str(raw.get("reply", ""))
        parts = reply.rsplit("|", 2)
        server, seen = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
        peer = tuple(raw["peer"]) if raw.get("peer") else None
        return cls(bool(raw.get("ok")), parts[0] if len(parts) == 3 else reply, server, seen,
                   peer, str(raw.get("error", "")), raw.get("errno"), float(raw.get("seconds", 0.0)))


class Pod:
    """A pod: a network namespace joined to its node by a veth, with an endpoint in the datapath."""

    def __init__(self, node: Node, name: str, netns: str, endpoint: Endpoint) -> None:
        self.node = node
        self.name = name
        self.netns = netns
        self.endpoint = endpoint
        self._echo_ports: set[int] = set()

    @property
    def ip(self) -> str:
        """The pod's IPv4 address."""
        return str(self.endpoint.ip)

    def run(self, *argv: str, timeout: float = 30.0) -> Any:
        """Run a command in the pod (its netns and its node's cgroup)."""
        return procs.run(self.netns, argv, self.node.cgroup, timeout=timeout)

    def popen(self, *argv: str) -> Any:
        """Start a long-running command in the pod; the lab ends it on close."""
        return self.node.lab.processes.popen(self.netns, argv, self.node.cgroup)

    def ping(self, target: str | Pod, count: int = 3, *, size: int | None = None, dont_fragment: bool = False,
             interval: float = 0.2, timeout: float = 2.0) -> PingResult:
        """Real ICMP echo from this pod; parsed results."""
        dst = target.ip if isinstance(target, Pod) else str(target)
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(timeout), dst]
        if size is not None:
            argv[1:1] = ["-s", str(size)]
        if dont_fragment:
            argv[1:1] = ["-M", "do"]
        res = self.run(*argv, timeout=count * (interval + timeout) + 5)
        text = res.stdout + res.stderr
        m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        rtt = re.search(r"= [\d.]+/([\d.]+)/", text)
        return PingResult(dst, int(m.group(1)) if m else 0, int(m.group(2)) if m else 0,
                          float(rtt.group(1)) if rtt else None, text)

    def ensure_echo_server(self, port: int) -> None:
        """Start the lab echo server (TCP and UDP) on ``port`` in this pod, once."""
        if port in self._echo_ports:
            return
        if not 1 <= port <= 65535:
            raise ValidationError(f"port {port} is outside 1..65535")
        proc = self.popen(*procs.python_script(procs.ECHO, self.name, str(port)))
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise CiliumliteError(f"echo server on {self.name}:{port} did not start: {line!r} {err}")
        self._echo_ports.add(port)

    def _echo(self, proto: str, ip: str, port: int, payload: str, timeout: float) -> EchoResult:
        owner = self.node.lab.pod_by_ip(ip)
        if owner is not None:
            owner.ensure_echo_server(port)
        res = self.run(*procs.python_script(procs.PROBE, proto, ip, str(port), payload, str(timeout)),
                       timeout=timeout + 10)
        try:
            return EchoResult.parse(json.loads(res.stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            return EchoResult(False, error=f"probe failed: {res.stderr.strip()}")

    def tcp_echo(self, ip: str | Pod, port: int = 80, payload: str = "hello", timeout: float = 3.0) -> EchoResult:
        """Connect, send ``payload``, read the echo (the server in a lab pod is started as needed)."""
        return self._echo("tcp", ip.ip if isinstance(ip, Pod) else ip, port, payload, timeout)

    def udp_echo(self, ip: str | Pod, port: int = 80, payload: str = "hello", timeout: float = 3.0) -> EchoResult:
        """One UDP datagram and its echo."""
        return self._echo("udp", ip.ip if isinstance(ip, Pod) else ip, port, payload, timeout)

    def __repr__(self) -> str:
        return f"<Pod {self.name} {self.ip} on {self.node.name}>"


class Node:
    """A node: a network namespace, a child cgroup, and a Datapath."""

    def __init__(self, lab: Lab, name: str, index: int, pod_cidr: str, host_routing: HostRouting,
                 **config: Any) -> None:
        self.lab = lab
        self.name = name
        self.index = index
        self.netns = nsmod.create(f"{lab.prefix}-{name}")
        self.cgroup: str | None = None
        self.datapath: Datapath | None = None
        self.pods: dict[str, Pod] = {}
        try:
            self.cgroup = fs.make_cgroup(f"{lab.prefix}-{name}")
            cfg = DatapathConfig(node_name=f"{lab.prefix}-{name}", pod_cidr=pod_cidr, host_routing=host_routing,
                                 **config)
            self.datapath = Datapath(cfg, netns=self.netns)
        except BaseException:
            self.close()
            raise

    def add_pod(self, name: str, ip: str | None = None, **endpoint_kw: Any) -> Pod:
        """A pod namespace on this node, with an address from the node's pod CIDR."""
        if name in self.pods:
            raise ValidationError(f"pod {name!r} exists already on {self.name}")
        assert self.datapath is not None
        ns = nsmod.create(f"{self.lab.prefix}-{self.name}-{name}")
        try:
            ep = self.datapath.add_endpoint(ns, name=name, ip=ip, **endpoint_kw)
        except BaseException:
            nsmod.remove(ns)
            raise
        pod = Pod(self, name, ns, ep)
        self.pods[name] = pod
        return pod

    def remove_pod(self, name: str) -> None:
        """Remove a pod: its endpoint, then its namespace."""
        pod = self.pods.pop(name)
        assert self.datapath is not None
        self.datapath.remove_endpoint(pod.endpoint)
        nsmod.remove(pod.netns)

    def run(self, *argv: str, timeout: float = 30.0) -> Any:
        """Run a command in the node namespace (and cgroup)."""
        return procs.run(self.netns, argv, self.cgroup, timeout=timeout)

    def close(self) -> None:
        """Close the datapath, remove pods, the namespace and the cgroup."""
        if self.datapath is not None:
            self.datapath.close()
            self.datapath = None
        for pod in self.pods.values():
            nsmod.remove(pod.netns)
        self.pods.clear()
        nsmod.remove(self.netns)
        if self.cgroup:
            fs.remove_cgroup(self.cgroup, kill_pids=[])
            self.cgroup = None

    def __repr__(self) -> str:
        return f"<Node {self.name} pods={list(self.pods)}>"


class Lab:
    """A throwaway cluster in network namespaces with a unique prefix; removed on exit (also on errors)."""

    def __init__(self, name: str = "lab", *, host_routing: HostRouting = "bpf") -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,15}", name):
            raise ValidationError(f"lab name {name!r}: use 1-16 of a-z, 0-9 and '-'")
        self.name = name
        self.prefix = f"cl{secrets.token_hex(2)}-{name}"
        self.host_routing = host_routing
        self.nodes: dict[str, Node] = {}
        self.processes = procs.ProcessGroup()

    def add_node(self, name: str, *, pod_cidr: str | None = None, host_routing: HostRouting | None = None,
                 **config: Any) -> Node:
        """A node namespace with its own Datapath and pod CIDR (10.244.<index>.0/24 by default)."""
        if name in self.nodes:
            raise ValidationError(f"node {name!r} exists already")
        index = len(self.nodes)
        cidr = pod_cidr or str(list(CLUSTER_POD_CIDR.subnets(new_prefix=24))[index])
        node = Node(self, name, index, cidr, host_routing or self.host_routing, **config)
        self.nodes[name] = node
        return node

    def node(self, name: str) -> Node:
        """A node by name."""
        return self.nodes[name]

    def pods(self) -> list[Pod]:
        """Every pod of every node."""
        return [p for n in self.nodes.values() for p in n.pods.values()]

    def pod_by_ip(self, ip: str) -> Pod | None:
        """The lab pod that owns ``ip``."""
        return next((p for p in self.pods() if p.ip == ip), None)

    def close(self) -> None:
        """Stop processes, close datapaths, remove every namespace and cgroup of the lab."""
        self.processes.stop_all()
        errors = []
        for node in reversed(list(self.nodes.values())):
            try:
                node.close()
            except Exception as exc:
                errors.append(f"{node.name}: {exc}")
        self.nodes.clear()
        if errors:
            raise CiliumliteError("lab teardown: " + "; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.prefix} nodes={list(self.nodes)}>"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{n.name}</td><td>{n.netns}</td><td>{p.name}</td><td>{p.ip}</td></tr>"
                       for n in self.nodes.values() for p in n.pods.values())
        return (f"<b>Lab {self.prefix}</b><table><tr><th>node</th><th>netns</th><th>pod</th><th>ip</th></tr>"
                f"{rows}</table>")
