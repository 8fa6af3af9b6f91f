"""Socket acceleration of one node (experimental, off by default): ``bpf_sockops`` and its links.

Enabling loads ``bpf_sockops.o`` (maps pinned with the node's), attaches ``cil_sk_msg`` to the
``cilium_sock_ops`` sockhash and ``cil_sockops`` to the node's own cgroup (never the root), both
as pinned links, and turns the runtime switch on. From then on, a TCP connection between two
pods of this node whose sockets were created in that cgroup skips TCP/IP and both veths: each
``sendmsg`` goes straight to the peer socket's receive queue. Disabling turns the switch off
(live connections fall back to TCP/IP at their next message, none out of order: see
``csrc/bpf_sockops.c``; ``cil_sockops`` adds no new socket while it is off). Both programs stay
attached until the node is closed: sockets stay in the map until the kernel removes them as they
close, so a disable never drops a byte (removing a socket from the map would drop what it has
queued), and switching on again is one map write, with no program loaded or link made.

Not thread-safe on its own: the :class:`~ciliumlite.node.Datapath` serialises calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ciliumlite.bpf import U8, U16, BpfObject, Map, features
from ciliumlite.bpf.errors import NotSupportedError
from ciliumlite.bpf.link import Link
from ciliumlite.bpf.netns import NetnsRef
from ciliumlite.datapath import loader
from ciliumlite.datapath import sockops as readers
from ciliumlite.datapath.config import DatapathConfig, NodeRodata
from ciliumlite.datapath.maps import SOCK_CFG, SOCK_CTR, SOCK_OPS, MapSpec
from ciliumlite.datapath.records import SockKey, SockopsConfig
from ciliumlite.node import links

SOCKOPS_PROGRAM = "cil_sockops"
SK_MSG_PROGRAM = "cil_sk_msg"
#: The map of ports never accelerated (sockops.h: ``cilium_sock_exc``).
EXCLUDE_MAP = "cilium_sock_exc"


class SockAcceleration:
    """Socket send/recv acceleration on one node; see the module docstring."""

    def __init__(self, config: DatapathConfig, rodata: NodeRodata | None, pin_dir: str | None,
                 cgroup: str | None) -> None:
        self.config = config
        self._rodata = rodata
        self._pin_dir = pin_dir
        self._cgroup = cgroup
        self._obj: BpfObject | None = None
        self._sockops_link: Link | None = None
        self._msg_link: Link | None = None
        self._enabled = False

    # -- what it is ------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Whether new same-node connections are accelerated now (the runtime switch)."""
        return self._enabled

    @property
    def loaded(self) -> bool:
        """Whether ``bpf_sockops`` runs on this node (enabled, or disabled with sockets left)."""
        return self._msg_link is not None

    @property
    def obj(self) -> BpfObject | None:
        """The loaded ``bpf_sockops`` (None before the first enable, or on an adopted node)."""
        return self._obj

    @property
    def links(self) -> list[Link]:
        """The attachments: the sk_msg link on the sockhash, then the sockops link on the cgroup."""
        return [lk for lk in (self._msg_link, self._sockops_link) if lk is not None]

    @contextlib.contextmanager
    def _open(self, spec: MapSpec[Any, Any]) -> Iterator[Map[Any, Any]]:
        # The object's own map when it is loaded here (no new fd); else the pin, closed after use
        # (an adopted node), so reading the counters never leaves an fd open.
        if self._obj is not None:
            yield spec.from_object(self._obj)
            return
        assert self._pin_dir is not None
        with spec.from_pins(self._pin_dir) as m:
            yield m

    def counters(self) -> dict[str, readers.SockopsCount]:
        """Messages redirected vs passed, sockets added, fallbacks by reason (all zero before the
        first enable)."""
        if not self.loaded:
            return {name: readers.SockopsCount(0, 0) for name in readers.COUNTERS.values()}
        with self._open(SOCK_CTR) as ctr:
            return readers.sum_counters(ctr)

    def sockets(self) -> list[SockKey]:
        """The sockets in the sockhash now (each end of an accelerated connection is one)."""
        if not self.loaded:
            return []
        with self._open(SOCK_OPS) as sockhash:
            return readers.sockets(sockhash)

    def summary(self) -> dict[str, Any]:
        """What ``status`` shows: the switch, the sockets in the map, the counters that matter."""
        c = self.counters()
        return {"enabled": self._enabled, "loaded": self.loaded, "sockets": len(self.sockets()),
                "excluded_ports": list(self.config.sockops_exclude_ports),
                "messages_redirected": c["msg_redirect"].count, "messages_passed": c["msg_pass"].count,
                "bytes_redirected": c["msg_redirect"].bytes, "bytes_passed": c["msg_pass"].bytes,
                "splice_read_safe": features.has_sockmap_splice_read()}

    # -- switching -------------------------------------------------------------------------------------
    def _check(self) -> None:
        if self._pin_dir is None or self._rodata is None:
            raise NotSupportedError("socket acceleration needs host_routing='bpf' (it loads bpf_sockops)",
                                    feature="sockops")
        if not self._cgroup:
            raise NotSupportedError("socket acceleration attaches to the node's cgroup, and this datapath has none",
                                    feature="sockops", hint="create the Datapath with cgroup=<a child cgroup>")
        if not features.has_sockmap_link():
            raise NotSupportedError("socket acceleration needs sockmap links (Linux 6.10+)", feature="sockmap_link",
                                    hint="leave sockops_enable off on this kernel")

    def enable(self) -> None:
        """Accelerate new same-node connections. Raises :class:`NotSupportedError` (no BPF host
        routing, no cgroup, a kernel without sockmap links) and what loading or attaching raises
        (:class:`VerifierError`, :class:`BpfError`); the node is as before then."""
        if self._enabled:
            return
        self._check()
        assert self._pin_dir is not None and self._rodata is not None and self._cgroup is not None
        made: list[Link] = []
        new_obj = False
        try:
            if self._obj is None and (self._msg_link is None or self._sockops_link is None):
                self._obj = loader.load_sockops(self._rodata, self._pin_dir)
                new_obj = True
            if self._msg_link is None:
                assert self._obj is not None
                prog = self._obj.program(SK_MSG_PROGRAM)
                self._msg_link = links.keep(prog.attach_sockmap(self._obj.map(SOCK_OPS.name)), self._pin_dir,
                                            f"sockops-{SK_MSG_PROGRAM}")
                made.append(self._msg_link)
            if self._obj is not None:  # an adopted node keeps the ports its maps hold (a reload syncs them)
                self._sync_excluded()
            self._switch(1)
            if self._sockops_link is None:
                assert self._obj is not None
                link = self._obj.program(SOCKOPS_PROGRAM).attach_cgroup(self._cgroup, "sockops")
                self._sockops_link = links.keep(link, self._pin_dir, f"sockops-{SOCKOPS_PROGRAM}")
        except BaseException:
            with contextlib.suppress(Exception):
                if self.loaded:
                    self._switch(0)
            for lk in made:
                links.drop(lk)
            self._msg_link = None if self._msg_link in made else self._msg_link
            if new_obj and self._obj is not None:
                self._obj.close()
                self._obj = None
            raise
        self._enabled = True

    def disable(self) -> None:
        """Stop accelerating: live connections fall back to TCP/IP at their next message, in order;
        no new socket is added (``cil_sockops`` reads the switch). Both programs stay attached, so
        switching on again is one map write: no program loaded, no link made, also on a restored
        node. Raises :class:`BpfError` if the switch cannot be written."""
        if not self._enabled:
            return
        self._switch(0)
        self._enabled = False

    def _switch(self, enabled: int) -> None:
        with self._open(SOCK_CFG) as cfg:
            cfg.set(0, SockopsConfig(enabled=enabled))

    def _sync_excluded(self) -> None:
        assert self._obj is not None
        exc = self._obj.map(EXCLUDE_MAP, U16, U8)
        want = set(self.config.sockops_exclude_ports)
        for port in set(exc.keys()) - want:
            exc.delete(port)
        for port in want:
            exc.set(port, 1)

    # -- state, restore and reload ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """What the state file keeps: the switch and the links."""
        return {"enabled": self._enabled, "links": [links.describe(lk) for lk in self.links]}

    def adopt(self, desc: dict[str, Any] | None, netns: NetnsRef) -> None:
        """Carry on with what a state file lists (None: an older file, the feature off). Nothing is
        written. Raises :class:`~ciliumlite.node.links.AdoptError` or ``KeyError`` (what was taken
        over is let go then)."""
        if not desc:
            return
        try:
            for d in desc.get("links", []):
                link = links.adopt(d, netns)
                if d["program"] == SK_MSG_PROGRAM:
                    self._msg_link = link
                else:
                    self._sockops_link = link
            self._enabled = bool(desc.get("enabled")) and self._sockops_link is not None and self._msg_link is not None
        except BaseException:
            self.release()
            raise

    def set_object(self, obj: BpfObject) -> BpfObject | None:
        """Use the reloaded ``obj`` (its programs already swapped in); returns the old one to close."""
        old, self._obj = self._obj, obj
        return old

    def set_rodata(self, rodata: NodeRodata) -> None:
        """The rodata a later load uses (a reload or a restore)."""
        self._rodata = rodata

    def apply(self, config: DatapathConfig) -> None:
        """Follow a reloaded config: its excluded ports, then its switch."""
        self.config = config
        if self._obj is not None:
            self._sync_excluded()
        if config.sockops_enable:
            self.enable()
        else:
            self.disable()

    def release(self) -> None:
        """Let go and leave everything attached (detach, a failed restore)."""
        self._shut(keep=True)

    def close(self) -> None:
        """Detach both programs and close the object (the node's pins go with the node)."""
        self._shut(keep=False)

    def _shut(self, *, keep: bool) -> None:
        for lk in self.links:
            (links.release if keep else links.drop)(lk)
        self._msg_link = self._sockops_link = None
        self._enabled = False
        if self._obj is not None:
            self._obj.close()
            self._obj = None


__all__ = ["SK_MSG_PROGRAM", "SOCKOPS_PROGRAM", "SockAcceleration"]
