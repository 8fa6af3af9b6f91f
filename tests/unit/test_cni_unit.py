"""The CNI plugin without an agent or a kernel: config and CNI_ARGS parsing, result formats, errors."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from ciliumlite.cni.plugin import (
    SUPPORTED_VERSIONS,
    CniError,
    NetConf,
    add_result,
    main,
    parse_cni_args,
)

pytestmark = pytest.mark.unit

EP = {"ip": "10.244.1.5", "prefix": 32, "gateway": "10.244.1.1", "mac": "aa:bb:cc:dd:ee:01",
      "host_ifname": "lxc0123456789a", "host_mac": "aa:bb:cc:dd:ee:02", "ifname": "eth0"}


def run(env: dict[str, str], conf: Any) -> tuple[int, Any]:
    out = io.StringIO()
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    rc = main(env=env, stdin=io.BytesIO(data), stdout=out)
    text = out.getvalue().strip()
    return rc, json.loads(text) if text else None


def test_netconf() -> None:
    conf = NetConf.parse(json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "ciliumlite-cni", "node": "w1",
                                     "labels": {"team": "a"}, "extra": "ignored"}).encode())
    assert conf.socket == "/run/ciliumlite/w1/agent.sock" and conf.labels == {"team": "a"}
    for raw, code in ((b"", 6), (b"[]", 6), (b'{"name": "n"}', 7), (b'{"cniVersion": "9.9.9"}', 1),
                      (b'{"cniVersion": "1.0.0", "name": "n", "type": "ciliumlite-cni", "agent_socket": "rel"}', 7),
                      (b'{"cniVersion": "1.0.0", "name": "n", "type": "ciliumlite-cni", "node": "x",'
                       b' "labels": {"a": 1}}', 7)):
        with pytest.raises(CniError) as err:
            NetConf.parse(raw)
        assert err.value.code == code, raw


def test_cni_args() -> None:
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "default"}
    assert parse_cni_args("") == {}
    with pytest.raises(CniError) as err:
        parse_cni_args("K8S_POD_NAME")
    assert err.value.code == 4


def test_results_follow_the_config_version() -> None:
    new = add_result("1.0.0", EP, "/var/run/netns/x", {})
    assert new["ips"] == [{"address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 1}]
    assert new["interfaces"][1] == {"name": "eth0", "mac": EP["mac"], "sandbox": "/var/run/netns/x"}
    old = add_result("0.4.0", EP, "/var/run/netns/x", {"nameservers": ["1.1.1.1"]})
    assert old["ips"][0]["version"] == "4" and old["dns"] == {"nameservers": ["1.1.1.1"]}


def test_version_and_errors_on_stdout() -> None:
    rc, out = run({"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"})
    assert rc == 0 and out["supportedVersions"] == list(SUPPORTED_VERSIONS)
    rc, out = run({}, {"cniVersion": "1.0.0"})
    assert rc == 1 and out["code"] == 4 and "CNI_COMMAND" in out["msg"]
    conf = {"cniVersion": "0.4.0", "name": "n", "type": "ciliumlite-cni", "agent_socket": "/nonexistent/agent.sock"}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/self/ns/net"}
    rc, out = run(env, conf)
    assert rc == 1 and out["code"] == 11 and out["cniVersion"] == "0.4.0", out  # the config's version
    rc, out = run({**env, "CNI_NETNS": "/nonexistent"}, conf)
    assert rc == 1 and out["code"] == 4
    rc, out = run({**env, "CNI_COMMAND": "DEL"}, conf)
    assert rc == 1 and out["code"] == 11
