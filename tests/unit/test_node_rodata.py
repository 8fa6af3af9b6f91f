"""NodeRodata against the built objects' BTF: each field is a config.h global that every datapath
object declares, and every value DatapathConfig can give it fits the global's C type.

The objects are opened, never loaded (libbpf reads the ELF and its BTF only), so this needs the
build (``make build``) but not root. ``obj.rodata`` is typed by BTF: setting a value that does not
fit the C type raises ValidationError, which is the size check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

import pytest

from ciliumlite.bpf import BpfObject
from ciliumlite.bpf.errors import NotSupportedError
from ciliumlite.datapath import loader
from ciliumlite.datapath.config import MAGLEV_MAX, DatapathConfig, NodeRodata

pytestmark = pytest.mark.unit

FIELDS = [f.name for f in fields(NodeRodata) if f.name != "overrides"]
U32_MAX, U64_MAX = (1 << 32) - 1, (1 << 64) - 1

# What DatapathConfig validates is what can reach .rodata: the defaults, and each input at the top of
# its range (addresses of all ones, the widest enums, the largest ifindexes, cookie, MTU and rates).
RODATA = {
    "defaults": DatapathConfig().node_rodata(),
    "largest": DatapathConfig(
        node_ip="255.255.255.254", routing="native", native_routing_cidr="255.255.255.255/32",
        pod_cidr="255.255.255.252/30", load_balancer_mode="hybrid", bpf_masquerade=True, monitor_trace=True,
        mtu=65535, maglev_table_size=MAGLEV_MAX, events_per_sec=U32_MAX,
    ).node_rodata(tunnel_ifindex=U32_MAX, native_ifindex=U32_MAX, host_netns_cookie=U64_MAX),
    "vxlan": DatapathConfig(node_ip="10.0.0.1", routing="vxlan", kube_proxy_replacement=False,
                            monitor_drops=False, events_per_sec=0).node_rodata(tunnel_ifindex=1),
}


@pytest.fixture(params=loader.OBJECTS)
def obj(request: pytest.FixtureRequest) -> Iterator[BpfObject]:
    try:
        path = loader.object_path(request.param)
    except NotSupportedError as exc:
        pytest.fail(f"{exc} (this test checks the build)")
    with BpfObject(path) as o:  # opened, not loaded
        yield o


def test_every_field_is_a_global_the_object_declares(obj: BpfObject) -> None:
    missing = [name for name in FIELDS if name not in obj.rodata]
    assert not missing, f"{obj.name} lacks config.h globals {missing}"


def test_the_fields_are_exactly_the_globals_all_objects_share() -> None:
    # An object's own knobs (bpf_lxc's enable_arp_responder) are not node-wide: what every object
    # declares is config.h, and NodeRodata is all of it.
    shared = frozenset.intersection(*(loader.declared_rodata(name) for name in loader.OBJECTS))
    assert shared == frozenset(FIELDS)


def test_globals_names_every_field_but_the_overrides() -> None:
    assert list(RODATA["defaults"].globals()) == FIELDS


@pytest.mark.parametrize("case", list(RODATA))
def test_every_value_fits_the_c_type(obj: BpfObject, case: str) -> None:
    for name, value in RODATA[case].globals().items():
        obj.rodata[name] = value  # ValidationError if it does not fit the global's C type
        assert obj.rodata[name] == value, (obj.name, name, obj.rodata.types()[name])
