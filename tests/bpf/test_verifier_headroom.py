"""Every program of every datapath object, in every configuration, uses at most half the verifier's budget.

The kernel's verifier gives up on a program after 1,000,000 processed instructions; its count is
``bpf_prog_info.verified_insns`` (:meth:`ciliumlite.bpf.Program.info`). A program near the limit
breaks on the next feature or the next compiler, so the bar is 2x headroom: at most 500,000 in
each configuration. Tail calls (``tailcall.h``, :mod:`ciliumlite.datapath.tailcalls`) keep
``bpf_host`` under it; before them ``cil_to_netdev`` took 755,790 with masquerade on.

A configuration is what reaches the programs' ``.rodata`` and so decides which code the verifier
walks: routing (none / VXLAN / native) x load-balancer mode (SNAT, and DSR / hybrid, which need
native routing) x BPF masquerade x trace events, in full, plus one knob away from the largest:
no kube-proxy replacement, no socket LB, no drop events, no event rate limit, and routing none
with and without a node address; each object's own knobs (``bpf_lxc``'s ARP responder,
``bpf_xdp``'s NodePort) are loaded both ways in each. ``tc_mode`` (tcx or clsact) only changes
how programs attach, never ``.rodata`` (checked below), so it is no dimension.

The table (every program's largest count and its configuration, then every count) is written to
``build/verifier-headroom.md`` and printed.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from ciliumlite.bpf import BpfObject
from ciliumlite.datapath import loader
from ciliumlite.datapath.config import DatapathConfig, NodeRodata

pytestmark = pytest.mark.bpf

LIMIT = 1_000_000
BUDGET = LIMIT // 2
REPORT = Path(__file__).resolve().parents[2] / "build" / "verifier-headroom.md"

#: NodeRodata fields that switch code on or off (or prune it when 0): the matrix must vary each.
SWITCHES = frozenset({"routing_mode", "lb_mode", "enable_masquerade", "trace_events", "drop_events",
                      "events_per_sec", "enable_socket_lb", "enable_per_packet_lb", "node_ipv4",
                      "enable_policy"})
#: NodeRodata fields that are values the code computes with (addresses, sizes, ranges, ids).
VALUES = frozenset({"tunnel_ifindex", "native_ifindex", "native_cidr", "native_cidr_mask", "tunnel_prefix_mask",
                    "pod_cidr", "pod_cidr_mask", "maglev_table_size", "native_mtu", "host_netns_cookie",
                    "nodeport_min", "nodeport_max", "snat_port_min", "snat_port_max", "maglev_seed"})
#: Each object's own load knobs, loaded every way listed (the first is the default).
KNOBS: Mapping[str, tuple[dict[str, Any], ...]] = {
    "bpf_lxc": ({"arp_responder": True}, {"arp_responder": False}),
    "bpf_xdp": ({"nodeport": True}, {"nodeport": False}),
}
ROUTING_LB = (("none", "snat"), ("vxlan", "snat"), ("native", "snat"), ("native", "dsr"), ("native", "hybrid"))
NODE_IP = "192.0.2.9"


def _config(routing: str, lb: str, **kw: Any) -> DatapathConfig:
    fields: dict[str, Any] = {"node_name": "headroom", "pod_cidr": "10.244.9.0/24", "routing": routing,
                              "load_balancer_mode": lb, "node_ip": "0.0.0.0" if routing == "none" else NODE_IP}
    fields.update(kw)
    return DatapathConfig(**fields)


def configurations() -> dict[str, DatapathConfig]:
    """Every configuration the test loads, by a label naming what differs."""
    out = {}
    for routing, lb in ROUTING_LB:
        for masq in (False, True):
            for trace in (False, True):
                out[f"{routing}/{lb} masq={int(masq)} trace={int(trace)}"] = \
                    _config(routing, lb, bpf_masquerade=masq, monitor_trace=trace)
    heavy = {"bpf_masquerade": True, "monitor_trace": True}
    for label, kw in (("no kube-proxy replacement", {"kube_proxy_replacement": False}),
                      ("no socket LB", {"socket_lb": False}), ("no drop events", {"monitor_drops": False}),
                      ("no event rate limit", {"events_per_sec": 0})):
        for routing, lb in (("native", "hybrid"), ("vxlan", "snat")):
            out[f"{routing}/{lb} masq=1 trace=1, {label}"] = _config(routing, lb, **heavy, **kw)
    out["none/snat masq=1 trace=1, node address set"] = _config("none", "snat", **heavy, node_ip=NODE_IP)
    # Policy enforcement (policy.h) adds CT and two LPM lookups per direction to every path.
    for routing, lb in ROUTING_LB:
        out[f"{routing}/{lb} masq=1 trace=1, policy"] = _config(routing, lb, **heavy, enable_policy=True)
    return out


def _loaders() -> dict[str, Callable[..., BpfObject]]:
    out = {}
    for name in loader.OBJECTS:
        fn = getattr(loader, f"load_{name.removeprefix('bpf_')}", None)
        assert callable(fn), f"datapath object {name} has no loader.load_{name.removeprefix('bpf_')}"
        out[name] = fn
    return out


def _variants(name: str, fn: Callable[..., BpfObject]) -> tuple[dict[str, Any], ...]:
    required = [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    variants = KNOBS.get(name, ({},))
    assert all(set(required) <= set(v) for v in variants), \
        f"loader.{fn.__name__} needs {required}: list its knobs in KNOBS"
    return variants


def test_the_matrix_varies_every_switch_and_nothing_is_unclassified() -> None:
    rodata = [c.node_rodata(tunnel_ifindex=3, native_ifindex=2, host_netns_cookie=1)
              for c in configurations().values()]
    names = {f.name for f in dataclasses.fields(NodeRodata)} - {"overrides"}
    assert names <= SWITCHES | VALUES, f"classify the new config.h globals {sorted(names - SWITCHES - VALUES)}"
    varied = {n for n in names if len({getattr(r, n) for r in rodata}) > 1}
    assert varied >= SWITCHES, f"no configuration changes {sorted(SWITCHES - varied)}"


def test_tc_mode_never_reaches_rodata() -> None:
    ro = {mode: _config("native", "dsr", tc_mode=mode).node_rodata(native_ifindex=2) for mode in ("tcx", "clsact")}
    assert ro["tcx"] == ro["clsact"]


def test_every_program_in_every_configuration_has_2x_headroom(bpffs_dir: str, capsys: pytest.CaptureFixture[str]) \
        -> None:
    loaders = _loaders()
    counts: dict[str, dict[str, int]] = {}  # "object:program[knobs]" -> configuration -> verified_insns
    for label, cfg in configurations().items():
        rodata = cfg.node_rodata(tunnel_ifindex=3 if cfg.routing == "vxlan" else 0,
                                 native_ifindex=0 if cfg.routing == "none" else 2, host_netns_cookie=1)
        for name, fn in loaders.items():
            for knobs in _variants(name, fn):
                obj = fn(rodata, bpffs_dir, **knobs)
                try:
                    suffix = "".join(f" {k}={int(v)}" for k, v in knobs.items())
                    for prog_name, prog in obj.programs.items():
                        verified = prog.info().verified_insns
                        assert verified is not None, "this kernel does not report verified_insns (Linux 5.16+)"
                        counts.setdefault(f"{name}:{prog_name}{suffix}", {})[label] = verified
                finally:
                    obj.close()
    table = _table(counts)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(table)
    with capsys.disabled():
        print(f"\n{table.split(chr(10) + chr(10) + '## Every')[0]}\n(full table: {REPORT})")
    over = {p: {c: n for c, n in per.items() if n > BUDGET} for p, per in counts.items()}
    over = {p: per for p, per in over.items() if per}
    assert not over, f"over {BUDGET:,} verified instructions (half the verifier's limit): {over}"


def _table(counts: dict[str, dict[str, int]]) -> str:
    configs = list(configurations())
    lines = ["# Verified instructions per program (limit 1,000,000; bar 500,000)", "",
             f"{len(configs)} configurations; each program's largest count:", "",
             "| program | largest | headroom | configuration |", "|---|---:|---:|---|"]
    for prog, per in sorted(counts.items(), key=lambda kv: -max(kv[1].values())):
        worst = max(per, key=lambda c: per[c])
        lines.append(f"| {prog} | {per[worst]:,} | {LIMIT / per[worst]:.1f}x | {worst} |")
    lines += ["", "## Every count", "", "| program | " + " | ".join(configs) + " |",
              "|---|" + "---:|" * len(configs)]
    for prog, per in sorted(counts.items()):
        lines.append(f"| {prog} | " + " | ".join(f"{per.get(c, 0):,}" for c in configs) + " |")
    return "\n".join(lines) + "\n"
