"""``ciliumlite-cni`` exec'd the way runtimes call it, and called by a real runtime (podman).

The module shares one agent node (``n``: the in-memory store, no underlay) with one lab pod that
runs an echo server. The plugin is a ``ciliumlite-cni`` executable in a plugin directory, run with
the ``CNI_*`` environment and the network config on stdin, exactly what libcni does. The podman
test follows ``docs/cni.md``'s recipe: podman 4.3 with the CNI backend, runc, a busybox root
filesystem, its own root/runroot/tmpdir and network config dir, entered into the node's namespace
with nsenter; the container gets its address from the agent and talks to the lab pod.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agent_harness import AgentLab, AgentNode, agent_lab

from ciliumlite.bpf import netns as nsmod
from ciliumlite.cni.plugin import SUPPORTED_VERSIONS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = 8080
NET = "clnet"


@dataclass
class Topo:
    alab: AgentLab
    n: AgentNode
    srv_ns: str
    srv_ip: str
    plugin_dir: str

    def conf(self, **extra: Any) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": NET, "type": "ciliumlite-cni", "agent_socket": self.n.socket, **extra}

    def cni(self, command: str, conf: dict[str, Any] | None = None, *, netns: str = "", cid: str = "c1",
            ifname: str = "eth0", args: str = "", stdin: bytes | None = None,
            drop: tuple[str, ...] = ()) -> tuple[int, Any]:
        """Exec the plugin as libcni does: the CNI_* environment (nothing else of ours) and stdin."""
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
               "CNI_ARGS": args, "CNI_PATH": f"{self.plugin_dir}:/usr/lib/cni", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        for name in drop:
            env.pop(name)
        data = stdin if stdin is not None else json.dumps(conf or self.conf()).encode()
        res = subprocess.run([os.path.join(self.plugin_dir, "ciliumlite-cni")], input=data, env=env,
                             capture_output=True, timeout=120)
        out = res.stdout.decode().strip()
        return res.returncode, json.loads(out) if out else None

    def lxc_devices(self) -> set[str]:
        with nsmod.entered(self.n.netns):
            return {d for d in os.listdir("/sys/class/net") if d.startswith("lxc")}


def write_plugin_dir(path: Path) -> str:
    """A CNI plugin directory with ``ciliumlite-cni``: this checkout's plugin under this interpreter."""
    path.mkdir(parents=True, exist_ok=True)
    exe = path / "ciliumlite-cni"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m ciliumlite.cni \"$@\"\n")
    exe.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    plugin_dir = write_plugin_dir(tmp_path_factory.mktemp("cni") / "plugins")
    with agent_lab("cni") as alab:
        n = alab.add_node("n", underlay=False)
        alab.start_agent(n, "--remove-datapath-on-exit")
        srv = alab.add_pod(n, "srv")
        ep = n.client().put_endpoint("lab-srv", netns=srv, labels={"app": "srv"})
        alab.echo_server(srv, PORT, "srv")
        yield Topo(alab, n, srv, ep["ip"], plugin_dir)


@pytest.fixture
def pod(topo: Topo) -> Iterator[str]:
    """A fresh namespace, as a runtime makes one for a container (its path); removed after the test."""
    ns = topo.alab.add_pod(topo.n, f"c{time.monotonic_ns() % 100000}")
    try:
        yield f"/var/run/netns/{ns}"
    finally:
        topo.alab.remove_pod(topo.n, ns)


def _error(rc: int, out: Any, code: int, *words: str) -> None:
    assert rc == 1 and isinstance(out, dict), (rc, out)
    assert set(out) <= {"cniVersion", "code", "msg", "details"} and out["code"] == code, out
    text = f"{out['msg']} {out.get('details', '')}"
    assert all(w in text for w in words), out


# -- the spec's commands ---------------------------------------------------------------------------------


def test_version(topo: Topo) -> None:
    rc, out = topo.cni("VERSION", stdin=b'{"cniVersion": "0.4.0"}', cid="", ifname="")
    assert rc == 0 and out == {"cniVersion": "0.4.0", "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert {"0.4.0", "1.0.0"} <= set(out["supportedVersions"])


def test_add_check_del(topo: Topo, pod: str) -> None:
    path = pod
    conf = topo.conf(dns={"nameservers": ["10.96.0.53"]})
    rc, res = topo.cni("ADD", conf, netns=path, cid="abc123",
                       args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1")
    assert rc == 0, res
    assert res["cniVersion"] == "1.0.0" and res["dns"] == {"nameservers": ["10.96.0.53"]}
    host, cont = res["interfaces"]
    assert host["name"].startswith("lxc") and "sandbox" not in host
    assert cont["name"] == "eth0" and cont["sandbox"] == path and cont["mac"]
    (ip,) = res["ips"]
    assert ip["address"].endswith("/32") and ip["interface"] == 1 and "version" not in ip
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": ip["gateway"]}]
    addr = ip["address"].split("/")[0]
    # What the agent made: the endpoint under the container id, the pod's namespace as a label.
    ep = topo.n.client().endpoint("abc123")
    assert ep["ip"] == addr and ep["name"] == "default/web-1" and ep["host_ifname"] == host["name"]
    assert ep["labels"] == {"io.kubernetes.pod.namespace": "default"}
    # The container's namespace is on the node: it reaches the lab pod, which sees its address.
    reply = json.loads(topo.alab.tcp_echo(pod, topo.srv_ip, PORT, "from-cni"))
    assert reply["ok"] and reply["reply"] == f"from-cni|srv|{addr}:{reply['local'][1]}", reply
    # ADD again: the same answer (runtimes retry).
    rc, again = topo.cni("ADD", conf, netns=path, cid="abc123")
    assert rc == 0 and again["ips"] == res["ips"]
    rc, out = topo.cni("CHECK", topo.conf(prevResult=res), netns=path, cid="abc123")
    assert (rc, out) == (0, None)
    rc, out = topo.cni("CHECK", topo.conf(prevResult={**res, "ips": [{**ip, "address": "10.9.9.9/32"}]}),
                       netns=path, cid="abc123")
    _error(rc, out, 101, "prevResult says 10.9.9.9/32")
    rc, out = topo.cni("DEL", conf, netns=path, cid="abc123")
    assert (rc, out) == (0, None)
    assert topo.n.client().endpoints()[0]["container_id"] == "lab-srv" and len(topo.n.client().endpoints()) == 1
    assert host["name"] not in topo.lxc_devices()
    # DEL of what is gone succeeds (the spec); CHECK of it is "unknown container".
    rc, out = topo.cni("DEL", conf, netns=path, cid="abc123")
    assert (rc, out) == (0, None)
    rc, out = topo.cni("DEL", conf, netns="", cid="abc123")  # CNI_NETNS may be empty on DEL
    assert (rc, out) == (0, None)
    rc, out = topo.cni("CHECK", topo.conf(prevResult=res), netns=path, cid="abc123")
    _error(rc, out, 3, "abc123")


def test_add_with_cni_0_4_0_result(topo: Topo, pod: str) -> None:
    rc, res = topo.cni("ADD", topo.conf(cniVersion="0.4.0"), netns=pod, cid="old1")
    try:
        assert rc == 0, res
        assert res["cniVersion"] == "0.4.0" and res["ips"][0]["version"] == "4"
    finally:
        assert topo.cni("DEL", topo.conf(cniVersion="0.4.0"), netns=pod, cid="old1")[0] == 0


# -- errors: the spec's JSON, nothing left behind --------------------------------------------------------


def test_bad_netns_leaves_nothing(topo: Topo) -> None:
    before = (topo.n.client().endpoints(), topo.lxc_devices())
    rc, out = topo.cni("ADD", netns="/var/run/netns/no-such-namespace", cid="bad1")
    _error(rc, out, 4, "CNI_NETNS", "does not exist")
    rc, out = topo.cni("ADD", netns=f"/var/run/netns/{topo.n.netns}", cid="bad2")  # the node's own
    _error(rc, out, 7, "the node's namespace")
    rc, out = topo.cni("ADD", netns="/proc/2/ns/net", cid="bad3")  # the host's
    _error(rc, out, 7, "the host's namespace")
    assert (topo.n.client().endpoints(), topo.lxc_devices()) == before


def test_missing_agent_is_try_again_later(topo: Topo, pod: str) -> None:
    conf = topo.conf(agent_socket="/run/ciliumlite/no-such-node/agent.sock")
    rc, out = topo.cni("ADD", conf, netns=pod, cid="lost1")
    _error(rc, out, 11, "not available", "no-such-node")
    assert "eth0" not in topo.alab.run(pod, "ip", "-o", "link").stdout  # nothing was made in the pod
    rc, out = topo.cni("DEL", conf, netns=pod, cid="lost1")
    _error(rc, out, 11, "not available")
    rc, out = topo.cni("ADD", topo.conf(agent_socket=None, node="no-such-node"), netns=pod, cid="lost2")
    _error(rc, out, 11, "/run/ciliumlite/no-such-node/agent.sock")


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"drop": ("CNI_CONTAINERID",)}, 4, "CNI_CONTAINERID"),
    ({"drop": ("CNI_IFNAME",)}, 4, "CNI_IFNAME"),
    ({"command": "FROB"}, 4, "CNI_COMMAND"),
    ({"args": "K8S_POD_NAME"}, 4, "CNI_ARGS"),
    ({"stdin": b"{not json"}, 6, "decode"),
    ({"stdin": b'["a list"]'}, 6, "not a JSON object"),
    ({"conf": {"cniVersion": "0.1.0", "name": NET, "type": "ciliumlite-cni"}}, 1, ("0.1.0", "1.0.0")),
    ({"conf": {"cniVersion": "1.0.0", "name": NET, "type": "bridge", "node": "x"}}, 7, "ciliumlite-cni"),
    ({"conf": {"cniVersion": "1.0.0", "name": NET, "type": "ciliumlite-cni"}}, 7, "agent_socket"),
    ({"conf": {"cniVersion": "1.0.0", "type": "ciliumlite-cni", "node": "x"}}, 7, "no name"),
    ({"conf": {"cniVersion": "1.0.0", "name": NET, "type": "ciliumlite-cni", "node": "x",
               "ipam": {"type": "host-local"}}}, 2, "ipam"),
])
def test_bad_invocations(topo: Topo, pod: str, change: dict[str, Any], code: int, words: str | tuple[str, ...]) -> None:
    command = change.pop("command", "ADD")
    conf = change.pop("conf", None)
    rc, out = topo.cni(command, conf, netns=pod, cid="inv1", **change)
    _error(rc, out, code, *([words] if isinstance(words, str) else words))
    assert [e["container_id"] for e in topo.n.client().endpoints()] == ["lab-srv"]


# -- a real runtime --------------------------------------------------------------------------------------


PODMAN_TOOLS = ("podman", "runc", "nsenter", "busybox")


def _busybox_rootfs(root: Path) -> str:
    """A container root filesystem: busybox-static and its applets, and the empty mount points."""
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox")
    assert busybox is not None
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "ip", "nc", "wget", "cat", "sleep", "echo"):
        (root / "bin" / applet).symlink_to("busybox")
    return str(root)


def _runtime_netns() -> list[str]:
    # The namespaces podman names for its containers (other runs on the machine make their own).
    return [n for n in nsmod.list_all() if n.startswith(("netns-", "cni-"))]


def _unmount_under(path: str) -> None:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(path)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def _remove_cgroup_tree(top: str) -> None:
    for d, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(d)


@pytest.mark.skipif(any(shutil.which(t) is None for t in PODMAN_TOOLS),
                    reason=f"needs {', '.join(PODMAN_TOOLS)} (apt-get install podman runc busybox-static)")
def test_podman_container_gets_its_network_from_the_agent(topo: Topo) -> None:
    n = topo.n
    work = tempfile.mkdtemp(prefix=f"{n.name}-podman-")
    netns_before = set(_runtime_netns())
    parent = f"{os.path.basename(n.cgroup)}/podman"  # the container lands in the node's cgroup
    netdir = Path(work) / "net"
    conf = Path(work) / "containers.conf"
    # podman enters the node's namespace with nsenter (ip netns exec would remount /sys and hide
    # the cgroups from runc); its state lives in the work dir only.
    podman = ["nsenter", f"--net=/run/netns/{n.netns}", "podman", "--root", f"{work}/root",
              "--runroot", f"{work}/runroot", "--tmpdir", f"{work}/tmp", "--network-backend", "cni",
              "--network-config-dir", str(netdir), "--runtime", "runc", "--events-backend", "none"]
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    try:
        rootfs = _busybox_rootfs(Path(work) / "rootfs")
        netdir.mkdir()
        (netdir / f"{NET}.conflist").write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": NET, "plugins": [{"type": "ciliumlite-cni", "agent_socket": n.socket}]}))
        conf.write_text(f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{topo.plugin_dir}"]\n'
                        f'network_config_dir = "{netdir}"\n[engine]\nevents_logger = "none"\n'
                        f'cgroup_manager = "cgroupfs"\nruntime = "runc"\n')
        script = (f"ip -4 -o addr show eth0; ip route; printf from-podman | nc -w 3 {topo.srv_ip} {PORT}; "
                  "echo; sleep 2")
        proc = subprocess.Popen([*podman, "run", "--rm", "--name", "clpod", "--network", NET,
                                 "--cgroups=no-conmon", f"--cgroup-parent=/{parent}",
                                 "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                                 "--rootfs", rootfs, "/bin/sh", "-c", script],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # While it runs, the agent has its endpoint: named after the container (K8S_POD_NAME).
            def running() -> list[dict[str, Any]]:
                return [e for e in n.client().endpoints() if e["name"] == "clpod"]

            deadline = time.monotonic() + 60
            while not running() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            seen = running()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, f"podman failed ({proc.returncode}):\n{out}\n{err}"
        assert len(seen) == 1, (seen, out, err)
        ep = seen[0]
        assert f"inet {ep['ip']}/32" in out, out
        assert f"default via {ep['gateway']} dev eth0" in out, out
        assert f"from-podman|srv|{ep['ip']}:" in out, out  # the lab pod saw the agent's address
        assert len(ep["container_id"]) == 64
        # --rm: podman called DEL, the agent removed the endpoint; podman's namespace is gone.
        assert [e["container_id"] for e in n.client().endpoints()] == ["lab-srv"]
        assert ep["host_ifname"] not in topo.lxc_devices()
        assert set(_runtime_netns()) - netns_before == set()
    finally:
        with contextlib.suppress(Exception):  # a container left by a failed run, and its network
            subprocess.run([*podman, "rm", "-af"], env=env, capture_output=True, timeout=60)
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
        for top in glob.glob(f"/sys/fs/cgroup/*/{parent}"):  # the container's (unified and v1)
            _remove_cgroup_tree(top)
        for top in glob.glob(f"/sys/fs/cgroup/*/{n.name}"):  # what runc made in the v1 hierarchies
            if top != n.cgroup:
                _remove_cgroup_tree(top)
