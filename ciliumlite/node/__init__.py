"""One node's datapath: the :class:`Datapath` facade and its parts.

``datapath`` (the facade) uses ``endpoints``, ``services``, ``tunnel``, ``netdev`` and ``routing``;
the parts never import the facade, and none of them imports anything above ``ciliumlite.datapath``
but the value modules (``endpoint``, ``service``) and the cluster's ``NodeInfo``.
"""

from ciliumlite.datapath.maps import MetricRow
from ciliumlite.node.datapath import Datapath, netns_cookie
from ciliumlite.node.routing import BgpRoutes, NoRouting, Routing, StaticRoutes, TunnelRouting
from ciliumlite.node.services import lb_rows
from ciliumlite.node.tunnel import Tunnel

__all__ = ["BgpRoutes", "Datapath", "MetricRow", "NoRouting", "Routing", "StaticRoutes", "Tunnel", "TunnelRouting",
           "lb_rows", "netns_cookie"]
