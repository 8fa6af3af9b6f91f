"""What one change of a real node writes to disk does not grow with the node's size.

A node (no routing, kube-proxy replacement, in its own namespace) gets services one by one; the
files and bytes that one ``upsert_service`` writes (counted at ``statedir.atomic_write``, through
which the state directory and the registry entry are written) are the same with 20 services as
with 520: one item file, no node file, no registry entry. The same for an endpoint (its file and
the node file, for the next endpoint id). Then the node is detached and restored in this process
from its state directory, and the services' conflict checks work on what was restored.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ciliumlite.bpf import fs
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath import registry, statedir
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.node import Datapath
from ciliumlite.node import state as state_mod
from ciliumlite.service import Backend, Frontend, Service
from ciliumlite.testing.resources import unique_name

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

POD_CIDR = "10.244.71.0/24"


@dataclass
class Writes:
    """Every atomic_write and remove_file since the last reset: (directory, name, bytes)."""

    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def take(self) -> list[tuple[str, str, int]]:
        out, self.calls = self.calls, []
        return out


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    w = Writes()
    real_write, real_remove = statedir.atomic_write, statedir.remove_file

    def counting_write(directory: str, name: str, text: str, **kw: object) -> None:
        w.calls.append((directory, name, len(text.encode())))
        real_write(directory, name, text, **kw)  # type: ignore[arg-type]

    def counting_remove(directory: str, name: str, **kw: object) -> bool:
        w.calls.append((directory, name, 0))
        return real_remove(directory, name, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(statedir, "atomic_write", counting_write)
    monkeypatch.setattr(statedir, "remove_file", counting_remove)
    return w


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[DatapathConfig, str, list[str]]]:
    made = [nsmod.create(unique_name("sw"))]
    cfg = DatapathConfig(node_name=unique_name("sw-node"), pod_cidr=POD_CIDR, state_dir=str(tmp_path / "run"))
    try:
        yield cfg, made[0], made
    finally:
        for ns in reversed(made):
            nsmod.remove(ns)


def _svc(i: int, port: int = 80) -> Service:
    # Addresses and names of one length, so every service's file has the same size.
    ip = ipaddress.IPv4Address("10.96.100.100") + (i // 100) * 256 + i % 100
    return Service(f"svc-{i:05d}", Frontend(str(ip), port), [Backend(f"10.244.200.{100 + i % 100}", 8080)])


def test_one_change_costs_the_same_at_20_and_520_services(node: tuple[DatapathConfig, str, list[str]],
                                                          writes: Writes) -> None:
    cfg, ns, made = node
    dp = Datapath(cfg, netns=ns)
    owner: list[Datapath] = [dp]  # who owns the node now (the restored one after the restore)
    try:
        costs: dict[int, list[tuple[str, int]]] = {}
        i = 0
        for n in (20, 520):
            while i < n:
                dp.upsert_service(_svc(i))
                i += 1
            writes.take()
            dp.upsert_service(_svc(n))  # a new one
            dp.upsert_service(_svc(3, port=81))  # an update
            dp.delete_service(_svc(3).name)  # a delete
            dp.upsert_service(_svc(3))
            i += 1
            costs[n] = [(str(Path(d).relative_to(cfg.run_dir)), size) for d, _, size in writes.take()]
        print(f"\none service change writes {costs[20]}")
        assert costs[20] == costs[520]
        assert [c[0] for c in costs[20]] == ["state/services"] * 4  # no node file, no registry entry
        assert not any(Path(d) == registry.run_dir() for d, _, _ in writes.calls)
        eps = []
        for k in range(3):
            pod = nsmod.create(unique_name("sw-pod"))
            made.append(pod)
            writes.take()
            eps.append(dp.add_endpoint(pod, name=f"p{k}"))
            costs[-k] = [(str(Path(d).relative_to(cfg.run_dir)), size) for d, _, size in writes.take()]
        assert [c[0] for c in costs[0]] == [c[0] for c in costs[-2]] == ["state/endpoints", "state"]
        dp.remove_endpoint(eps[0])
        assert [(str(Path(d).relative_to(cfg.run_dir)), name) for d, name, _ in writes.take()] == \
            [("state/endpoints", statedir.item_file(str(eps[0].id)))]
        _restore_and_check(dp, cfg, ns, owner)
    finally:
        owner[-1].close(remove=True)
        if os.path.isdir(cfg.pin_dir):  # a restore that failed: remove by name what dp left
            fs.remove_pin_dir(cfg.pin_dir)
        state_mod.remove(cfg)
        registry.release(cfg.node_name)


def _restore_and_check(dp: Datapath, cfg: DatapathConfig, ns: str, owner: list[Datapath]) -> None:
    n_services = len(dp.services())
    dp.detach()
    owner.append(back := Datapath.restore(cfg, netns=ns))
    assert len(back.services()) == n_services and [e.name for e in back.endpoints()] == ["p1", "p2"]
    assert state_mod.read(cfg)["version"] == state_mod.STATE_VERSION
    with pytest.raises(ValidationError, match="already used by svc-00007"):
        back.upsert_service(Service("other", _svc(7).frontend, [Backend("10.244.200.1", 8080)]))
    back.upsert_service(_svc(7, port=90))  # moved: its old frontend is free again
    back.upsert_service(Service("other", _svc(7).frontend, [Backend("10.244.200.1", 8080)]))
    assert {s.name for s in back.services()} >= {"other", "svc-00007"}
    entry = registry.with_items(json.loads(registry.entry_path(cfg.node_name).read_text()))
    assert len(entry["services"]) == n_services + 1 and len(entry["endpoints"]) == 2
