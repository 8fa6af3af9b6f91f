"""What the halves of :class:`~ciliumlite.node.datapath.Datapath` share: the facade's fields.

:class:`~ciliumlite.node.lifecycle.RestoreAndReload` (restart, upgrade) and
:class:`~ciliumlite.node.teardown.Teardown` (close, detach) are mixins of the facade, kept in their
own modules so that each file has one job. They declare here what of the facade they use, so they
type-check without importing it (the facade sets every field in ``Datapath._init_fields``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ciliumlite.bpf import BpfObject
    from ciliumlite.bpf.link import Link
    from ciliumlite.bpf.netns import NetnsRef
    from ciliumlite.cluster.store import NodeInfo
    from ciliumlite.datapath.config import DatapathConfig, NodeRodata
    from ciliumlite.datapath.maps import NodeMaps
    from ciliumlite.node import routing as routing_mod
    from ciliumlite.node import state as state_mod
    from ciliumlite.node.endpoints import Endpoints
    from ciliumlite.node.netdev import NativeDevice
    from ciliumlite.node.policy import PolicyMaps
    from ciliumlite.node.prefilter import Prefilter
    from ciliumlite.node.services import Services
    from ciliumlite.node.sockops import SockAcceleration
    from ciliumlite.node.tunnel import Tunnel
    from ciliumlite.node.xdp import XdpDevice


class NodeParts:
    """The fields of one node's datapath (declared, not set: the facade sets them)."""

    _config: DatapathConfig
    _netns: NetnsRef
    _cgroup: str | None
    _lock: threading.RLock
    _closing: bool
    _pin_dir: str | None
    _lxc: BpfObject | None
    _maps: NodeMaps | None
    _rodata: NodeRodata | None
    _native_ifindex: int
    _lxc_map_id: int
    _tunnel: Tunnel | None
    _netdev: NativeDevice | None
    _routing: routing_mod.Routing
    _remote: dict[str, NodeInfo]
    _endpoints: Endpoints
    _services: Services
    _state: state_mod.StateWriter
    _xdp: XdpDevice
    _prefilter: Prefilter
    _sockops: SockAcceleration
    _policy: PolicyMaps | None
    _policy_rows: dict[str, dict[str, Any]]

    def _init_fields(self, config: DatapathConfig, netns: NetnsRef, cgroup: str | None) -> None:
        raise NotImplementedError

    def _publish(self) -> None:
        raise NotImplementedError

    def _save_state(self) -> None:
        raise NotImplementedError

    def _let_go(self) -> None:
        raise NotImplementedError

    def attachments(self, *, endpoints: bool = True) -> list[Link]:
        """Every link of the node (the facade's)."""
        raise NotImplementedError
