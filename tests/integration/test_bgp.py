"""bird2 over eBGP between namespaces: a leaf router and two nodes (native routing's control plane).

Topology (built here, removed in ``finally``)::

    fabric ns: br0 10.0.0.254/24 (leaf, AS 65001, ip_forward=1)
      |- vn1 <-> up0 10.0.0.11/24 in node 1 (AS 65011, announces 10.244.1.0/24, "pod" 10.244.1.1/32 on lo)
      '- vn2 <-> up0 10.0.0.12/24 in node 2 (AS 65012, announces 10.244.2.0/24, "pod" 10.244.2.1/32 on lo)

Only namespaces made here are touched; only 10.0.0.0/24 and 10.244.0.0/16 are used; every wait is
bounded; bird daemons are stopped by the pid from their own pidfile.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from ciliumlite import bgp
from ciliumlite.bgp import BgpConfig, BgpError, BgpPeer, Bird, leaf_config, render_bird_config
from ciliumlite.bpf import netns as nsmod
from ciliumlite.bpf.errors import CiliumliteError, NotSupportedError, ValidationError
from ciliumlite.datapath.devices import set_sysctl
from ciliumlite.lab import procs
from ciliumlite.testing import unique_name

pytestmark = pytest.mark.integration

LEAF_IP, LEAF_ASN = "10.0.0.254", 65001
RTPROT_BIRD = 12


def _node_ip(i: int) -> str:
    return f"10.0.0.{10 + i}"


def _node_cfg(i: int, *extra: str) -> BgpConfig:
    return BgpConfig(router_id=_node_ip(i), asn=65010 + i, peers=(BgpPeer("leaf", LEAF_IP, LEAF_ASN),),
                     announce=(f"10.244.{i}.0/24", *extra))


def _leaf_cfg(n: int) -> BgpConfig:
    return leaf_config(LEAF_IP, LEAF_ASN, [BgpPeer(f"n{i}", _node_ip(i), 65010 + i) for i in range(1, n + 1)])


@pytest.fixture
def bird_available() -> None:
    """Skip (fail with CILIUMLITE_TEST_STRICT=1) when bird2 is not installed."""
    try:
        bgp._binaries()
    except NotSupportedError as exc:
        if os.environ.get("CILIUMLITE_TEST_STRICT") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture
def workdir() -> Iterator[str]:
    """A short scratch directory (the control socket path must fit in 107 bytes)."""
    path = tempfile.mkdtemp(prefix="clbgp-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Topology:
    fabric: str
    nodes: list[str]

    def remove(self) -> None:
        for ns in [*self.nodes, self.fabric]:
            nsmod.remove(ns)


def build_topology(n_nodes: int = 2) -> Topology:
    """The fabric namespace with br0 (10.0.0.254/24) and ``n_nodes`` node namespaces, each with up0 in
    the bridge (10.0.0.(10+i)/24) and a "pod" address 10.244.i.1/32 on lo."""
    from pyroute2 import IPRoute

    topo = Topology(nsmod.create(unique_name("bgp")), [])
    try:
        with IPRoute(netns=topo.fabric) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            br = ipr.link_lookup(ifname="br0")[0]
            ipr.addr("add", index=br, address=LEAF_IP, prefixlen=24)
            ipr.link("set", index=br, state="up")
        set_sysctl(topo.fabric, "net.ipv4.ip_forward", "1")
        for i in range(1, n_nodes + 1):
            ns = nsmod.create(unique_name("bgp"))
            topo.nodes.append(ns)
            with IPRoute(netns=topo.fabric) as ipr:
                ipr.link("add", ifname=f"vn{i}", kind="veth", peer={"ifname": "up0", "net_ns_fd": ns})
                port = ipr.link_lookup(ifname=f"vn{i}")[0]
                ipr.link("set", index=port, master=ipr.link_lookup(ifname="br0")[0], state="up")
            with IPRoute(netns=ns) as ipr:
                up = ipr.link_lookup(ifname="up0")[0]
                ipr.addr("add", index=up, address=_node_ip(i), prefixlen=24)
                ipr.link("set", index=up, state="up")
                ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=f"10.244.{i}.1", prefixlen=32)
    except BaseException:
        topo.remove()
        raise
    return topo


def kernel_routes(netns: str) -> dict[str, tuple[int, str | None]]:
    """Main-table IPv4 routes of ``netns``: ``{"dst/len": (proto, gateway)}``."""
    from pyroute2 import IPRoute

    out: dict[str, tuple[int, str | None]] = {}
    with IPRoute(netns=netns) as ipr:
        for r in ipr.get_routes(family=socket.AF_INET, table=254):
            dst = f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
            out[dst] = (r["proto"], r.get_attr("RTA_GATEWAY"))
    return out


def bird_routes(netns: str) -> dict[str, str | None]:
    """The routes bird installed in ``netns`` (``proto bird``): ``{"dst/len": gateway}``."""
    return {dst: gw for dst, (proto, gw) in kernel_routes(netns).items() if proto == RTPROT_BIRD}


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``cond`` until true; the seconds it took. Fails the test after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --------------------------------------------------------------------------------- config, no daemon


def test_config_validation():
    peer = BgpPeer("leaf", LEAF_IP, LEAF_ASN)
    ok = BgpConfig("10.0.0.11", 65011, (peer,), ("10.244.1.0/24",))
    assert ok.peers == (peer,) and ok.announce == ("10.244.1.0/24",)
    assert (ok.hold_time, ok.keepalive, ok.connect_delay, ok.connect_retry) == (9, 3, 1, 2)
    assert BgpConfig("10.0.0.11", 65011, [peer], ["10.244.1.0/24", "10.244.1.0/24"]).announce == ("10.244.1.0/24",)
    assert BgpConfig("10.0.0.11", 4294967295, ()).asn == 4294967295

    bad: list[Callable[[], object]] = [
        lambda: BgpConfig("10.0.0.11", 0, (peer,)),                       # asn 0
        lambda: BgpConfig("10.0.0.11", 4294967296, (peer,)),              # asn too large
        lambda: BgpConfig("10.0.0.11", True, (peer,)),                    # bool is not an AS
        lambda: BgpConfig("fe80::1", 65011, (peer,)),                     # router id not IPv4
        lambda: BgpConfig("node1", 65011, (peer,)),
        lambda: BgpConfig("0.0.0.0", 65011, (peer,)),
        lambda: BgpConfig("10.0.0.11", 65011, (peer,), ("10.244.1.1/24",)),   # host bits set
        lambda: BgpConfig("10.0.0.11", 65011, (peer,), ("10.244.1.0/33",)),
        lambda: BgpConfig("10.0.0.11", 65011, (peer,), "10.244.1.0/24"),      # a str, not a tuple
        lambda: BgpConfig("10.0.0.11", 65011, (peer, BgpPeer("leaf", "10.0.0.253", 1))),  # duplicate name
        lambda: BgpConfig("10.0.0.11", 65011, (peer, BgpPeer("other", LEAF_IP, 1))),      # duplicate address
        lambda: BgpConfig("10.0.0.11", 65011, (peer,), hold_time=2),
        lambda: BgpConfig("10.0.0.11", 65011, (peer,), hold_time=9, keepalive=10),
        lambda: BgpConfig("10.0.0.11", 65011, (peer,), connect_retry=0),
        lambda: BgpConfig("10.0.0.11", 65011, (peer,), local_address="10.0.0"),
        lambda: BgpPeer("leaf", "10.0.0.300", 65001),
        lambda: BgpPeer("leaf", "224.0.0.5", 65001),
        lambda: BgpPeer("leaf", "0.0.0.0", 65001),
        lambda: BgpPeer("leaf", LEAF_IP, 0),
        lambda: BgpPeer("my-leaf", LEAF_IP, 65001),                        # not a bird symbol
        lambda: BgpPeer("1leaf", LEAF_IP, 65001),
        lambda: BgpPeer("static1", LEAF_IP, 65001),                        # taken by the rendered config
    ]
    for i, make in enumerate(bad):
        with pytest.raises(ValidationError):
            make()
            pytest.fail(f"case {i} was accepted")
    with pytest.raises(ValidationError, match=r"AS number must be an integer in 1\.\.4294967295, not 0"):
        BgpConfig("10.0.0.11", 0, (peer,))


def test_render_shape():
    node = render_bird_config(_node_cfg(1), log_path="/tmp/x/bird.log")
    assert "router id 10.0.0.11;" in node
    assert 'log "/tmp/x/bird.log" all;' in node
    assert "protocol device device1" in node
    assert "protocol direct direct1 { disabled; ipv4; }" in node
    assert "ipv4 { import none; export where source = RTS_BGP; };" in node   # kernel: BGP routes only
    assert "route 10.244.1.0/24 blackhole;" in node
    assert "protocol bgp leaf {" in node and "local as 65011;" in node and "neighbor 10.0.0.254 as 65001;" in node
    assert "hold time 9; keepalive time 3;" in node and "connect delay time 1; connect retry time 2;" in node
    assert "ipv4 { import all; export where source = RTS_STATIC; };" in node
    assert "export all" not in node

    leaf = render_bird_config(_leaf_cfg(2), log_path=None)
    assert "log " not in leaf and "protocol static" not in leaf
    assert leaf.count("ipv4 { import all; export all; };") == 2
    assert "neighbor 10.0.0.11 as 65011;" in leaf and "neighbor 10.0.0.12 as 65012;" in leaf

    quiet = render_bird_config(dataclasses.replace(_node_cfg(1), import_routes=False,
                                                   local_address="10.0.0.11"), log_path=None)
    assert "ipv4 { import none; export none; };" in quiet and "local 10.0.0.11 as 65011;" in quiet
    with pytest.raises(ValidationError):
        render_bird_config(_node_cfg(1), log_path='/tmp/"x"')


def test_rendered_configs_parse_in_bird(bird_available, workdir):
    birdbin, _ = bgp._binaries()
    for cfg in (_node_cfg(1, "10.244.101.0/24"), _leaf_cfg(3),
                dataclasses.replace(_node_cfg(2), import_routes=False, local_address="10.0.0.12")):
        path = os.path.join(workdir, "check.conf")
        with open(path, "w") as f:
            f.write(render_bird_config(cfg, log_path=os.path.join(workdir, "check.log")))
        r = subprocess.run([birdbin, "-p", "-c", path], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr


def test_parse_birdc_output():
    protocols = "\n".join([
        "BIRD 2.0.12 ready.",
        "Name       Proto      Table      State  Since         Info",
        "device1    Device     ---        up     2026-11-30 02:25:25.518  ",   # bird pads with spaces
        "kernel1    Kernel     master4    up     2026-11-30 02:25:25.518  ",
        "static1    Static     master4    up     2026-11-30 02:25:25.518  ",
        "leaf       BGP        ---        up     2026-11-30 02:25:26.601  Established   ",
        "a_very_long_peer_name BGP        ---        start  2026-11-30 02:25:25.518  Active        Socket: Connection refused",
        "old        BGP        ---        start  02:25:25.518  Idle          BGP Error: Hold timer expired",
    ])
    rows = bgp.parse_protocols(protocols)
    assert [r.name for r in rows] == ["device1", "kernel1", "static1", "leaf", "a_very_long_peer_name", "old"]
    leaf = rows[3]
    assert (leaf.proto, leaf.table, leaf.state, leaf.since, leaf.info) == (
        "BGP", "---", "up", "2026-11-30 02:25:26.601", "Established")
    assert leaf.established and not rows[0].established and not rows[0].is_bgp
    assert rows[4].info == "Active        Socket: Connection refused" and not rows[4].established
    assert (rows[5].since, rows[5].info) == ("02:25:25.518", "Idle          BGP Error: Hold timer expired")

    routes = """BIRD 2.0.12 ready.
Table master4:
10.244.2.0/24        unicast [leaf 2026-11-30 02:25:26.602] * (100) [AS65012i]
	via 10.0.0.12 on up0
10.244.1.0/24        blackhole [static1 2026-11-30 02:25:25.518] * (200)
10.244.12.0/24       unicast [leaf 2026-11-30 02:25:27.000] * (100) [AS65012i]
	via 10.0.0.12 on up0
                     unicast [other 2026-11-30 02:25:27.000] (100) [AS65013i]
	via 10.0.0.13 on up0
"""
    assert bgp.parse_routes(routes) == ["10.244.1.0/24", "10.244.2.0/24", "10.244.12.0/24"]


def test_missing_bird_is_not_supported(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(bgp.proc, "_SBIN_DIRS", ())
    bgp._binaries.cache_clear()
    try:
        with pytest.raises(NotSupportedError, match="apt-get install bird2") as info:
            Bird("whatever", _node_cfg(1), str(tmp_path / "bird")).start()
        assert info.value.feature == "bird2"
    finally:
        bgp._binaries.cache_clear()


# --------------------------------------------------------------------------------- with bird running


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("daemonize", [False, True], ids=["child", "daemon"])
def test_leaf_and_two_nodes_converge_reload_and_withdraw(bird_available, workdir, daemonize):
    topo = build_topology(2)
    birds: list[Bird] = []
    try:
        n1_ns, n2_ns = topo.nodes
        leaf = Bird(topo.fabric, _leaf_cfg(2), os.path.join(workdir, "leaf"), daemonize=daemonize)
        n1 = Bird(n1_ns, _node_cfg(1), os.path.join(workdir, "n1"), daemonize=daemonize)
        n2 = Bird(n2_ns, _node_cfg(2), os.path.join(workdir, "n2"), daemonize=daemonize)
        t0 = time.monotonic()
        for b in (leaf, n1, n2):
            birds.append(b.start())
            assert b.running and b.pid is not None and not _gone(b.pid)
            assert os.path.exists(b.socket_path) and os.path.exists(b.config_path)
            # bird -f is our child; a daemonized bird is not (PID 1 adopted it).
            assert (_ppid(b.pid) == os.getpid()) is not daemonize

        # Sessions up, within ~5 s (tuned timers: about 1 s).
        for b in (leaf, n1, n2):
            sessions = b.wait_established(timeout=5)
            assert sessions and all(s.established for s in sessions), sessions
        assert [s.name for s in leaf.status() if s.is_bgp] == ["n1", "n2"]
        established_s = time.monotonic() - t0

        # Each node's kernel has the other's pod CIDR, proto bird, via the leaf or the other node
        # (bird keeps the third-party next hop between peers on the same subnet).
        def has(ns: str, cidr: str, gateways: set[str]) -> bool:
            return bird_routes(ns).get(cidr) in gateways

        wait_for(lambda: has(n1_ns, "10.244.2.0/24", {LEAF_IP, _node_ip(2)}), 5, "node 1 learns 10.244.2.0/24")
        wait_for(lambda: has(n2_ns, "10.244.1.0/24", {LEAF_IP, _node_ip(1)}), 5, "node 2 learns 10.244.1.0/24")
        converged_s = time.monotonic() - t0
        # Only BGP routes are exported to the kernel: a node's own blackhole never is.
        assert set(bird_routes(n1_ns)) == {"10.244.2.0/24"}, kernel_routes(n1_ns)
        assert set(bird_routes(n2_ns)) == {"10.244.1.0/24"}, kernel_routes(n2_ns)
        assert "10.244.1.0/24" not in kernel_routes(n1_ns)
        wait_for(lambda: set(bird_routes(topo.fabric)) == {"10.244.1.0/24", "10.244.2.0/24"}, 5,
                 "the leaf installs both CIDRs")
        assert n1.routes(protocol="leaf") == ["10.244.2.0/24"]
        assert n1.routes() == ["10.244.1.0/24", "10.244.2.0/24"]
        assert leaf.routes() == ["10.244.1.0/24", "10.244.2.0/24"]

        # Traffic between the "pods" follows the learned routes.
        r = procs.run(n1_ns, ["ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", "10.244.1.1", "10.244.2.1"],
                      timeout=10)
        assert r.returncode == 0, r.stdout + r.stderr

        # reload with an extra CIDR converges on node 1; bird says "Reconfigured".
        t1 = time.monotonic()
        n2.reload(_node_cfg(2, "10.244.12.0/24"))
        assert n2.cfg.announce == ("10.244.2.0/24", "10.244.12.0/24")
        wait_for(lambda: "10.244.12.0/24" in bird_routes(n1_ns), 3, "node 1 learns the reloaded 10.244.12.0/24")
        reload_s = time.monotonic() - t1
        assert n2.running and n2.wait_established(timeout=3)

        # Stopping node 2's bird withdraws its routes on node 1 within a few seconds.
        pid2 = n2.pid
        assert pid2 is not None
        t2 = time.monotonic()
        n2.stop()
        stop_s = time.monotonic() - t2
        with pytest.raises(ProcessLookupError):
            os.kill(pid2, 0)
        assert not n2.running and n2.pid is None
        assert not os.path.exists(n2.workdir)          # conf, socket, pidfile and log removed
        wait_for(lambda: not ({"10.244.2.0/24", "10.244.12.0/24"} & set(bird_routes(n1_ns))), 3,
                 "node 1 drops node 2's CIDRs")
        withdraw_s = time.monotonic() - t2
        # persist off: the stopped bird removed its own kernel routes too.
        assert bird_routes(n2_ns) == {}
        n2.stop()                                      # idempotent
        print(f"\nbgp timings ({'daemon' if daemonize else 'child'}): established {established_s:.2f}s, kernel routes {converged_s:.2f}s, "
              f"reload {reload_s * 1000:.0f}ms, stop {stop_s * 1000:.0f}ms, withdrawn on n1 {withdraw_s * 1000:.0f}ms")
    finally:
        pids = [b.pid for b in birds if b.pid is not None]
        for b in reversed(birds):
            b.stop()
        topo.remove()
    for pid in pids:
        assert _gone(pid), f"bird pid {pid} still exists after stop()"


@pytest.mark.parametrize("daemonize", [False, True], ids=["child", "daemon"])
def test_bird_rejects_config_with_its_own_message(bird_available, workdir, daemonize):
    topo = build_topology(1)
    try:
        # Passes our validation (a bird symbol), but "neighbor" is a bird keyword: bird refuses the file.
        cfg = BgpConfig("10.0.0.11", 65011, (BgpPeer("neighbor", LEAF_IP, LEAF_ASN),), ("10.244.1.0/24",))
        b = Bird(topo.nodes[0], cfg, os.path.join(workdir, "bad"), daemonize=daemonize)
        with pytest.raises(BgpError, match="syntax error") as info:
            b.start()
        text = str(info.value)
        assert "bird did not start" in text and "bird.conf:" in text
        assert "config line" in text and "protocol bgp neighbor" in text
        assert "syntax error" in info.value.output
        assert not b.running and b.pid is None
        # bird leaves an empty pidfile and a dead socket behind on a config error; start() removed them.
        assert not os.path.exists(b.pid_path) and not os.path.exists(b.socket_path)
        b.stop()
        assert not os.path.exists(b.workdir)

        # bird's own message when it cannot open its log file.
        b = Bird(topo.nodes[0], _node_cfg(1), os.path.join(workdir, "log"), daemonize=daemonize,
                 log_path=os.path.join(workdir, "no", "such", "dir", "bird.log"))
        with pytest.raises(BgpError, match="Unable to open log file"):
            b.start()
        b.stop()

        # A workdir that cannot be created (its parent is a file).
        blocker = os.path.join(workdir, "file")
        open(blocker, "w").close()
        with pytest.raises(BgpError, match="cannot create bird's workdir"):
            Bird(topo.nodes[0], _node_cfg(1), os.path.join(blocker, "sub")).start()

        # Namespace that does not exist; a socket path that does not fit in sun_path.
        with pytest.raises(ValidationError, match="does not exist"):
            Bird(unique_name("nope"), _node_cfg(1), os.path.join(workdir, "x")).start()
        with pytest.raises(ValidationError, match="too long"):
            Bird(topo.nodes[0], _node_cfg(1), os.path.join(workdir, "d" * 120))
    finally:
        topo.remove()


def test_reload_rejected_keeps_running_config(bird_available, workdir):
    topo = build_topology(1)
    try:
        with Bird(topo.nodes[0], _node_cfg(1), os.path.join(workdir, "n1")) as b:
            pid = b.pid
            assert pid is not None
            good = _read(b.config_path)
            bad = BgpConfig("10.0.0.11", 65011, (BgpPeer("bgp", LEAF_IP, LEAF_ASN),), ("10.244.1.0/24",))
            with pytest.raises(BgpError, match="rejected the new config") as info:
                b.reload(bad)
            assert "syntax error" in str(info.value)
            assert b.cfg == _node_cfg(1) and _read(b.config_path) == good
            assert b.running and b.pid == pid
            assert b.routes() == ["10.244.1.0/24"]
            # No leaf is running: the session is not Established, and the error shows the table.
            with pytest.raises(BgpError, match=r"not Established within 0\.5s: leaf") as info:
                b.wait_established(timeout=0.5)
            assert "Name" in info.value.output and "leaf" in info.value.output
            # A second start of the same daemon is refused.
            with pytest.raises(BgpError, match="running already"):
                b.start()
            # So is another Bird on the same workdir.
            with pytest.raises(CiliumliteError, match="another bird"):
                Bird(topo.nodes[0], _node_cfg(1), b.workdir).start()
            assert b.running
        assert _gone(pid)
    finally:
        topo.remove()
