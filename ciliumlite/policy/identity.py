"""Security identities: Cilium's reserved numbers and the ranges of allocated ones.

Reserved identities are Cilium's (``pkg/identity/numericidentity.go``), so a user who knows
``cilium identity list`` reads ciliumlite's the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum
from ipaddress import IPv4Network
from typing import Protocol, runtime_checkable

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.policy.labels import SOURCE_RESERVED, Label, Labels


class ReservedIdentity(IntEnum):
    """Identities with a fixed meaning on every node."""

    #: In a policy key: any peer (the L4-only wildcard). Never a real peer's identity.
    UNKNOWN = 0
    #: The local node (and every address it owns).
    HOST = 1
    #: Anything outside the cluster: an ipcache miss.
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    #: Another node of the cluster (its node IPs).
    REMOTE_NODE = 6
    KUBE_APISERVER = 7
    INGRESS = 8


#: The first identity allocated for a label set (cluster-wide, through the store).
MIN_IDENTITY = 256
#: The last cluster-wide identity (it must fit the VNI's 24 bits and the wire's 16 of Cilium's).
MAX_IDENTITY = 65535
#: Node-local CIDR identities are ``LOCAL_IDENTITY_FLAG | n``: only ipcache and policy keys hold
#: them, never a packet on the wire.
LOCAL_IDENTITY_FLAG = 1 << 24

#: The last node-local CIDR identity.
MAX_LOCAL_IDENTITY = (LOCAL_IDENTITY_FLAG << 1) - 1

#: Every identity the engine may select, by number: the identity cache (``cilium identity list``).
IdentityCache = Mapping[int, Labels]


def reserved_labels(identity: ReservedIdentity) -> Labels:
    """A reserved identity's one label, Cilium's name for it: ``reserved:host``,
    ``reserved:remote-node``, ..."""
    return Labels([Label(SOURCE_RESERVED, identity.name.lower().replace("_", "-"))])


def reserved_cache() -> dict[int, Labels]:
    """The reserved identities with their labels (``UNKNOWN``, the wildcard, is not a peer)."""
    return {int(r): reserved_labels(r) for r in ReservedIdentity if r is not ReservedIdentity.UNKNOWN}


class IdentityExhaustedError(ValidationError):
    """No identity is left in the allocator's range."""


@runtime_checkable
class IdentityAllocator(Protocol):
    """Gives each label set its numeric identity: equal labels get the same number, two label
    sets never share one. The in-memory allocator below implements it for one process; the
    cluster-wide one (through the store's etcd layout, so every node agrees) implements the same
    methods."""

    def allocate(self, labels: Labels) -> int:
        """The identity of ``labels``, allocated on first use; one more reference to it.
        Raises :class:`IdentityExhaustedError`."""
        ...

    def release(self, labels: Labels) -> bool:
        """Drop one reference; returns whether the identity is now free."""
        ...

    def lookup(self, identity: int) -> Labels | None:
        """The labels of an allocated identity, or None."""
        ...

    def lookup_labels(self, labels: Labels) -> int | None:
        """The identity of ``labels`` if allocated, or None (never allocates)."""
        ...

    def cache(self) -> dict[int, Labels]:
        """Every allocated identity (reserved ones excluded) by number."""
        ...


class MemoryIdentityAllocator:
    """An :class:`IdentityAllocator` in one process's memory: reference counted, numbers from
    ``first`` to ``last``; a freed number is reused only after the range has wrapped, so a stale
    policy entry for it does not silently apply to a new label set at once."""

    def __init__(self, first: int = MIN_IDENTITY, last: int = MAX_IDENTITY) -> None:
        if not 0 < first <= last:
            raise ValidationError(f"identity range {first}..{last} is empty")
        self.first, self.last = first, last
        self._ids: dict[Labels, int] = {}
        self._labels: dict[int, Labels] = {}
        self._refs: dict[int, int] = {}
        self._next = first

    def allocate(self, labels: Labels) -> int:
        """The identity of ``labels`` (see :meth:`IdentityAllocator.allocate`)."""
        ident = self._ids.get(labels)
        if ident is None:
            ident = self._free_number(labels)
            self._ids[labels] = ident
            self._labels[ident] = labels
            self._refs[ident] = 0
        self._refs[ident] += 1
        return ident

    def _free_number(self, labels: Labels) -> int:
        size = self.last - self.first + 1
        if len(self._labels) >= size:
            raise IdentityExhaustedError(
                f"no identity left for {labels} (all of {self.first}..{self.last} are in use): "
                "release unused label sets or reduce label churn")
        while self._next in self._labels:
            self._next = self.first if self._next >= self.last else self._next + 1
        ident = self._next
        self._next = self.first if ident >= self.last else ident + 1
        return ident

    def release(self, labels: Labels) -> bool:
        """Drop one reference to ``labels``' identity (see :meth:`IdentityAllocator.release`)."""
        ident = self._ids.get(labels)
        if ident is None:
            return False
        self._refs[ident] -= 1
        if self._refs[ident] > 0:
            return False
        del self._ids[labels], self._labels[ident], self._refs[ident]
        return True

    def lookup(self, identity: int) -> Labels | None:
        """The labels of ``identity``, or None."""
        return self._labels.get(identity)

    def lookup_labels(self, labels: Labels) -> int | None:
        """The identity of ``labels``, or None."""
        return self._ids.get(labels)

    def cache(self) -> dict[int, Labels]:
        """Every allocated identity by number."""
        return dict(sorted(self._labels.items()))


class CidrIdentityAllocator:
    """Node-local CIDR identities, ``LOCAL_IDENTITY_FLAG | n``, one per prefix a policy names
    (``ipBlock``, ``toCIDR``, ``toCIDRSet`` and their excepts). They never travel on the wire:
    ``cilium_ipcache`` maps the prefix to its identity and policy keys name it. ``0.0.0.0/0`` is
    ``WORLD`` (an ipcache miss), as in Cilium, and gets no number."""

    def __init__(self) -> None:
        self._ids: dict[IPv4Network, int] = {}
        self._next = 1

    def sync(self, prefixes: Iterable[IPv4Network]) -> dict[IPv4Network, int]:
        """Make the allocated set exactly ``prefixes``: prefixes kept keep their number, new ones
        get a fresh one, the rest are freed. Returns prefix -> identity (``0.0.0.0/0`` ->
        ``WORLD``). Raises :class:`IdentityExhaustedError`."""
        wanted = set(prefixes)
        for prefix in [p for p in self._ids if p not in wanted]:
            del self._ids[prefix]
        used = set(self._ids.values())
        for prefix in sorted(wanted, key=lambda p: (int(p.network_address), p.prefixlen)):
            if prefix.prefixlen == 0 or prefix in self._ids:
                continue
            for _ in range(MAX_LOCAL_IDENTITY - LOCAL_IDENTITY_FLAG):
                ident = LOCAL_IDENTITY_FLAG | self._next
                self._next = self._next + 1 if ident < MAX_LOCAL_IDENTITY else 1
                if ident not in used:
                    break
            else:
                raise IdentityExhaustedError(f"no CIDR identity left for {prefix}")
            self._ids[prefix] = ident
            used.add(ident)
        return {**{p: int(ReservedIdentity.WORLD) for p in wanted if p.prefixlen == 0}, **self._ids}

    def identities(self) -> dict[IPv4Network, int]:
        """The allocated prefixes and their identities."""
        return dict(self._ids)
