"""cgroup/connect4: connect() from a process in the cgroup is rewritten; one outside is not."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ciliumlite.bpf import U32, U64, BpfObject, FdLink, ValidationError
from ciliumlite.bpf.netns import entered, preexec
from ciliumlite.testing import VethPair

pytestmark = pytest.mark.integration

Loader = Callable[..., BpfObject]
FROM_IP, FROM_PORT = "192.0.2.10", 8080  # a service address nobody serves (TEST-NET-1)

CLIENT = """
import socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as e:
    print("ERR", e.errno)
else:
    print("OK", *s.getpeername())
    s.sendall(b"hi from " + sys.argv[3].encode())
s.close()
"""


def be32(ip: str) -> int:
    """An IPv4 address as the u32 that holds its network-order bytes (as bpf_sock_addr.user_ip4)."""
    return int.from_bytes(socket.inet_aton(ip), "little")


def be_port(port: int) -> int:
    """A port as bpf_sock_addr.user_port holds it: network order in the low 16 bits of a u32."""
    return int.from_bytes(port.to_bytes(2, "big") + b"\0\0", "little")


def connect_from(ns: str, cgroup: str | None, ip: str, port: int, tag: str) -> str:
    """Run a client in ``ns`` (and ``cgroup``) that connects to ip:port; its one-line report."""
    res = subprocess.run([sys.executable, "-c", CLIENT, ip, str(port), tag], preexec_fn=preexec(ns, cgroup),
                         capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.fixture
def listener(veth_pair: VethPair) -> Iterator[socket.socket]:
    """A TCP listener on 10.0.0.1 (an ephemeral port) in ns_a."""
    with entered(veth_pair.ns_a):
        srv = socket.socket()
    with srv:
        srv.bind((veth_pair.ip_a, 0))
        srv.listen(8)
        srv.settimeout(3)
        yield srv


def test_be_encodings():
    assert be32("192.0.2.10").to_bytes(4, "little") == b"\xc0\x00\x02\x0a"
    assert be_port(8080).to_bytes(4, "little") == b"\x1f\x90\x00\x00"


def test_connect4_rewrites_only_inside_the_cgroup(veth_pair: VethPair, cgroup: str, listener: socket.socket,
                                                  load: Loader):
    to_port = listener.getsockname()[1]
    obj = load("test_cgroup.o", from_ip4=be32(FROM_IP), from_port=be_port(FROM_PORT),
               to_ip4=be32(veth_pair.ip_a), to_port=be_port(to_port))
    counters = obj.map("connect_counters", key=U32, value=U64)
    prog = obj.program("connect4_rewrite")
    assert prog.section == "cgroup/connect4"

    # before attaching: nothing answers at the service address (no route in ns_b)
    assert connect_from(veth_pair.ns_b, cgroup, FROM_IP, FROM_PORT, "early") == f"ERR {errno.ENETUNREACH}"

    link = prog.attach_cgroup(cgroup)
    try:
        assert isinstance(link, FdLink) and link.info.type == "cgroup"
        assert link.point.cgroup == cgroup and link.point.attach_type == "connect4"

        # inside the cgroup: rewritten to the listener
        assert connect_from(veth_pair.ns_b, cgroup, FROM_IP, FROM_PORT, "inside") == f"OK {veth_pair.ip_a} {to_port}"
        conn, peer = listener.accept()
        with conn:
            conn.settimeout(3)
            assert peer[0] == veth_pair.ip_b
            assert conn.recv(64) == b"hi from inside"
        assert (counters[0], counters[1]) == (1, 1)

        # outside the cgroup: untouched (and unseen)
        assert connect_from(veth_pair.ns_b, None, FROM_IP, FROM_PORT, "outside") == f"ERR {errno.ENETUNREACH}"
        assert (counters[0], counters[1]) == (1, 1)

        # inside, to another address: seen but not rewritten
        assert connect_from(veth_pair.ns_b, cgroup, veth_pair.ip_a, to_port, "direct") == \
            f"OK {veth_pair.ip_a} {to_port}"
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(3)
            assert conn.recv(64) == b"hi from direct"
        assert (counters[0], counters[1]) == (1, 2)
    finally:
        link.close()

    # detached: the service address is unreachable again
    assert connect_from(veth_pair.ns_b, cgroup, FROM_IP, FROM_PORT, "late") == f"ERR {errno.ENETUNREACH}"
    assert (counters[0], counters[1]) == (1, 2)


def test_attach_cgroup_errors(cgroup: str, load: Loader, tmp_path: Any):
    prog = load("test_cgroup.o").program("connect4_rewrite")
    with pytest.raises(ValidationError, match="unknown cgroup attach type 'connect5'"):
        prog.attach_cgroup(cgroup, "connect5")
    with pytest.raises(ValidationError, match="cannot open cgroup"):
        prog.attach_cgroup(str(tmp_path / "no-such-cgroup"))
