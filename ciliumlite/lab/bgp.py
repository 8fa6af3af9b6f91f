"""BGP in a lab: bird as the leaf router in the fabric, and a bird speaker on every BGP node.

The leaf is AS 65001 at 10.0.0.254; node *i* (10.0.0.(11+i)) is AS 65011+i, peers with the leaf
only and announces its pod CIDR. ``Lab.bgp`` is the one :class:`LabBgp` of a lab.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.bpf.offloop import public_methods_off_event_loop
from ciliumlite.lab.fabric import LEAF_IP
from ciliumlite.ownership.identity import ProcessId

if TYPE_CHECKING:
    from ciliumlite.bgp import BgpConfig, Bird
    from ciliumlite.lab.lab import Lab
    from ciliumlite.lab.node import Node
    from ciliumlite.ownership.record import Entry

LEAF_ASN = 65001
FIRST_NODE_ASN = 65011
ESTABLISH_TIMEOUT = 15.0  # seconds for each speaker's session to the leaf to come up


def node_asn(node: Node) -> int:
    """The AS number of a lab node: 65011 + its index."""
    return FIRST_NODE_ASN + node.index


@public_methods_off_event_loop
class LabBgp:
    """The BGP of one lab: the leaf router's bird (``leaf``), peer of every BGP node's speaker.

    A node's speaker is its datapath's (``DatapathConfig(bgp_asn=..., bgp_peers=...)``, see
    :class:`ciliumlite.node.BgpRoutes`), readable as ``node.bird``.

    ``ciliumlite.bgp`` (bird2) is imported on first use, so a lab without BGP never needs it.
    """

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self._leaf: Bird | None = None
        self._entry: Entry | None = None

    @property
    def leaf(self) -> Bird | None:
        """The leaf router's bird in the fabric namespace, or None before :meth:`start`."""
        return self._leaf

    def node_config(self, index: int) -> dict[str, Any]:
        """The ``DatapathConfig`` settings of lab node ``index`` for BGP: its AS and the leaf as peer."""
        from ciliumlite import bgp

        return {"bgp_asn": FIRST_NODE_ASN + index, "bgp_peers": (bgp.BgpPeer("leaf", LEAF_IP, LEAF_ASN),)}

    def leaf_config(self, extra: Iterable[Node] = ()) -> BgpConfig:
        """The leaf's config: one peer per lab node with a speaker, and per node in ``extra``.

        Raises :class:`ValidationError` for a node name that is no bird symbol even with ``-`` as ``_``.
        """
        from ciliumlite import bgp

        wanted = list(extra)
        speakers = [n for n in self._lab.nodes.values() if n.ip and (n.bird is not None or n in wanted)]
        peers = tuple(bgp.BgpPeer(n.name.replace("-", "_"), n.ip or "", node_asn(n)) for n in speakers)
        return bgp.leaf_config(LEAF_IP, LEAF_ASN, peers)

    def start(self, nodes: list[Node]) -> None:
        """Peer ``nodes`` (already on the underlay) with the leaf and wait until every session is up
        and every speaker has learned every other speaker's pod CIDR.

        The nodes' speakers run already (their datapaths started them, see :meth:`node_config`).
        Starts the leaf (in the fabric, made if need be) on first use and reloads it with the new
        peers after that, then waits up to 15 s for each session and 15 s for the routes. Raises ``BgpError`` if bird
        rejects a config or a session is not Established (or a route not learned) in time, ``NotSupportedError`` if bird2
        is not installed, :class:`ValidationError` for a node without a speaker.
        """
        from ciliumlite import bgp

        fabric = self._lab.fabric_or_create()
        leaf_cfg = self.leaf_config(extra=nodes)
        if self._leaf is None:
            workdir = os.path.join(self._lab.workdir, "leaf")
            leaf = bgp.Bird(fabric.netns, leaf_cfg, workdir)
            # Recorded before it starts, found by its control socket until its pid is known.
            self._entry = self._lab.record.add("processes", "bird leaf", netns=fabric.netns, match=leaf.socket_path)
            try:
                leaf.start()
            except BaseException:
                self._forget()
                raise
            self._leaf = leaf
            ident = ProcessId.of(leaf.pid) if leaf.pid is not None else None
            if ident is not None:
                self._lab.record.update(self._entry, pid=ident.pid, start=ident.start)
        else:
            self._leaf.reload(leaf_cfg)
        for node in nodes:
            if node.bird is None:
                raise ValidationError(f"{node.name} runs no BGP speaker: add it with bgp=True")
            node.bird.wait_established(timeout=ESTABLISH_TIMEOUT)
        self._wait_routes()

    def _wait_routes(self) -> None:
        # Established is not yet routed: the UPDATEs follow the OPEN. Return once every speaker
        # has learned every other speaker's pod CIDR from the leaf (what its pods' traffic needs).
        from ciliumlite.bgp import BgpError

        speakers = [n for n in self._lab.nodes.values() if n.bird is not None and n.ip is not None]
        deadline = time.monotonic() + ESTABLISH_TIMEOUT
        for node in speakers:
            assert node.bird is not None
            want = {o.info.pod_cidr for o in speakers if o is not node}
            while not want <= set(learned := node.bird.routes(protocol="leaf")):
                if time.monotonic() > deadline:
                    raise BgpError(f"{node.name}'s bird has not learned {', '.join(sorted(want - set(learned)))} "
                                   f"from the leaf within {ESTABLISH_TIMEOUT:g} s (it has {learned or 'none'})")
                time.sleep(0.05)

    def reload(self) -> None:
        """Give the leaf the peers of the nodes that still run a speaker (after one has gone).

        No-op before :meth:`start`; raises ``BgpError`` if bird rejects the config (it keeps the old one).
        """
        if self._leaf is not None:
            self._leaf.reload(self.leaf_config())

    def birds(self) -> list[Bird]:
        """Every bird of the lab: the leaf first, then each node's speaker in node order."""
        return [b for b in [self._leaf, *(n.bird for n in self._lab.nodes.values())] if b is not None]

    def close(self) -> None:
        """Stop the leaf (the speakers stop with their nodes). Raises what ``Bird.stop`` raises."""
        if self._leaf is not None:
            self._leaf.stop()
            self._leaf = None
        self._forget()

    def _forget(self) -> None:
        if self._entry is not None:
            self._lab.record.drop("processes", self._entry)
            self._entry = None
