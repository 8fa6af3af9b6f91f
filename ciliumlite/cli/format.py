"""Turning what :mod:`ciliumlite.inspect` read into rows, tables, lines and Prometheus text.

Pure functions: no root, no kernel, no registry. Each ``*_rows`` function returns JSON-ready dicts
(what ``--output json`` prints); the human forms are built from those rows, so both always agree.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from rich import box
from rich.table import Table

from ciliumlite.datapath.events import DropEvent, PolicyVerdictEvent, TraceEvent
from ciliumlite.datapath.maps import MetricRow
from ciliumlite.datapath.reasons import EVENT_LOST, Direction, describe, is_drop
from ciliumlite.datapath.records import (
    BE_STATE_TERMINATING,
    ENDPOINT_F_HOST,
    SCOPE_INTERNAL,
    SVC_FLAG2_INT_LOCAL_SCOPE,
    SVC_FLAG2_MAGLEV,
    SVC_FLAG2_TWO_SCOPES,
    SVC_FLAG_AFFINITY,
    SVC_FLAG_EXT_LOCAL_SCOPE,
    SVC_FLAG_EXTERNAL_IP,
    SVC_FLAG_LOADBALANCER,
    SVC_FLAG_NODEPORT,
    SVC_FLAG_ROUTABLE,
    CtEntry,
    EndpointInfo,
    EndpointKey,
    Ipv4CtTuple,
    NatEntry,
    TunnelKey,
    TunnelValue,
)
from ciliumlite.inspect import LbEntry, MapPressure, RegisteredDatapath

Row = dict[str, Any]

PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}
# Tuple flags (maps.h TUPLE_F_*) and ct_entry.flags (CT_F_*), named as Cilium's dumps name them.
TUPLE_F_IN, TUPLE_F_RELATED, TUPLE_F_SERVICE = 1, 2, 4
CT_FLAGS = {0x0001: "RxClosing", 0x0002: "TxClosing", 0x0008: "LBLoopback", 0x0010: "SeenNonSyn",
            0x0020: "NodePort", 0x0080: "DSRInternal", 0x0400: "FromTunnel"}


def proto_name(number: int) -> str:
    """6 -> "TCP"; unknown numbers as they are."""
    return PROTOCOLS.get(number, str(number))


def direction_name(direction: int) -> str:
    """The metrics ``dir`` byte in words: "ingress", "egress", "service" (else "unknown")."""
    try:
        return Direction(direction).name.lower()
    except ValueError:
        return "unknown"


def english_list(words: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: for the sentences the CLI prints."""
    return " and ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} and {words[-1]}"


def to_json(data: Any) -> str:
    """JSON text (dataclasses and addresses become plain values)."""
    def default(o: Any) -> Any:
        if is_dataclass(o) and not isinstance(o, type):
            return asdict(o)
        return str(o)
    return json.dumps(data, indent=2, default=default)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> Table:
    """A plain table like Cilium's (no box; cells may hold several lines)."""
    t = Table(*columns, box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False,
              header_style="bold", show_edge=False)
    for r in rows:
        t.add_row(*("" if c is None else str(c) for c in r))
    return t


# -- endpoints -------------------------------------------------------------------------------------------


def endpoint_rows(dps: Iterable[RegisteredDatapath]) -> list[Row]:
    """``endpoint list``: the registry's endpoint rows, with their node."""
    return [{"node": dp.node, **ep} for dp in dps for ep in sorted(dp.endpoints, key=lambda e: e.get("id", 0))]


def endpoint_table(rows: list[Row]) -> Table:
    """ENDPOINT ID, IDENTITY, IPv4, IFNAME, MAC, NODE (and the pod's name)."""
    return table(["ENDPOINT", "IDENTITY", "IPv4", "IFNAME", "MAC", "NAME", "NODE"],
                 [(r.get("id"), r.get("identity"), r.get("ipv4"), r.get("ifname"), r.get("mac"), r.get("name"),
                   r["node"]) for r in rows])


def endpoint_info_text(info: EndpointInfo) -> str:
    """Cilium's LOCAL ENDPOINT INFO column (``(localhost)`` for the node's own addresses)."""
    if info.flags & ENDPOINT_F_HOST:
        return "(localhost)"
    return (f"id={info.lxc_id:<5} sec_id={info.sec_id:<6} flags=0x{info.flags:04x} ifindex={info.ifindex:<3} "
            f"mac={info.mac} nodemac={info.node_mac}")


def bpf_endpoint_rows(node: str, entries: Iterable[tuple[EndpointKey, EndpointInfo]]) -> list[Row]:
    """``bpf endpoint list`` rows of one node (pods, and the node's own addresses flagged ``host``)."""
    return [{"node": node, "ip": str(k.ip4), "host": bool(v.flags & ENDPOINT_F_HOST), "id": v.lxc_id,
             "sec_id": v.sec_id, "flags": v.flags, "ifindex": v.ifindex, "mac": v.mac, "node_mac": v.node_mac,
             "info": endpoint_info_text(v)} for k, v in entries]


def bpf_endpoint_table(rows: list[Row]) -> Table:
    """IP ADDRESS, LOCAL ENDPOINT INFO (Cilium's), NODE."""
    return table(["IP ADDRESS", "LOCAL ENDPOINT INFO", "NODE"], [(r["ip"], r["info"], r["node"]) for r in rows])


# -- tunnels ---------------------------------------------------------------------------------------------


def tunnel_rows(dp: RegisteredDatapath, entries: Iterable[tuple[TunnelKey, TunnelValue]]) -> list[Row]:
    """``bpf tunnel list`` rows of one node; the remote node's name and CIDR come from the registry."""
    by_prefix: dict[str, dict[str, Any]] = {}
    for name, info in dp.remote_nodes.items():
        try:
            by_prefix[str(IPv4Network(info.get("pod_cidr", ""), strict=False).network_address)] = {"name": name, **info}
        except ValueError:
            continue
    out = []
    for k, v in entries:
        remote = by_prefix.get(str(k.ip4), {})
        out.append({"node": dp.node, "tunnel": str(k.ip4), "value": str(v.ip4),
                    "remote_node": remote.get("name"), "pod_cidr": remote.get("pod_cidr")})
    return out


def tunnel_table(rows: list[Row]) -> Table:
    """TUNNEL, VALUE (Cilium's ``prefix:0  address:0``), then who that is."""
    return table(["TUNNEL", "VALUE", "REMOTE NODE", "POD CIDR", "NODE"],
                 [(f"{r['tunnel']}:0", f"{r['value']}:0", r.get("remote_node") or "?", r.get("pod_cidr") or "?",
                   r["node"]) for r in rows])


# -- services --------------------------------------------------------------------------------------------


def svc_flags_text(flags: int, flags2: int) -> list[str]:
    """The frontend row's flags in Cilium's words: ``[NodePort, Local, non-routable]``."""
    if flags & SVC_FLAG_NODEPORT:
        kind = "NodePort"
    elif flags & SVC_FLAG_LOADBALANCER:
        kind = "LoadBalancer"
    elif flags & SVC_FLAG_EXTERNAL_IP:
        kind = "ExternalIPs"
    else:
        kind = "ClusterIP"
    out = [kind]
    if flags & SVC_FLAG_EXT_LOCAL_SCOPE:
        out.append("Local")
    if flags2 & SVC_FLAG2_INT_LOCAL_SCOPE:
        out.append("InternalLocal")
    if flags & SVC_FLAG_AFFINITY:
        out.append("sessionAffinity")
    if not flags & SVC_FLAG_ROUTABLE:
        out.append("non-routable")
    if flags2 & SVC_FLAG2_TWO_SCOPES:
        out.append("two-scopes")
    if flags2 & SVC_FLAG2_MAGLEV:
        out.append("Maglev")
    return out


def lb_rows(node: str, entries: Iterable[LbEntry]) -> list[Row]:
    """``bpf lb list`` rows of one node: slot 0 is the frontend row, slots 1..n its backends."""
    out = []
    for e in entries:
        k, s = e.key, e.service
        row: Row = {"node": node, "frontend": f"{k.address}:{k.dport}", "proto": proto_name(k.proto),
                    "scope": "internal" if k.scope == SCOPE_INTERNAL else "external", "slot": k.backend_slot,
                    "rev_nat": s.rev_nat_index}
        if k.backend_slot == 0:
            row.update(backend="0.0.0.0:0", count=s.count, flags=s.flags, flags2=s.flags2,
                       flag_names=svc_flags_text(s.flags, s.flags2))
            if s.flags & SVC_FLAG_AFFINITY:
                row["affinity_timeout"] = s.backend_id
        else:
            be = e.backend
            row.update(backend_id=s.backend_id, backend=f"{be.address}:{be.port}" if be else None,
                       backend_proto=proto_name(be.proto) if be else None, backend_state=be.flags if be else None)
        out.append(row)
    return out


def lb_lines(rows: list[Row]) -> list[tuple[str, str]]:
    """(SERVICE ADDRESS, BACKEND ADDRESS (REVNAT_ID) (SLOT)) pairs in Cilium's format."""
    out = []
    for r in rows:
        svc = f"{r['frontend']}/{r['proto']}" + ("/i" if r["scope"] == "internal" else "")
        if r["slot"] == 0:
            be = f"0.0.0.0:0 ({r['rev_nat']}) (0) [{', '.join(r['flag_names'])}]"
        elif r.get("backend"):
            # Cilium prints a non-active backend's state after it (slots past count: never chosen).
            state = " [terminating]" if r.get("backend_state") == BE_STATE_TERMINATING else ""
            be = f"{r['backend']}/{r['backend_proto']} ({r['rev_nat']}) ({r['slot']}){state}"
        else:
            be = f"backend {r.get('backend_id')} missing! ({r['rev_nat']}) ({r['slot']})"
        out.append((svc, be))
    return out


def lb_table(rows: list[Row]) -> Table:
    """SERVICE ADDRESS, BACKEND ADDRESS (REVNAT_ID) (SLOT), NODE."""
    return table(["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)", "NODE"],
                 [(svc, be, r["node"]) for (svc, be), r in zip(lb_lines(rows), rows, strict=True)])


def service_rows(dp: RegisteredDatapath, ids: dict[tuple[str, int], int] | None = None) -> list[Row]:
    """``service list`` rows of one node, from the registry (one per frontend, as Cilium lists them).

    ``ids`` maps a frontend (address, port) to its reverse-NAT index (Cilium's service ID), when the
    pinned reverse-NAT map could be read.
    """
    ids = ids or {}
    out = []
    for name, svc in sorted(dp.services.items()):
        fe = svc.get("frontend") or {}
        proto = fe.get("protocol", "TCP")
        listed = svc.get("backends") or []
        backends = [f"{b['ip']}:{b['port']}" for b in listed]
        states = ["terminating" if b.get("terminating") else "active" for b in listed]
        port = int(fe.get("port", 0))
        frontends = [(str(fe.get("ip")), port, "ClusterIP")]
        if svc.get("type") in ("NodePort", "LoadBalancer") and svc.get("node_port"):
            node_ip = str(dp.config.get("node_ip", "0.0.0.0"))
            for addr in dict.fromkeys((node_ip, "0.0.0.0")):
                frontends.append((addr, int(svc["node_port"]), "NodePort"))
        frontends += [(str(ip), port, "ExternalIPs") for ip in svc.get("external_ips") or []]
        frontends += [(str(ip), port, "LoadBalancer") for ip in svc.get("load_balancer_ips") or []]
        for addr, fport, kind in frontends:
            row: Row = {"node": dp.node, "id": ids.get((addr, fport)), "name": name,
                        "frontend": f"{addr}:{fport}/{proto}", "type": kind, "backends": backends,
                        "backend_states": states}
            if kind != "ClusterIP":
                row["external_traffic_policy"] = svc.get("external_traffic_policy", "Cluster")
            if svc.get("internal_traffic_policy", "Cluster") != "Cluster":
                row["internal_traffic_policy"] = svc["internal_traffic_policy"]
            out.append(row)
    return out


def service_table(rows: list[Row]) -> Table:
    """ID, Frontend, Service Type, Backend (``1 => 10.244.1.2:8080/TCP (active)``), NAME, NODE."""
    def backends(r: Row) -> str:
        proto = r["frontend"].rsplit("/", 1)[-1]
        states = r.get("backend_states") or ["active"] * len(r["backends"])
        return "\n".join(f"{i} => {b}/{proto} ({st})" for i, (b, st) in enumerate(zip(r["backends"], states,
                                                                                      strict=True), 1)) or "(none)"
    return table(["ID", "Frontend", "Service Type", "Backend", "NAME", "NODE"],
                 [(r["id"] if r["id"] is not None else "-", r["frontend"], r["type"], backends(r), r["name"],
                   r["node"]) for r in rows])


# -- conntrack and NAT -----------------------------------------------------------------------------------


def ct_flag_names(flags: int) -> list[str]:
    """ct_entry.flags bits in words."""
    return [name for bit, name in CT_FLAGS.items() if flags & bit]


def ct_row(node: str, map_name: str, key: Ipv4CtTuple, e: CtEntry, now: int) -> Row:
    """One conntrack entry. CT keys use Cilium's naming quirk (addresses named for the reply direction,
    ports for the original one), so the original direction ``S:s -> D:d`` is ``daddr:sport -> saddr:dport``."""
    return {"node": node, "map": map_name, "proto": proto_name(key.nexthdr),
            "direction": "IN" if key.flags & TUPLE_F_IN else "OUT",
            "src": f"{key.daddr}:{key.sport}", "dst": f"{key.saddr}:{key.dport}",
            "service": bool(key.flags & TUPLE_F_SERVICE), "related": bool(key.flags & TUPLE_F_RELATED),
            "expires": e.lifetime, "expires_in": e.lifetime - now, "packets": e.packets, "bytes": e.bytes,
            "rx_flags_seen": e.rx_flags_seen, "tx_flags_seen": e.tx_flags_seen, "flags": e.flags,
            "flag_names": ct_flag_names(e.flags), "rev_nat": e.rev_nat_index, "backend_id": e.backend_id,
            "src_sec_id": e.src_sec_id, "ifindex": e.ifindex}


def ct_line(r: Row) -> str:
    """Cilium's ``bpf ct list global`` line."""
    tags = "".join(t for t, on in ((" service", r["service"]), (" related", r["related"])) if on)
    return (f"{r['proto']} {r['direction']} {r['src']} -> {r['dst']}{tags} expires={r['expires']} "
            f"(in {r['expires_in']}s) Packets={r['packets']} Bytes={r['bytes']} "
            f"RxFlagsSeen=0x{r['rx_flags_seen']:02x} TxFlagsSeen=0x{r['tx_flags_seen']:02x} "
            f"Flags=0x{r['flags']:04x} [ {' '.join(r['flag_names'])} ] RevNAT={r['rev_nat']} "
            f"SourceSecurityID={r['src_sec_id']} IfIndex={r['ifindex']} BackendID={r['backend_id']}")


def nat_row(node: str, key: Ipv4CtTuple, e: NatEntry, now: int) -> Row:
    """One SNAT entry. NAT keys are in packet order: OUT entries are the packet before SNAT (translated
    to a new source), IN entries the reply as it arrives (translated back to the original destination)."""
    inbound = bool(key.flags & TUPLE_F_IN)
    return {"node": node, "proto": proto_name(key.nexthdr), "direction": "IN" if inbound else "OUT",
            "src": f"{key.saddr}:{key.sport}", "dst": f"{key.daddr}:{key.dport}",
            "xlate": "XLATE_DST" if inbound else "XLATE_SRC", "to": f"{e.to_addr}:{e.to_port}",
            "created": e.created, "age": now - e.created, "needs_ct": e.needs_ct}


def nat_line(r: Row) -> str:
    """Cilium's ``bpf nat list`` line."""
    return (f"{r['proto']} {r['direction']} {r['src']} -> {r['dst']} {r['xlate']} {r['to']} "
            f"Created={r['age']}sec ago NeedsCT={r['needs_ct']}")


def sort_flows(rows: list[Row]) -> list[Row]:
    """Flows in a stable order: by node, then source and destination as addresses."""
    def addr(s: str) -> tuple[IPv4Address, int]:
        ip, _, port = s.rpartition(":")
        return IPv4Address(ip), int(port)
    return sorted(rows, key=lambda r: (r["node"], r.get("map", ""), addr(r["src"]), addr(r["dst"]), r["direction"]))


# -- metrics ---------------------------------------------------------------------------------------------


def metric_rows(node: str, metrics: Iterable[MetricRow]) -> list[Row]:
    """``metrics`` rows of one node (already summed over CPUs and source lines)."""
    return [{"node": node, "reason": m.reason, "reason_text": describe(m.reason), "drop": is_drop(m.reason),
             "direction": direction_name(m.direction), "packets": m.packets, "bytes": m.bytes} for m in metrics]


def metric_table(rows: list[Row]) -> Table:
    """REASON, DIRECTION, PACKETS, BYTES, NODE; drops marked."""
    return table(["REASON", "DIRECTION", "PACKETS", "BYTES", "NODE"],
                 [(("DROP: " if r["drop"] else "") + r["reason_text"], r["direction"].upper(), r["packets"],
                   r["bytes"], r["node"]) for r in rows])


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


_PROM_HELP = {
    "ciliumlite_forward_count_total": "Packets forwarded by the datapath, by direction",
    "ciliumlite_forward_bytes_total": "Bytes forwarded by the datapath, by direction",
    "ciliumlite_drop_count_total": "Packets dropped by the datapath, by reason and direction",
    "ciliumlite_drop_bytes_total": "Bytes dropped by the datapath, by reason and direction",
    "ciliumlite_events_lost_total": "Datapath events (ciliumlite monitor) not sent, by reason",
}


def prometheus(rows: list[Row]) -> str:
    """The Prometheus text exposition of metric rows (as Cilium exports them: forwards by direction,
    drops by reason and direction), with a ``node`` label so several datapaths never collide."""
    fwd: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    drop: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    lost: dict[tuple[str, ...], int] = defaultdict(int)
    for r in rows:
        if r["reason"] in EVENT_LOST:  # events not sent, not packets: not forwarded traffic
            lost[(r["reason_text"], r["node"])] += r["packets"]
            continue
        acc = drop[(r["reason_text"], r["direction"], r["node"])] if r["drop"] else fwd[(r["direction"], r["node"])]
        acc[0] += r["packets"]
        acc[1] += r["bytes"]
    out: list[str] = []
    for kind, source in (("forward", fwd), ("drop", drop)):
        for which, unit in ((0, "count"), (1, "bytes")):
            name = f"ciliumlite_{kind}_{unit}_total"
            out += [f"# HELP {name} {_PROM_HELP[name]}", f"# TYPE {name} counter"]
            for key, values in sorted(source.items()):
                names = ("direction", "node") if kind == "forward" else ("reason", "direction", "node")
                out.append(f"{name}{_labels(**dict(zip(names, key, strict=True)))} {values[which]}")
    if lost:
        name = "ciliumlite_events_lost_total"
        out += [f"# HELP {name} {_PROM_HELP[name]}", f"# TYPE {name} counter"]
        out += [f"{name}{_labels(reason=reason, node=node)} {n}" for (reason, node), n in sorted(lost.items())]
    return "\n".join(out) + "\n"


# -- status ----------------------------------------------------------------------------------------------

_WHERE = re.compile(r"^(?P<kind>\S+) (?P<hook>\S+) on (?:cgroup (?P<cgroup>\S+)|(?P<dev>\S+))(?: in netns (?P<ns>\S+))?$")


def programs_by_device(attachments: Iterable[dict[str, str]]) -> dict[str, list[str]]:
    """Attachments (``{"program", "where"}``) grouped per device: ``{"eth0": ["cil_from_netdev (tcx ingress)"]}``."""
    out: dict[str, list[str]] = {}
    for a in attachments:
        where = str(a.get("where", ""))
        m = _WHERE.match(where)
        if m and m["cgroup"]:
            dev, hook = f"cgroup {m['cgroup'].rstrip('/').rsplit('/', 1)[-1]}", f"{m['kind']} {m['hook']}"
        elif m:
            dev, hook = m["dev"], f"{m['kind']} {m['hook']}"
        else:
            dev, hook = "?", where
        out.setdefault(dev, []).append(f"{a.get('program', '?')} ({hook})")
    return out


def status_row(dp: RegisteredDatapath, maps: list[MapPressure] | None, *, alive: bool,
               verbose: bool = False, sockops: Row | None = None) -> Row:
    """``status`` of one node, from its registry entry, its maps' pressure and ``sockops`` (socket
    acceleration as :func:`ciliumlite.datapath.sockops.read_status` reads it; None: never enabled)."""
    cfg = dp.config
    host_routing = "BPF" if cfg.get("host_routing") == "bpf" else "Legacy"
    kpr = bool(cfg.get("kube_proxy_replacement"))
    masq = f"BPF [{cfg.get('underlay_device', '?')}] {cfg.get('native_routing_cidr', '')}".rstrip() \
        if cfg.get("bpf_masquerade") else "Disabled"
    row: Row = {
        "node": dp.node, "netns": dp.netns, "pid": dp.pid, "process": "running" if alive else "not running",
        "node_ip": cfg.get("node_ip"), "pod_cidr": cfg.get("pod_cidr"),
        "kube_proxy_replacement": str(kpr),
        "socket_lb": "Enabled" if kpr and cfg.get("socket_lb") else "Disabled",
        "host_routing": host_routing, "routing": cfg.get("routing", "none"),
        "tunnel_device": cfg.get("tunnel_device") if cfg.get("routing") == "vxlan" else None,
        "masquerading": masq, "lb_mode": str(cfg.get("load_balancer_mode", "snat")).upper() if kpr else "Disabled",
        "endpoints": len(dp.endpoints), "services": len(dp.services),
        "remote_nodes": {n: {"ip": i.get("ip"), "pod_cidr": i.get("pod_cidr")} for n, i in sorted(dp.remote_nodes.items())},
        "programs": programs_by_device(dp.attachments),
        "pin_dir": dp.pin_dir, "sockops": sockops,
        "maps": None if maps is None else [{"name": m.name, "type": m.type, "entries": m.entries,
                                            "max_entries": m.max_entries, "pressure": round(m.ratio, 6)}
                                           for m in maps],
    }
    if verbose:
        row["config"] = cfg
        row["attachments"] = dp.attachments
        row["cgroup"] = dp.cgroup
        row["registry"] = dp.source
    return row


def _kv(key: str, value: Any) -> str:
    return f"  {key + ':' if key else '':<24}{value}"


def status_lines(row: Row, *, verbose: bool = False) -> list[str]:
    """``status`` of one node as text (Cilium's ``key: value`` layout)."""
    proc = f"pid {row['pid']}" + ("" if row["process"] == "running" else " (not running: state may be stale)")
    out = [f"{row['node']}  (netns {row['netns'] or '-'}, {proc})"]
    kpr = row["kube_proxy_replacement"]
    if kpr == "True":
        kpr += f"   [socket LB: {row['socket_lb']}, LB mode: {row['lb_mode']}]"
    routing = row["routing"] + (f" [{row['tunnel_device']}]" if row.get("tunnel_device") else "")
    out += [_kv("KubeProxyReplacement", kpr), _kv("Host Routing", row["host_routing"]),
            _kv("Routing", routing), _kv("Masquerading", row["masquerading"]), _kv("LB mode", row["lb_mode"]),
            _kv("Node IP / pod CIDR", f"{row['node_ip']} / {row['pod_cidr']}"),
            _kv("Endpoints", row["endpoints"]), _kv("Services", row["services"])]
    remotes = ", ".join(f"{n} ({i['ip']}, {i['pod_cidr']})" for n, i in row["remote_nodes"].items())
    out.append(_kv("Remote nodes", remotes or "none"))
    sk = row.get("sockops")
    out.append(_kv("Socket acceleration", "Disabled" if not sk else
                   f"{'Enabled' if sk['enabled'] else 'Disabled'} (experimental)   [{sk['sockets']} sockets, "
                   f"{sk['messages_redirected']} messages redirected, {sk['messages_passed']} passed]"))
    progs = row["programs"]
    if not progs:
        out.append(_kv("Programs", "none"))
    for i, (dev, names) in enumerate(sorted(progs.items())):
        out.append(_kv("Programs" if i == 0 else "", f"{dev}: {', '.join(names)}"))
    maps = row["maps"]
    if maps is None:
        out.append(_kv("BPF maps", "not read"))
    elif not maps:
        out.append(_kv("BPF maps", "none pinned" + ("" if row["pin_dir"] else " (legacy host routing)")))
    else:
        shown = maps if verbose else [m for m in maps if m["entries"]]
        out.append(_kv("BPF maps", f"{len(maps)} pinned in {row['pin_dir']}"
                       + ("" if verbose else f" ({len(maps) - len(shown)} empty not shown; --verbose lists them)")))
        width = max((len(m["name"]) for m in shown), default=0)
        for m in shown:
            out.append(f"    {m['name']:<{width}}  {m['entries']:>7}/{m['max_entries']:<7} "
                       f"{100 * m['pressure']:6.2f}%  {m['type']}")
    if verbose:
        out.append(_kv("Cgroup", row.get("cgroup") or "-"))
        out.append(_kv("Registry entry", row.get("registry") or "-"))
        out.append("  Attachments:")
        out += [f"    {a.get('program')}: {a.get('where')}" for a in row.get("attachments", [])] or ["    none"]
        out.append("  Config:")
        out += [f"    {k} = {v!r}" for k, v in sorted(row.get("config", {}).items())]
    return out


# -- monitor ---------------------------------------------------------------------------------------------


def endpoint_names(dp: RegisteredDatapath) -> dict[int, Row]:
    """ifindex (of the pod's host-side veth) -> the registry's endpoint row, for naming event devices."""
    out: dict[int, Row] = {}
    for ep in dp.endpoints:
        ifindex = ep.get("ifindex")
        if isinstance(ifindex, int) and ifindex > 0:
            out[ifindex] = ep
    return out


def monitor_row(ev: DropEvent | TraceEvent | PolicyVerdictEvent, endpoints: Mapping[int, Row] | None = None) -> Row:
    """One event as ``monitor --output json`` prints it: the decoded fields, plus the endpoint (pod)
    whose lxc device ``ifindex`` / ``dst_ifindex`` is, when the registry knows it."""
    row = ev.as_dict()
    for field, ifindex in (("", ev.ifindex), ("dst_", getattr(ev, "dst_ifindex", 0))):
        ep = (endpoints or {}).get(ifindex) if ifindex else None
        if ep is not None:
            row[f"{field}ifname"] = ep.get("ifname")
            row[f"{field}endpoint"] = {"id": ep.get("id"), "name": ep.get("name"), "ipv4": ep.get("ipv4")}
    return row


def monitor_line(row: Row, *, with_node: bool = False) -> str:
    """The event's ``cilium monitor``-style line (prefixed with its node when several are watched)."""
    return (f"[{row['node']}] " if with_node else "") + str(row["summary"])


# -- BGP -------------------------------------------------------------------------------------------------


def bgp_rows(socket: str, sessions: Iterable[Any], *, all_protocols: bool = False) -> list[Row]:
    """``bgp status`` rows from :func:`ciliumlite.bgp.parse_protocols` output (BGP sessions unless ``all``)."""
    return [{"socket": socket, "name": s.name, "proto": s.proto, "table": s.table, "state": s.state,
             "since": s.since, "info": s.info, "established": s.established}
            for s in sessions if all_protocols or s.is_bgp]


def bgp_table(rows: list[Row]) -> Table:
    """NAME, PROTO, TABLE, STATE, SINCE, INFO, SOCKET."""
    return table(["NAME", "PROTO", "TABLE", "STATE", "SINCE", "INFO", "SOCKET"],
                 [(r["name"], r["proto"], r["table"], r["state"], r["since"], r["info"], r["socket"]) for r in rows])
