"""The XDP prefilter of one node (Cilium's ``cilium prefilter``): source CIDRs dropped at XDP.

A denied CIDR is a row of ``cilium_cidr_v4_fix`` (a /32) or ``cilium_cidr_v4_dyn`` (an LPM trie:
every other prefix), read by ``bpf_xdp``'s first decision, before tc or the stack see the packet;
every drop is counted as ``DROP_PREFILTER`` in ``cilium_metrics``. The list is part of the node's
state (one item file per CIDR), so a restore or a reload keeps it, and the maps are pinned with
the node's, so traffic stays filtered while no process owns the node.

The pinned maps are the truth once ``bpf_xdp`` is attached: every call of the owning node reads
them first, so a change made from another process through the pins (:class:`PinnedPrefilter`,
which ``ciliumlite prefilter update|delete`` uses, with the same validation) is what the owner
lists, checks against and writes to its state afterwards.

:class:`Prefilter` is the part (maps and bookkeeping, not thread-safe); :class:`PrefilterView` is
what ``Datapath.prefilter`` returns: the same calls under the node's lock, each persisted.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import ipaddress
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ciliumlite.bpf import Map
from ciliumlite.bpf.errors import BpfError, MapFullError, NotSupportedError, ValidationError
from ciliumlite.datapath.maps import PREFILTER_DYN, PREFILTER_FIX, MapSpec
from ciliumlite.datapath.records import Cidr4Key, Cidr4Value
from ciliumlite.node.state import StateWriter
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


def _check_room(current: set[ipaddress.IPv4Network], new: builtins.list[ipaddress.IPv4Network]) -> None:
    """Raise :class:`MapFullError` when ``new`` does not fit beside ``current`` (nothing written yet)."""
    fix = sum(1 for n in current if n.prefixlen == 32)
    add_fix = sum(1 for n in new if n.prefixlen == 32)
    if fix + add_fix > FIX_MAX or len(current) - fix + len(new) - add_fix > DYN_MAX:
        raise MapFullError("prefilter add", errno.E2BIG, target=f"{len(new)} CIDRs",
                           hint=f"the prefilter holds at most {FIX_MAX} /32s and {DYN_MAX} other prefixes "
                           f"(it has {fix} and {len(current) - fix}): remove some first")


def _missing(current: set[ipaddress.IPv4Network], nets: Iterable[ipaddress.IPv4Network]) -> None:
    """Raise :class:`ValidationError` naming the ``nets`` that are not denied."""
    missing = [str(n) for n in nets if n not in current]
    if missing:
        raise ValidationError(f"prefilter has no {', '.join(missing)} (denied: "
                              f"{', '.join(map(str, sorted(current))) or 'none'})")


Maps = tuple["Map[Cidr4Key, Cidr4Value]", "Map[Cidr4Key, Cidr4Value]"]


def _read(maps: Maps) -> set[ipaddress.IPv4Network]:
    return {ipaddress.IPv4Network(f"{k.addr}/{k.prefixlen}") for m in maps for k in m}


def _write(maps: Maps, new: Iterable[ipaddress.IPv4Network]) -> None:
    """Add ``new`` to the maps; a kernel error part-way removes what this call wrote, then raises."""
    fixm, dynm = maps
    done: builtins.list[ipaddress.IPv4Network] = []
    try:
        for net in new:
            (fixm if net.prefixlen == 32 else dynm).set(_key(net), Cidr4Value())
            done.append(net)
    except BpfError:
        with contextlib.suppress(BpfError):
            for net in done:
                (fixm if net.prefixlen == 32 else dynm).pop(_key(net), None)
        raise


def _delete(maps: Maps, nets: Iterable[ipaddress.IPv4Network]) -> None:
    fixm, dynm = maps
    for net in nets:
        (fixm if net.prefixlen == 32 else dynm).pop(_key(net), None)


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

    @contextlib.contextmanager
    def _maps(self) -> Iterator[Maps]:
        with self._open(PREFILTER_FIX) as fixm, self._open(PREFILTER_DYN) as dynm:
            yield fixm, dynm

    def _current(self) -> set[ipaddress.IPv4Network]:
        """The denied CIDRs: the maps' rows while ``bpf_xdp`` is attached (another process may have
        changed them through the pins), else this node's list."""
        if self._xdp.attached:
            with self._maps() as maps:
                self._cidrs = _read(maps)
        return self._cidrs

    def list(self) -> builtins.list[ipaddress.IPv4Network]:
        """The denied CIDRs, sorted."""
        return sorted(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def kernel_list(self) -> builtins.list[ipaddress.IPv4Network]:
        """The CIDRs as the two maps hold them now (empty before the program is attached)."""
        if not self._xdp.attached:
            return []
        with self._maps() as maps:
            return sorted(_read(maps))

    def add(self, cidrs: Iterable[CidrLike]) -> builtins.list[Change]:
        """Deny every CIDR of ``cidrs`` (already denied ones are no change). All or nothing:
        :class:`ValidationError` for a bad CIDR and :class:`MapFullError` when they do not all fit
        (both before any write); a kernel error part-way removes what this call wrote. Attaches
        ``bpf_xdp`` first if it is not (what :meth:`XdpDevice.attach` raises). Returns the state
        changes."""
        nets = [parse_cidr(c) for c in cidrs]
        current = self._current()
        new = sorted(set(nets) - current)
        if not new:
            return []
        _check_room(current, new)
        self._xdp.attach()
        with self._maps() as maps:
            _write(maps, new)
        self._cidrs = current | set(new)
        return [(ITEM_KIND, str(n), {"cidr": str(n)}) for n in new]

    def remove(self, cidrs: Iterable[CidrLike]) -> builtins.list[Change]:
        """Allow every CIDR of ``cidrs`` again. Raises :class:`ValidationError` for a bad CIDR or
        one that is not denied (nothing removed then). Returns the state changes."""
        nets = sorted({parse_cidr(c) for c in cidrs})
        current = self._current()
        _missing(current, nets)
        if not nets:
            return []
        with self._maps() as maps:
            _delete(maps, nets)
        self._cidrs = current - set(nets)
        return [(ITEM_KIND, str(n), None) for n in nets]

    def adopt(self, items: Iterable[dict[str, Any]]) -> None:
        """The list a state directory holds (the maps already hold it: nothing is written)."""
        self._cidrs = {parse_cidr(i["cidr"]) for i in items}

    def items(self) -> dict[str, dict[str, Any]]:
        """Every item, for a full state rewrite."""
        return {str(n): {"cidr": str(n)} for n in sorted(self._current())}


class PinnedPrefilter:
    """The prefilter of a node through its pins, from a process that does not own the node (what
    ``ciliumlite prefilter update|delete`` uses): the validation and the all-or-nothing writes of
    :class:`Prefilter`, and with ``state`` the node's item files written as the owner writes them,
    so a restore keeps the change. The owner sees it at its next call (it reads the maps first).

    Opening raises :class:`NotSupportedError` when ``pin_dir`` holds no prefilter maps
    (``bpf_xdp`` was never attached to the node: its first CIDR goes through
    ``Datapath.prefilter.add`` in the owning process, or the node is built with
    ``acceleration``), :class:`BpfError` / :class:`~ciliumlite.bpf.errors.LayoutError` for a map
    that cannot be opened. Use as ``with``.
    """

    def __init__(self, node: str, pin_dir: str, state: StateWriter | None = None) -> None:
        self.node = node
        self._state = state
        try:
            fixm = PREFILTER_FIX.from_pins(pin_dir)
        except BpfError as exc:
            if exc.errno != errno.ENOENT:
                raise
            raise NotSupportedError(
                f"node {node} has no XDP prefilter maps in {pin_dir} (bpf_xdp is not attached there)",
                feature="the XDP prefilter on this node",
                hint="deny the first CIDR with Datapath.prefilter.add in the process that owns the node, or "
                "build the node with acceleration='native' or 'best-effort'") from None
        try:
            dynm = PREFILTER_DYN.from_pins(pin_dir)
        except BaseException:
            fixm.close()
            raise
        self._maps: Maps = (fixm, dynm)

    def list(self) -> builtins.list[ipaddress.IPv4Network]:
        """The denied CIDRs as the maps hold them, sorted."""
        return sorted(_read(self._maps))

    def check_add(self, cidrs: Iterable[CidrLike]) -> builtins.list[ipaddress.IPv4Network]:
        """The CIDRs of ``cidrs`` that :meth:`add` would write; raises what it would, writes nothing."""
        nets = [parse_cidr(c) for c in cidrs]
        current = _read(self._maps)
        new = sorted(set(nets) - current)
        _check_room(current, new)
        return new

    def add(self, cidrs: Iterable[CidrLike]) -> builtins.list[ipaddress.IPv4Network]:
        """Deny ``cidrs`` as :meth:`Prefilter.add` does (all or nothing); returns those written."""
        new = self.check_add(cidrs)
        _write(self._maps, new)
        if self._state is not None:
            self._state.apply((ITEM_KIND, str(n), {"cidr": str(n)}) for n in new)
        return new

    def check_remove(self, cidrs: Iterable[CidrLike]) -> builtins.list[ipaddress.IPv4Network]:
        """The CIDRs :meth:`remove` would delete; raises what it would, deletes nothing."""
        nets = sorted({parse_cidr(c) for c in cidrs})
        _missing(_read(self._maps), nets)
        return nets

    def remove(self, cidrs: Iterable[CidrLike]) -> builtins.list[ipaddress.IPv4Network]:
        """Allow ``cidrs`` again as :meth:`Prefilter.remove` does; returns those deleted."""
        nets = self.check_remove(cidrs)
        _delete(self._maps, nets)
        if self._state is not None:
            self._state.apply((ITEM_KIND, str(n), None) for n in nets)
        return nets

    def close(self) -> None:
        """Close the maps (the pins stay)."""
        for m in self._maps:
            m.close()

    def __enter__(self) -> PinnedPrefilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


__all__ = ["DYN_MAX", "FIX_MAX", "ITEM_KIND", "PinnedPrefilter", "Prefilter", "PrefilterView", "parse_cidr"]
