"""Restart and upgrade of a node's datapath: :meth:`Datapath.restore` and :meth:`Datapath.reload`.

A mixin of :class:`~ciliumlite.node.datapath.Datapath` (the facade inherits it), kept apart so
the facade stays about its lifecycle and this file about adopting a running node and swapping its
programs. It declares the facade's fields it uses; it never imports the facade.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Mapping
from typing import Any, TypeVar

from ciliumlite.bpf import BpfObject
from ciliumlite.bpf.errors import BpfError, CiliumliteError, LayoutError, NotSupportedError, ValidationError
from ciliumlite.bpf.link import Link
from ciliumlite.bpf.netns import NetnsRef, entered
from ciliumlite.bpf.program import resolve_ifindex
from ciliumlite.cluster.store import NodeInfo
from ciliumlite.datapath import loader, migrate, registry, tailcalls
from ciliumlite.datapath.config import DatapathConfig, NodeRodata
from ciliumlite.datapath.maps import TUNNEL, NodeMaps
from ciliumlite.node import links
from ciliumlite.node import routing as routing_mod
from ciliumlite.node import state as state_mod
from ciliumlite.node.endpoints import Endpoints
from ciliumlite.node.netdev import NativeDevice
from ciliumlite.node.parts import NodeParts
from ciliumlite.node.prefilter import Prefilter
from ciliumlite.node.services import Services
from ciliumlite.node.sockops import SockAcceleration
from ciliumlite.node.tunnel import Tunnel
from ciliumlite.node.xdp import XdpDevice
from ciliumlite.ownership.identity import ProcessId

SO_NETNS_COOKIE = 71
#: Config fields a :meth:`Datapath.reload` may change: they only reach the programs' ``.rodata``.
#: Everything else shapes devices, routes, maps or pins, which a reload keeps as they are.
RELOADABLE = frozenset({"monitor_drops", "monitor_trace", "events_per_sec", "extra_rodata"})
#: A reload with another build is an upgrade (its changed maps migrated: ciliumlite.datapath.migrate).
RELOADABLE |= {"objects_dir"}
#: Socket acceleration is switched at runtime anyway (Datapath.set_sockops): a reload may change it.
RELOADABLE |= {"sockops_enable", "sockops_exclude_ports"}
#: Read by the policy control plane only (what an overflowing endpoint gets): nothing to reload.
RELOADABLE |= {"policy_lockdown_on_overflow"}
_UNSET: Any = object()
_D = TypeVar("_D", bound="RestoreAndReload")


def netns_cookie(netns: NetnsRef) -> int:
    """The kernel's cookie of a network namespace (what bpf_get_netns_cookie returns there)."""
    with entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")



class RestoreAndReload(NodeParts):
    """The restart and hot-replacement half of :class:`~ciliumlite.node.datapath.Datapath`."""

    # -- restart and upgrade -----------------------------------------------------------------------------
    @classmethod
    def restore(cls: type[_D], config: DatapathConfig | str, netns: NetnsRef = _UNSET, *,
                cgroup: str | None = _UNSET) -> _D:
        """Adopt a node another (dead or detached) process left running, from its pins and state.

        ``config`` is the node's config, or its name (the state directory is then found from the
        registry entry, else the default run dir). ``netns``/``cgroup`` default to what the state
        names. Nothing is re-created, written to a map or detached: endpoints, services, remote
        nodes and id allocations carry on as the state file says; the pinned maps (their BTF
        layouts checked against ciliumlite's records) and pinned links are re-opened, and their
        kernel ids checked against the state. Objects are loaded again only when needed (a new
        endpoint, :meth:`reload`).

        Raises :class:`~ciliumlite.node.state.StateError` (``reason``: ``missing``, ``corrupt``,
        ``version``, ``other-node``, ``config`` when ``config`` differs from the stored one,
        ``owner`` when the owner still runs, ``pins`` for a missing or foreign pin, ``layout``
        for a map of another layout) and :class:`NotSupportedError` for legacy nodes. On any
        error the running datapath is left exactly as it was. A BGP node's bird is adopted by
        its pidfile (:class:`~ciliumlite.node.routing.BgpRoutes`), started only if it is gone.

        A ``config`` that differs from the stored one only in ``objects_dir`` is an upgrade: the
        node is adopted, then reloaded with that build (:meth:`reload`, which migrates the maps
        whose layout changed); if the reload refuses (:class:`~ciliumlite.datapath.migrate.MigrationError`)
        the node is detached again, still running the old build.
        """
        by_name = isinstance(config, str)
        if isinstance(config, str):
            config = _config_for(config)
        st = state_mod.read(config)
        path = state_mod.state_path(config)
        stored = state_mod.config_from_json(st["config"], path)
        upgrade = not by_name and stored != config and stored == dataclasses.replace(config,
                                                                                    objects_dir=stored.objects_dir)
        if not by_name and stored != config and not upgrade:
            differ = ", ".join(f.name for f in dataclasses.fields(DatapathConfig)
                               if getattr(stored, f.name) != getattr(config, f.name))
            raise state_mod.StateError(f"{config.node_name}: the config given differs from the one the running "
                                       f"datapath has in {differ}; restore with that one (or by name), then "
                                       "reload(new config)", reason="config", path=path)
        if stored.host_routing != "bpf":
            raise NotSupportedError("restore needs BPF host routing", feature="restore")
        try:
            owner = ProcessId.from_dict(st["owner"])
        except (KeyError, TypeError, ValueError):
            owner = None
        if owner is not None and owner.pid != os.getpid() and owner.alive():
            raise state_mod.StateError(f"{config.node_name} is still owned by the live process {owner.pid}: "
                                       "stop it (or detach) first", reason="owner", path=path)
        self = cls.__new__(cls)
        self._init_fields(stored, st["netns"] if netns is _UNSET else netns,
                          st["cgroup"] if cgroup is _UNSET else cgroup)
        self._state.adopted(st)  # a version-2 directory is kept as it is; a version-1 file is rewritten
        try:
            self._adopt(st, path)
        except BaseException:
            self._let_go()
            raise
        self._publish()
        if upgrade:
            try:
                self.reload(config)
            except BaseException:
                self.detach()  # type: ignore[attr-defined]  # the facade's: keeps the old build running
                raise
        return self

    def _adopt(self, st: dict[str, Any], path: str) -> None:
        cfg, netns = self._config, self._netns
        pins = st["pins"]
        pin_dir = cfg.pin_dir
        if pins.get("pin_dir") != pin_dir or not os.path.isdir(pin_dir):
            raise state_mod.StateError(f"{cfg.node_name}: the pin directory {pin_dir} is missing (or the state "
                                       f"names {pins.get('pin_dir')})", reason="pins", path=pin_dir)
        loader.use_objects(pin_dir, cfg.objects_dir)  # later loads (a new endpoint) take the node's build
        loader.use_map_sizes(pin_dir, cfg.lb_map_sizes)  # the LB maps' pins are made (and reused) at this size
        recovered = migrate.recover(pin_dir)  # an upgrade killed half-way: its new pins finished or removed
        maps = NodeMaps.from_pins(pin_dir)
        self._maps = maps
        try:
            lxc_map = maps.endpoints
            for spec in (TUNNEL,):  # opened early: a layout mismatch fails before anything is taken
                if maps.has(spec):
                    maps.get(spec)
            found_id = lxc_map.info.id
        except LayoutError as exc:
            raise state_mod.StateError(f"{cfg.node_name}: a pinned map has another layout than this build's "
                                       f"records: {exc}", reason="layout", path=pin_dir) from exc
        except BpfError as exc:
            raise state_mod.StateError(f"{cfg.node_name}: a pinned map is missing: {exc}", reason="pins",
                                       path=pin_dir) from exc
        if found_id != pins.get("cilium_lxc_id") and recovered.get("cilium_lxc") != "finished":
            raise state_mod.StateError(f"{cfg.node_name}: the maps pinned in {pin_dir} are not the ones the state "
                                       f"names (cilium_lxc is map {found_id}, not {pins.get('cilium_lxc_id')}): "
                                       "pins of another node or of another run", reason="other-node", path=pin_dir)
        self._pin_dir, self._lxc_map_id = pin_dir, found_id
        try:
            self._adopt_parts(st)
        except links.AdoptError as exc:
            raise state_mod.StateError(f"{cfg.node_name}: {exc}", reason="pins" if exc.reason == "missing"
                                       else "other-node", path=exc.path) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise state_mod.StateError(f"{cfg.node_name}: the state file {path} is malformed: {exc!r}",
                                       reason="corrupt", path=path) from exc
        # A BGP node's running bird is taken over (its sessions and routes carry on), not restarted.
        self._routing = routing_mod.make(cfg, netns, self._tunnel, adopt=True)
        for node in self._remote.values():
            self._routing.adopt(node)  # recorded, not re-written: a route replace is no no-op to traffic

    def _adopt_parts(self, st: dict[str, Any]) -> None:
        cfg, netns = self._config, self._netns
        assert self._maps is not None and self._pin_dir is not None
        node_links = st["pins"]["links"]
        tunnel_ifindex = 0
        if cfg.routing == "vxlan":
            tunnel_ifindex = resolve_ifindex(cfg.tunnel_device, netns)[0]
            overlay = [links.adopt(d, netns) for d in node_links["overlay"]]
            self._tunnel = Tunnel.adopt(netns, device=cfg.tunnel_device, gateway=cfg.gateway, tc_mode=cfg.tc_mode,
                                        ifindex=tunnel_ifindex, link=overlay[0],
                                        tunnel_map=self._maps.get(TUNNEL))
        self._native_ifindex = int(st["native_ifindex"])
        if cfg.routing != "none":
            if resolve_ifindex(cfg.underlay_device, netns)[0] != self._native_ifindex:
                raise state_mod.StateError(f"{cfg.node_name}: {cfg.underlay_device} has another ifindex than when "
                                           "the datapath was built (the programs carry the old one)", reason="pins",
                                           path=cfg.underlay_device)
            adopted: list[Link] = []
            try:
                for d in node_links["netdev"]:
                    adopted.append(links.adopt(d, netns))
            except BaseException:
                for lk in adopted:
                    links.release(lk)
                raise
            self._netdev = NativeDevice.adopt(netns, self._native_ifindex, adopted)
        self._rodata = cfg.node_rodata(tunnel_ifindex=tunnel_ifindex, native_ifindex=self._native_ifindex,
                                       host_netns_cookie=netns_cookie(netns))
        self._xdp = XdpDevice(cfg, self._rodata, self._pin_dir, netns, self._native_ifindex)
        self._xdp.adopt(st.get("xdp"))  # absent from state written before XDP: not attached
        self._prefilter = Prefilter(self._xdp, self._pin_dir)
        self._prefilter.adopt(st.get("prefilter", []))
        self._policy_rows = dict(st.get("policies", {}))
        self._endpoints = Endpoints(cfg, netns, None, self._maps.endpoints, pin_dir=self._pin_dir,
                                    load_lxc=self._load_lxc_lazily)
        self._endpoints.adopt(st["endpoints"], int(st["next_endpoint_id"]))
        self._services = Services(cfg, self._rodata, self._pin_dir, self._cgroup, netns)
        self._services.adopt(st["services"], st["sock_links"], netns)
        self._sockops = SockAcceleration(cfg, self._rodata, self._pin_dir, self._cgroup)
        self._sockops.adopt(st.get("sockops"), netns)  # absent from state files written before it
        self._remote = {n["name"]: NodeInfo(**n) for n in st["remote_nodes"]}

    def _load_lxc_lazily(self) -> BpfObject:
        assert self._rodata is not None and self._pin_dir is not None
        self._lxc = loader.load_lxc(self._rodata, self._pin_dir)
        return self._lxc


    def reload(self, config: DatapathConfig | None = None, *, converters: Mapping[str, migrate.Converter] | None = None,
               strict: bool = False) -> migrate.MigrationReport:
        """Replace every program with a freshly loaded build (or the same build with ``config``).

        The objects are loaded again reusing the pinned maps (nothing is cleared), then each
        attach point is swapped atomically: ``BPF_LINK_UPDATE`` for tcx and cgroup links, an
        in-place ``tc filter replace`` (same priority and handle) for clsact filters. No packet
        sees a missing program. ``config`` may change only :data:`RELOADABLE` fields.

        An upgrade is a reload with another build (``config.objects_dir``, or new objects in the
        same place): a pinned map whose layout the new build changed is migrated first
        (:mod:`ciliumlite.datapath.migrate`): a new map is built and filled before any program is
        swapped, entries the old programs added meanwhile are copied after the swap, then the new
        map takes the pin. ``converters`` (map name -> function) migrate maps whose key or type
        changed; ``strict`` refuses rather than starting a soft-state map (conntrack, NAT) empty.
        Returns what was migrated (:class:`~ciliumlite.datapath.migrate.MigrationReport`).

        Raises :class:`ValidationError` for a config change a reload cannot make,
        :class:`NotSupportedError` with legacy host routing, and what loading raises
        (:class:`VerifierError`, :class:`LayoutError`, :class:`BpfError`), and
        :class:`~ciliumlite.datapath.migrate.MigrationError` for a map that cannot migrate (it
        says which, what changed and why): nothing was swapped then, and the new maps are gone.
        A swap that fails part-way puts the old programs back and raises its error.
        """
        with self._lock:
            if self._pin_dir is None or self._rodata is None:
                raise NotSupportedError("legacy host routing has no programs to reload", feature="bpf host routing")
            new_cfg = config or self._config
            changed = sorted(f.name for f in dataclasses.fields(DatapathConfig)
                             if getattr(new_cfg, f.name) != getattr(self._config, f.name))
            if set(changed) - RELOADABLE:
                raise ValidationError(f"reload cannot change {', '.join(sorted(set(changed) - RELOADABLE))} "
                                      f"(only {', '.join(sorted(RELOADABLE))}): build the node again")
            rodata = new_cfg.node_rodata(tunnel_ifindex=self._tunnel.ifindex if self._tunnel else 0,
                                         native_ifindex=self._native_ifindex,
                                         host_netns_cookie=netns_cookie(self._netns))
            loader.check_overrides(rodata)
            migration = migrate.Migration(self._pin_dir, converters=dict(converters or {}), strict=strict)
            loader.use_objects(self._pin_dir, new_cfg.objects_dir)  # the build the loads below take
            loader.set_prepare(self._pin_dir, migration.prepare)
            fresh: dict[str, BpfObject] = {}
            try:
                fresh["lxc"] = loader.load_lxc(rodata, self._pin_dir)
                if self._tunnel is not None:
                    fresh["overlay"] = loader.load_overlay(rodata, self._pin_dir)
                if self._netdev is not None:
                    # Its calls map is pinned as pending: the old programs still jump through theirs.
                    fresh["host"] = loader.load_host(rodata, self._pin_dir, pending=True)
                if self._xdp.attached:
                    fresh["xdp"] = self._xdp.load_fresh(rodata)
                if self._services.active:
                    fresh["sock"] = loader.load_sock(rodata, self._pin_dir)
                if self._sockops.loaded:
                    fresh["sockops"] = loader.load_sockops(rodata, self._pin_dir)
                loader.set_prepare(self._pin_dir, None)
                migration.fill()  # every new map complete before the first program swap
                self._swap_all(fresh)
            except BaseException:
                loader.set_prepare(self._pin_dir, None)
                migration.abort()
                loader.use_objects(self._pin_dir, self._config.objects_dir)  # the build that still runs
                tailcalls.discard(self._pin_dir)
                for obj in fresh.values():
                    obj.close()
                raise
            report = migration.commit()
            self._commit_reload(fresh, new_cfg, rodata)
            self._after_migration(report)
            # Only now, with no old program attached, the new calls maps replace the old pins.
            tailcalls.commit(self._pin_dir)
            self._publish()
            return report

    def _after_migration(self, report: migrate.MigrationReport) -> None:
        # The parts that hold a map open take the new one of each migrated map (the endpoints,
        # tunnel and node maps come from the new objects already); the state names the new lxc map.
        assert self._maps is not None
        self._lxc_map_id = self._maps.endpoints.info.id
        if report.changes:
            self._services.maps_replaced({c.name for c in report.changes})

    def _swaps(self, fresh: dict[str, BpfObject]) -> list[tuple[Link, Any, Any]]:
        # (link, new program, the old object's program for a clsact rollback)
        out: list[tuple[Link, Any, Any]] = []
        old_lxc = self._endpoints.lxc
        for ep in self._endpoints.all():
            if ep.link is not None:
                out.append((ep.link, fresh["lxc"].program("cil_from_container"),
                            old_lxc.program("cil_from_container") if old_lxc else None))
        if self._tunnel is not None:
            old = self._tunnel.obj
            for lk in self._tunnel.links:
                out.append((lk, fresh["overlay"].program("cil_from_overlay"),
                            old.program("cil_from_overlay") if old else None))
        if self._netdev is not None:
            old = self._netdev.obj
            for lk, name in zip(self._netdev.links, ("cil_from_netdev", "cil_to_netdev"), strict=False):
                out.append((lk, fresh["host"].program(name), old.program(name) if old else None))
        if "xdp" in fresh:
            old = self._xdp.obj
            for lk in self._xdp.links:
                out.append((lk, fresh["xdp"].program(lk.program), old.program(lk.program) if old else None))
        if "sock" in fresh:
            old = self._services.sock
            for lk in self._services.links:
                out.append((lk, fresh["sock"].program(lk.program), old.program(lk.program) if old else None))
        if "sockops" in fresh:
            old = self._sockops.obj
            for lk in self._sockops.links:
                out.append((lk, fresh["sockops"].program(lk.program), old.program(lk.program) if old else None))
        return out

    def _swap_all(self, fresh: dict[str, BpfObject]) -> None:
        done: list[tuple[Link, int | None, str]] = []
        try:
            for link, prog, old_prog in self._swaps(fresh):
                old_fd = links.attached_prog_fd(link, old_prog)
                name = link.program
                try:
                    links.swap(link, prog)
                except BaseException:
                    if old_fd is not None:
                        os.close(old_fd)
                    raise
                done.append((link, old_fd, name))
        except BaseException:
            for link, old_fd, name in reversed(done):
                if old_fd is not None:
                    with contextlib.suppress(CiliumliteError):
                        links.swap_back(link, old_fd, name)
            raise
        finally:
            for _, old_fd, _ in done:
                if old_fd is not None:
                    os.close(old_fd)

    def _commit_reload(self, fresh: dict[str, BpfObject], cfg: DatapathConfig, rodata: NodeRodata) -> None:
        old_objs = [self._lxc, self._endpoints.lxc]
        maps = NodeMaps.from_object(fresh["lxc"])
        self._endpoints.set_object(fresh["lxc"], maps.endpoints)
        if self._tunnel is not None:
            old_objs.append(self._tunnel.set_object(fresh["overlay"]))
        if self._netdev is not None:
            old_objs.append(self._netdev.set_object(fresh["host"]))
        if "xdp" in fresh:
            old_objs.append(self._xdp.set_object(fresh["xdp"]))
        self._xdp.set_rodata(rodata)
        if "sock" in fresh:
            old_objs.append(self._services.set_sock(fresh["sock"]))
        self._services.set_rodata(rodata)
        if "sockops" in fresh:
            old_objs.append(self._sockops.set_object(fresh["sockops"]))
        self._sockops.set_rodata(rodata)
        if self._maps is not None:
            self._maps.close()
        self._maps, self._lxc, self._rodata = maps, fresh["lxc"], rodata
        for obj in {id(o): o for o in old_objs if o is not None}.values():
            obj.close()
        if cfg != self._config:
            self._config = cfg
            self._endpoints.config = self._services.config = cfg
            self._sockops.apply(cfg)


def _config_for(node_name: str) -> DatapathConfig:
    """The config whose state directory holds ``node_name``'s state: the registry entry's, else the
    default (a node built with a custom ``state_dir`` is found through its registry entry)."""
    import json

    try:
        entry = json.loads(registry.entry_path(node_name).read_text())
        state_dir = str(entry["claims"]["state_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return DatapathConfig(node_name=node_name)
    return DatapathConfig(node_name=node_name, state_dir=state_dir)
