"""BGP through bird2: render a node's (or the leaf's) bird config, run bird in a namespace, read its state.

In native routing every node announces its pod CIDR over eBGP to a leaf router, and installs the pod
CIDRs it learns from the leaf in its kernel (``proto bird``). ciliumlite drives BIRD 2 for that:

>>> cfg = BgpConfig(router_id="10.0.0.11", asn=65011, peers=(BgpPeer("leaf", "10.0.0.254", 65001),),
...                 announce=("10.244.1.0/24",))
>>> with Bird("lab-worker1", cfg, "/tmp/lab/worker1") as bird:   # doctest: +SKIP
...     bird.wait_established(timeout=5)
...     bird.routes(protocol="leaf")
['10.244.2.0/24']

The modules:

- ``ciliumlite.bgp.config``: the model (``BgpPeer``, ``BgpConfig``, ``leaf_config``) and
  ``render_bird_config``; pure, no processes;
- ``ciliumlite.bgp.status``: parsing ``birdc`` output (``BgpSession``, ``parse_protocols``,
  ``parse_routes``);
- ``ciliumlite.bgp.proc``: finding bird2 (``bird``, ``birdc``) and looking at a pid in ``/proc``;
- ``ciliumlite.bgp.bird``: the ``Bird`` process (start, stop, reload, status, routes,
  wait_established);
- ``ciliumlite.bgp.errors``: ``BgpError``.

Only ``bird`` imports the others. Every public name is re-exported here: import from ``ciliumlite.bgp``.
"""

from __future__ import annotations

# ``_binaries`` is not public but is used outside the package (the CLI's ``bgp status`` finds birdc
# with it; the tests skip without bird2 and clear its cache): the explicit re-export keeps
# ``bgp._binaries`` the one cached function Bird itself calls (it lives in ``proc``).
from ciliumlite.bgp.bird import Bird
from ciliumlite.bgp.config import ASN_MAX, BgpConfig, BgpPeer, leaf_config, render_bird_config
from ciliumlite.bgp.errors import BgpError
from ciliumlite.bgp.proc import _binaries as _binaries
from ciliumlite.bgp.status import BgpSession, parse_protocols, parse_routes

# By layer, as the API page lists them.
__all__ = [
    "BgpPeer", "BgpConfig", "leaf_config", "render_bird_config", "ASN_MAX",
    "BgpSession", "parse_protocols", "parse_routes",
    "Bird",
    "BgpError",
]

