"""The typed errors: hierarchy, message formatting and the errno -> error mapping (no root)."""

from __future__ import annotations

import errno
import os

import pytest

from ciliumlite.bpf import (
    BpfError,
    CiliumliteError,
    LayoutError,
    MapFullError,
    NotSupportedError,
    ValidationError,
    VerifierError,
)
from ciliumlite.bpf.errors import check, error_for

pytestmark = pytest.mark.unit


def test_hierarchy():
    assert issubclass(BpfError, CiliumliteError)
    assert issubclass(VerifierError, BpfError)
    assert issubclass(MapFullError, BpfError)
    assert issubclass(LayoutError, CiliumliteError)
    assert issubclass(NotSupportedError, CiliumliteError)
    assert issubclass(ValidationError, CiliumliteError) and issubclass(ValidationError, ValueError)


def test_message_has_operation_target_errno_name_text_and_hint():
    e = BpfError("update map", errno.EEXIST, target="test_hash key 1")
    text = str(e)
    assert text.startswith("update map test_hash key 1: ")
    assert os.strerror(errno.EEXIST) in text
    assert "(EEXIST)" in text
    assert "hint: it exists already" in text
    assert (e.operation, e.errno, e.target, e.strerror) == (
        "update map", errno.EEXIST, "test_hash key 1", os.strerror(errno.EEXIST))
    assert e.verifier_log == ""
    assert "verifier log" not in text


def test_negative_errno_is_normalised():
    e = BpfError("open pinned map", -errno.ENOENT, target="/sys/fs/bpf/x")
    assert e.errno == errno.ENOENT
    assert "(ENOENT)" in str(e)
    assert "hint: the object does not exist" in str(e)


def test_explicit_hint_wins_and_unknown_errno_is_shown_by_number():
    assert "hint: do this" in str(BpfError("op", errno.EPERM, hint="do this"))
    assert "run as root" not in str(BpfError("op", errno.EPERM, hint="do this"))
    e = BpfError("frobnicate", 4000)
    assert "(4000)" in str(e) and "hint" not in str(e)
    assert str(e).startswith("frobnicate: ")
    assert BpfError("op", 0).strerror == "unknown error"


@pytest.mark.parametrize(("err", "words"), [
    (errno.EPERM, "run as root"), (errno.EACCES, "verifier log"), (errno.E2BIG, "map is full"),
    (errno.ENODEV, "no such network device"), (errno.EBUSY, "attached there already"),
])
def test_hints_by_errno(err: int, words: str):
    assert words in BpfError("op", err).hint
    assert f"({errno.errorcode[err]})" in str(BpfError("op", err))


def test_verifier_log_tail_is_the_last_25_lines():
    log = "\n".join(f"insn {i}: something" for i in range(100)) + "\n\n"
    e = VerifierError("load BPF object", errno.EACCES, target="x.o", verifier_log=log)
    text = str(e)
    assert e.verifier_log == log  # the whole log is kept on the exception
    head, sep, tail = text.partition("\n--- verifier log (last lines) ---\n")
    assert sep, text
    assert head == f"load BPF object x.o: {os.strerror(errno.EACCES)} (EACCES); hint: {e.hint}"
    assert tail.splitlines() == [f"insn {i}: something" for i in range(75, 100)]


def test_not_supported_error_names_the_feature():
    e = NotSupportedError("attach_tc(mode='tcx') needs tcx", feature="tcx", hint="use a newer kernel")
    assert e.feature == "tcx" and e.hint == "use a newer kernel"
    assert str(e) == "attach_tc(mode='tcx') needs tcx (missing: tcx); use a newer kernel"


@pytest.mark.parametrize(("operation", "err", "cls"), [
    ("update map", errno.E2BIG, MapFullError),
    ("update map (batch)", errno.ENOSPC, MapFullError),
    ("update map", errno.ENOENT, BpfError),
    ("update map", errno.EEXIST, BpfError),
    ("lookup in map", errno.E2BIG, BpfError),
    ("delete from map", errno.ENOSPC, BpfError),
    ("attach tcx", errno.EBUSY, BpfError),
])
def test_error_for_mapping(operation: str, err: int, cls: type[BpfError]):
    e = error_for(operation, err, "m")
    assert type(e) is cls
    assert e.errno == err and e.operation == operation and e.target == "m"


def test_check_returns_non_negative_and_raises_typed_errors():
    assert check(0, "op") == 0
    assert check(7, "op") == 7
    with pytest.raises(BpfError) as info:
        check(-errno.ENOENT, "get map info", "fd 3")
    assert info.value.errno == errno.ENOENT and not isinstance(info.value, MapFullError)
    assert str(info.value).startswith("get map info fd 3: ")
    with pytest.raises(MapFullError):
        check(-errno.E2BIG, "update map", "m")


def test_errors_survive_pickling_as_multiprocessing_sends_them():
    import pickle

    from ciliumlite.bpf.errors import NotSupportedError, VerifierError

    errs = [VerifierError("load BPF object", -13, target="x.o", verifier_log="R3 type=map_value expected=fp"),
            NotSupportedError("attach netkit", feature="netkit", hint="use veth"), BpfError("map update", 7)]
    for err in errs:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert str(back) == str(err)
        assert back.__dict__ == err.__dict__
