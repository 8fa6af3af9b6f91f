"""The XDP prefilter of one node (Cilium's ``cilium prefilter``): source CIDRs dropped at XDP.

A denied CIDR is a row of ``cilium_cidr_v4_fix`` (a /32) or ``cilium_cidr_v4_dyn`` (an LPM trie:
every other prefix), read by ``bpf_xdp``'s first decision, before tc or the stack see the packet;
every drop is counted as ``DROP_PREFILTER`` in ``cilium_metrics``. The list is part of the node's
state (one item file per CIDR), so a restore or a reload keeps it, and the maps are pinned with
the node's, so traffic stays filtered while no process owns the node.

:class:`Prefilter` is the part (maps and bookkeeping, not thread-safe); :class:`PrefilterView` is
what ``Datapath.prefilter`` returns: the same calls under the node's lock, each persisted.
"""

from __future__ import annotations

import builtins
import contextlib
import ipaddress
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ciliumlite.bpf import Map
from ciliumlite.bpf.errors import BpfError, MapFullError, ValidationError
from ciliumlite.datapath.maps import PREFILTER_DYN, PREFILTER_FIX, MapSpec
from ciliumlite.datapath.records import Cidr4Key, Cidr4Value
from ciliumlite.node.xdp import XdpDevice

#: The maps' sizes (prefilter.h CIDR4_HMAP_ELEMS / CIDR4_LMAP_ELEMS).
FIX_MAX = 8192
DYN_MAX = 8192
#: The state directory's item kind of a denied CIDR.
ITEM_KIND = "prefilter"
CidrLike = str | ipaddress.IPv4Network | ipaddress.IPv4Address
Change = tuple[str, str, "dict[str, Any] | None"]


def parse_cidr(value: object) -> ipaddress.IPv4Network:
    """``value`` as an IPv4 network (an address is its /32). Raises :class:`ValidationError` naming
    the input for anything else: not a string or address, not IPv4, host bits set."""
    if isinstance(value, ipaddress.IPv4Network):
        return value
    if isinstance(value, ipaddress.IPv4Address):
        return ipaddress.IPv4Network(value)
    if not isinstance(value, str):
        raise ValidationError(f"prefilter CIDR {value!r} is not a string or an IPv4 network")
    try:
        return ipaddress.IPv4Network(value.strip())
    except ValueError as exc:
        try:
            loose = ipaddress.IPv4Network(value.strip(), strict=False)
        except ValueError:
            raise ValidationError(f"prefilter CIDR {value!r} is not an IPv4 CIDR (like 198.51.100.0/24): "
                                  f"{exc}") from exc
        raise ValidationError(f"prefilter CIDR {value!r} has host bits set: did you mean {loose}?") from exc


def _key(net: ipaddress.IPv4Network) -> Cidr4Key:
    return Cidr4Key(net.prefixlen, net.network_address)


class Prefilter:
    """The denied CIDRs of one node over ``xdp``'s maps; see the module docstring."""

    def __init__(self, xdp: XdpDevice, pin_dir: str | None) -> None:
        self._xdp = xdp
        self._pin_dir = pin_dir
        self._cidrs: set[ipaddress.IPv4Network] = set()

    @contextlib.contextmanager
    def _open(self, spec: MapSpec[Cidr4Key, Cidr4Value]) -> Iterator[Map[Cidr4Key, Cidr4Value]]:
        # The object's map when bpf_xdp is loaded here, else its pin (an adopted node).
        obj = self._xdp.obj
        if obj is not None:
            yield spec.from_object(obj)
            return
        assert self._pin_dir is not None
        with spec.from_pins(self._pin_dir) as m:
            yield m

    def list(self) -> builtins.list[ipaddress.IPv4Network]:
        """The denied CIDRs, sorted."""
        return sorted(self._cidrs)

    def __len__(self) -> int:
        return len(self._cidrs)

    def kernel_list(self) -> builtins.list[ipaddress.IPv4Network]:
        """The CIDRs as the two maps hold them now (empty before the program is attached)."""
        if not self._xdp.attached:
            return []
        out = []
        for spec in (PREFILTER_FIX, PREFILTER_DYN):
            with self._open(spec) as m:
                out += [ipaddress.IPv4Network(f"{k.addr}/{k.prefixlen}") for k in m]
        return sorted(out)

    def add(self, cidrs: Iterable[CidrLike]) -> builtins.list[Change]:
        """Deny every CIDR of ``cidrs`` (already denied ones are no change). All or nothing:
        :class:`ValidationError` for a bad CIDR and :class:`MapFullError` when they do not all fit
        (both before any write); a kernel error part-way removes what this call wrote. Attaches
        ``bpf_xdp`` first if it is not (what :meth:`XdpDevice.attach` raises). Returns the state
        changes."""
        nets = [parse_cidr(c) for c in cidrs]
        new = sorted(set(nets) - self._cidrs)
        if not new:
            return []
        fix = sum(1 for n in self._cidrs if n.prefixlen == 32)
        add_fix = sum(1 for n in new if n.prefixlen == 32)
        if fix + add_fix > FIX_MAX or len(self._cidrs) - fix + len(new) - add_fix > DYN_MAX:
            raise MapFullError("prefilter add", 7, target=f"{len(new)} CIDRs",  # E2BIG
                               hint=f"the prefilter holds at most {FIX_MAX} /32s and {DYN_MAX} other prefixes "
                               f"(it has {fix} and {len(self._cidrs) - fix}): remove some first")
        self._xdp.attach()
        done: builtins.list[ipaddress.IPv4Network] = []
        try:
            with self._open(PREFILTER_FIX) as fixm, self._open(PREFILTER_DYN) as dynm:
                for net in new:
                    (fixm if net.prefixlen == 32 else dynm).set(_key(net), Cidr4Value())
                    done.append(net)
        except BpfError:
            with contextlib.suppress(BpfError), self._open(PREFILTER_FIX) as fixm, \
                    self._open(PREFILTER_DYN) as dynm:
                for net in done:
                    (fixm if net.prefixlen == 32 else dynm).pop(_key(net), None)
            raise
        self._cidrs.update(new)
        return [(ITEM_KIND, str(n), {"cidr": str(n)}) for n in new]

    def remove(self, cidrs: Iterable[CidrLike]) -> builtins.list[Change]:
        """Allow every CIDR of ``cidrs`` again. Raises :class:`ValidationError` for a bad CIDR or
        one that is not denied (nothing removed then). Returns the state changes."""
        nets = sorted({parse_cidr(c) for c in cidrs})
        missing = [str(n) for n in nets if n not in self._cidrs]
        if missing:
            raise ValidationError(f"prefilter has no {', '.join(missing)} (denied: "
                                  f"{', '.join(map(str, self.list())) or 'none'})")
        if not nets:
            return []
        with self._open(PREFILTER_FIX) as fixm, self._open(PREFILTER_DYN) as dynm:
            for net in nets:
                (fixm if net.prefixlen == 32 else dynm).pop(_key(net), None)
                self._cidrs.discard(net)
        return [(ITEM_KIND, str(n), None) for n in nets]

    def adopt(self, items: Iterable[dict[str, Any]]) -> None:
        """The list a state directory holds (the maps already hold it: nothing is written)."""
        self._cidrs = {parse_cidr(i["cidr"]) for i in items}

    def items(self) -> dict[str, dict[str, Any]]:
        """Every item, for a full state rewrite."""
        return {str(n): {"cidr": str(n)} for n in sorted(self._cidrs)}


class PrefilterView:
    """``Datapath.prefilter``: :class:`Prefilter`'s calls under the node's lock, each written to
    the node's state. ``add``/``remove`` take one or more CIDRs (strings like
    ``"198.51.100.0/24"``, :class:`~ipaddress.IPv4Network` or an address for its /32)."""

    def __init__(self, part: Callable[[], Prefilter], lock: threading.RLock,
                 publish: Callable[..., None]) -> None:
        self._part = part
        self._lock = lock
        self._publish = publish

    def add(self, *cidrs: CidrLike) -> None:
        """Drop traffic from these source CIDRs at XDP. Raises :class:`ValidationError` (a bad
        CIDR), :class:`MapFullError` (they do not fit), :class:`NotSupportedError` (no XDP here);
        nothing changed then."""
        with self._lock:
            self._publish(*self._part().add(cidrs))

    def remove(self, *cidrs: CidrLike) -> None:
        """Stop dropping these CIDRs. Raises :class:`ValidationError` for a bad or unknown CIDR."""
        with self._lock:
            self._publish(*self._part().remove(cidrs))

    def list(self) -> builtins.list[ipaddress.IPv4Network]:
        """The denied CIDRs, sorted."""
        with self._lock:
            return self._part().list()

    def __contains__(self, cidr: object) -> bool:
        return parse_cidr(cidr) in self.list()

    def __len__(self) -> int:
        return len(self.list())

    def __repr__(self) -> str:
        return f"<Prefilter {', '.join(map(str, self.list())) or 'empty'}>"


__all__ = ["DYN_MAX", "FIX_MAX", "ITEM_KIND", "Prefilter", "PrefilterView", "parse_cidr"]
