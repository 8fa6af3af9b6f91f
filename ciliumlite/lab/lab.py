"""Lab, Node and Pod: a cluster in network namespaces, torn down completely on exit."""

from __future__ import annotations

import html
import ipaddress
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.cluster import Cluster, NodeInfo
from ciliumlite.datapath.config import DatapathConfig, HostRouting, Routing
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.endpoint import Endpoint
from ciliumlite.lab import procs
from ciliumlite.lab.naming import lab_prefix
from ciliumlite.node import Datapath

CLUSTER_POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
MANIFEST_DIR = "/run/ciliumlite/labs"
UNDERLAY = ipaddress.IPv4Network("10.0.0.0/24")
LEAF_IP = "10.0.0.254"
LEAF_ASN = 65001
FIRST_NODE_HOST = 11  # k8s-master is 10.0.0.11 in the seed
FIRST_NODE_ASN = 65011
WORLD = ipaddress.IPv4Network("203.0.113.0/24")  # documentation range: "the world"
WORLD_GATEWAY = "203.0.113.1"
WORLD_HOST = "203.0.113.10"


@public_methods_off_event_loop
class Fabric:
    """The underlay: a namespace with a bridge (the leaf router at 10.0.0.254) joining every node."""

    def __init__(self, lab: Lab) -> None:
        from pyroute2 import IPRoute

        self.lab = lab
        self.outside_netns: list[str] = []
        self.netns = nsmod.create(f"{lab.prefix}-fabric")
        try:
            with IPRoute(netns=self.netns) as ipr:
                ipr.link("add", ifname="br0", kind="bridge")
                br = ipr.link_lookup(ifname="br0")[0]
                ipr.addr("add", index=br, address=LEAF_IP, prefixlen=UNDERLAY.prefixlen)
                ipr.link("set", index=br, state="up")
            from ciliumlite.datapath.devices import set_sysctl

            set_sysctl(self.netns, "net.ipv4.ip_forward", "1")
        except BaseException:
            nsmod.remove(self.netns)
            raise

    def connect(self, node_netns: str, index: int, node_ip: str, mtu: int = 1500) -> None:
        """A veth from the node (``eth0``, ``node_ip``/24, default via the leaf) into the bridge."""
        from pyroute2 import IPRoute

        port = f"n{index}"
        with IPRoute(netns=self.netns) as ipr:
            ipr.link("add", ifname=port, kind="veth", mtu=mtu, peer={"ifname": "eth0", "net_ns_fd": node_netns,
                                                                   "mtu": mtu})
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname="br0")[0], state="up")
        with IPRoute(netns=node_netns) as ipr:
            idx = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=idx, address=node_ip, prefixlen=UNDERLAY.prefixlen)
            ipr.link("set", index=idx, state="up")
            ipr.route("replace", dst="0.0.0.0/0", gateway=LEAF_IP)

    def add_outside(self, name: str = "world") -> Host:
        """A host outside the cluster (203.0.113.10, "the world") routed through the leaf."""
        from pyroute2 import IPRoute

        ns = nsmod.create(f"{self.lab.prefix}-{name}")
        try:
            with IPRoute(netns=self.netns) as ipr:
                ipr.link("add", ifname="world", kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
                idx = ipr.link_lookup(ifname="world")[0]
                ipr.addr("add", index=idx, address=WORLD_GATEWAY, prefixlen=WORLD.prefixlen)
                ipr.link("set", index=idx, state="up")
            with IPRoute(netns=ns) as ipr:
                idx = ipr.link_lookup(ifname="eth0")[0]
                ipr.addr("add", index=idx, address=WORLD_HOST, prefixlen=WORLD.prefixlen)
                ipr.link("set", index=idx, state="up")
                ipr.route("replace", dst="0.0.0.0/0", gateway=WORLD_GATEWAY)
        except BaseException:
            nsmod.remove(ns)
            raise
        self.outside_netns.append(ns)
        return Host(self.lab, name, ns, WORLD_HOST, None)

    def close(self) -> None:
        """Remove the fabric namespace and outside hosts."""
        for ns in self.outside_netns:
            nsmod.remove(ns)
        nsmod.remove(self.netns)


@dataclass(frozen=True)
class PingResult:
    """Parsed ``ping`` output."""

    target: str
    transmitted: int
    received: int
    rtt_avg_ms: float | None
    errors: int = 0
    output: str = field(repr=False, default="")

    @property
    def too_big(self) -> bool:
        """The packet was refused as larger than the path MTU (local error or frag-needed)."""
        return "message too long" in self.output or "Frag needed" in self.output

    @property
    def ok(self) -> bool:
        """Every echo request was answered."""
        return self.transmitted > 0 and self.received == self.transmitted


@dataclass(frozen=True)
class Frame:
    """One captured Ethernet frame carrying IPv4, with the fields people look at."""

    raw: bytes
    outgoing: bool

    @property
    def ip_header(self) -> bytes:
        """The IPv4 header, options included."""
        ihl = (self.raw[14] & 0x0F) * 4
        return self.raw[14:14 + ihl]

    @property
    def src(self) -> str:
        """IPv4 source."""
        return str(ipaddress.IPv4Address(self.raw[26:30]))

    @property
    def dst(self) -> str:
        """IPv4 destination."""
        return str(ipaddress.IPv4Address(self.raw[30:34]))

    @property
    def proto(self) -> int:
        """IP protocol number."""
        return self.raw[23]

    @property
    def ports(self) -> tuple[int, int]:
        """(source port, destination port) for TCP/UDP."""
        off = 14 + (self.raw[14] & 0x0F) * 4
        return int.from_bytes(self.raw[off:off + 2], "big"), int.from_bytes(self.raw[off + 2:off + 4], "big")

    def __str__(self) -> str:
        sp, dp = self.ports if self.proto in (6, 17) else (0, 0)
        return f"{self.src}:{sp} -> {self.dst}:{dp} proto {self.proto}" + (" (IP options)" if len(self.ip_header) > 20
                                                                                  else "")


class Capture:
    """Frames seen on one device while the ``with`` block ran (``Lab.capture``)."""

    def __init__(self, lab: Lab, netns: str, ifname: str, seconds: float, max_frames: int) -> None:
        self._lab = lab
        self._seconds = seconds
        self._proc = lab.processes.popen(netns, procs.python_script(procs.CAPTURE, ifname, str(seconds),
                                                                    str(max_frames)))
        ready = self._proc.stdout.readline() if self._proc.stdout else ""
        if ready.strip() != "ready":
            lab.processes.stop(self._proc)
            raise CiliumliteError(f"capture on {ifname} in {netns} did not start: {ready!r}")
        self.frames: list[Frame] = []

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # frames still in flight when the block ends
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            out, _ = self._proc.communicate(timeout=5)
        finally:
            self._lab.processes.stop(self._proc)
        for line in out.splitlines():
            direction, _, hexdata = line.partition(" ")
            if hexdata:
                self.frames.append(Frame(bytes.fromhex(hexdata), direction == "out"))


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


@public_methods_off_event_loop
class Host:
    """Something in a namespace that runs commands and talks to others: a pod, or the outside client."""

    def __init__(self, lab: Lab, name: str, netns: str, ip: str, cgroup: str | None) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self._ip = ip
        self.cgroup = cgroup
        self._echo_ports: set[int] = set()

    @property
    def ip(self) -> str:
        """The host's IPv4 address."""
        return self._ip

    def run(self, *argv: str, timeout: float = 30.0) -> Any:
        """Run a command here (the namespace, and the node's cgroup for pods)."""
        return procs.run(self.netns, argv, self.cgroup, timeout=timeout)

    def popen(self, *argv: str) -> Any:
        """Start a long-running command here; the lab ends it on close."""
        return self.lab.processes.popen(self.netns, argv, self.cgroup)

    def ping(self, target: str | Host, count: int = 3, *, size: int | None = None, dont_fragment: bool = False,
             interval: float = 0.2, timeout: float = 2.0) -> PingResult:
        """Real ICMP echo from this pod; parsed results."""
        dst = target.ip if isinstance(target, Host) else str(target)
        argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(timeout), dst]
        if size is not None:
            argv[1:1] = ["-s", str(size)]
        if dont_fragment:
            argv[1:1] = ["-M", "do"]
        res = self.run(*argv, timeout=count * (interval + timeout) + 5)
        text = res.stdout + res.stderr
        m = re.search(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) errors)?", text)
        rtt = re.search(r"= [\d.]+/([\d.]+)/", text)
        return PingResult(dst, int(m.group(1)) if m else 0, int(m.group(2)) if m else 0,
                          float(rtt.group(1)) if rtt else None, int(m.group(3) or 0) if m else 0, text)

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
        owner = self.lab.pod_by_ip(ip)
        if owner is not None:
            owner.ensure_echo_server(port)
        res = self.run(*procs.python_script(procs.PROBE, proto, ip, str(port), payload, str(timeout)),
                       timeout=timeout + 10)
        try:
            return EchoResult.parse(json.loads(res.stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            return EchoResult(False, error=f"probe failed: {res.stderr.strip()}")

    def tcp_echo(self, ip: str | Host, port: int = 80, payload: str = "hello", timeout: float = 3.0) -> EchoResult:
        """Connect, send ``payload``, read the echo (the server in a lab pod is started as needed)."""
        return self._echo("tcp", ip.ip if isinstance(ip, Host) else ip, port, payload, timeout)

    def udp_echo(self, ip: str | Host, port: int = 80, payload: str = "hello", timeout: float = 3.0) -> EchoResult:
        """One UDP datagram and its echo."""
        return self._echo("udp", ip.ip if isinstance(ip, Host) else ip, port, payload, timeout)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.ip}>"


@public_methods_off_event_loop
class Pod(Host):
    """A pod: a network namespace joined to its node by a veth, with an endpoint in the datapath."""

    def __init__(self, node: Node, name: str, netns: str, endpoint: Endpoint) -> None:
        super().__init__(node.lab, name, netns, str(endpoint.ip), node.cgroup)
        self.node = node
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"<Pod {self.name} {self.ip} on {self.node.name}>"


@public_methods_off_event_loop
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
        self.ip: str | None = None
        self.bird: Any = None
        try:
            if config.get("routing", "none") != "none":
                self.ip = str(UNDERLAY.network_address + FIRST_NODE_HOST + index)
                lab.fabric_or_create().connect(self.netns, index, self.ip)
                config.setdefault("node_ip", self.ip)
            # SNAT and masquerade allocate ports from 32768..65535: keep the node's own
            # ephemeral ports out of that range (what a Cilium node operator does too).
            set_sysctl(self.netns, "net.ipv4.ip_local_port_range", "10000 29999")
            self.cgroup = fs.make_cgroup(f"{lab.prefix}-{name}")
            cfg = DatapathConfig(node_name=f"{lab.prefix}-{name}", pod_cidr=pod_cidr, host_routing=host_routing,
                                 **config)
            self.datapath = Datapath(cfg, netns=self.netns, cgroup=self.cgroup)
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
        self.lab.processes.stop_in({pod.netns})
        assert self.datapath is not None
        self.datapath.remove_endpoint(pod.endpoint)
        nsmod.remove(pod.netns)

    def run(self, *argv: str, timeout: float = 30.0) -> Any:
        """Run a command in the node namespace (and cgroup)."""
        return procs.run(self.netns, argv, self.cgroup, timeout=timeout)

    @property
    def info(self) -> NodeInfo:
        """This node as the cluster store records it."""
        assert self.datapath is not None and self.ip is not None, f"{self.name} has no underlay"
        return NodeInfo(self.name, self.ip, self.datapath.config.pod_cidr)

    def close(self) -> None:
        """Close the datapath, remove pods, the namespace and the cgroup."""
        if self.bird is not None:
            self.bird.stop()
            self.bird = None
        self.lab.processes.stop_in({self.netns, *(p.netns for p in self.pods.values())})
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


@public_methods_off_event_loop
class LabCluster:
    """A Cluster whose nodes are lab nodes: ``cluster.node("worker1").add_pod("client")``."""

    def __init__(self, lab: Lab, cluster: Cluster, nodes: list[Node]) -> None:
        self.lab = lab
        self.control = cluster
        self.members = {n.name: n for n in nodes}

    def node(self, name: str) -> Node:
        """A member node by name."""
        try:
            return self.members[name]
        except KeyError:
            raise ValidationError(f"no node {name!r} in this cluster ({', '.join(self.members)})") from None

    def add_node(self, name: str, **config: Any) -> Node:
        """Add a node: every other node learns its pod CIDR (tunnel entry or route)."""
        first = next(iter(self.members.values()), None)
        routing = first.datapath.config.routing if first and first.datapath else "vxlan"
        node = self.lab.add_node(name, routing=routing, **config)
        assert node.datapath is not None
        if first is not None and first.bird is not None:
            node.datapath.routes_managed_by_bgp = True
        try:
            self.control.join(node.info, node.datapath)
        except BaseException:
            self.lab.remove_node(name)
            raise
        if first is not None and first.bird is not None:
            self.lab._start_bgp([node])
        self.members[name] = node
        return node

    def remove_node(self, name: str) -> None:
        """Remove a node: its routes are withdrawn and its tunnel entries deleted on every other node."""
        node = self.members.pop(name)
        self.control.leave(name)
        had_bgp = node.bird is not None
        self.lab.remove_node(name)
        if had_bgp and self.lab.leaf_bird is not None:
            self.lab.leaf_bird.reload(self.lab._leaf_config())

    def nodes(self) -> list[Node]:
        """The member nodes."""
        return list(self.members.values())

    def upsert_service(self, svc: Any) -> None:
        """Program a service on every node, like a Kubernetes Service plus EndpointSlice."""
        self.control.upsert_service(svc)

    def delete_service(self, name: str) -> None:
        """Remove a service from every node."""
        self.control.delete_service(name)


@public_methods_off_event_loop
class Lab:
    """A throwaway cluster in network namespaces with a unique prefix; removed on exit (also on errors)."""

    def __init__(self, name: str = "lab", *, host_routing: HostRouting = "bpf") -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,15}", name):
            raise ValidationError(f"lab name {name!r}: use 1-16 of a-z, 0-9 and '-'")
        self.name = name
        self.prefix = lab_prefix(name)
        self.host_routing = host_routing
        self.nodes: dict[str, Node] = {}
        self.processes = procs.ProcessGroup()
        self.fabric: Fabric | None = None
        self.clusters: list[Cluster] = []
        self.leaf_bird: Any = None
        self._outside: Host | None = None
        self.workdir = tempfile.mkdtemp(prefix=f"{self.prefix}-")

    def fabric_or_create(self) -> Fabric:
        """The underlay fabric, made on first use."""
        if self.fabric is None:
            self.fabric = Fabric(self)
        return self.fabric

    def cluster(self, nodes: list[str], *, routing: Routing = "vxlan", bgp: bool | None = None,
                store: Any = None, **config: Any) -> LabCluster:
        """Nodes on a shared underlay that know about each other through a Cluster.

        ``routing="native"`` uses BGP through bird (a leaf router at 10.0.0.254, AS 65001; node i
        is 10.0.0.(11+i), AS 65011+i) unless ``bgp=False``, which installs static routes instead.
        """
        if routing not in ("vxlan", "native"):
            raise ValidationError(f"routing must be 'vxlan' or 'native', not {routing!r}")
        use_bgp = routing == "native" if bgp is None else bgp
        cluster = Cluster(store)
        self.clusters.append(cluster)
        for name in nodes:
            node = self.add_node(name, routing=routing, **config)
            assert node.datapath is not None
            node.datapath.routes_managed_by_bgp = use_bgp
            cluster.join(node.info, node.datapath)
        if use_bgp:
            self._start_bgp([self.nodes[n] for n in nodes])
        return LabCluster(self, cluster, [self.nodes[n] for n in nodes])

    def _leaf_config(self, extra: list[Node] | None = None) -> Any:
        from ciliumlite import bgp

        speakers = [n for n in self.nodes.values() if n.ip and (n.bird is not None or n in (extra or []))]
        peers = tuple(bgp.BgpPeer(n.name.replace("-", "_"), n.ip or "", FIRST_NODE_ASN + n.index)
                      for n in speakers)
        return bgp.leaf_config(LEAF_IP, LEAF_ASN, peers)

    def _start_bgp(self, nodes: list[Node]) -> None:
        from ciliumlite import bgp

        fabric = self.fabric_or_create()
        leaf_cfg = self._leaf_config(extra=nodes)
        if self.leaf_bird is None:
            self.leaf_bird = bgp.Bird(fabric.netns, leaf_cfg, os.path.join(self.workdir, "leaf"))
            self.leaf_bird.start()
        else:
            self.leaf_bird.reload(leaf_cfg)
        for n in nodes:
            assert n.datapath is not None and n.ip is not None
            cfg = bgp.BgpConfig(router_id=n.ip, asn=FIRST_NODE_ASN + n.index,
                                peers=(bgp.BgpPeer("leaf", LEAF_IP, LEAF_ASN),),
                                announce=(n.datapath.config.pod_cidr,))
            n.bird = bgp.Bird(n.netns, cfg, os.path.join(self.workdir, n.name))
            n.bird.start()
        for n in nodes:
            n.bird.wait_established(timeout=15)

    def add_node(self, name: str, *, pod_cidr: str | None = None, host_routing: HostRouting | None = None,
                 **config: Any) -> Node:
        """A node namespace with its own Datapath and pod CIDR (``10.244.<index>.0/24`` by default)."""
        if name in self.nodes:
            raise ValidationError(f"node {name!r} exists already")
        index = max((n.index for n in self.nodes.values()), default=-1) + 1  # never a live node's
        cidr = pod_cidr or str(list(CLUSTER_POD_CIDR.subnets(new_prefix=24))[index])
        node = Node(self, name, index, cidr, host_routing or self.host_routing, **config)
        self.nodes[name] = node
        return node

    def node(self, name: str) -> Node:
        """A node by name."""
        return self.nodes[name]

    def remove_node(self, name: str) -> None:
        """Close and remove one node (its bird, datapath, pods and namespace)."""
        self.nodes.pop(name).close()

    def capture(self, netns: str, ifname: str, *, seconds: float = 3.0, max_frames: int = 200) -> Capture:
        """Capture IPv4 frames on ``ifname`` in ``netns`` for at most ``seconds`` (use as ``with``)."""
        return Capture(self, netns, ifname, seconds, max_frames)

    def outside(self, name: str = "world") -> Host:
        """An outside client (203.0.113.10) behind the leaf router, made on first use."""
        if self._outside is None:
            self._outside = self.fabric_or_create().add_outside(name)
        return self._outside

    def pods(self) -> list[Pod]:
        """Every pod of every node."""
        return [p for n in self.nodes.values() for p in n.pods.values()]

    def pod_by_ip(self, ip: str) -> Pod | None:
        """The lab pod that owns ``ip``."""
        return next((p for p in self.pods() if p.ip == ip), None)

    def keep(self) -> str:
        """Leave the lab running after this process exits; returns the manifest path.

        BPF links are pinned, and a manifest lists what to remove later with
        ``ciliumlite lab destroy <prefix>`` (namespaces, pins, cgroups, processes, files).
        """
        for node in self.nodes.values():
            if node.datapath is not None and node.datapath.config.host_routing == "bpf":
                node.datapath.pin_links()
        birds = [b for b in [self.leaf_bird, *(n.bird for n in self.nodes.values())] if b is not None]
        manifest = {
            "prefix": self.prefix,
            "netns": sorted(n for n in nsmod.list_all() if n.startswith(self.prefix + "-")),
            "cgroups": [n.cgroup for n in self.nodes.values() if n.cgroup],
            "pin_dirs": [n.datapath.config.pin_dir for n in self.nodes.values() if n.datapath is not None],
            "nodes": [n.datapath.config.node_name for n in self.nodes.values() if n.datapath is not None],
            "pids": [p.pid for p in self.processes.running()] + [b.pid for b in birds if b.pid],
            "workdir": self.workdir,
        }
        os.makedirs(MANIFEST_DIR, exist_ok=True)
        path = os.path.join(MANIFEST_DIR, f"{self.prefix}.json")
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1)
        return path

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
        if self.leaf_bird is not None:
            self.leaf_bird.stop()
            self.leaf_bird = None
        if self.fabric is not None:
            self.fabric.close()
            self.fabric = None
        self._outside = None
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise CiliumliteError("lab teardown: " + "; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.prefix} nodes={list(self.nodes)}>"

    def _repr_html_(self) -> str:
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (n.name, n.netns, p.name, p.ip))
                       + "</tr>"
                       for n in self.nodes.values() for p in n.pods.values())
        return (f"<b>Lab {self.prefix}</b><table><tr><th>node</th><th>netns</th><th>pod</th><th>ip</th></tr>"
                f"{rows}</table>")
