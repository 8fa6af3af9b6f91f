"""Datapath: one node's eBPF datapath, a facade over its parts.

The facade owns the lifecycle (setup in order, undo on failure, close), the lock, status and the
registry entry the CLI reads. The work is in parts that never call back up:
:class:`~ciliumlite.node.endpoints.Endpoints`, :class:`~ciliumlite.node.services.Services`,
:class:`~ciliumlite.node.tunnel.Tunnel`, :class:`~ciliumlite.node.netdev.NativeDevice` and a
routing strategy from :mod:`ciliumlite.node.routing`. Setup order matters because the node's
``.rodata`` (:class:`~ciliumlite.datapath.config.NodeRodata`) needs the VXLAN and underlay
ifindexes and the namespace cookie: devices first, then the rodata, then every object with it.
"""

from __future__ import annotations

import dataclasses
import html
import ipaddress
import os
import threading
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Any

from ciliumlite.bpf import BpfObject, fs
from ciliumlite.bpf.errors import CiliumliteError, NotSupportedError
from ciliumlite.bpf.link import Link
from ciliumlite.bpf.netns import NetnsRef
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.bpf.program import resolve_ifindex
from ciliumlite.cluster.store import EndpointRecord, NodeInfo
from ciliumlite.datapath import devices, gc, loader, registry
from ciliumlite.datapath.config import DatapathConfig, NodeRodata
from ciliumlite.datapath.lb import LbMaps
from ciliumlite.datapath.maps import MetricRow, NodeMaps, sum_metrics
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.datapath.records import CtEntry, EndpointInfo, EndpointKey, Ipv4CtTuple
from ciliumlite.endpoint import ENDPOINT_COLUMNS, Endpoint
from ciliumlite.node import links
from ciliumlite.node import routing as routing_mod
from ciliumlite.node import state as state_mod
from ciliumlite.node.endpoints import Endpoints, host_entry
from ciliumlite.node.enforcement import PolicyEnforcer, PolicySync
from ciliumlite.node.lifecycle import RELOADABLE, RestoreAndReload, netns_cookie
from ciliumlite.node.netdev import NativeDevice
from ciliumlite.node.policy import PolicyMaps
from ciliumlite.node.prefilter import Prefilter, PrefilterView
from ciliumlite.node.services import Services
from ciliumlite.node.sockops import SockAcceleration
from ciliumlite.node.teardown import Teardown
from ciliumlite.node.tunnel import Tunnel
from ciliumlite.node.xdp import XdpDevice
from ciliumlite.ownership.identity import ProcessId, daemon_entries
from ciliumlite.policy.identity import ReservedIdentity
from ciliumlite.service import Service


@public_methods_off_event_loop
class Datapath(RestoreAndReload, Teardown):
    """The datapath of one node. Drives the namespace ``netns`` (None: the caller's own).

    Socket LB attaches to ``cgroup`` (a child cgroup of the node; never the root) when given.
    Raises :class:`ValidationError` for a bad config, :class:`NotSupportedError` for a mode that is
    not built, :class:`BpfError` / :class:`VerifierError` when loading or attaching fails; on any
    failure everything made so far is removed again.

    >>> dp = Datapath(DatapathConfig(node_name="worker1", pod_cidr="10.244.1.0/24"), netns="lab-worker1")
    ... # doctest: +SKIP
    >>> ep = dp.add_endpoint("lab-worker1-client")  # doctest: +SKIP
    """

    def __init__(self, config: DatapathConfig, netns: NetnsRef = None, *, cgroup: str | None = None) -> None:
        self._init_fields(config, netns, cgroup)
        try:
            self._setup()
            self._publish()
        except BaseException:
            self.close(remove=True)  # a half-made node is undone, never kept
            raise

    def _init_fields(self, config: DatapathConfig, netns: NetnsRef, cgroup: str | None) -> None:
        self._config = config
        self._netns = netns
        self._cgroup = cgroup
        self._lock = threading.RLock()
        self._closing = False
        self._pin_dir: str | None = None
        self._lxc: BpfObject | None = None
        self._maps: NodeMaps | None = None
        self._rodata: NodeRodata | None = None
        self._native_ifindex = 0
        self._lxc_map_id = 0
        self._tunnel: Tunnel | None = None
        self._netdev: NativeDevice | None = None
        self._routing: routing_mod.Routing = routing_mod.NoRouting()
        self._remote: dict[str, NodeInfo] = {}
        self._endpoints = Endpoints(config, netns, None, None)
        self._services = Services(config, None, None, cgroup, netns)
        self._sockops = SockAcceleration(config, None, None, cgroup)
        self._state = state_mod.StateWriter(config)
        self._xdp = XdpDevice(config, None, None, netns, 0)
        self._prefilter = Prefilter(self._xdp, None)
        self._policy: PolicyMaps | None = None
        self._enforcer: PolicyEnforcer | None = None
        self._policy_rows: dict[str, dict[str, Any]] = {}  # the enforced policies, described (state items)
        #: What the last :meth:`sync_policy` did (None before the first).
        self.last_policy_sync: PolicySync | None = None

    def _setup(self) -> None:
        cfg, netns = self._config, self._netns
        if cfg.routing == "vxlan" and cfg.host_routing == "legacy":
            raise NotSupportedError("legacy host routing with a VXLAN overlay is not built", feature="bpf",
                                    hint="use host_routing='bpf', or routing='native' for a legacy node")
        devices.set_sysctl(netns, "net.ipv4.ip_forward", "1")
        self._add_gateway_address()
        if cfg.routing == "vxlan":
            self._tunnel = Tunnel(netns, device=cfg.tunnel_device, mtu=cfg.pod_mtu, gateway=cfg.gateway,
                                  tc_mode=cfg.tc_mode)
        native_ifindex = resolve_ifindex(cfg.underlay_device, netns)[0] if cfg.routing != "none" else 0
        if cfg.host_routing == "bpf":
            rodata = cfg.node_rodata(tunnel_ifindex=self._tunnel.ifindex if self._tunnel else 0,
                                     native_ifindex=native_ifindex, host_netns_cookie=netns_cookie(netns))
            self._load(rodata, native_ifindex)
        self._routing = routing_mod.make(cfg, netns, self._tunnel)

    def _load(self, rodata: NodeRodata, native_ifindex: int) -> None:
        cfg = self._config
        loader.check_overrides(rodata)
        self._publish()  # the registry entry is the datapath's record: written before the pins exist
        self._pin_dir = fs.make_pin_dir(cfg.pin_dir.removeprefix(fs.BPFFS + "/"))
        # The links' directory is made with the pins, not with the first link: it is part of the
        # node from the start (a leak check taken after setup must not see it appear).
        os.makedirs(links.link_pin(self._pin_dir, ""), exist_ok=True)
        self._rodata, self._native_ifindex = rodata, native_ifindex
        loader.use_objects(self._pin_dir, cfg.objects_dir)  # every load of this node takes its build
        loader.use_map_sizes(self._pin_dir, cfg.lb_map_sizes)  # the LB maps' pins are made (and reused) at this size
        self._lxc = loader.load_lxc(rodata, self._pin_dir)
        self._maps = NodeMaps.from_object(self._lxc)
        self._lxc_map_id = self._maps.endpoints.info.id
        self._endpoints = Endpoints(cfg, self._netns, self._lxc, self._maps.endpoints, pin_dir=self._pin_dir)
        self._services = Services(cfg, rodata, self._pin_dir, self._cgroup, self._netns)
        self._sockops = SockAcceleration(cfg, rodata, self._pin_dir, self._cgroup)
        if cfg.sockops_enable:
            self._sockops.enable()
        if self._tunnel is not None:
            self._tunnel.load(rodata, self._pin_dir)
        if cfg.routing != "none":
            # The node's own addresses are endpoints with the HOST flag: traffic for them goes to the
            # stack (e.g. replies to node-to-pod traffic arriving through the tunnel).
            for host_ip in (cfg.gateway, IPv4Address(cfg.node_ip)):
                self._maps.endpoints.set(*host_entry(host_ip))
                self.policy.upsert(host_ip, ReservedIdentity.HOST)
            self._maps.nodes.set(int(IPv4Address(cfg.node_ip)), 1)
            self._netdev = NativeDevice(self._netns, native_ifindex, rodata, self._pin_dir, tc_mode=cfg.tc_mode)
            self._xdp = XdpDevice(cfg, rodata, self._pin_dir, self._netns, native_ifindex)
            self._prefilter = Prefilter(self._xdp, self._pin_dir)
            if cfg.acceleration != "disabled":
                self._xdp.attach()

    def _add_gateway_address(self) -> None:
        # The gateway address (cilium_host's in Cilium) lives on the node's lo: the node answers ARP
        # for it in legacy mode and uses it as source for node-to-pod traffic in both modes.
        with devices.iproute(self._netns) as ipr:
            lo = devices.ifindex(ipr, "lo")
            gw = str(self._config.gateway)
            if lo is not None and not any(a.get_attr("IFA_ADDRESS") == gw for a in ipr.get_addr(index=lo)):
                ipr.addr("add", index=lo, address=gw, prefixlen=32)

    def _publish(self, *changes: state_mod.Change) -> None:
        # Tell other processes (the CLI) about this datapath; BPF state itself lives in the pins.
        # The entry has the node-level fields (rewritten only when they change); the endpoints,
        # services and remote nodes are read from the state directory (``items``), one file each.
        if self._closing:
            return
        registry.publish(self._config.node_name, {
            "node": self._config.node_name, "netns": self._netns, "pin_dir": self._pin_dir,
            "cgroup": self._cgroup, "pid": os.getpid(), "owner": ProcessId.me().as_dict(),
            "claims": {"pin_dir": self._config.pin_dir if self._config.host_routing == "bpf" else None,
                       "state_dir": self._config.run_dir},
            "processes": daemon_entries(getattr(self._routing, "bird", None)),
            "config": dataclasses.asdict(self._config), "items": self._state.root,
            "attachments": [{"program": lk.program, "where": str(lk.point)}
                            for lk in self.attachments(endpoints=False)],
        })
        self._save_state(changes)

    def _save_state(self, changes: tuple[state_mod.Change, ...] = ()) -> None:
        # What a new process needs to adopt this node (restore()): the files of ``changes``, and the
        # node file when a node-level field changed (none before the pins exist, nor in legacy mode).
        if self._closing:
            return
        if self._maps is None or self._pin_dir is None:
            self._state.save(None, changes, None if self._state.synced else self._state_items())
            return
        node_links: dict[str, Any] = {}
        if self._tunnel is not None:
            node_links["overlay"] = [links.describe(lk) for lk in self._tunnel.links]
        if self._netdev is not None:
            node_links["netdev"] = [links.describe(lk) for lk in self._netdev.links]
        xdp = self._xdp.to_json()
        self._state.save({
            "config": state_mod.config_to_json(self._config),
            "netns": self._netns if isinstance(self._netns, str) else None, "cgroup": self._cgroup,
            "owner": ProcessId.me().as_dict(),
            "pins": {"pin_dir": self._pin_dir, "cilium_lxc_id": self._lxc_map_id, "links": node_links},
            "native_ifindex": self._native_ifindex, "xdp": xdp,
            "next_endpoint_id": self._endpoints.next_id,
            "sock_links": self._services.links_json(), "sockops": self._sockops.to_json(),
        }, changes, None if self._state.synced else self._state_items())

    def _state_items(self) -> dict[str, dict[str, dict[str, Any]]]:
        # Every item, for a full rewrite (a new node's first save, a migration from version 1).
        return {"endpoints": {str(e.id): Endpoints.entry(e) for e in self._endpoints.all()},
                "services": {s.name: s.to_dict() for s in self._services.all()},
                "remote_nodes": {n: dataclasses.asdict(i) for n, i in self._remote.items()},
                "prefilter": self._prefilter.items(), "policies": dict(self._policy_rows)}

    # -- what the node is made of ----------------------------------------------------------------------
    @property
    def config(self) -> DatapathConfig:
        """The node's settings (frozen)."""
        return self._config

    @property
    def netns(self) -> NetnsRef:
        """The node's network namespace (None: this process's own)."""
        return self._netns

    @property
    def cgroup(self) -> str | None:
        """The node's cgroup, where socket LB is attached (None: no socket LB hooks)."""
        return self._cgroup

    @property
    def maps(self) -> NodeMaps | None:
        """The node's typed maps (None with legacy host routing, which loads no BPF)."""
        return self._maps

    @property
    def tunnel(self) -> Tunnel | None:
        """The VXLAN overlay (None unless ``routing="vxlan"``)."""
        return self._tunnel

    @property
    def routing(self) -> routing_mod.Routing:
        """How this node reaches other nodes' pods (tunnel, static routes, BGP or none)."""
        return self._routing

    @property
    def remote_nodes(self) -> Mapping[str, NodeInfo]:
        """The other nodes this one routes to, by name (read-only)."""
        return MappingProxyType(self._remote)

    def attachments(self, *, endpoints: bool = True) -> list[Link]:
        """Every program attachment of the node: devices, socket LB hooks, then endpoints (not with
        ``endpoints=False``)."""
        node_links = [*(self._tunnel.links if self._tunnel else []), *self._xdp.links,
                      *(self._netdev.links if self._netdev else []),
                      *self._services.links, *self._sockops.links]
        return node_links + ([e.link for e in self._endpoints.all() if e.link is not None] if endpoints else [])

    # -- other nodes ------------------------------------------------------------------------------------
    def add_remote_node(self, node: NodeInfo) -> None:
        """Reach ``node``'s pods, as the routing strategy does it (tunnel entry, route, or BGP).

        A node with ``routing="none"`` only records it. Raises :class:`CiliumliteError` when the
        route cannot be written (the node is not added then).
        """
        with self._lock:
            if self._maps is not None:
                self._maps.nodes.set(int(IPv4Address(node.ip)), 1)
                self.policy.upsert(node.ip, ReservedIdentity.REMOTE_NODE)
            self._routing.add(node)
            self._remote[node.name] = node
            self._publish(("remote_nodes", node.name, dataclasses.asdict(node)))

    def remove_remote_node(self, node: NodeInfo) -> None:
        """Forget ``node``: its tunnel entry or route goes; other nodes' traffic is untouched."""
        with self._lock:
            known = self._remote.pop(node.name, None)
            if known is None:
                return
            if self._maps is not None:
                self._maps.nodes.pop(int(IPv4Address(known.ip)), None)
                self.policy.delete(known.ip)
            self._routing.remove(known)
            self._publish(("remote_nodes", known.name, None))

    # -- services ---------------------------------------------------------------------------------------
    def validate_service(self, svc: Service) -> None:
        """Raise :class:`ValidationError` if ``svc`` clashes with another service here (nothing is written)."""
        self._services.validate(svc)

    def upsert_service(self, svc: Service) -> None:
        """Create or update a service on this node (like a Service plus its EndpointSlice).

        Validation happens before anything is written; a map failure keeps the previous state.
        When it returns, no new connection goes to a backend that is no longer listed. Raises
        :class:`ValidationError`, :class:`NotSupportedError` (no kube-proxy replacement here),
        :class:`MapFullError` or :class:`BpfError`.
        """
        with self._lock:
            self._services.upsert(svc)
            self._publish(("services", svc.name, self._services.entry(svc.name)))

    def delete_service(self, name: str) -> None:
        """Remove a service from this node. Raises :class:`ValidationError` if it has none of that name."""
        with self._lock:
            self._services.delete(name)
            self._publish(("services", name, None))

    def service(self, name: str) -> Service:
        """A programmed service by name. Raises :class:`ValidationError` if there is none."""
        return self._services.get(name)

    def services(self) -> list[Service]:
        """The services programmed on this node, by name (like ``cilium service list``)."""
        return self._services.all()

    @property
    def lb_maps(self) -> LbMaps | None:
        """The node's LB map writer once a service was programmed (None before).

        For what :meth:`upsert_service` does not cover: bulk programming from packed buffers
        (the benchmarks) and its allocation tables (:meth:`LbMaps.revnat_ids`). Rows written
        around :meth:`upsert_service` are not known to it.
        """
        return self._services.lb

    def lb_entries(self) -> list[dict[str, Any]]:
        """The LB map rows as the kernel has them, like ``cilium bpf lb list``."""
        lb = self._services.lb
        return lb.dump() if lb is not None else []

    # -- socket acceleration (experimental) -------------------------------------------------------------
    @property
    def sockops(self) -> SockAcceleration:
        """Socket acceleration: ``enabled``, ``counters()``, ``sockets()`` (switch it with :meth:`set_sockops`)."""
        return self._sockops

    def set_sockops(self, enabled: bool) -> None:
        """Turn socket acceleration on or off at runtime, under traffic (kept across a restore).

        Off: live connections fall back to TCP/IP at their next message, without a byte lost or out
        of order. Raises what :meth:`SockAcceleration.enable` raises (nothing changed then).
        """
        with self._lock:
            (self._sockops.enable if enabled else self._sockops.disable)()
            self._publish()

    # -- network policy ---------------------------------------------------------------------------------
    @property
    def policy(self) -> PolicyMaps:
        """Endpoints' policy maps and the ipcache (:class:`~ciliumlite.node.policy.PolicyMaps`).

        Raises :class:`CiliumliteError` before the datapath is loaded (legacy host routing).
        """
        if self._policy is None:
            if self._pin_dir is None:
                raise CiliumliteError(f"{self._config.node_name}: no BPF datapath loaded, so no policy maps")
            self._policy = PolicyMaps(self._pin_dir, self._config.policy_map_size)
        return self._policy

    def sync_policy(self, policies: Iterable[Any], endpoints: Iterable[EndpointRecord]) -> PolicySync | None:
        """Enforce the cluster's ``policies`` here, knowing every endpoint of the cluster
        (``endpoints``, from the store): the local endpoints' policy maps and the ipcache are made
        to match (:class:`~ciliumlite.node.enforcement.PolicyEnforcer`; map writes only, no
        reload). Returns what it did, or None (nothing done) without ``enable_policy``.

        Raises :class:`~ciliumlite.policy.IdentityExhaustedError` and :class:`BpfError`; a policy
        too big for an endpoint's map is reported in the result (``overflowed``), that endpoint
        keeping its old one, or locked down (deny-all) with ``policy_lockdown_on_overflow``.
        """
        with self._lock:
            if not self._config.enable_policy or self._pin_dir is None:
                return None
            if self._enforcer is None:
                self._enforcer = PolicyEnforcer(self._config.node_ip, lambda: self.policy)
            self._enforcer.lockdown = self._config.policy_lockdown_on_overflow
            cfg = self._config
            own = {IPv4Network(a) for a in (cfg.gateway, cfg.node_ip, *(n.ip for n in self._remote.values()),
                                            *(e.ip for e in self._endpoints.all()))}
            policies = list(policies)
            result = self._enforcer.sync(self._endpoints.all(), policies, endpoints, own)
            self.last_policy_sync = result
            # What `ciliumlite policy get` shows: the policies this node enforces, one state item each.
            rows = {p.key: p.describe() for p in policies}
            changes = [("policies", k, v) for k, v in rows.items() if self._policy_rows.get(k) != v]
            changes += [("policies", k, None) for k in self._policy_rows if k not in rows]
            self._policy_rows = rows
            if changes:
                self._publish(*changes)
            return result

    def enforced_policies(self) -> dict[str, dict[str, Any]]:
        """The policies the last :meth:`sync_policy` enforced, described (``Policy.describe()``), by key."""
        return dict(self._policy_rows)

    # -- XDP ------------------------------------------------------------------------------------------
    @property
    def prefilter(self) -> PrefilterView:
        """The XDP prefilter: ``add("198.51.100.0/24", ...)``, ``remove(...)``, ``list()``; traffic from a
        denied source CIDR is dropped at XDP on the native device (counted ``DROP_PREFILTER``)."""
        return PrefilterView(lambda: self._prefilter, self._lock, self._publish)

    @property
    def xdp(self) -> XdpDevice:
        """``bpf_xdp`` on the native device: ``attached``, ``mode`` (native or generic), ``summary()``."""
        return self._xdp

    # -- endpoints --------------------------------------------------------------------------------------
    def add_endpoint(self, pod_netns: str, *, name: str | None = None, ip: str | ipaddress.IPv4Address | None = None,
                     labels: dict[str, str] | None = None, identity: int | None = None, ifname: str | None = None,
                     pod_ifname: str = "eth0", adopt: bool = False) -> Endpoint:
        """Connect the pod namespace ``pod_netns`` to this node and program the datapath for it.

        Creates the veth (``lxc…`` here, ``pod_ifname`` in the pod) unless ``adopt=True``, in which
        case the existing host-side ``ifname`` and its peer ``pod_ifname`` are used and left in place
        on removal. ``ip`` defaults to the first free address of the pod CIDR and ``identity`` to
        one derived from ``labels``. Raises :class:`ValidationError` for a bad or taken address, a
        missing namespace or device, or an identity out of range; :class:`BpfError` when netlink or
        the attach fails. On any failure, everything done so far is undone.
        """
        with self._lock:
            ep = self._endpoints.add(pod_netns, name=name, ip=ip, labels=labels, identity=identity, ifname=ifname,
                                     pod_ifname=pod_ifname, adopt=adopt)
            if self._pin_dir is not None:
                self.policy.upsert(ep.ip, ep.identity)
            self._publish(("endpoints", str(ep.id), Endpoints.entry(ep)))
            return ep

    def relabel_endpoint(self, ep: Endpoint | str | ipaddress.IPv4Address, *, identity: int,
                         labels: dict[str, str] | None = None) -> Endpoint:
        """Give an endpoint a new security identity (its pod's or namespace's labels changed), in
        place: its ``cilium_lxc`` row (the identity its packets carry, in the VNI too) and this
        node's ipcache entry; no program is reloaded and its connections stay. Policies that name
        either identity follow at the next :meth:`sync_policy`. Raises :class:`ValidationError`
        for an endpoint this node does not have or an identity out of range."""
        with self._lock:
            target = self._endpoints.relabel(ep, identity, labels)
            if self._pin_dir is not None:
                self.policy.upsert(target.ip, target.identity)
            self._publish(("endpoints", str(target.id), Endpoints.entry(target)))
            return target

    def remove_endpoint(self, ep: Endpoint | str | ipaddress.IPv4Address) -> None:
        """Detach, delete the map entry, the route and (unless adopted) the veth.

        Raises :class:`ValidationError` for an endpoint this node does not have.
        """
        with self._lock:
            gone = self._endpoints.remove(ep)
            if self._pin_dir is not None:  # its policy map is freed, its address forgotten
                self.policy.clear(gone)
                self.policy.delete(gone.ip)
            self._publish(("endpoints", str(gone.id), None))

    def endpoints(self) -> list[Endpoint]:
        """Endpoints of this node, by id (like ``cilium endpoint list``)."""
        return self._endpoints.all()

    def endpoint(self, ip: str | ipaddress.IPv4Address) -> Endpoint:
        """The endpoint with this IP. Raises :class:`ValidationError` if there is none."""
        return self._endpoints.get(ip)

    def bpf_endpoints(self) -> dict[EndpointKey, EndpointInfo]:
        """The endpoint map as the kernel has it (like ``cilium bpf endpoint list``)."""
        return dict(self._maps.endpoints.items()) if self._maps is not None else {}

    # -- counters and tables ----------------------------------------------------------------------------
    def metrics(self) -> list[MetricRow]:
        """Forwarded and dropped packets by reason and direction (empty in legacy mode)."""
        return sum_metrics(self._maps.metrics) if self._maps is not None else []

    def count(self, reason: Reason | int, direction: Direction | int | None = None) -> int:
        """Packets counted for ``reason`` (in ``direction``, or all)."""
        return sum(m.packets for m in self.metrics() if m.reason == reason and direction in (None, m.direction))

    def conntrack(self) -> dict[Ipv4CtTuple, CtEntry]:
        """Both CT maps (TCP and non-TCP) as the kernel has them, like ``cilium bpf ct list global``."""
        if self._maps is None:
            return {}
        return {k: v for m in self._maps.conntrack_maps() for k, v in m.items()}

    def gc_conntrack(self, *, at: int | None = None) -> gc.GcResult:
        """Delete expired conntrack entries and stale NAT entries (run it periodically)."""
        if self._maps is None:
            return gc.GcResult(0, 0, 0, 0)
        return gc.collect(self._maps.conntrack_maps(), self._maps.snat, at=at)

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        # A with-block scopes the datapath: it is removed when the block ends (the notebook and
        # test idiom); a long-lived owner calls close() and keeps it running.
        self.close(remove=True)

    # -- for people -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A summary like ``cilium status`` for this node."""
        cfg = self._config
        return {"node": cfg.node_name, "host_routing": cfg.host_routing.upper()
                if cfg.host_routing == "bpf" else "Legacy", "pod_cidr": cfg.pod_cidr,
                "endpoints": len(self._endpoints), "routing": cfg.routing, "routes": self._routing.name,
                "remote_nodes": sorted(self._remote), "sockops": self._sockops.summary(),
                "programs": [f"{e.ifname}: {e.link.point}" for e in self._endpoints.all() if e.link is not None],
                "xdp": {**self._xdp.summary(), "prefilter": [str(n) for n in self._prefilter.list()]}}

    def __repr__(self) -> str:
        cfg = self._config
        return (f"<Datapath {cfg.node_name} {cfg.host_routing} pod_cidr={cfg.pod_cidr} "
                f"endpoints={len(self._endpoints)}>")

    def _repr_html_(self) -> str:
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in ep.as_row().values()) + "</tr>"
                       for ep in self._endpoints.all())
        head = "".join(f"<th>{k}</th>" for k in ENDPOINT_COLUMNS)
        return (f"<b>Datapath {html.escape(self._config.node_name)}</b> ({self._config.host_routing} host routing, "
                f"pod CIDR {self._config.pod_cidr})<table><tr>{head}</tr>{rows}</table>")


__all__ = ["RELOADABLE", "Datapath", "MetricRow", "netns_cookie"]
