"""The node's native device: ``bpf_host.o`` on the underlay NIC (Cilium's ``cil_from_netdev`` /
``cil_to_netdev``), which delivers traffic for local pods, does NodePort, DSR and masquerade.
"""

from __future__ import annotations

from ciliumlite.bpf import BpfObject
from ciliumlite.bpf.link import Link
from ciliumlite.bpf.netns import NetnsRef
from ciliumlite.bpf.program import TcMode
from ciliumlite.datapath import loader
from ciliumlite.datapath.config import NodeRodata
from ciliumlite.node import links


class NativeDevice:
    """``bpf_host`` loaded with the node's rodata and attached to ``ifindex`` (ingress and egress).

    Raises what :func:`ciliumlite.datapath.loader.load_host` and ``attach_tc`` raise; on failure
    nothing stays attached.
    """

    def __init__(self, netns: NetnsRef, ifindex: int, rodata: NodeRodata, pin_dir: str, *,
                 tc_mode: TcMode = "auto") -> None:
        self.netns = netns
        self.ifindex = ifindex
        self._obj: BpfObject | None = loader.load_host(rodata, pin_dir)
        self._links: list[Link] = []
        try:
            self._links.append(links.keep(self._obj.program("cil_from_netdev").attach_tc(
                ifindex, "ingress", netns=netns, mode=tc_mode), pin_dir, "netdev-ingress"))
            self._links.append(links.keep(self._obj.program("cil_to_netdev").attach_tc(
                ifindex, "egress", netns=netns, mode=tc_mode), pin_dir, "netdev-egress"))
        except BaseException:
            self.close()
            raise

    @classmethod
    def adopt(cls, netns: NetnsRef, ifindex: int, adopted: list[Link]) -> NativeDevice:
        """The device's attachments a previous process made (ingress, egress), taken over as they run."""
        self = cls.__new__(cls)
        self.netns, self.ifindex, self._obj, self._links = netns, ifindex, None, list(adopted)
        return self

    def set_object(self, obj: BpfObject) -> BpfObject | None:
        """Use the reloaded ``obj`` (its programs already swapped in); returns the old object to close."""
        old, self._obj = self._obj, obj
        return old

    def release(self) -> None:
        """Let go and leave both programs attached."""
        self._shut(keep=True)

    @property
    def obj(self) -> BpfObject | None:
        """The loaded ``bpf_host`` (None once closed)."""
        return self._obj

    @property
    def links(self) -> list[Link]:
        """The two attachments (from-netdev on ingress, to-netdev on egress)."""
        return list(self._links)

    def close(self) -> None:
        """Detach both programs and close the object."""
        self._shut(keep=False)

    def _shut(self, *, keep: bool) -> None:
        for link in self._links:
            (links.release if keep else links.drop)(link)
        self._links.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None
