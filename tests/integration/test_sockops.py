"""Socket send/recv acceleration (sockops + sk_msg) on the real kernel, in a one-node lab.

The failure modes that made Cilium drop the feature (anchors-next §4), each of which must either
work or fall back to TCP/IP without losing or reordering a byte: half-closed connections, large
and many small messages, sendfile/splice, MSG_PEEK, splice reads (the kernel mishandles them: the
datapath excludes their port and the test shows the fallback), a slow receiver, a pod deleted or
re-made mid-connection, a service backend that changes, enabling/disabling under traffic, reload.
Every transfer is checked end to end: both sides hash what they sent and received
(``ciliumlite/lab/_sockpeer.py``). That the shortcut really happens is shown by captures on both
pods' veths (no TCP payload on either) and by the counters.

Every transfer is bounded in bytes and time; only the lab's namespaces and addresses are used.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ciliumlite.bpf import features
from ciliumlite.bpf.errors import NotSupportedError
from ciliumlite.bpf.link import FdLink
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.lab import Lab, Node, Pod, procs
from ciliumlite.lab.capture import Frame
from ciliumlite.node import Datapath
from ciliumlite.service import Backend, Frontend, Service

pytestmark = [pytest.mark.integration, pytest.mark.requires_feature("sockmap_link")]

PEER = str(Path(procs.__file__).parent / "_sockpeer.py")
sys.path.insert(0, str(Path(PEER).parent))
from _sockpeer import expected_sha  # type: ignore[import-not-found]  # noqa: E402  (stdlib only, run by path in the pods)

PORT = 5001           # servers in b, c and d
SPLICE_PORT = 5002    # excluded from acceleration: its server reads with splice(2)
VIP = "10.96.50.10"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("sockops") as the_lab:
        node = the_lab.add_node("n1", sockops_enable=True, sockops_exclude_ports=(SPLICE_PORT,))
        for name in ("a", "b", "c", "d"):
            node.add_pod(name)
        for name in ("b", "c", "d"):
            for port in (PORT, SPLICE_PORT):
                srv = node.pods[name].popen(*procs.python_script(PEER, "server", str(port)))
                assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
                SERVERS[(name, port)] = srv
        # Socket LB is loaded with the first service and kept: warm it up here, not in a test.
        dp = _dp(node)
        dp.upsert_service(Service("warm", Frontend(VIP, 80), [Backend(node.pods["b"].ip, PORT)]))
        dp.delete_service("warm")
        yield the_lab
    SERVERS.clear()


SERVERS: dict[tuple[str, int], subprocess.Popen[str]] = {}


def _dp(node: Node) -> Datapath:
    assert node.datapath is not None
    return node.datapath


@pytest.fixture
def node(lab: Lab) -> Node:
    return lab.node("n1")


def server_line(name: str, port: int = PORT, timeout: float = 30.0) -> dict[str, Any]:
    """The report of the next connection server ``name`` finished."""
    out = SERVERS[(name, port)].stdout
    assert out is not None
    ready, _, _ = select.select([out], [], [], timeout)
    assert ready, f"server {name}:{port} reported nothing within {timeout}s"
    return dict(json.loads(out.readline()))


def client_argv(ip: str, port: int, **header: Any) -> list[str]:
    return procs.python_script(PEER, "client", ip, str(port), json.dumps(header))


def transfer(client: Pod, server: str, ip: str, port: int = PORT, timeout: float = 60.0,
             **header: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """One checked transfer from ``client`` to ``ip:port``: (client's report, server's report)."""
    r = client.run(*client_argv(ip, port, **header), timeout=timeout)
    assert r.stdout.strip(), r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), server_line(server, port)


def check_bytes(header: dict[str, Any], cl: dict[str, Any], sv: dict[str, Any]) -> None:
    """Every byte arrived once and in order, both ways."""
    seed = int(header.get("seed", 1))
    assert cl["error"] is None and sv["error"] is None, (cl, sv)
    assert sv["up_bytes"] == header.get("up", 0)
    assert sv["up_sha"] == expected_sha(seed, header.get("up", 0)), "client -> server bytes differ"
    assert cl["down_bytes"] == header.get("down", 0)
    assert cl["down_sha"] == expected_sha(seed + 1, header.get("down", 0)), "server -> client bytes differ"


def counts(node: Node) -> dict[str, tuple[int, int]]:
    return {k: (v.count, v.bytes) for k, v in _dp(node).sockops.counters().items()}


def delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after
            if after[k] != before[k]}


def tcp_payload(frame: Frame) -> int:
    """TCP payload bytes of a captured frame (0 for other protocols)."""
    if frame.proto != 6:
        return 0
    raw = frame.raw
    ihl = (raw[14] & 0x0F) * 4
    total = int.from_bytes(raw[16:18], "big")
    doff = (raw[14 + ihl + 12] >> 4) * 4
    return total - ihl - doff


def payload_frames(lab: Lab, node: Node, pods: tuple[Pod, ...], run: Any) -> tuple[int, Any]:
    """Run ``run()`` while capturing on the pods' veths: (frames with TCP payload, its result)."""
    caps = [lab.capture(node.netns, p.endpoint.ifname, seconds=20, max_frames=5000) for p in pods]
    try:
        result = run()
    finally:
        for cap in caps:
            cap.__exit__(None, None, None)
    seen = sum(1 for cap in caps for f in cap.frames if tcp_payload(f) > 0 and f.ports[0] != 22)
    return seen, result


# -- the shortcut happens ----------------------------------------------------------------------------------


def test_status_reports_it(node: Node) -> None:
    st = _dp(node).status()["sockops"]
    assert st["enabled"] is True and st["loaded"] is True
    assert st["excluded_ports"] == [SPLICE_PORT]
    programs = {lk.program for lk in _dp(node).attachments()}
    assert {"cil_sockops", "cil_sk_msg"} <= programs


def test_cli_status_reports_it(lab: Lab, node: Node) -> None:
    """``ciliumlite status`` (another process, from the pins) shows the switch, the sockets in the
    sockhash (an open accelerated connection has two: its server waits before reading) and the
    messages redirected."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ciliumlite.cli", "status", "--lab", lab.prefix, *args],
                              capture_output=True, text=True, timeout=60)

    header: dict[str, Any] = {"up": 100_000, "down": 100_000, "seed": 5, "server_delay": 4.0}
    proc = _start(node.pods["a"], node.pods["b"].ip, **header)
    try:
        deadline = time.monotonic() + 10
        while len(_dp(node).sockops.sockets()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        res = cli("--output", "json")
        assert res.returncode == 0, res.stderr
        (row,) = json.loads(res.stdout)
        text = cli()
    finally:
        check_bytes(header, _finish(proc), server_line("b"))
    sk = row["sockops"]
    assert sk["enabled"] is True and sk["sockets"] == 2 and sk["messages_redirected"] > 0, sk
    # The text is a second process, a moment later: the connection may have ended by then (its
    # sockets leave the sockhash), so the text's count is only checked to be a count.
    assert text.returncode == 0 and re.search(r"Socket acceleration: +Enabled \(experimental\) +\[\d+ sockets, "
                                              r"\d+ messages redirected", text.stdout), text.stdout


def test_data_never_crosses_a_veth(lab: Lab, node: Node) -> None:
    a, b = node.pods["a"], node.pods["b"]
    header: dict[str, Any] = {"up": 1_000_000, "down": 1_000_000, "seed": 11}
    before = counts(node)
    frames, (cl, sv) = payload_frames(lab, node, (a, b), lambda: transfer(a, "b", b.ip, **header))
    check_bytes(header, cl, sv)
    d = delta(before, counts(node))
    assert d["sock_added"][0] == 2, d                          # both ends went into the sockhash
    assert d["msg_redirect"][1] >= 2_000_000, d               # every payload byte was redirected
    assert "msg_pass" not in d, d
    assert frames == 0, f"{frames} TCP frames with payload on the veths of an accelerated connection"
    # The same transfer on the excluded port crosses the veths: the capture does see payload.
    frames, (cl, sv) = payload_frames(lab, node, (a, b), lambda: transfer(a, "b", b.ip, SPLICE_PORT, **header))
    check_bytes(header, cl, sv)
    assert frames > 0
    assert _dp(node).sockops.sockets() == []                  # closed sockets left the map


@pytest.mark.parametrize("header", [
    {"up": 16_000_000, "down": 8_000_000, "chunk": 1_000_000, "seed": 21},   # 1 MB writes
    {"up": 20_000, "down": 10, "chunk": 1, "seed": 22},                      # 20,000 one-byte writes
], ids=["large", "one-byte-writes"])
def test_large_and_small_messages(node: Node, header: dict[str, Any]) -> None:
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, **header)
    check_bytes(header, cl, sv)


def test_many_small_request_response(node: Node) -> None:
    before = counts(node)
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, rr=2000, chunk=64, seed=23)
    assert cl["error"] is None and cl["echo_ok"] and sv["rounds"] == 2000, (cl, sv)
    d = delta(before, counts(node))
    assert d["msg_redirect"][0] >= 4000 and "msg_pass" not in d, d


def test_half_closed_connection(node: Node) -> None:
    """shutdown(SHUT_WR), then the peer sends 4 MB and closes while the half-closed side is not
    reading yet: every byte is still there when it reads (TCP state changes never remove a socket
    from the map: only close does)."""
    header: dict[str, Any] = {"up": 300_000, "down": 4_000_000, "halfclose": True, "client_delay": 1.0, "seed": 31}
    before = counts(node)
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, **header)
    check_bytes(header, cl, sv)
    d = delta(before, counts(node))
    assert d["msg_redirect"][1] >= 4_300_000 and "msg_pass" not in d, d


@pytest.mark.parametrize("send", ["sendfile", "splice"])
def test_sendfile_and_splice_writes(node: Node, send: str) -> None:
    header: dict[str, Any] = {"up": 4_000_000, "down": 2_000_000, "send": send, "seed": 41}
    before = counts(node)
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, **header)
    check_bytes(header, cl, sv)
    assert delta(before, counts(node))["msg_redirect"][1] >= 6_000_000


def test_msg_peek(node: Node) -> None:
    header: dict[str, Any] = {"up": 2_000_000, "down": 100, "read": "peek", "seed": 51}
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, **header)
    check_bytes(header, cl, sv)
    assert sv["peek_ok"] is True          # every MSG_PEEK saw the bytes the recv then returned


def test_splice_reader_falls_back_on_an_excluded_port(node: Node) -> None:
    """splice(2) from a socket in a sockmap reads only the TCP queue on this kernel: the datapath
    leaves such a port alone (sockops_exclude_ports), and the reader gets every byte."""
    header: dict[str, Any] = {"up": 2_000_000, "down": 1000, "read": "splice", "seed": 61}
    before = counts(node)
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, SPLICE_PORT, **header)
    check_bytes(header, cl, sv)
    d = delta(before, counts(node))
    assert d["sock_excluded"][0] == 2 and "sock_added" not in d and "msg_redirect" not in d, d


def test_splice_reader_is_what_the_kernel_mishandles(node: Node) -> None:
    """Why the exclusion exists: accelerated, a splice reader never sees the redirected bytes
    (it blocks until the peer goes away). Skipped on a kernel with tcp_bpf_splice_read."""
    if features.has_sockmap_splice_read():
        pytest.skip("this kernel splices redirected bytes (tcp_bpf_splice_read)")
    header: dict[str, Any] = {"up": 200_000, "down": 10, "read": "splice", "seed": 62, "sock_timeout": 2}
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, **header)
    # The server's recv() of the header line may take the first bytes after it (up to 4096 in
    # all); splice itself gets none of the rest, and the client times out waiting for the answer.
    assert cl["error"] is not None and sv["up_bytes"] < 4096, (cl, sv)


def test_slow_receiver(node: Node) -> None:
    """The receiver sleeps 1.5 s before reading 32 MB: nothing is lost (the bytes wait in its
    queue; see docs/sockops.md for the missing back-pressure)."""
    header: dict[str, Any] = {"up": 32_000_000, "down": 10, "server_delay": 1.5, "seed": 71}
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, **header)
    check_bytes(header, cl, sv)


# -- falling back under change --------------------------------------------------------------------------


def _start(client: Pod, ip: str, **header: Any) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = client.popen(*client_argv(ip, PORT, **header))
    return proc


def _finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert out.strip(), err
    return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.replaces_objects  # the module's lab owns what it swaps
def test_disable_and_enable_under_traffic(node: Node) -> None:
    """Off mid-transfer: the connection moves to TCP/IP at its next message, in order; on again:
    it stays on TCP/IP (it sent bytes that way), a new connection is accelerated."""
    dp = _dp(node)
    header: dict[str, Any] = {"up": 12_000_000, "down": 10, "chunk": 65536, "pace": 0.005, "seed": 81}
    before = counts(node)
    proc = _start(node.pods["a"], node.pods["b"].ip, **header)
    try:
        time.sleep(0.4)
        dp.set_sockops(False)
        assert dp.status()["sockops"]["enabled"] is False
        time.sleep(0.3)
        dp.set_sockops(True)
        check_bytes(header, _finish(proc), server_line("b"))
    finally:
        dp.set_sockops(True)
    d = delta(before, counts(node))
    assert d["msg_redirect"][0] > 0 and d["pass_disabled"][0] == 1 and d["msg_pass"][0] > 1, d
    before = counts(node)
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, up=100_000, down=100_000, seed=82)
    check_bytes({"up": 100_000, "down": 100_000, "seed": 82}, cl, sv)
    d = delta(before, counts(node))
    assert d["sock_added"][0] == 2 and "msg_pass" not in d, d


@pytest.mark.replaces_objects  # the module's lab owns what it swaps
def test_endpoint_remade_mid_connection(node: Node) -> None:
    """The server's endpoint is removed and made again (same IP, new veth and endpoint id) while
    the transfer runs: the connection falls back to TCP/IP through the new veth; no byte lost."""
    dp, d_pod = _dp(node), node.pods["d"]
    header: dict[str, Any] = {"up": 8_000_000, "down": 1_000_000, "chunk": 65536, "pace": 0.005, "seed": 91}
    before = counts(node)
    proc = _start(node.pods["a"], d_pod.ip, **header)
    time.sleep(0.3)
    dp.remove_endpoint(d_pod.endpoint)
    d_pod.endpoint = dp.add_endpoint(d_pod.netns, name="d", ip=d_pod.ip)
    check_bytes(header, _finish(proc), server_line("d"))
    d = delta(before, counts(node))
    assert d["msg_redirect"][0] > 0 and d["pass_endpoint"][0] >= 1 and d["msg_pass"][0] > 0, d


def test_service_backend_changes(node: Node) -> None:
    """Socket LB picks the backend at connect(); acceleration then joins the client to it. The
    service moves to another backend mid-transfer: the live connection finishes on the old one,
    a new connection goes to the new one, both accelerated."""
    dp, b, c = _dp(node), node.pods["b"], node.pods["c"]
    dp.upsert_service(Service("sockops-svc", Frontend(VIP, PORT), [Backend(b.ip, PORT)]))
    try:
        header = {"up": 6_000_000, "down": 500_000, "chunk": 65536, "pace": 0.003, "seed": 101}
        before = counts(node)
        proc = _start(node.pods["a"], VIP, **header)
        time.sleep(0.3)
        dp.upsert_service(Service("sockops-svc", Frontend(VIP, PORT), [Backend(c.ip, PORT)]))
        check_bytes(header, _finish(proc), server_line("b"))
        cl, sv = transfer(node.pods["a"], "c", VIP, up=200_000, down=200_000, seed=102)
        check_bytes({"up": 200_000, "down": 200_000, "seed": 102}, cl, sv)
        d = delta(before, counts(node))
        assert d["sock_added"][0] == 4 and "msg_pass" not in d, d
    finally:
        dp.delete_service("sockops-svc")


def prog_ids(dp: Datapath) -> dict[str, int]:
    return {lk.program: lk.info.prog_id for lk in dp.sockops.links if isinstance(lk, FdLink)}


@pytest.mark.replaces_objects  # the module's lab owns what it swaps
def test_reload_swaps_programs_under_traffic(node: Node) -> None:
    dp = _dp(node)
    ids = prog_ids(dp)
    header: dict[str, Any] = {"up": 6_000_000, "down": 10, "chunk": 65536, "pace": 0.003, "seed": 111}
    proc = _start(node.pods["a"], node.pods["b"].ip, **header)
    time.sleep(0.3)
    dp.reload()
    check_bytes(header, _finish(proc), server_line("b"))
    new = prog_ids(dp)
    assert new.keys() == ids.keys() and all(new[k] != ids[k] for k in ids)
    before = counts(node)
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, up=100_000, down=100_000, seed=112)
    check_bytes({"up": 100_000, "down": 100_000, "seed": 112}, cl, sv)
    assert delta(before, counts(node))["sock_added"][0] == 2


@pytest.mark.replaces_objects  # the module's lab owns what it swaps
def test_detach_and_restore_keep_it(node: Node) -> None:
    """The owner lets go (detach) mid-transfer and a new owner restores the node: the pinned links
    kept the programs attached throughout, the switch is restored, the transfer is intact."""
    dp = _dp(node)
    ids = prog_ids(dp)
    header: dict[str, Any] = {"up": 6_000_000, "down": 10, "chunk": 65536, "pace": 0.003, "seed": 115}
    before = counts(node)
    proc = _start(node.pods["a"], node.pods["b"].ip, **header)
    time.sleep(0.3)
    node.restart_datapath()          # detach, then Datapath.restore; the pods get the restored endpoints
    restored = _dp(node)
    check_bytes(header, _finish(proc), server_line("b"))
    assert restored.sockops.enabled and prog_ids(restored) == ids
    d = delta(before, counts(node))
    assert d["msg_redirect"][1] >= 6_000_000 and "msg_pass" not in d, d
    restored.set_sockops(False)      # and the restored node can switch it, both ways
    restored.set_sockops(True)
    cl, sv = transfer(node.pods["a"], "b", node.pods["b"].ip, up=100_000, down=100_000, seed=116)
    check_bytes({"up": 100_000, "down": 100_000, "seed": 116}, cl, sv)


def test_not_between_pods_is_not_accelerated(node: Node) -> None:
    """The node itself (a host address, not a pod) talking to a pod: never in the map."""
    before = counts(node)
    r = node.run(*client_argv(node.pods["b"].ip, PORT, up=50_000, down=50_000, seed=121), timeout=30)
    check_bytes({"up": 50_000, "down": 50_000, "seed": 121}, json.loads(r.stdout.strip().splitlines()[-1]),
                server_line("b"))
    d = delta(before, counts(node))
    assert "sock_added" not in d and "msg_redirect" not in d, d


@pytest.mark.replaces_objects  # the module's lab owns what it swaps
def test_pod_deleted_mid_connection(lab: Lab, node: Node) -> None:
    """The server pod goes (its processes, endpoint and namespace) mid-transfer: the client fails
    like it would without acceleration (no silent success into nowhere), the map is left empty."""
    c = node.pods["c"]
    proc = _start(node.pods["a"], c.ip, up=50_000_000, down=10, chunk=65536, pace=0.005, seed=131, sock_timeout=5)
    time.sleep(0.5)
    SERVERS.pop(("c", PORT))
    SERVERS.pop(("c", SPLICE_PORT))
    node.remove_pod("c")
    cl = _finish(proc)
    assert cl["error"] is not None and cl["sent"] < 50_000_000, cl
    assert _dp(node).sockops.sockets() == []


# -- refusals -----------------------------------------------------------------------------------------------


def test_needs_a_cgroup(netns: str) -> None:
    """Without a cgroup there is nothing to attach to: NotSupportedError, and nothing is left."""
    cfg = DatapathConfig(node_name=f"{netns}-nocg", pod_cidr="10.244.9.0/24", sockops_enable=True,
                         pin_root=f"/sys/fs/bpf/{netns}-nocg", state_dir=f"/tmp/{netns}-nocg")
    with pytest.raises(NotSupportedError, match="cgroup"):
        Datapath(cfg, netns=netns)
