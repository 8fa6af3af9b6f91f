"""BpfObject: open from a file or bytes, typed .rodata config before load, load failures."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliumlite.bpf import U32, U64, BpfError, BpfObject, ProgType, TcAction, ValidationError, VerifierError

pytestmark = pytest.mark.bpf

DEFAULTS = {"cfg_u32": 7, "cfg_flag": 0, "cfg_u64": 0, "cfg_port": 0}
FRAME = bytes(14 + 20)  # tc_config_echo ignores the packet; test_run wants at least an Ethernet header


@pytest.fixture
def maps_o(test_objects: Path) -> Path:
    return test_objects / "test_maps.o"


@pytest.fixture
def opened(maps_o: Path) -> Iterator[BpfObject]:
    obj = BpfObject(maps_o)
    try:
        yield obj
    finally:
        obj.close()


def echo(obj: BpfObject) -> list[int]:
    """Run tc_config_echo once and read back what it wrote to test_array[0..3]."""
    res = obj.program("tc_config_echo").run(FRAME)
    assert res.tc_action is TcAction.OK
    arr = obj.map("test_array", key=U32, value=U64)
    return [arr[i] for i in range(4)]


def test_open_from_file_without_loading(opened: BpfObject, maps_o: Path):
    assert not opened.loaded
    assert opened.name == "test_maps"
    assert opened.path == str(maps_o)
    assert list(opened.programs) == ["tc_config_echo"]
    assert opened.program("tc_config_echo").type is ProgType.SCHED_CLS
    assert opened.program("tc_config_echo").section == "tc"
    assert opened.map_names == ["test_hash", "test_small", "test_array", "test_lpm", "test_percpu"]
    assert dict(opened.rodata) == DEFAULTS
    assert "opened" in repr(opened)
    with pytest.raises(ValidationError, match="load"):
        opened.map("test_array")
    with pytest.raises(BpfError) as info:
        _ = opened.program("tc_config_echo").fd
    assert info.value.errno == errno.EBADF


def test_open_from_bytes(maps_o: Path):
    with BpfObject(maps_o.read_bytes(), name="from_bytes") as obj:
        assert obj.path == ""
        assert obj.name == "from_bytes"
        assert list(obj.programs) == ["tc_config_echo"]
        obj.rodata["cfg_u32"] = 99
        obj.load()
        assert obj.loaded and "loaded" in repr(obj)
        assert echo(obj) == [99, 0, 0, 0]
    assert "closed" in repr(obj)


def test_open_errors(tmp_path: Path):
    with pytest.raises(ValidationError, match="no BPF object file"):
        BpfObject(tmp_path / "missing.o")
    with pytest.raises(BpfError) as info:
        BpfObject(b"this is not an ELF file", name="junk")
    assert "open BPF object" in str(info.value) and "junk" in str(info.value)


def test_unknown_program_and_map_list_the_known_ones(opened: BpfObject):
    with pytest.raises(ValidationError, match="tc_config_echo"):
        opened.program("nope")
    opened.load()
    with pytest.raises(ValidationError, match="test_hash, test_small, test_array, test_lpm, test_percpu"):
        opened.map("nope")


def test_defaults_reach_the_program(opened: BpfObject):
    opened.load()
    assert echo(opened) == [7, 0, 0, 0]


@pytest.mark.parametrize("cfg", [
    {"cfg_u32": 0, "cfg_flag": 0, "cfg_u64": 0, "cfg_port": 0},
    {"cfg_u32": 0xFFFFFFFF, "cfg_flag": 0xFF, "cfg_u64": 2**64 - 1, "cfg_port": 0xFFFF},
    {"cfg_u32": 123456, "cfg_flag": 1, "cfg_u64": 0x0102030405060708, "cfg_port": 8080},
])
def test_config_set_before_load_is_what_the_program_sees(opened: BpfObject, cfg: dict[str, int]):
    for k, v in cfg.items():
        opened.rodata[k] = v
    assert dict(opened.rodata) == cfg
    opened.load()
    assert dict(opened.rodata) == cfg  # still readable after load
    assert echo(opened) == [cfg["cfg_u32"], cfg["cfg_flag"], cfg["cfg_u64"], cfg["cfg_port"]]


def test_load_file_applies_config(maps_o: Path):
    with BpfObject.load_file(maps_o, config={"cfg_port": 443, "cfg_u64": 2**40}) as obj:
        assert obj.loaded
        assert echo(obj) == [7, 0, 2**40, 443]


def test_load_file_with_bad_config_closes_the_object(maps_o: Path):
    # leak_check fails this test if the half-made object keeps its fds
    with pytest.raises(ValidationError, match="cfg_port"):
        BpfObject.load_file(maps_o, config={"cfg_port": 70000})


@pytest.mark.parametrize(("name", "value", "words"), [
    ("cfg_u32", "7", "32-bit unsigned integer"),
    ("cfg_u32", 7.0, "32-bit unsigned integer"),
    ("cfg_u32", None, "32-bit unsigned integer"),
    ("cfg_flag", True, "8-bit unsigned integer"),
    ("cfg_u32", -1, r"does not fit its C type \(u32: 0\.\.4294967295\)"),
    ("cfg_u32", 2**32, "does not fit"),
    ("cfg_flag", 256, r"u8: 0\.\.255"),
    ("cfg_port", 65536, r"u16: 0\.\.65535"),
    ("cfg_u64", 2**64, "does not fit"),
])
def test_config_type_errors(opened: BpfObject, name: str, value: object, words: str):
    with pytest.raises(ValidationError, match=words):
        opened.rodata[name] = value
    assert dict(opened.rodata) == DEFAULTS  # nothing changed


def test_unknown_config_name_lists_known_names(opened: BpfObject):
    with pytest.raises(ValidationError, match=r"no config variable 'cfg_nope'.*known: cfg_flag, cfg_port, cfg_u32, cfg_u64"):
        opened.rodata["cfg_nope"] = 1
    with pytest.raises(ValidationError, match="known: cfg_flag"):
        _ = opened.rodata["cfg_nope"]
    with pytest.raises(ValidationError, match="cfg_nope"):
        opened.rodata.update({"cfg_u32": 1, "cfg_nope": 2})


def test_rodata_mapping_protocol(opened: BpfObject):
    assert "cfg_u32" in opened.rodata
    assert opened.rodata.get("cfg_u32") == 7
    assert len(opened.rodata) == 4 and sorted(opened.rodata) == sorted(DEFAULTS)
    assert opened.rodata.types() == {"cfg_u32": "unsigned int", "cfg_flag": "unsigned char",
                                     "cfg_u64": "unsigned long long", "cfg_port": "unsigned short"}


def test_rodata_absent_names_follow_the_mapping_protocol(opened: BpfObject):
    # Rodata is a Mapping: `in` and .get() must answer for absent names instead of raising.
    assert "cfg_nope" not in opened.rodata
    assert opened.rodata.get("cfg_nope") is None
    assert opened.rodata.get("cfg_nope", 5) == 5


def test_config_after_load_is_refused(opened: BpfObject):
    opened.rodata["cfg_u32"] = 11
    opened.load()
    with pytest.raises(ValidationError, match="frozen once loaded"):
        opened.rodata["cfg_u32"] = 12
    assert opened.rodata["cfg_u32"] == 11
    assert echo(opened)[0] == 11


def test_verifier_rejection_carries_the_log(test_objects: Path):
    bad = test_objects / "test_bad.o"
    with pytest.raises(VerifierError) as info:
        BpfObject.load_file(bad)
    e = info.value
    assert isinstance(e, BpfError)
    assert e.errno == errno.EACCES
    assert "invalid access to packet" in e.verifier_log
    assert e.target == str(bad) and e.operation == "load BPF object"
    assert "(EACCES)" in str(e) and "--- verifier log (last lines) ---" in str(e)
    assert "invalid access to packet" in str(e)


def test_verifier_rejection_with_explicit_load_leaves_object_closable(test_objects: Path):
    obj = BpfObject(test_objects / "test_bad.o")
    try:
        with pytest.raises(VerifierError, match="invalid access to packet"):
            obj.load()
        assert not obj.loaded
    finally:
        obj.close()
