"""DatapathConfig validation and derived values, endpoint naming/identity, and reasons.py vs reasons.h."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath import reasons
from ciliumlite.datapath.config import PIN_BASE, SOCKOPS_EXCLUDE_MAX, DatapathConfig
from ciliumlite.datapath.reasons import Reason
from ciliumlite.datapath.sockops import COUNTERS
from ciliumlite.endpoint import MAX_IDENTITY, MIN_IDENTITY, identity_for, lxc_name

pytestmark = pytest.mark.unit

REASONS_H = Path(__file__).resolve().parents[2] / "csrc" / "include" / "ciliumlite" / "reasons.h"


# -- DatapathConfig validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    pytest.param({"pod_cidr": "10.244.0.0/33"}, id="prefix-33"),
    pytest.param({"pod_cidr": "10.244.0.1/24"}, id="host-bits-set"),
    pytest.param({"pod_cidr": "10.244.0.0/31"}, id="slash-31"),
    pytest.param({"pod_cidr": "10.244.0.0/32"}, id="slash-32"),
    pytest.param({"pod_cidr": "fd00::/64"}, id="ipv6"),
    pytest.param({"pod_cidr": "not-a-cidr"}, id="garbage"),
    pytest.param({"pod_cidr": ""}, id="empty"),
    pytest.param({"pod_cidr": "300.1.2.0/24"}, id="bad-octet"),
    pytest.param({"host_routing": "ebpf"}, id="bad-host-routing"),
    pytest.param({"host_routing": "BPF"}, id="host-routing-case"),
    pytest.param({"tc_mode": "tc"}, id="bad-tc-mode"),
    pytest.param({"tc_mode": ""}, id="empty-tc-mode"),
    pytest.param({"mtu": 575}, id="mtu-575"),
    pytest.param({"mtu": 0}, id="mtu-0"),
    pytest.param({"mtu": -1500}, id="mtu-negative"),
    pytest.param({"mtu": 65536}, id="mtu-65536"),
    pytest.param({"node_ip": "10.0.0.300"}, id="bad-node-ip"),
    pytest.param({"node_name": ""}, id="empty-node-name"),
    pytest.param({"node_name": "a/b"}, id="slash-in-node-name"),
])
def test_invalid_config_rejected(kw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DatapathConfig(**kw)


def test_validation_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="pod_cidr"):
        DatapathConfig(pod_cidr="nope")


@pytest.mark.parametrize("kw", [
    {"pod_cidr": "10.244.0.0/30"}, {"pod_cidr": "10.0.0.0/8"}, {"mtu": 576}, {"mtu": 65535}, {"mtu": 9000},
    {"host_routing": "legacy"}, {"tc_mode": "tcx"}, {"tc_mode": "clsact"}, {"tc_mode": "auto"},
])
def test_valid_config_accepted(kw: dict[str, Any]) -> None:
    cfg = DatapathConfig(**kw)
    for k, v in kw.items():
        assert getattr(cfg, k) == v


def test_defaults() -> None:
    cfg = DatapathConfig()
    assert (cfg.host_routing, cfg.tc_mode, cfg.mtu) == ("bpf", "auto", 1500)


def test_config_is_frozen() -> None:
    cfg = DatapathConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mtu = 9000  # type: ignore[misc]


# -- derived values --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cidr", "gateway"), [
    ("10.244.5.0/24", "10.244.5.1"), ("10.244.0.0/16", "10.244.0.1"), ("192.168.7.4/30", "192.168.7.5"),
    ("10.1.2.128/25", "10.1.2.129"),
])
def test_gateway_is_first_host(cidr: str, gateway: str) -> None:
    cfg = DatapathConfig(pod_cidr=cidr)
    assert cfg.network == ipaddress.IPv4Network(cidr)
    assert cfg.gateway == ipaddress.IPv4Address(gateway)
    assert cfg.gateway in cfg.network and cfg.gateway != cfg.network.network_address


def test_pin_dir_derivation() -> None:
    assert DatapathConfig(node_name="worker3").pin_dir == f"{PIN_BASE}/worker3"
    assert PIN_BASE.startswith("/sys/fs/bpf/")
    assert DatapathConfig(node_name="worker3", pin_root="/sys/fs/bpf/custom").pin_dir == "/sys/fs/bpf/custom"
    assert DatapathConfig(node_name="a").pin_dir != DatapathConfig(node_name="b").pin_dir


def test_node_rodata_overrides() -> None:
    # enable_arp_responder is bpf_lxc's own knob (load_lxc sets it to 1); extra_rodata overrides it.
    assert DatapathConfig().node_rodata().overrides == ()
    assert dict(DatapathConfig(extra_rodata={"enable_arp_responder": 0}).node_rodata().overrides) == \
        {"enable_arp_responder": 0}


# -- endpoint identity and names ------------------------------------------------------------------------
LABEL_SETS = [{"name": "client"}, {"name": "testappds"}, {"app": "web", "tier": "front"},
              {"tier": "front", "app": "web"}, {}, {"k" * 100: "v" * 100}, {"name": "ünïcode"}]


@pytest.mark.parametrize("labels", LABEL_SETS)
def test_identity_stable_and_in_range(labels: dict[str, str]) -> None:
    ident = identity_for(labels)
    assert ident == identity_for(dict(labels)) == identity_for(dict(reversed(list(labels.items()))))
    assert MIN_IDENTITY <= ident <= MAX_IDENTITY
    assert ident <= 0xFFFF  # cluster-local identities stay 16-bit


def test_identity_order_independent_and_distinct() -> None:
    assert identity_for({"name": "client"}) == identity_for({"name": "client"})
    assert identity_for({"app": "web", "tier": "front"}) == identity_for({"tier": "front", "app": "web"})
    assert identity_for({"name": "client"}) != identity_for({"name": "testappds"})


def test_identities_spread() -> None:
    idents = {identity_for({"name": f"pod{i}"}) for i in range(500)}
    assert len(idents) >= 495  # a hash, not a constant
    assert all(MIN_IDENTITY <= i <= MAX_IDENTITY for i in idents)


@pytest.mark.parametrize("ns", ["cl1234-lab-worker3-client", "x", "a" * 200, "ns-with-ünïcode"])
@pytest.mark.parametrize("ip", ["10.244.0.2", "10.244.255.254"])
def test_lxc_name_fits_ifnamsiz(ns: str, ip: str) -> None:
    name = lxc_name(ns, ipaddress.IPv4Address(ip))
    assert name.startswith("lxc") and len(name) <= 15
    assert re.fullmatch(r"lxc[0-9a-f]+", name)
    assert name == lxc_name(ns, ipaddress.IPv4Address(ip))


def test_lxc_names_differ_per_pod() -> None:
    names = {lxc_name(f"ns{i}", ipaddress.IPv4Address("10.244.0.2")) for i in range(200)}
    names |= {lxc_name("ns", ipaddress.IPv4Address(f"10.244.0.{i}")) for i in range(2, 202)}
    assert len(names) == 400  # 400 distinct (netns, ip) pairs, 400 distinct names


# -- reasons.py mirrors reasons.h ------------------------------------------------------------------------
def _header_enum(name: str) -> dict[str, int]:
    text = REASONS_H.read_text()
    m = re.search(r"enum\s+" + name + r"\s*\{(.*?)\};", text, re.S)
    assert m, f"enum {name} not in {REASONS_H}"
    body = re.sub(r"/\*.*?\*/|//[^\n]*", "", m.group(1), flags=re.S)
    out: dict[str, int] = {}
    for entry in filter(None, (e.strip() for e in body.split(","))):
        ident, _, value = (p.strip() for p in entry.partition("="))
        assert value, f"{ident}: every reason must have an explicit value (never renumber)"
        out[ident] = int(value, 0)
    return out


def _python_name(c_name: str) -> str:
    return c_name.removeprefix("REASON_")


def test_every_header_reason_is_in_python() -> None:
    header = _header_enum("cl_reason")
    assert len(header) >= 10
    for c_name, value in header.items():
        py = _python_name(c_name)
        assert py in Reason.__members__, f"{c_name} = {value} has no Reason.{py}"
        assert Reason[py].value == value, f"Reason.{py} = {Reason[py].value}, reasons.h says {value}"


def test_every_python_reason_is_in_header() -> None:
    header = {_python_name(k): v for k, v in _header_enum("cl_reason").items()}
    assert {r.name: r.value for r in Reason} == header


def test_reason_values_unique_and_classified() -> None:
    header = _header_enum("cl_reason")
    assert len(set(header.values())) == len(header), "two reasons share a number"
    drop_min = int(re.search(r"#define\s+DROP_MIN\s+(\d+)", REASONS_H.read_text())[1])  # type: ignore[index]
    assert drop_min == reasons.DROP_MIN
    for c_name, value in header.items():
        assert c_name.startswith(("REASON_", "DROP_")), c_name
        assert (value >= drop_min) == c_name.startswith("DROP_"), f"{c_name}={value} on the wrong side of DROP_MIN"
        assert 0 <= value <= 255  # a __u8 in struct metrics_key


def test_directions_mirror_header() -> None:
    header = _header_enum("cl_metric_dir")
    assert {d.name: d.value for d in reasons.Direction} == {k.removeprefix("METRIC_"): v for k, v in header.items()}


@pytest.mark.parametrize("size", [131101, 2, 4294967291])
def test_maglev_table_size_is_bounded(size: int) -> None:
    with pytest.raises(ValidationError, match=r"prime in 3\.\.131071"):
        DatapathConfig(maglev_table_size=size)


# -- socket acceleration (sockops_enable, sockops_exclude_ports) -----------------------------------------
SOCKOPS_H = REASONS_H.parent / "sockops.h"


@pytest.mark.parametrize("kw, match", [
    pytest.param({"sockops_enable": 1}, "sockops_enable must be a bool", id="enable-int"),
    pytest.param({"sockops_enable": "yes"}, "sockops_enable must be a bool", id="enable-str"),
    pytest.param({"sockops_enable": None}, "sockops_enable must be a bool", id="enable-none"),
    pytest.param({"sockops_exclude_ports": (0,)}, "sockops_exclude_ports", id="port-0"),
    pytest.param({"sockops_exclude_ports": (65536,)}, "sockops_exclude_ports", id="port-65536"),
    pytest.param({"sockops_exclude_ports": (-1,)}, "sockops_exclude_ports", id="port-negative"),
    pytest.param({"sockops_exclude_ports": ("5002",)}, "sockops_exclude_ports", id="port-str"),
    pytest.param({"sockops_exclude_ports": (True,)}, "sockops_exclude_ports", id="port-bool"),
    pytest.param({"sockops_exclude_ports": (80.0,)}, "sockops_exclude_ports", id="port-float"),
    pytest.param({"sockops_exclude_ports": 5002}, "sockops_exclude_ports", id="not-a-tuple"),
    pytest.param({"sockops_exclude_ports": "5002"}, "sockops_exclude_ports", id="a-string"),
    pytest.param({"sockops_exclude_ports": {5002}}, "sockops_exclude_ports", id="a-set"),
    pytest.param({"sockops_exclude_ports": tuple(range(1, SOCKOPS_EXCLUDE_MAX + 2))},
                 f"at most {SOCKOPS_EXCLUDE_MAX}", id="more-than-the-map-holds"),
])
def test_bad_sockops_config_rejected(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        DatapathConfig(**kw)


def test_sockops_config_accepted() -> None:
    assert (DatapathConfig().sockops_enable, DatapathConfig().sockops_exclude_ports) == (False, ())
    cfg = DatapathConfig(sockops_enable=True, sockops_exclude_ports=(1, 5002, 65535))
    assert cfg.sockops_enable and cfg.sockops_exclude_ports == (1, 5002, 65535)
    full = DatapathConfig(sockops_exclude_ports=tuple(range(1, SOCKOPS_EXCLUDE_MAX + 1)))
    assert len(full.sockops_exclude_ports) == SOCKOPS_EXCLUDE_MAX


def test_sockops_exclude_ports_from_json_is_a_tuple() -> None:
    """A state file or the agent's JSON config gives a list: it becomes the tuple (hashable, equal)."""
    cfg = DatapathConfig(sockops_exclude_ports=[5002, 5003])  # type: ignore[arg-type]
    assert cfg.sockops_exclude_ports == (5002, 5003)
    assert cfg == DatapathConfig(sockops_exclude_ports=(5002, 5003))


def test_sockops_header_mirrors_python() -> None:
    """The exclude map's size and the counter indexes are the same in sockops.h and Python."""
    text = SOCKOPS_H.read_text()
    size = re.search(r"#define\s+SOCK_EXCLUDE_MAP_SIZE\s+(\d+)", text)
    assert size is not None and int(size.group(1)) == SOCKOPS_EXCLUDE_MAX
    header = {int(v): k.lower() for k, v in re.findall(r"#define\s+SOCKOPS_C_(\w+)\s+(\d+)", text) if k != "MAX"}
    assert header == COUNTERS
