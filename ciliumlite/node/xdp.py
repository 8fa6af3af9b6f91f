"""XDP on the node's native device: ``bpf_xdp.o`` (the prefilter and NodePort acceleration).

The program is attached when the node is built with ``acceleration`` other than ``"disabled"``,
or on the first :meth:`~ciliumlite.node.prefilter.PrefilterView.add` of a node without it, and
stays until the node closes. Its link is pinned like every other (``<pin dir>/links/xdp``), so a
restore adopts it and a reload swaps its program with ``BPF_LINK_UPDATE``.

Which XDP mode (Helm's ``loadBalancer.acceleration``):

- ``"native"``: driver mode or a :class:`NotSupportedError`; nothing is attached then.
- ``"best-effort"``: driver mode where the device can, else generic (skb) XDP.
- ``"disabled"`` (NodePort stays in tc): the prefilter alone, in driver mode where possible.

A veth is special: its XDP_TX and XDP_REDIRECT put frames on the *peer's* receive queue, which
the kernel serves only when the peer has NAPI (``veth_xdp_xmit``; otherwise the frames vanish
without a counter on either side). An XDP program on the peer gives it NAPI, and that is what
the check below accepts. GRO is documented to do the same, but measured on Linux 6.18 it is not
dependable: GRO alone brought back 0 of 2 bounced frames, GRO with UDP GRO forwarding 2 of 2 in
a bare veth pair, yet in the lab (a bridge behind the peer) NodePort connections in driver mode
still lost frames after the handshake, while generic XDP carried every one (docs/xdp.md). So
NodePort acceleration in driver mode on a veth first checks the peer (found through its namespace
id among the named namespaces) and refuses (native) or falls back to generic XDP (best-effort)
when the peer has none. The lab gives an accelerated node's fabric port a pass-everything XDP
program (``ciliumlite.lab.fabric.Fabric.prepare_xdp``), so lab nodes run driver mode.

Not thread-safe on its own: the :class:`~ciliumlite.node.Datapath` serialises calls.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from ciliumlite.bpf import BpfObject
from ciliumlite.bpf.errors import BpfError, NotSupportedError
from ciliumlite.bpf.link import Link
from ciliumlite.bpf.netns import NetnsRef
from ciliumlite.bpf.program import XdpMode
from ciliumlite.datapath import devices, loader
from ciliumlite.datapath.config import DatapathConfig, NodeRodata
from ciliumlite.node import links

XDP_PROGRAM = "cil_xdp_entry"
LINK_NAME = "xdp"
NETNS_DIR = "/run/netns"


def veth_peer_ready(netns: NetnsRef, ifindex: int) -> tuple[bool | None, str]:
    """Whether the veth ``ifindex`` (in ``netns``) can XDP_TX: its peer has an XDP program (see the
    module docstring for why GRO is not enough).

    Returns (True/False, the peer's description), (None, why) when the device is no veth (it does
    not apply), or (False, why) when the peer cannot be found (an unnamed namespace).
    """
    with devices.iproute(netns) as ipr:
        link = ipr.link("get", index=ifindex)[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
            return None, "not a veth"
        peer_index = link.get_attr("IFLA_LINK")
        peer_nsid = link.get_attr("IFLA_LINK_NETNSID")
        peer_ns: str | None = None
        if peer_nsid is None:
            peer_ns = netns if isinstance(netns, str) else None  # both ends in one namespace
        else:
            for name in sorted(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else []:
                try:
                    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    if ipr.get_netnsid(fd=fd).get("nsid") == peer_nsid:
                        peer_ns = name
                        break
                finally:
                    os.close(fd)
    if peer_ns is None and peer_nsid is not None:
        return False, f"its peer (ifindex {peer_index}) is in a namespace without a name, which cannot be checked"
    with devices.iproute(peer_ns) as pipr:
        peer = pipr.link("get", index=peer_index)[0]
        peer_name = peer.get_attr("IFLA_IFNAME")
        xdp = peer.get_attr("IFLA_XDP")
        has_prog = bool(xdp is not None and xdp.get_attr("IFLA_XDP_PROG_ID"))
    return has_prog, f"{peer_name} in netns {peer_ns or '(current)'}"


class XdpDevice:
    """``bpf_xdp`` on the node's native device ``ifindex``; see the module docstring.

    Nothing is loaded until :meth:`attach`.
    """

    def __init__(self, config: DatapathConfig, rodata: NodeRodata | None, pin_dir: str | None,
                 netns: NetnsRef, ifindex: int) -> None:
        self.config = config
        self._rodata = rodata
        self._pin_dir = pin_dir
        self._netns = netns
        self.ifindex = ifindex
        self._obj: BpfObject | None = None
        self._link: Link | None = None
        self._mode: XdpMode | None = None
        self._why_generic = ""

    # -- what it is ------------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether ``bpf_xdp`` runs on the device."""
        return self._link is not None

    @property
    def mode(self) -> XdpMode | None:
        """``native`` (driver) or ``generic`` (skb) XDP, None while not attached."""
        return self._mode

    @property
    def nodeport(self) -> bool:
        """Whether the program does NodePort acceleration (else the prefilter only)."""
        return self.config.acceleration != "disabled"

    @property
    def obj(self) -> BpfObject | None:
        """The loaded ``bpf_xdp`` (None before the attach, or on an adopted node)."""
        return self._obj

    @property
    def links(self) -> list[Link]:
        """The XDP link (empty while not attached)."""
        return [self._link] if self._link is not None else []

    def summary(self) -> dict[str, Any]:
        """What ``status`` shows: the acceleration setting, the XDP mode and why, the device."""
        return {"acceleration": self.config.acceleration, "attached": self.attached, "mode": self._mode,
                "device": self.config.underlay_device, "nodeport": self.nodeport and self.attached,
                "note": self._why_generic}

    # -- attaching -------------------------------------------------------------------------------------
    def _native_mac(self) -> str | None:
        with devices.iproute(self._netns) as ipr:
            return str(ipr.link("get", index=self.ifindex)[0].get_attr("IFLA_ADDRESS") or "") or None

    def _veth_check(self) -> str:
        """"" when driver-mode XDP_TX works on the device, else why not."""
        ready, where = veth_peer_ready(self._netns, self.ifindex)
        if ready is None or ready:
            return ""
        return (f"{self.config.underlay_device} is a veth whose peer {where} runs no XDP program, so "
                "frames sent with XDP_TX could vanish (the peer needs NAPI)")

    def attach(self) -> None:
        """Load ``bpf_xdp`` and attach it in the mode the config asks for (see the module
        docstring). Raises :class:`NotSupportedError` (native XDP impossible on the device, or no
        BPF host routing) and what loading raises; nothing is attached then."""
        if self._link is not None:
            return
        if self._pin_dir is None or self._rodata is None:
            raise NotSupportedError("XDP needs host_routing='bpf' (it loads bpf_xdp)", feature="bpf host routing")
        accel = self.config.acceleration
        why = self._veth_check() if self.nodeport else ""
        if why and accel == "native":
            raise NotSupportedError(f"native XDP acceleration: {why}", feature="native XDP on this device",
                                    hint="attach an XDP program (even one that passes everything) to the peer, "
                                    "or use acceleration='best-effort' for generic XDP")
        new_obj = self._obj is None
        if self._obj is None:
            self._obj = loader.load_xdp(self._rodata, self._pin_dir, nodeport=self.nodeport,
                                        native_mac=self._native_mac())
        try:
            prog = self._obj.program(XDP_PROGRAM)
            mode: XdpMode = "generic" if why else "native"
            try:
                link = prog.attach_xdp(self.ifindex, netns=self._netns, mode=mode)
            except BpfError as exc:
                if mode != "native" or exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ERANGE):
                    raise
                if accel == "native":
                    raise NotSupportedError(f"{self.config.underlay_device} cannot run XDP in driver mode ({exc})",
                                            feature="native XDP on this device",
                                            hint="use acceleration='best-effort' for generic XDP") from exc
                why = f"driver mode refused ({exc.strerror})"
                mode = "generic"
                link = prog.attach_xdp(self.ifindex, netns=self._netns, mode=mode)
            self._link = links.keep(link, self._pin_dir, LINK_NAME)
        except BaseException:
            if new_obj and self._obj is not None:
                self._obj.close()
                self._obj = None
            raise
        self._mode, self._why_generic = mode, (f"generic XDP: {why}" if why else "")

    # -- state, restore and reload ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any] | None:
        """What the node file keeps: the link and its mode (None while not attached)."""
        if self._link is None:
            return None
        return {"link": links.describe(self._link), "mode": self._mode, "note": self._why_generic}

    def adopt(self, desc: dict[str, Any] | None) -> None:
        """Carry on with the attachment a state file lists (None: not attached). Nothing is written.
        Raises :class:`~ciliumlite.node.links.AdoptError` or ``KeyError``."""
        if not desc:
            return
        self._link = links.adopt(desc["link"], self._netns)
        self._mode, self._why_generic = desc.get("mode"), str(desc.get("note") or "")

    def set_object(self, obj: BpfObject) -> BpfObject | None:
        """Use the reloaded ``obj`` (its program already swapped in); returns the old one to close."""
        old, self._obj = self._obj, obj
        return old

    def set_rodata(self, rodata: NodeRodata) -> None:
        """The rodata a later load uses (a reload or a restore)."""
        self._rodata = rodata

    def load_fresh(self, rodata: NodeRodata) -> BpfObject:
        """A new ``bpf_xdp`` for a reload with ``rodata`` (the caller swaps it in or closes it)."""
        assert self._pin_dir is not None
        return loader.load_xdp(rodata, self._pin_dir, nodeport=self.nodeport, native_mac=self._native_mac())

    def release(self) -> None:
        """Let go and leave the program attached (detach, a failed restore)."""
        self._shut(keep=True)

    def close(self) -> None:
        """Detach the program and close the object (the pins go with the node)."""
        self._shut(keep=False)

    def _shut(self, *, keep: bool) -> None:
        if self._link is not None:
            (links.release if keep else links.drop)(self._link)
            self._link = None
        self._mode = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None


__all__ = ["LINK_NAME", "XDP_PROGRAM", "XdpDevice", "veth_peer_ready"]
