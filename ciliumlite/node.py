"""Datapath: one node's eBPF datapath — its objects, pinned maps, endpoints and attachments."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import ipaddress
import json
import os
import socket
import subprocess
import threading
from collections import defaultdict
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from ciliumlite.bpf import BE32, U8, BpfObject, Map, fs
from ciliumlite.bpf.errors import CiliumliteError, NotSupportedError, ValidationError
from ciliumlite.bpf.link import FdLink, Link
from ciliumlite.bpf.netns import NetnsRef, entered
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.bpf.program import resolve_ifindex
from ciliumlite.cluster.store import NodeInfo
from ciliumlite.datapath import devices, gc, loader, registry
from ciliumlite.datapath.config import VXLAN_PORT, DatapathConfig
from ciliumlite.datapath.lb import FrontendRow, LbMaps
from ciliumlite.datapath.reasons import Direction, Reason, describe
from ciliumlite.datapath.records import (
    ENDPOINT_F_HOST,
    SCOPE_EXTERNAL,
    SCOPE_INTERNAL,
    SVC_FLAG2_MAGLEV,
    SVC_FLAG2_TWO_SCOPES,
    SVC_FLAG_AFFINITY,
    SVC_FLAG_EXT_LOCAL_SCOPE,
    SVC_FLAG_NODEPORT,
    SVC_FLAG_ROUTABLE,
    CtEntry,
    EndpointInfo,
    EndpointKey,
    Ipv4CtTuple,
    MetricsKey,
    MetricsValue,
    NatEntry,
    TunnelKey,
    TunnelValue,
)
from ciliumlite.endpoint import ENDPOINT_COLUMNS, Endpoint, configure_pod_side, identity_for, lxc_name
from ciliumlite.service import Service

HOST_IDENTITY = 1  # Cilium's reserved:host
SO_NETNS_COOKIE = 71


def netns_cookie(netns: NetnsRef) -> int:
    """The kernel's cookie of a network namespace (what bpf_get_netns_cookie returns there)."""
    with entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


@dataclass(frozen=True)
class MetricRow:
    """Packets and bytes counted for one reason and direction (summed over CPUs and source lines)."""

    reason: int
    direction: int
    packets: int
    bytes: int

    @property
    def reason_text(self) -> str:
        """What the reason means, in words."""
        return describe(self.reason)

    @property
    def is_drop(self) -> bool:
        """True for drop reasons."""
        return self.reason >= 130


@public_methods_off_event_loop
class Datapath:
    """The datapath of one node. Drives the namespace ``netns`` (None: the caller's own).

    >>> dp = Datapath(DatapathConfig(node_name="worker1", pod_cidr="10.244.1.0/24"), netns="lab-worker1")
    ... # doctest: +SKIP
    >>> ep = dp.add_endpoint("lab-worker1-client")  # doctest: +SKIP
    """

    def __init__(self, config: DatapathConfig, netns: NetnsRef = None, *, cgroup: str | None = None) -> None:
        self.config = config
        self.netns = netns
        self.cgroup = cgroup
        self.lb: LbMaps | None = None
        self._services: dict[str, Service] = {}
        self._closing = False
        self._service_cache: dict[str, tuple[Service, str]] = {}
        self._lock = threading.RLock()
        self._endpoints: dict[ipaddress.IPv4Address, Endpoint] = {}
        self._next_id = 1
        self.lxc: BpfObject | None = None
        self.objects: dict[str, BpfObject] = {}
        self.links: list[Link] = []
        self.endpoint_map: Map[EndpointKey, EndpointInfo] | None = None
        self.metrics_map: Map[MetricsKey, MetricsValue] | None = None
        self.tunnel_map: Map[TunnelKey, TunnelValue] | None = None
        self.node_map: Map[int, int] | None = None
        self.remote_nodes: dict[str, NodeInfo] = {}
        self.routes_managed_by_bgp = False
        self._pin_dir: str | None = None
        try:
            devices.set_sysctl(netns, "net.ipv4.ip_forward", "1")
            self._add_gateway_address()
            self._setup_routing()
            self._publish()
        except BaseException:
            self.close()
            raise

    def _service_json(self, svc: Service) -> str:
        # Rendering every service on every change would make N updates cost O(N^2): cache the text.
        cached = self._service_cache.get(svc.name)
        if cached is None or cached[0] is not svc:
            cached = (svc, json.dumps(dataclasses.asdict(svc), default=str))
            self._service_cache[svc.name] = cached
        return cached[1]

    def _publish(self) -> None:
        # Tell other processes (the CLI) about this datapath; BPF state itself lives in the pins.
        if self._closing:
            return
        registry.publish(self.config.node_name, {
            "node": self.config.node_name, "netns": self.netns, "pin_dir": self._pin_dir, "cgroup": self.cgroup,
            "pid": os.getpid(), "config": dataclasses.asdict(self.config),
            "endpoints": [e.as_row() for e in self.endpoints()],

            "remote_nodes": {n: dataclasses.asdict(i) for n, i in self.remote_nodes.items()},
            "attachments": [{"program": lk.program, "where": str(lk.point)} for lk in self.links]
            + [{"program": e.link.program, "where": str(e.link.point)} for e in self.endpoints() if e.link],
        }, raw={"services": "{" + ",".join(f"{json.dumps(n)}: {self._service_json(s)}"
                                           for n, s in self._services.items()) + "}"})

    def _setup_routing(self) -> None:
        cfg = self.config
        if cfg.routing == "vxlan" and cfg.host_routing == "legacy":
            raise NotSupportedError("legacy host routing with a VXLAN overlay is not built", feature="bpf",
                                    hint="use host_routing='bpf', or routing='native' for a legacy node")
        tunnel_ifindex = native_ifindex = 0
        if cfg.routing == "vxlan":
            tunnel_ifindex = devices.create_vxlan(self.netns, cfg.tunnel_device, VXLAN_PORT, cfg.pod_mtu)
        if cfg.routing != "none":
            native_ifindex = resolve_ifindex(cfg.underlay_device, self.netns)[0]
        if cfg.host_routing != "bpf":
            return
        self._pin_dir = fs.make_pin_dir(cfg.pin_dir.removeprefix(fs.BPFFS + "/"))
        node_rodata = cfg.rodata(tunnel_ifindex=tunnel_ifindex, native_ifindex=native_ifindex)
        # Socket LB's loopback NodePort wildcard applies in the node's own namespace only.
        node_rodata["host_netns_cookie"] = netns_cookie(self.netns)
        node_rodata.update(cfg.extra_rodata)  # each object takes the names it declares
        self.lxc = self._load("bpf_lxc", node_rodata, {"enable_arp_responder": 1, **cfg.extra_rodata})
        self.endpoint_map = self.lxc.map("cilium_lxc", EndpointKey, EndpointInfo)
        self.metrics_map = self.lxc.map("cilium_metrics", MetricsKey, MetricsValue)
        if cfg.routing == "vxlan":
            overlay = self._load("bpf_overlay", node_rodata)
            self.tunnel_map = self.lxc.map("cilium_tunnel_map", TunnelKey, TunnelValue)
            self.links.append(overlay.program("cil_from_overlay").attach_tc(
                tunnel_ifindex, "ingress", netns=self.netns, mode=cfg.tc_mode))
        if cfg.routing != "none":
            # The node's own addresses are endpoints with the HOST flag: traffic for them goes to the
            # stack (e.g. replies to node-to-pod traffic arriving through the tunnel).
            for host_ip in (cfg.gateway, IPv4Address(cfg.node_ip)):
                self.endpoint_map.set(EndpointKey(ip4=host_ip), EndpointInfo(
                    ifindex=0, lxc_id=0, flags=ENDPOINT_F_HOST, mac="00:00:00:00:00:00",
                    node_mac="00:00:00:00:00:00", sec_id=HOST_IDENTITY))
            host = self._load("bpf_host", node_rodata)
            self.node_map = self.lxc.map("cilium_node_map", BE32, U8)
            self.node_map.set(int(IPv4Address(cfg.node_ip)), 1)
            self.links.append(host.program("cil_from_netdev").attach_tc(
                native_ifindex, "ingress", netns=self.netns, mode=cfg.tc_mode))
            self.links.append(host.program("cil_to_netdev").attach_tc(
                native_ifindex, "egress", netns=self.netns, mode=cfg.tc_mode))

    def _load(self, name: str, node_rodata: dict[str, Any], extra: dict[str, Any] | None = None) -> BpfObject:
        assert self._pin_dir is not None
        obj = loader.load(name, self._pin_dir, extra, node_config=node_rodata)
        self.objects[name] = obj
        return obj

    # -- other nodes ---------------------------------------------------------------------------------
    def add_remote_node(self, node: NodeInfo) -> None:
        """Reach ``node``'s pods: a tunnel map entry (vxlan) or a route via its address (native).

        In native mode with BGP the routes come from bird, so nothing is written here.
        """
        with self._lock:
            if self.node_map is not None:
                self.node_map.set(int(IPv4Address(node.ip)), 1)
            if self.config.routing == "vxlan" and self.tunnel_map is not None:
                net = ipaddress.IPv4Network(node.pod_cidr)
                self.tunnel_map.set(TunnelKey(ip4=net.network_address), TunnelValue(ip4=IPv4Address(node.ip)))
                self._host_tunnel_route(node, add=True)
            elif self.config.routing == "native" and not self.routes_managed_by_bgp:
                with devices.iproute(self.netns) as ipr:
                    ipr.route("replace", dst=node.pod_cidr, gateway=node.ip)
            self.remote_nodes[node.name] = node
            self._publish()

    def remove_remote_node(self, node: NodeInfo) -> None:
        """Forget ``node``: its tunnel entry or route goes; other nodes' traffic is untouched."""
        with self._lock:
            known = self.remote_nodes.pop(node.name, None)
            if known is None:
                return
            if self.node_map is not None:
                self.node_map.pop(int(IPv4Address(known.ip)), None)
            if self.tunnel_map is not None:
                self.tunnel_map.pop(TunnelKey(ip4=ipaddress.IPv4Network(known.pod_cidr).network_address), None)
                self._host_tunnel_route(known, add=False)
            elif self.config.routing == "native" and not self.routes_managed_by_bgp:
                with devices.iproute(self.netns) as ipr, contextlib.suppress(Exception):
                    ipr.route("del", dst=known.pod_cidr, gateway=known.ip)
            self._publish()

    # -- services ------------------------------------------------------------------------------------
    def _ensure_lb(self) -> LbMaps:
        if self.lb is not None:
            return self.lb
        if not self.config.kube_proxy_replacement or self.config.host_routing != "bpf":
            raise NotSupportedError("services need kube_proxy_replacement=True and host_routing='bpf'",
                                    feature="kube-proxy replacement")
        sock = self._load("bpf_sock", {**self.config.rodata(), "host_netns_cookie": netns_cookie(self.netns)})
        if self.cgroup and self.config.socket_lb:
            # Socket LB goes on the node's own cgroup, never the cgroup root.
            for prog in ("cil_sock4_connect", "cil_sock4_sendmsg", "cil_sock4_recvmsg", "cil_sock4_getpeername"):
                self.links.append(sock.program(prog).attach_cgroup(self.cgroup))
        assert self._pin_dir is not None
        self.lb = LbMaps(self._pin_dir, self.config.maglev_table_size)
        return self.lb

    def _rows_for(self, svc: Service) -> list[FrontendRow]:
        proto = svc.frontend.proto_number
        every = tuple((IPv4Address(b.ip), b.port) for b in svc.backends)
        local = tuple(b for b in every if b[0] in self.config.network)
        aff_flag = SVC_FLAG_AFFINITY if svc.session_affinity else 0
        timeout = svc.affinity_timeout if svc.session_affinity else 0
        rows = [FrontendRow(IPv4Address(svc.frontend.ip), svc.frontend.port, proto, SCOPE_EXTERNAL, aff_flag, 0,
                            every, timeout)]
        if svc.type == "NodePort" and svc.node_port is not None:
            flags = SVC_FLAG_NODEPORT | SVC_FLAG_ROUTABLE | aff_flag
            flags2 = SVC_FLAG2_MAGLEV if svc.maglev else 0
            # The node's address for traffic from outside; 0.0.0.0 is the wildcard socket LB matches
            # for connections to any local address (Cilium's surrogate frontend).
            for addr in {IPv4Address(self.config.node_ip), IPv4Address("0.0.0.0")}:
                if svc.external_traffic_policy == "Local":
                    two = flags2 | SVC_FLAG2_TWO_SCOPES
                    rows.append(FrontendRow(addr, svc.node_port, proto, SCOPE_EXTERNAL, flags | SVC_FLAG_EXT_LOCAL_SCOPE,
                                            two, local, timeout, svc.maglev))
                    rows.append(FrontendRow(addr, svc.node_port, proto, SCOPE_INTERNAL, flags | SVC_FLAG_EXT_LOCAL_SCOPE,
                                            two, every, timeout, svc.maglev))
                else:
                    rows.append(FrontendRow(addr, svc.node_port, proto, SCOPE_EXTERNAL, flags, flags2, every, timeout,
                                            svc.maglev))
        return rows

    def validate_service(self, svc: Service) -> None:
        """Raise ValidationError if ``svc`` clashes with another service here (nothing is written)."""
        if not isinstance(svc, Service):
            raise ValidationError(f"expected a Service, got {type(svc).__name__}")
        self._check_conflicts(svc)

    def _check_conflicts(self, svc: Service) -> None:
        for other in self._services.values():
            if other.name == svc.name:
                continue
            if other.frontend == svc.frontend:
                raise ValidationError(f"service {svc.name}: frontend {svc.frontend.ip}:{svc.frontend.port}/"
                                      f"{svc.frontend.protocol} is already used by {other.name}")
            if svc.node_port is not None and other.node_port == svc.node_port and \
                    other.frontend.protocol == svc.frontend.protocol:
                raise ValidationError(f"service {svc.name}: node port {svc.node_port}/{svc.frontend.protocol} "
                                      f"is already taken by {other.name}")

    def upsert_service(self, svc: Service) -> None:
        """Create or update a service on this node (like a Service plus its EndpointSlice).

        Validation happens before anything is written; a map failure keeps the previous state.
        When it returns, no new connection goes to a backend that is no longer listed.
        """
        with self._lock:
            self._check_conflicts(svc)
            lb = self._ensure_lb()
            lb.program(svc.name, self._rows_for(svc))
            self._services[svc.name] = svc
            self._publish()

    def delete_service(self, name: str) -> None:
        """Remove a service from this node."""
        with self._lock:
            if name not in self._services:
                raise ValidationError(f"no service {name!r} on {self.config.node_name}")
            if self.lb is not None:
                self.lb.remove(name)
            del self._services[name]
            self._service_cache.pop(name, None)
            self._publish()

    def services(self) -> list[dict[str, Any]]:
        """The LB map rows as the kernel has them, like ``cilium bpf lb list``."""
        return self.lb.dump() if self.lb is not None else []

    def service(self, name: str) -> Service:
        """A programmed service by name."""
        try:
            return self._services[name]
        except KeyError:
            raise ValidationError(f"no service {name!r} on {self.config.node_name}") from None

    def _host_tunnel_route(self, node: NodeInfo, *, add: bool) -> None:
        # Node-to-remote-pod traffic in tunnel mode: a kernel route that encapsulates through the
        # collect-metadata device, sourced from our gateway address (a HOST entry on the far side
        # hands replies to the stack). pyroute2 cannot build "encap ip" routes, hence iproute2.
        remote_gw = str(ipaddress.IPv4Network(node.pod_cidr).network_address + 1)
        ns = ["ip", "-n", str(self.netns)] if isinstance(self.netns, str) and "/" not in self.netns else ["ip"]
        if add:
            cmds = [[*ns, "neigh", "replace", remote_gw, "lladdr", "02:00:00:00:ff:ff", "dev",
                     self.config.tunnel_device, "nud", "permanent"],
                    [*ns, "route", "replace", node.pod_cidr, "encap", "ip", "id", str(HOST_IDENTITY), "dst", node.ip,
                     "ttl", "64", "via", remote_gw, "dev", self.config.tunnel_device, "onlink",
                     "src", str(self.config.gateway)]]
        else:
            cmds = [[*ns, "route", "del", node.pod_cidr, "dev", self.config.tunnel_device],
                    [*ns, "neigh", "del", remote_gw, "dev", self.config.tunnel_device]]
        for cmd in cmds:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            if add and res.returncode != 0:
                raise CiliumliteError(f"{' '.join(cmd)}: {res.stderr.strip()}")

    def conntrack(self) -> dict[Ipv4CtTuple, CtEntry]:
        """Both CT maps (TCP and non-TCP) as the kernel has them, like ``cilium bpf ct list global``."""
        return {k: v for m in self._ct_maps() for k, v in m.items()}

    def _ct_maps(self) -> list[Map[Ipv4CtTuple, CtEntry]]:
        if self.lxc is None:
            return []
        return [self.lxc.map(name, Ipv4CtTuple, CtEntry) for name in ("cilium_ct4_global", "cilium_ct_any4_global")
                if name in self.lxc.map_names]

    def gc_conntrack(self, *, at: int | None = None) -> gc.GcResult:
        """Delete expired conntrack entries and stale NAT entries (run it periodically)."""
        nat = self.lxc.map("cilium_snat_v4_external", Ipv4CtTuple, NatEntry) \
            if self.lxc is not None and "cilium_snat_v4_external" in self.lxc.map_names else None
        return gc.collect(list(self._ct_maps()), nat, at=at)

    def pin_links(self) -> list[str]:
        """Pin every BPF link under ``<pin dir>/links`` so the datapath outlives this process.

        Classic tc (clsact) attachments outlive it anyway. Returns the pin paths.
        """
        assert self._pin_dir is not None, "legacy host routing has no links to pin"
        os.makedirs(os.path.join(self._pin_dir, "links"), exist_ok=True)
        paths = []
        links = list(self.links) + [e.link for e in self.endpoints() if e.link is not None]
        for i, link in enumerate(links):
            if isinstance(link, FdLink) and link.pin_path is None:
                link.pin(os.path.join(self._pin_dir, "links", f"{i}-{link.program}"))
                paths.append(link.pin_path or "")
        return paths

    def bpf_tunnels(self) -> dict[str, str]:
        """The tunnel map: pod CIDR prefix -> remote node IP (like ``cilium bpf tunnel list``)."""
        if self.tunnel_map is None:
            return {}
        return {str(k.ip4): str(v.ip4) for k, v in self.tunnel_map.items()}

    # -- node addresses ------------------------------------------------------------------------------
    def _add_gateway_address(self) -> None:
        # The gateway address (cilium_host's in Cilium) lives on the node's lo: the node answers ARP
        # for it in legacy mode and uses it as source for node-to-pod traffic in both modes.
        with devices.iproute(self.netns) as ipr:
            lo = devices.ifindex(ipr, "lo")
            gw = str(self.config.gateway)
            if lo is not None and not any(a.get_attr("IFA_ADDRESS") == gw for a in ipr.get_addr(index=lo)):
                ipr.addr("add", index=lo, address=gw, prefixlen=32)

    # -- endpoints -----------------------------------------------------------------------------------
    def _allocate_ip(self) -> ipaddress.IPv4Address:
        used = set(self._endpoints) | {self.config.gateway}
        for host in self.config.network.hosts():
            if host not in used:
                return host
        raise ValidationError(f"pod CIDR {self.config.pod_cidr} of {self.config.node_name} has no free address")

    def _validate_ip(self, ip: str | ipaddress.IPv4Address | None) -> ipaddress.IPv4Address:
        if ip is None:
            return self._allocate_ip()
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError as exc:
            raise ValidationError(f"endpoint IP {ip!r} is not an IPv4 address") from exc
        net = self.config.network
        if addr not in net:
            raise ValidationError(f"endpoint IP {addr} is outside {self.config.node_name}'s pod CIDR {net}")
        if addr in (net.network_address, net.broadcast_address, self.config.gateway):
            raise ValidationError(f"endpoint IP {addr} is reserved in {net} (network, broadcast or gateway)")
        if addr in self._endpoints:
            raise ValidationError(f"endpoint IP {addr} is already used by {self._endpoints[addr].name}")
        return addr

    def add_endpoint(self, pod_netns: str, *, name: str | None = None, ip: str | ipaddress.IPv4Address | None = None,
                     labels: dict[str, str] | None = None, identity: int | None = None, ifname: str | None = None,
                     pod_ifname: str = "eth0", adopt: bool = False) -> Endpoint:
        """Connect the pod namespace ``pod_netns`` to this node and program the datapath for it.

        Creates the veth (``lxc…`` here, ``pod_ifname`` in the pod) unless ``adopt=True``, in which
        case the existing host-side ``ifname`` and its peer ``pod_ifname`` are used and left in place
        on removal. On any failure, everything done so far is undone and the datapath is unchanged.
        """
        with self._lock:
            addr = self._validate_ip(ip)
            labels = dict(labels or {"name": name or pod_netns})
            ident = identity_for(labels) if identity is None else identity
            if not 1 <= ident <= 0xFFFFFF:
                raise ValidationError(f"identity {ident} is outside 1..16777215 (it travels in the VXLAN VNI)")
            if adopt and not ifname:
                raise ValidationError("adopt=True needs the host-side ifname of the existing veth")
            host_if = ifname or lxc_name(pod_netns, addr)
            if not os.path.exists(f"/var/run/netns/{pod_netns}") and "/" not in pod_netns:
                raise ValidationError(f"pod network namespace {pod_netns!r} does not exist")
            if adopt:
                with devices.iproute(self.netns) as ipr:
                    if devices.ifindex(ipr, host_if) is None:
                        raise ValidationError(f"no device {host_if!r} in the node namespace to adopt")
                with devices.iproute(pod_netns) as ipr:
                    if devices.ifindex(ipr, pod_ifname) is None:
                        raise ValidationError(f"no device {pod_ifname!r} in pod namespace {pod_netns} to adopt")
            created = False
            ep: Endpoint | None = None
            try:
                if not adopt:
                    devices.create_veth(self.netns, host_if, pod_netns, pod_ifname, self.config.pod_mtu)
                    created = True
                pod_mac = configure_pod_side(pod_netns, pod_ifname, addr, self.config.gateway, self.config.pod_mtu)
                with devices.iproute(self.netns) as ipr:
                    idx = devices.ifindex(ipr, host_if)
                    if idx is None:
                        raise ValidationError(f"no device {host_if!r} in the node namespace to adopt")
                    ipr.link("set", index=idx, state="up")
                    node_mac = devices.link_mac(ipr, idx)
                    ipr.link("set", index=idx, mtu=self.config.pod_mtu)
                    ipr.route("replace", dst=f"{addr}/32", oif=idx, scope=253)
                # ciliumlite's datapath is IPv4-only: keep the host side quiet (no RS/MLD/NS into pods).
                devices.set_sysctl(self.netns, f"net.ipv6.conf.{host_if}.disable_ipv6", "1")
                if self.config.host_routing == "legacy":
                    devices.set_sysctl(self.netns, f"net.ipv4.conf.{host_if}.proxy_arp", "1")
                ep = Endpoint(self._next_id, name or pod_netns, addr, pod_netns, host_if, idx, pod_mac, node_mac,
                              ident, labels, adopted=adopt, _datapath=self)
                if self.lxc is not None and self.endpoint_map is not None:
                    self.endpoint_map.set(ep.key, ep.info)
                    ep.link = self.lxc.program("cil_from_container").attach_tc(
                        idx, "ingress", netns=self.netns, mode=self.config.tc_mode)
            except BaseException:
                if ep is not None:
                    self._unprogram(ep)
                if created:
                    devices.delete_link(self.netns, host_if)
                raise
            self._endpoints[addr] = ep
            self._next_id += 1
            self._publish()
            return ep

    def _unprogram(self, ep: Endpoint) -> None:
        if ep.link is not None:
            ep.link.close()
            ep.link = None
        if self.endpoint_map is not None:
            self.endpoint_map.pop(ep.key, None)

    def remove_endpoint(self, ep: Endpoint | str | ipaddress.IPv4Address) -> None:
        """Detach, delete the map entry, the route and (unless adopted) the veth."""
        with self._lock:
            target = ep if isinstance(ep, Endpoint) else self.endpoint(ep)
            if target is None or self._endpoints.get(target.ip) is not target:
                raise ValidationError(f"no endpoint {ep!r} on {self.config.node_name}")
            self._unprogram(target)
            if target.adopted:
                with devices.iproute(self.netns) as ipr:
                    try:
                        ipr.route("del", dst=f"{target.ip}/32", scope=253)
                    except Exception:
                        pass
            else:
                devices.delete_link(self.netns, target.ifname)
            del self._endpoints[target.ip]
            target._datapath = None
            self._publish()

    def endpoints(self) -> list[Endpoint]:
        """Endpoints of this node, by id (like ``cilium endpoint list``)."""
        return sorted(self._endpoints.values(), key=lambda e: e.id)

    def endpoint(self, ip: str | ipaddress.IPv4Address) -> Endpoint:
        """The endpoint with this IP."""
        try:
            return self._endpoints[ipaddress.IPv4Address(ip)]
        except (KeyError, ValueError):
            raise ValidationError(f"no endpoint {ip} on {self.config.node_name}") from None

    def bpf_endpoints(self) -> dict[EndpointKey, EndpointInfo]:
        """The endpoint map as the kernel has it (like ``cilium bpf endpoint list``)."""
        return dict(self.endpoint_map.items()) if self.endpoint_map is not None else {}

    # -- counters ------------------------------------------------------------------------------------
    def metrics(self) -> list[MetricRow]:
        """Forwarded and dropped packets by reason and direction (empty in legacy mode)."""
        if self.metrics_map is None:
            return []
        sums: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
        for key, per_cpu in self.metrics_map.items():
            acc = sums[(key.reason, key.dir)]
            for v in per_cpu:  # type: ignore[attr-defined]
                acc[0] += v.count
                acc[1] += v.bytes
        return [MetricRow(r, d, p, b) for (r, d), (p, b) in sorted(sums.items())]

    def count(self, reason: Reason | int, direction: Direction | int | None = None) -> int:
        """Packets counted for ``reason`` (in ``direction``, or all)."""
        return sum(m.packets for m in self.metrics() if m.reason == reason and direction in (None, m.direction))

    # -- lifetime ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove every endpoint this datapath made, detach everything, unpin its maps."""
        errors: list[str] = []
        self._closing = True
        registry.withdraw(self.config.node_name)
        for ep in list(self._endpoints.values()):
            try:
                self.remove_endpoint(ep)
            except Exception as exc:
                errors.append(f"{ep.name}: {exc}")
        self._services.clear()
        if self.lb is not None:
            self.lb.close()
            self.lb = None
        for link in self.links:
            link.close()
        self.links.clear()
        for obj in self.objects.values():
            obj.close()
        self.objects.clear()
        self.lxc = None
        self.endpoint_map = self.metrics_map = None
        self.tunnel_map = self.node_map = None
        if self.config.routing == "vxlan":
            devices.delete_link(self.netns, self.config.tunnel_device)
        if self._pin_dir is not None:
            fs.remove_pin_dir(self._pin_dir)
            parent = os.path.dirname(self._pin_dir)
            if parent != fs.BPFFS and not os.listdir(parent):
                os.rmdir(parent)
            self._pin_dir = None
        if errors:
            raise CiliumliteError("closing the datapath left errors: " + "; ".join(errors))

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Datapath {self.config.node_name} {self.config.host_routing} pod_cidr={self.config.pod_cidr} "
                f"endpoints={len(self._endpoints)}>")

    def _repr_html_(self) -> str:
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in ep.as_row().values()) + "</tr>"
                       for ep in self.endpoints())
        head = "".join(f"<th>{k}</th>" for k in ENDPOINT_COLUMNS)
        return (f"<b>Datapath {html.escape(self.config.node_name)}</b> ({self.config.host_routing} host routing, "
                f"pod CIDR {self.config.pod_cidr})<table><tr>{head}</tr>{rows}</table>")

    def status(self) -> dict[str, Any]:
        """A summary like ``cilium status`` for this node."""
        return {"node": self.config.node_name, "host_routing": self.config.host_routing.upper()
                if self.config.host_routing == "bpf" else "Legacy", "pod_cidr": self.config.pod_cidr,
                "endpoints": len(self._endpoints), "routing": self.config.routing,
                "remote_nodes": sorted(self.remote_nodes),
                "programs": [f"{e.ifname}: {e.link.point}" for e in self.endpoints() if e.link is not None]}
