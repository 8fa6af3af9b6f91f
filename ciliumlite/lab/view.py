"""A read-only view of a lab node's datapath, the same whether the datapath lives in this process or
in the node's agent.

The demo and the connectivity test read a node's settings, counters and tables (``node.view``),
never its :class:`~ciliumlite.node.Datapath` object: an in-process node (``Lab()``) answers from its
``Datapath`` (:class:`DatapathView`), a node run by its agent (``Lab(store="etcd")``) from the
node's pinned maps, its registry entry and the agent's API (:class:`PinnedView`). Nothing here
writes to a map, the registry or the agent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ciliumlite.datapath import maps, registry
from ciliumlite.datapath.maps import MetricRow, NodeMaps, sum_metrics
from ciliumlite.datapath.reasons import Direction, Reason
from ciliumlite.service import Service

if TYPE_CHECKING:
    from ciliumlite.agent.client import AgentClient
    from ciliumlite.datapath.config import DatapathConfig
    from ciliumlite.node import Datapath

__all__ = ["Attachment", "DatapathView", "NodeView", "PinnedView"]


@dataclass(frozen=True)
class Attachment:
    """One attached program of a node: its name and where (``tcx ingress of lxc1a2b…``, a cgroup hook)."""

    program: str
    where: str


class NodeView:
    """What can be read of one node's datapath. Subclasses answer from where the datapath lives.

    ``config`` is the datapath's configuration. The methods read the kernel's state now; each
    raises what reading it raises (a :class:`~ciliumlite.bpf.errors.BpfError` for a map, an
    :class:`~ciliumlite.agent.client.AgentUnavailable` when an agent does not answer).
    """

    @property
    def config(self) -> DatapathConfig:
        """The datapath's settings."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """A summary like ``cilium status`` (the datapath's ``status()``)."""
        raise NotImplementedError

    def attachments(self) -> list[Attachment]:
        """Every program attached now (devices, socket LB hooks, endpoints)."""
        raise NotImplementedError

    def endpoints(self) -> list[dict[str, Any]]:
        """The endpoints, as rows of ``cilium endpoint list`` (``Endpoint.as_row()``)."""
        raise NotImplementedError

    def services(self) -> list[Service]:
        """The services programmed on the node."""
        raise NotImplementedError

    def remote_nodes(self) -> list[str]:
        """The names of the other nodes this one routes to."""
        raise NotImplementedError

    def metrics(self) -> list[MetricRow]:
        """Forwarded and dropped packets by reason and direction (empty without BPF)."""
        raise NotImplementedError

    def tunnel_entries(self) -> dict[str, str]:
        """The tunnel map as ``{pod CIDR prefix: remote node IP}`` (empty without VXLAN)."""
        raise NotImplementedError

    def policies(self) -> dict[str, dict[str, Any]]:
        """The network policies the node's last policy sync enforced (``Policy.describe()``), by key."""
        raise NotImplementedError

    def count(self, reason: Reason | int, direction: Direction | int | None = None) -> int:
        """Packets counted for ``reason`` (in ``direction``, or all)."""
        return sum(m.packets for m in self.metrics() if m.reason == reason and direction in (None, m.direction))


class DatapathView(NodeView):
    """The view of a :class:`~ciliumlite.node.Datapath` in this process (every call goes to it)."""

    def __init__(self, datapath: Datapath) -> None:
        self._dp = datapath

    @property
    def config(self) -> DatapathConfig:
        """The datapath's settings."""
        return self._dp.config

    def status(self) -> dict[str, Any]:
        """``Datapath.status()``."""
        return self._dp.status()

    def attachments(self) -> list[Attachment]:
        """The datapath's links that are not closed."""
        return [Attachment(lk.program, str(lk.point)) for lk in self._dp.attachments() if not lk.closed]

    def endpoints(self) -> list[dict[str, Any]]:
        """``Datapath.endpoints()`` as rows."""
        return [e.as_row() for e in self._dp.endpoints()]

    def services(self) -> list[Service]:
        """``Datapath.services()``."""
        return self._dp.services()

    def remote_nodes(self) -> list[str]:
        """``Datapath.remote_nodes``, by name."""
        return sorted(self._dp.remote_nodes)

    def metrics(self) -> list[MetricRow]:
        """``Datapath.metrics()``."""
        return self._dp.metrics()

    def count(self, reason: Reason | int, direction: Direction | int | None = None) -> int:
        """``Datapath.count()``."""
        return self._dp.count(reason, direction)

    def tunnel_entries(self) -> dict[str, str]:
        """``Datapath.tunnel.entries()``."""
        return self._dp.tunnel.entries() if self._dp.tunnel is not None else {}

    def policies(self) -> dict[str, dict[str, Any]]:
        """``Datapath.enforced_policies()``."""
        return self._dp.enforced_policies()


class PinnedView(NodeView):
    """The view of a datapath another process (the node's agent) owns: maps from its pins
    (``config.pin_dir``), attachments from its registry entry, the rest from the agent's API.

    The maps are opened for each call and closed again, so a view holds no file descriptor
    between calls and never keeps a removed datapath's maps alive.
    """

    def __init__(self, config: DatapathConfig, client: AgentClient) -> None:
        self._config = config
        self._client = client

    @property
    def config(self) -> DatapathConfig:
        """The settings the agent was started with."""
        return self._config

    def status(self) -> dict[str, Any]:
        """The ``datapath`` part of the agent's ``GET /v1/status``."""
        return dict(self._client.status().get("datapath") or {})

    def _entry(self) -> dict[str, Any]:
        # The registry entry with its state directory's items; empty when there is none (the agent has gone).
        try:
            state = registry.with_items(json.loads(registry.entry_path(self._config.node_name).read_text()))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def attachments(self) -> list[Attachment]:
        """From the datapath's registry entry and its state directory's endpoint files; empty
        when there is none (the agent has gone)."""
        return [Attachment(str(a.get("program", "")), str(a.get("where", "")))
                for a in self._entry().get("attachments") or [] if isinstance(a, dict)]

    def policies(self) -> dict[str, dict[str, Any]]:
        """From the datapath's state directory (what ``ciliumlite policy get`` reads)."""
        return dict(self._entry().get("policies") or {})

    def endpoints(self) -> list[dict[str, Any]]:
        """The agent's endpoints (``GET /v1/endpoint``), as rows."""
        return [dict(e["endpoint"]) for e in self._client.endpoints()]

    def services(self) -> list[Service]:
        """The agent's services (``GET /v1/service``)."""
        return [Service.from_dict(s) for s in self._client.services()]

    def remote_nodes(self) -> list[str]:
        """The remote nodes of the agent's datapath (``GET /v1/status``)."""
        return sorted(self.status().get("remote_nodes") or [])

    def _maps(self) -> NodeMaps | None:
        pin_dir = self._config.pin_dir
        return NodeMaps.from_pins(pin_dir) if os.path.isdir(pin_dir) else None

    def metrics(self) -> list[MetricRow]:
        """``cilium_metrics`` read from the pins (empty when the datapath has none)."""
        m = self._maps()
        if m is None or not m.has(maps.METRICS):
            return []
        with m:
            return sum_metrics(m.metrics)

    def tunnel_entries(self) -> dict[str, str]:
        """``cilium_tunnel_map`` read from the pins (empty without VXLAN)."""
        m = self._maps()
        if m is None or not m.has(maps.TUNNEL):
            return {}
        with m:
            return maps.tunnel_entries(m.tunnel)
