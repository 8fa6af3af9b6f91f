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
            self._links.append(self._obj.program("cil_from_netdev").attach_tc(ifindex, "ingress", netns=netns,
                                                                              mode=tc_mode))
            self._links.append(self._obj.program("cil_to_netdev").attach_tc(ifindex, "egress", netns=netns,
                                                                            mode=tc_mode))
        except BaseException:
            self.close()
            raise

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
        for link in self._links:
            link.close()
        self._links.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None
