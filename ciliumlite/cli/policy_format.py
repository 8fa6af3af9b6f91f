"""Turning network policy's kernel maps into rows and tables: ``bpf policy get`` and ``bpf ipcache
list`` (the policy half of :mod:`ciliumlite.cli.format`; pure functions, no root, no kernel)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.table import Table

from ciliumlite.cli.format import Row, proto_name, table
from ciliumlite.policy.identity import LOCAL_IDENTITY_FLAG, ReservedIdentity, reserved_labels
from ciliumlite.policy.labels import Labels
from ciliumlite.policy.mapstate import MapState, PolicyKey, allow_all
from ciliumlite.policy.ports import prefix_range


def identity_labels(identity: int, endpoints: Iterable[Row] = (),
                    prefixes: Mapping[int, Sequence[str]] | None = None) -> list[str]:
    """The labels that name ``identity``: a reserved identity's Cilium name (``reserved:host``),
    a local endpoint's labels (``k8s:app=web``, from the registry rows ``endpoints``), a CIDR
    identity's prefixes (``cidr:192.0.2.0/24``, from ``prefixes``: identity -> ipcache prefixes);
    else none. Identity 0 in a policy key is any peer; Cilium names it ``reserved:unknown`` too."""
    if identity in set(ReservedIdentity):
        return [str(label) for label in reserved_labels(ReservedIdentity(identity))]
    if identity & LOCAL_IDENTITY_FLAG:
        return [f"cidr:{p}" for p in (prefixes or {}).get(identity, ())]
    for ep in endpoints:
        labels = ep.get("labels")
        if ep.get("identity") == identity and isinstance(labels, dict) and labels:
            return [str(label) for label in Labels.from_mapping(labels)]
    return []


def port_text(protocol: int, port: int, port_prefix: int) -> str:
    """A policy key's PORT/PROTO: ``ANY`` (any protocol), ``ANY/TCP``, ``80/TCP``, or a port
    prefix as the range it covers, ``1024-2047/TCP``."""
    if protocol == 0:
        return "ANY"
    if port_prefix == 0:
        return f"ANY/{proto_name(protocol)}"
    first, last = prefix_range(port, port_prefix)
    return f"{first}/{proto_name(protocol)}" if first == last else f"{first}-{last}/{proto_name(protocol)}"


def policy_endpoint(node: str, endpoint_id: int, ep: Row | None, state: MapState | None,
                    stats: Mapping[tuple[PolicyKey, bool], tuple[int, int]], endpoints: Iterable[Row] = (),
                    prefixes: Mapping[int, Sequence[str]] | None = None) -> Row:
    """One endpoint of ``bpf policy get``: who it is (``ep``, its registry row, may be None), whether
    each direction is enforced, and its policy map's entries (``state``, a MapState; None: no map),
    sorted ingress first, with the allowed packets and bytes of ``stats`` (deny entries: None, their
    packets are counted in the drop metrics)."""
    eps = list(endpoints)
    entries: list[Row] = []
    for key, entry in sorted((state or {}).items(), key=lambda kv: (kv[0].egress, kv[0])):
        counted = None if entry.deny else stats.get((key, False), (0, 0))
        first = last = None
        if key.protocol and key.port_prefix:
            first, last = prefix_range(key.port, key.port_prefix)
        entries.append({
            "policy": "Deny" if entry.deny else "Allow", "direction": "Egress" if key.egress else "Ingress",
            "identity": key.identity, "labels": identity_labels(key.identity, eps, prefixes),
            "protocol": key.protocol, "port": first, "port_last": last, "port_prefix": key.port_prefix,
            "port_proto": port_text(key.protocol, key.port, key.port_prefix),
            "packets": None if counted is None else counted[0], "bytes": None if counted is None else counted[1]})

    def mode(egress: bool) -> str | None:
        if state is None:
            return None
        mine = {k: v for k, v in state.items() if k.egress == egress}
        only_all = len(mine) == 1 and allow_all(egress) in mine and not mine[allow_all(egress)].deny
        return "allow-all" if only_all else "enforced"

    ep = ep or {}
    return {"node": node, "endpoint_id": endpoint_id, "name": ep.get("name"), "ipv4": ep.get("ipv4"),
            "identity": ep.get("identity"), "enforced": state is not None, "ingress": mode(False),
            "egress": mode(True), "entries": entries}


def policy_title(row: Row) -> str:
    """``Endpoint 3 (a, 10.244.0.2, identity 257): ingress enforced/egress allow-all``."""
    who = ", ".join(str(x) for x in (row.get("name"), row.get("ipv4")) if x)
    if row.get("identity") is not None:
        who += f"{', ' if who else ''}identity {row['identity']}"
    head = f"Endpoint {row['endpoint_id']} ({who or 'not in the registry'})"
    if not row["enforced"]:
        return f"{head}: not enforced (no policy selects it)"
    return f"{head}: ingress {row['ingress']}/egress {row['egress']}"


def policy_table(row: Row) -> Table:
    """POLICY, DIRECTION, IDENTITY, LABELS, PORT/PROTO, PACKETS, BYTES of one endpoint's entries."""
    return table(["POLICY", "DIRECTION", "IDENTITY", "LABELS", "PORT/PROTO", "PACKETS", "BYTES"],
                 [(e["policy"], e["direction"], e["identity"], "\n".join(e["labels"]), e["port_proto"],
                   "-" if e["packets"] is None else e["packets"], "-" if e["bytes"] is None else e["bytes"])
                  for e in row["entries"]])


def ipcache_rows(node: str, entries: Iterable[Any]) -> list[Row]:
    """``bpf ipcache list`` rows of one node, from :meth:`PolicyMaps.list` (``IpcacheEntry`` items)."""
    return [{"node": node, "prefix": str(e.prefix), "identity": e.identity,
             "tunnel_endpoint": None if e.tunnel_endpoint is None else str(e.tunnel_endpoint)} for e in entries]


def ipcache_table(rows: list[Row]) -> Table:
    """PREFIX, IDENTITY, TUNNEL ENDPOINT, NODE."""
    return table(["PREFIX", "IDENTITY", "TUNNEL ENDPOINT", "NODE"],
                 [(r["prefix"], r["identity"], r["tunnel_endpoint"], r["node"]) for r in rows])


def policy_rows(enforced: Iterable[tuple[str, Mapping[str, Any]]]) -> list[Row]:
    """``policy get`` rows: one per policy (``Policy.describe()``), with the ``nodes`` that
    enforce it, from ``(node, {key: described policy})`` pairs; sorted by key."""
    out: dict[str, Row] = {}
    for node, policies in enforced:
        for key, desc in policies.items():
            out.setdefault(key, {**desc, "nodes": []})["nodes"].append(node)
    return [out[k] for k in sorted(out)]


def policy_rules_table(rows: list[Row]) -> Table:
    """POLICY, SUBJECT, DIRECTION, VERDICT, PEERS, PORTS, NODES: one line per rule (a spec without
    rules isolates its subject: a default deny, shown as such)."""
    lines = []
    for r in rows:
        name = f"{r['kind']} {r['namespace'] + '/' if r['namespace'] else ''}{r['name']}"
        nodes = ", ".join(r["nodes"])
        for spec in r["specs"]:
            for rule in spec["rules"]:
                peers = "any" if rule["peers"] is None else "\n".join(rule["peers"]) or "none"
                lines.append((name, spec["subject"], rule["direction"], rule["verdict"], peers,
                              ", ".join(rule["ports"]) or "any", nodes))
            for direction in spec["isolates"]:
                if not any(rule["direction"] == direction for rule in spec["rules"]):
                    lines.append((name, spec["subject"], direction, "deny (isolated, no rule)", "-", "-", nodes))
    return table(["POLICY", "SUBJECT", "DIRECTION", "VERDICT", "PEERS", "PORTS", "NODES"], lines)

