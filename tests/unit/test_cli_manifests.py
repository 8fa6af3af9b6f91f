"""``ciliumlite apply -f`` / ``delete -f`` through typer's CliRunner: output lines, exit codes, the
store they write (an in-memory store put in place of ``open_store``), and once against a real etcd."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ciliumlite.cli import manifests as cli_manifests
from ciliumlite.cli.app import app
from ciliumlite.cluster import InMemoryStore

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "manifests"
ETCD = ["--kvstore", "etcd", "--kvstore-endpoints", "http://127.0.0.1:1"]
BAD = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  ports:
    - {name: http, port: 80, nodePort: 30080}
    - {name: admin, port: 81, nodePort: 40000}
"""


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> InMemoryStore:
    """The store `--kvstore etcd` opens, in memory (and the options it was opened with)."""
    mem = InMemoryStore()
    opened: list[tuple[object, ...]] = []

    def fake(kvstore: str | None, endpoints: str | None, cluster: str) -> InMemoryStore | None:
        opened.append((kvstore, endpoints, cluster))
        return mem if kvstore is not None else None

    monkeypatch.setattr(cli_manifests, "open_store", fake)
    mem.opened = opened  # type: ignore[attr-defined]
    return mem


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def test_apply_prints_kubectl_lines_and_writes_the_store(store: InMemoryStore):
    res = run("apply", "-f", str(EXAMPLES / "web.yaml"), "-f", str(EXAMPLES / "nodes.yaml"), *ETCD, "--cluster", "lab")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines() == ["service/web created", "endpointslice.discovery.k8s.io/web-x7k2p created",
                                       "node/k8s-master created", "node/worker1 created", "node/worker3 created"]
    assert store.opened == [("etcd", "http://127.0.0.1:1", "lab")]  # type: ignore[attr-defined]
    assert [s.name for s in store.services()] == ["demo/web:http", "demo/web:metrics"]
    res = run("apply", "-f", str(EXAMPLES), *ETCD)
    assert res.exit_code == 0
    assert "service/web unchanged" in res.stdout and "service/kube-dns created" in res.stdout


def test_delete_and_not_found(store: InMemoryStore):
    assert run("apply", "-f", str(EXAMPLES), *ETCD).exit_code == 0
    res = run("delete", "-f", str(EXAMPLES / "web.yaml"), *ETCD)
    assert res.exit_code == 0
    assert res.stdout.splitlines() == ["service/web deleted", "endpointslice.discovery.k8s.io/web-x7k2p deleted"]
    assert not any(s.name.startswith("demo/") for s in store.services())
    res = run("delete", "-f", str(EXAMPLES / "web.yaml"), *ETCD)
    assert res.exit_code == 1
    assert 'Error from store (NotFound): service "web" not found' in res.stderr
    assert run("delete", "-f", str(EXAMPLES / "web.yaml"), *ETCD, "--ignore-not-found").exit_code == 0


def test_validation_errors_exit_1_with_the_field_path_and_write_nothing(store: InMemoryStore, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    res = run("apply", "-f", str(EXAMPLES / "nodes.yaml"), "-f", str(bad), *ETCD)
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [f"error: {bad}: document 1 (Service default/web): spec.ports[1].nodePort: "
                                       "40000 is outside 30000..32767 (the node port range)"]
    assert res.stdout == "" and store.nodes() == []
    # A clash with the store is found before writing too.
    assert run("apply", "-f", str(EXAMPLES / "nodes.yaml"), *ETCD).exit_code == 0
    clash = tmp_path / "clash.yaml"
    clash.write_text("apiVersion: v1\nkind: Node\nmetadata: {name: w9}\nspec: {podCIDR: 10.244.1.0/25}\n"
                     "status: {addresses: [{type: InternalIP, address: 10.0.0.99}]}\n")
    res = run("apply", "-f", str(clash), *ETCD)
    assert res.exit_code == 1 and "spec.podCIDR: 10.244.1.0/25 overlaps the pod CIDR of node worker1" in res.stderr


def test_dry_run_without_a_store_checks_the_files(store: InMemoryStore):
    res = run("apply", "-f", str(EXAMPLES), "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "service/web created (dry run)" in res.stdout.splitlines()
    assert "checked against an empty store" in res.stderr
    res = run("apply", "-f", str(EXAMPLES), "--dry-run", *ETCD)
    assert res.exit_code == 0 and store.services() == []


def test_no_strict_and_stdin(store: InMemoryStore):
    text = BAD.replace("40000", "30081").replace("{name: http,", "{name: http, nodeport: 1,") \
        + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
    res = run("apply", "-f", "-", *ETCD, input=text)
    assert res.exit_code == 1
    assert "<stdin>: document 1 (Service default/web): spec.ports[0].nodeport: unknown field; did you mean " \
           "'nodePort'?" in res.stderr
    assert "<stdin>: document 2 (Deployment): kind: kind 'Deployment' is not supported" in res.stderr
    res = run("apply", "-f", "-", *ETCD, "--no-strict", input=text)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "service/web created\n"
    assert res.stderr.count("Warning: ") == 2


@pytest.mark.parametrize(("args", "words"), [
    (["apply"], "Missing option '--filename'"),
    (["apply", "-f", "/nonexistent.yaml", "--dry-run"], "does not exist"),
    (["apply", "-f", str(EXAMPLES)], "no store to write to"),
    (["apply", "-f", str(EXAMPLES), "--kvstore", "consul", "--kvstore-endpoints", "x"], "the only kvstore is etcd"),
    (["apply", "-f", str(EXAMPLES), "--kvstore", "etcd"], "needs --kvstore-endpoints"),
    (["apply", "-f", str(EXAMPLES), "--kvstore-endpoints", "http://127.0.0.1:2379"], "needs --kvstore etcd"),
    (["delete", "-f", "-", "-f", str(EXAMPLES), "--dry-run"], "cannot be combined"),
])
def test_usage_errors_exit_2(args: list[str], words: str):
    res = run(*args)
    assert res.exit_code == 2, res.output
    assert words in " ".join(re.sub("[│╭╮╰╯─]", " ", res.stderr).split())  # rich's box, unwrapped


def test_an_unreachable_etcd_exits_1():
    # The real EtcdStore: nothing listens on port 1 of loopback.
    res = run("apply", "-f", str(EXAMPLES / "web.yaml"), "--kvstore", "etcd", "--kvstore-endpoints",
              "http://127.0.0.1:1")
    assert res.exit_code == 1
    assert res.stderr.startswith("error: kvstore:")


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server is not installed")
def test_apply_and_delete_through_a_real_etcd(etcd_server):
    cli = [sys.executable, "-m", "ciliumlite"]
    opts = ["--kvstore", "etcd", "--kvstore-endpoints", etcd_server.url, "--cluster", "lab"]

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args, *opts], capture_output=True, text=True, timeout=60)

    res = call("apply", "-f", str(EXAMPLES))
    assert res.returncode == 0, res.stderr
    assert "endpointslice.discovery.k8s.io/web-x7k2p created" in res.stdout
    keys = etcd_server.etcdctl("get", "--prefix", "cilium/state/services/v1/lab/", "--keys-only").split()
    assert keys == ["cilium/state/services/v1/lab/demo/web:http", "cilium/state/services/v1/lab/demo/web:metrics",
                    "cilium/state/services/v1/lab/kube-system/kube-dns:dns",
                    "cilium/state/services/v1/lab/kube-system/kube-dns:dns-tcp",
                    "cilium/state/services/v1/lab/kube-system/kube-dns:metrics"]
    assert etcd_server.etcdctl("get", "--prefix", "cilium/state/nodes/v1/lab/", "--keys-only").split() == [
        "cilium/state/nodes/v1/lab/k8s-master", "cilium/state/nodes/v1/lab/worker1", "cilium/state/nodes/v1/lab/worker3"]
    res = call("apply", "-f", str(EXAMPLES))
    assert res.returncode == 0 and "created" not in res.stdout
    res = call("delete", "-f", str(EXAMPLES / "web.yaml"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["service/web deleted", "endpointslice.discovery.k8s.io/web-x7k2p deleted"]
    keys = etcd_server.etcdctl("get", "--prefix", "cilium/state/services/v1/lab/", "--keys-only").split()
    assert len(keys) == 3 and all("kube-dns" in k for k in keys)
