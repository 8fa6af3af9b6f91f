"""Programming Cilium's LB4 maps for one node, ordered so readers never see a half-made service.

Write order on upsert: backends, reverse NAT, backend slots (and Maglev table), then the frontend row
(slot 0) whose ``count`` makes the new slots visible, then stale slots and unused backends go. A
failure part-way re-writes the previous rows, so the service keeps its previous state.

Terminating backends (Cilium's ``BE_STATE_TERMINATING``) are written after slot ``count``, as
Cilium's agent places its non-active backends: no selection reaches them, but they stay listed, so
their backend entries (and every connection pinned to them through conntrack) live on.
:meth:`LbMaps.check_fits` says, before anything is written, whether a change fits the maps at all
(:class:`LbMapFullError`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from errno import E2BIG
from ipaddress import IPv4Address
from typing import Any, Final

from ciliumlite.bpf import Map
from ciliumlite.bpf.errors import MapFullError, ValidationError
from ciliumlite.datapath import maglev, maps
from ciliumlite.datapath.records import (
    BE_STATE_ACTIVE,
    BE_STATE_TERMINATING,
    SVC_FLAG_AFFINITY,
    Lb4AffinityKey,
    Lb4Backend,
    Lb4Key,
    Lb4MaglevKey,
    Lb4ReverseNat,
    Lb4Service,
    LbAffinityVal,
)

SERVICES_MAP = maps.LB_SERVICES.name
BACKENDS_MAP = maps.LB_BACKENDS.name
REVNAT_MAP = maps.LB_REVNAT.name
MAGLEV_MAP = maps.LB_MAGLEV.name
AFFINITY_MAP = maps.LB_AFFINITY.name
MAX_REVNAT = 0xFFFF


class LbMapFullError(ValidationError, MapFullError):
    """A service (or set of services) needs more entries in an LB map than it has: Cilium's
    ``bpf-lb-map-max`` (``DatapathConfig.lb_map_max``) is too small.

    Raised before anything is written, so the maps stay as they were. It is a
    :class:`ValidationError` (a cluster asks every node first, so no node changes) and a
    :class:`MapFullError` (what the kernel would have said, E2BIG, half-way through the write).
    ``map_name``, ``needed`` (entries in use after the change) and ``capacity`` (``max_entries``)
    say which map and by how much.
    """

    def __init__(self, service: str, map_name: str, needed: int, capacity: int) -> None:
        self.service, self.map_name, self.needed, self.capacity = service, map_name, needed, capacity
        MapFullError.__init__(self, "fit service", E2BIG, target=service)

    def _format(self) -> str:
        return (f"service {self.service}: {self.map_name} would need {self.needed} entries, it has "
                f"{self.capacity}; nothing was written (raise DatapathConfig.lb_map_max, Cilium's bpf-lb-map-max)")


@dataclass(frozen=True)
class LbCapacity:
    """``max_entries`` of the LB maps ciliumlite writes (the pinned maps' sizes)."""

    services: int
    backends: int
    revnat: int
    maglev: int


@dataclass(frozen=True)
class LbUsage:
    """What the LB maps of a node hold, as ciliumlite wrote it (a view, for :func:`check_fits`)."""

    service_entries: int
    backends: Collection[tuple[IPv4Address, int, int]]
    frontends: Collection[tuple[IPv4Address, int, int, int]]
    maglev_frontends: Collection[tuple[IPv4Address, int, int, int]]
    rows: Mapping[str, list[FrontendRow]]

    @classmethod
    def empty(cls) -> LbUsage:
        """A node with no service yet."""
        return cls(0, (), (), (), {})


def _entries(rows: Iterable[FrontendRow]) -> int:
    return sum(1 + len(r.slots) for r in rows)


def check_fits(service: str, rows: list[FrontendRow], usage: LbUsage, capacity: LbCapacity,
               maglev_table_size: int) -> None:
    """Raise :class:`LbMapFullError` if making ``rows`` the rows of ``service`` would overfill a map.

    Counts the peak of the write order (:meth:`LbMaps.program` writes the new slots and rows
    before it drops the old ones), so a change that passes cannot fail on a full map half-way.
    """
    old = {r.key(0): len(r.slots) for r in usage.rows.get(service, [])}
    peak = usage.service_entries + sum(max(0, 1 + len(r.slots) - (1 + old[r.key(0)] if r.key(0) in old else 0))
                                       for r in rows)
    if peak > capacity.services:
        raise LbMapFullError(service, SERVICES_MAP, peak, capacity.services)
    new_backends = {(ip, port, r.proto) for r in rows for ip, port in r.slots} - set(usage.backends)
    if len(usage.backends) + len(new_backends) > capacity.backends:
        raise LbMapFullError(service, BACKENDS_MAP, len(usage.backends) + len(new_backends), capacity.backends)
    new_fronts = {r.frontend for r in rows} - set(usage.frontends)
    limit = min(capacity.revnat, MAX_REVNAT)
    if len(usage.frontends) + len(new_fronts) > limit:
        raise LbMapFullError(service, REVNAT_MAP, len(usage.frontends) + len(new_fronts), limit)
    tables = {r.frontend for r in rows if r.maglev and r.backends} - set(usage.maglev_frontends)
    if tables:
        needed = (len(usage.maglev_frontends) + len(tables)) * maglev_table_size
        if needed > capacity.maglev:
            raise LbMapFullError(service, MAGLEV_MAP, needed, capacity.maglev)


@dataclass(frozen=True)
class FrontendRow:
    """One frontend row of the service map (one address, port, protocol and scope).

    ``backends`` fill slots ``1..count``, the ones new connections pick from; ``draining`` fill
    the slots after them (terminating backends kept for the connections already on them);
    ``terminating`` are the addresses whose backend entry is in ``BE_STATE_TERMINATING`` (the
    draining ones, and the selectable ones too when a scope has nothing but terminating backends).
    """

    address: IPv4Address
    port: int
    proto: int
    scope: int
    flags: int
    flags2: int
    backends: tuple[tuple[IPv4Address, int], ...]
    affinity_timeout: int = 0
    maglev: bool = False
    draining: tuple[tuple[IPv4Address, int], ...] = ()
    terminating: frozenset[tuple[IPv4Address, int]] = frozenset()

    @property
    def slots(self) -> tuple[tuple[IPv4Address, int], ...]:
        """Every backend written in a slot: ``backends`` then ``draining``."""
        return self.backends + self.draining

    def state(self, backend: tuple[IPv4Address, int]) -> int:
        """The ``lb4_backend.flags`` state of one of this row's backends."""
        return BE_STATE_TERMINATING if backend in self.terminating else BE_STATE_ACTIVE

    @property
    def frontend(self) -> tuple[IPv4Address, int, int, int]:
        """(address, port, proto, scope): what one reverse-NAT index (and Maglev table) stands for."""
        return (self.address, self.port, self.proto, self.scope)

    def key(self, slot: int = 0) -> Lb4Key:
        """The service-map key of ``slot``."""
        return Lb4Key(address=self.address, dport=self.port, backend_slot=slot, proto=self.proto, scope=self.scope)


class LbMaps:
    """The LB4 maps of one node, opened from their pins, and the ids ciliumlite allocated in them."""

    #: The pinned maps an instance holds open (an upgrade that replaces one reopens them).
    MAP_NAMES: Final = frozenset(m.name for m in (maps.LB_SERVICES, maps.LB_BACKENDS, maps.LB_REVNAT,
                                                  maps.LB_MAGLEV, maps.LB_AFFINITY))

    def __init__(self, pin_dir: str, maglev_table_size: int = maglev.DEFAULT_TABLE_SIZE) -> None:
        self.services: Map[Lb4Key, Lb4Service] = maps.LB_SERVICES.from_pins(pin_dir)
        self.backends: Map[int, Lb4Backend] = maps.LB_BACKENDS.from_pins(pin_dir)
        self.revnat: Map[int, Lb4ReverseNat] = maps.LB_REVNAT.from_pins(pin_dir)
        self.maglev: Map[Lb4MaglevKey, int] = maps.LB_MAGLEV.from_pins(pin_dir)
        self.affinity: Map[Lb4AffinityKey, LbAffinityVal] = maps.LB_AFFINITY.from_pins(pin_dir)
        self.maglev_table_size = maglev_table_size
        self._rows: dict[str, list[FrontendRow]] = {}
        self._revnat_ids: dict[tuple[IPv4Address, int, int, int], int] = {}
        self._backend_ids: dict[tuple[IPv4Address, int, int], int] = {}
        self._backend_refs: dict[int, int] = {}
        self._next_backend = 1
        self._next_revnat = 1
        self._free_revnat: list[int] = []
        self._slot_counts: dict[Lb4Key, int] = {}  # frontend row -> backends written
        self._backend_states: dict[int, int] = {}  # backend id -> BE_STATE_* written
        self._service_entries = 0  # entries of the service map the rows take (frontend rows + slots)
        self._maglev_tables: set[tuple[IPv4Address, int, int, int]] = set()  # frontends with a table
        self._frontend_users: dict[tuple[IPv4Address, int, int, int], int] = {}

    # -- capacity ----------------------------------------------------------------------------------
    def capacity(self) -> LbCapacity:
        """The maps' ``max_entries``, as the kernel made them."""
        return LbCapacity(self.services.max_entries, self.backends.max_entries, self.revnat.max_entries,
                          self.maglev.max_entries)

    def usage(self) -> LbUsage:
        """What the maps hold now (a live view: read it before the next write)."""
        return LbUsage(self._service_entries, self._backend_ids.keys(), self._revnat_ids.keys(),
                       self._maglev_tables, self._rows)

    def check_fits(self, service: str, rows: list[FrontendRow]) -> None:
        """Raise :class:`LbMapFullError` if ``rows`` for ``service`` would not fit (nothing written)."""
        check_fits(service, rows, self.usage(), self.capacity(), self.maglev_table_size)

    # -- ids ---------------------------------------------------------------------------------------
    def revnat_id(self, frontend: tuple[IPv4Address, int, int, int]) -> int:
        """The reverse-NAT index of a frontend, allocated on first use."""
        rid = self._revnat_ids.get(frontend)
        if rid is None:
            if self._free_revnat:
                rid = self._free_revnat.pop()
            elif self._next_revnat <= MAX_REVNAT:
                rid, self._next_revnat = self._next_revnat, self._next_revnat + 1
            else:
                raise MapFullError("allocate reverse NAT index", 28, target=f"{frontend}")
            self._revnat_ids[frontend] = rid
        return rid

    def _release_revnat(self, frontend: tuple[IPv4Address, int, int, int]) -> None:
        rid = self._revnat_ids.pop(frontend, None)
        if rid is not None:
            self._free_revnat.append(rid)

    def _backend_id(self, ip: IPv4Address, port: int, proto: int) -> tuple[int, bool]:
        key = (ip, port, proto)
        bid = self._backend_ids.get(key)
        if bid is not None:
            return bid, False
        bid = self._next_backend
        self._next_backend += 1
        self._backend_ids[key] = bid
        return bid, True

    # -- program -----------------------------------------------------------------------------------
    def program(self, service: str, rows: list[FrontendRow]) -> None:
        """Make ``rows`` the service's frontend rows; on failure the previous rows stay in force.

        Raises :class:`LbMapFullError` first, writing nothing, when the rows cannot fit.
        """
        self.check_fits(service, rows)
        old = self._rows.get(service, [])
        created: list[tuple[IPv4Address, int, int]] = []
        try:
            self._write(rows, created)
        except BaseException:
            old_counts = {r.key(0): len(r.slots) for r in old}
            for row in rows:  # slots a grown row wrote beyond its previous count
                for slot in range(old_counts.get(row.key(0), 0) + 1, len(row.slots) + 1):
                    self.services.pop(row.key(slot), None)
                if row.maglev and row.frontend not in {r.frontend for r in old}:
                    self._drop_maglev(row)
            for key in created:
                bid = self._backend_ids.pop(key)
                self._backend_states.pop(bid, None)
                self.backends.pop(bid, None)
            if old:
                self._write(old, [])
            self._drop_stale_rows(rows, old)
            raise
        self._drop_stale_rows(old, rows)
        self._retain(service, old, rows)
        self._drop_stale_affinity(rows)

    def remove(self, service: str) -> None:
        """Delete every row of ``service`` (frontend rows first, so no reader picks a slot)."""
        old = self._rows.get(service, [])
        self._drop_stale_rows(old, [])
        self._retain(service, old, [])

    def _write(self, rows: Iterable[FrontendRow], created: list[tuple[IPv4Address, int, int]]) -> None:
        for row in rows:
            ids = []
            for ip, port in row.slots:
                bid, new = self._backend_id(ip, port, row.proto)
                state = row.state((ip, port))
                if new:
                    created.append((ip, port, row.proto))
                if new or self._backend_states.get(bid) != state:
                    # A backend that starts terminating is rewritten in place under the same id:
                    # the conntrack entries that pinned it keep finding it.
                    self.backends.set(bid, Lb4Backend(address=ip, port=port, proto=row.proto, flags=state))
                    self._backend_states[bid] = state
                ids.append(bid)
            count = len(row.backends)
            rid = self.revnat_id(row.frontend)
            self.revnat.set(rid, Lb4ReverseNat(address=row.address, port=row.port))
            for slot, bid in enumerate(ids, start=1):
                self.services.set(row.key(slot), Lb4Service(backend_id=bid, rev_nat_index=rid))
            if row.maglev and count:
                owners = maglev.table([f"{ip}:{port}" for ip, port in row.backends], self.maglev_table_size)
                keys = [Lb4MaglevKey(rev_nat_index=rid, index=i) for i in range(len(owners))]
                self.maglev.update_batch(keys, [ids[o] for o in owners])
                self._maglev_tables.add(row.frontend)
            self.services.set(row.key(0), Lb4Service(backend_id=row.affinity_timeout, count=count,
                                                      rev_nat_index=rid, flags=row.flags, flags2=row.flags2))
            old_count = self._old_count(row)
            for slot in range(len(ids) + 1, old_count + 1):
                self.services.pop(row.key(slot), None)

    def _old_count(self, row: FrontendRow) -> int:
        return self._slot_counts.get(row.key(0), 0)

    def _drop_stale_rows(self, old: list[FrontendRow], new: list[FrontendRow]) -> None:
        keep = {r.key(0) for r in new}
        for row in old:
            if row.key(0) in keep:
                continue
            self.services.pop(row.key(0), None)
            for slot in range(1, len(row.slots) + 1):
                self.services.pop(row.key(slot), None)
            if not any(r.frontend == row.frontend for r in new):
                rid = self._revnat_ids.get(row.frontend)
                if rid is not None and not self._frontend_used_elsewhere(row, old):
                    self.revnat.pop(rid, None)
                    if row.maglev:
                        self._drop_maglev(row)
                    self._release_revnat(row.frontend)

    def _drop_stale_affinity(self, rows: list[FrontendRow]) -> None:
        # A client stuck to a backend the service no longer lists must pick again (Cilium's
        # affinity-match map serves the same purpose).
        allowed: dict[int, set[int]] = {}
        for row in rows:
            if row.flags & SVC_FLAG_AFFINITY:
                rid = self._revnat_ids[row.frontend]
                allowed[rid] = {self._backend_ids[(ip, port, row.proto)] for ip, port in row.backends}
        if not allowed:
            return
        stale = [k for k, v in self.affinity.items() if k.rev_nat_id in allowed
                 and v.backend_id not in allowed[k.rev_nat_id]]
        for key in stale:
            self.affinity.pop(key, None)

    def _drop_maglev(self, row: FrontendRow) -> None:
        rid = self._revnat_ids.get(row.frontend)
        if rid is None:
            return
        for i in range(self.maglev_table_size):  # some may never have been written
            self.maglev.pop(Lb4MaglevKey(rev_nat_index=rid, index=i), None)
        self._maglev_tables.discard(row.frontend)

    def _frontend_used_elsewhere(self, row: FrontendRow, old: list[FrontendRow]) -> bool:
        mine = sum(1 for r in old if r.frontend == row.frontend) > 0
        return self._frontend_users.get(row.frontend, 0) > (1 if mine else 0)

    def _retain(self, service: str, old: list[FrontendRow], new: list[FrontendRow]) -> None:
        # Only the backends and frontends of this service's rows change: O(size of the service).
        touched: set[tuple[IPv4Address, int, int]] = set()
        self._service_entries += _entries(new) - _entries(old)
        for row in new:
            self._slot_counts[row.key(0)] = len(row.slots)
            self._frontend_users[row.frontend] = self._frontend_users.get(row.frontend, 0) + 1
            for ip, port in row.slots:
                bid = self._backend_ids[(ip, port, row.proto)]
                self._backend_refs[bid] = self._backend_refs.get(bid, 0) + 1
        new_keys = {r.key(0) for r in new}
        for row in old:
            if row.key(0) not in new_keys:
                self._slot_counts.pop(row.key(0), None)
            users = self._frontend_users.get(row.frontend, 0) - 1
            if users > 0:
                self._frontend_users[row.frontend] = users
            else:
                self._frontend_users.pop(row.frontend, None)
            for ip, port in row.slots:
                bid = self._backend_ids[(ip, port, row.proto)]
                self._backend_refs[bid] -= 1
                touched.add((ip, port, row.proto))
        for key in touched:
            bid = self._backend_ids[key]
            if self._backend_refs.get(bid, 0) <= 0:
                self._backend_refs.pop(bid, None)
                self._backend_states.pop(bid, None)
                del self._backend_ids[key]
                self.backends.pop(bid, None)
        if new:
            self._rows[service] = list(new)
        else:
            self._rows.pop(service, None)

    def adopt(self, rows: dict[str, list[FrontendRow]]) -> None:
        """Carry on from a previous process with the rows it wrote, by service; nothing is written.

        The id allocations are read back from the maps, which are the truth a crash cannot skew
        (as Cilium restores its services from the BPF maps): reverse-NAT ids from the frontend
        rows, backend ids from the backend map. Raises ``ValueError`` when a row is not in the
        maps as the services say (the maps were changed behind ciliumlite's back).
        """
        entries = dict(self.backends.items())
        backends = {(b.address, b.port, b.proto): bid for bid, b in entries.items()}
        states = {bid: b.flags for bid, b in entries.items()}
        fronts = {(k.address, k.dport, k.proto, k.scope): v.rev_nat_index
                  for k, v in self.services.items() if k.backend_slot == 0}
        self._backend_ids = {}
        self._backend_states = {}
        self._revnat_ids = {}
        for service, service_rows in rows.items():
            for row in service_rows:
                rid = fronts.get(row.frontend)
                if rid is None:
                    raise ValueError(f"service {service}: frontend {row.address}:{row.port} is not in the map")
                self._revnat_ids[row.frontend] = rid
                for ip, port in row.slots:
                    bid = backends.get((ip, port, row.proto))
                    if bid is None:
                        raise ValueError(f"service {service}: backend {ip}:{port} is not in the backend map")
                    self._backend_ids[(ip, port, row.proto)] = bid
                    self._backend_states[bid] = states[bid]
        self._maglev_tables = {r.frontend for rs in rows.values() for r in rs if r.maglev and r.backends}
        self._service_entries = 0
        used = set(self._revnat_ids.values())
        self._next_revnat = max(used, default=0) + 1
        self._free_revnat = sorted(set(range(1, self._next_revnat)) - used, reverse=True)
        self._next_backend = max(backends.values(), default=0) + 1
        for service, service_rows in rows.items():
            self._retain(service, [], service_rows)

    def revnat_ids(self) -> dict[tuple[IPv4Address, int, int, int], int]:
        """The reverse-NAT ids allocated now, by frontend (address, port, proto, scope)."""
        return dict(self._revnat_ids)

    def rows(self) -> dict[str, list[FrontendRow]]:
        """The rows ciliumlite wrote, by service name."""
        return {k: list(v) for k, v in self._rows.items()}

    def dump(self) -> list[dict[str, Any]]:
        """The service map as the kernel has it, like ``cilium bpf lb list``."""
        backends = dict(self.backends.items())
        out = []
        for key, svc in sorted(self.services.items(), key=lambda kv: (kv[0].address, kv[0].dport,
                                                                         kv[0].scope, kv[0].backend_slot)):
            if key.backend_slot == 0:
                out.append({"frontend": f"{key.address}:{key.dport}", "proto": key.proto, "scope": key.scope,
                            "slot": 0, "backend": f"0.0.0.0:0 ({svc.count} backends)", "rev_nat": svc.rev_nat_index,
                            "flags": svc.flags, "flags2": svc.flags2})
            else:
                be = backends.get(svc.backend_id)
                out.append({"frontend": f"{key.address}:{key.dport}", "proto": key.proto, "scope": key.scope,
                            "slot": key.backend_slot, "backend": f"{be.address}:{be.port}" if be else "?",
                            "backend_id": svc.backend_id, "rev_nat": svc.rev_nat_index})
        return out

    def close(self) -> None:
        """Release the map fds."""
        for m in (self.services, self.backends, self.revnat, self.maglev, self.affinity):
            m.close()
