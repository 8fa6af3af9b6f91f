"""The etcd lab's pieces without a kernel: the command line a lab node's agent gets, read back by
the real ``ciliumlite agent`` command, gives the datapath the lab asked for."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from ciliumlite.agent.config import AgentConfig
from ciliumlite.bgp import BgpPeer
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.cli.app import app
from ciliumlite.datapath.config import DatapathConfig
from ciliumlite.lab.agents import AGENT_ARGV, agent_argv

pytestmark = pytest.mark.unit


def _parsed(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> AgentConfig:
    """What ``ciliumlite agent ARGV`` would run with (its main is replaced; no root needed)."""
    seen: list[AgentConfig] = []

    def fake_main(cfg: AgentConfig) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr("ciliumlite.agent.daemon.main", fake_main)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert argv[:len(AGENT_ARGV)] == AGENT_ARGV
    res = CliRunner().invoke(app, argv[len(AGENT_ARGV) - 1:])  # [..., "agent", flags...]
    assert res.exit_code == 0, res.output
    (cfg,) = seen
    return cfg


@pytest.mark.parametrize("cfg", [
    DatapathConfig(node_name="cl1-x-a", pod_cidr="10.244.3.0/24", routing="native", node_ip="10.0.0.14",
                   bpf_masquerade=True, load_balancer_mode="dsr", socket_lb=False, state_dir="/tmp/cl1-x/a",
                   bgp_asn=65014, bgp_peers=(BgpPeer("leaf", "10.0.0.254", 65001),)),
    DatapathConfig(node_name="cl1-x-b", pod_cidr="10.244.1.0/24", routing="vxlan", node_ip="10.0.0.12", mtu=1400,
                   kube_proxy_replacement=False, host_routing="bpf"),
    DatapathConfig(node_name="cl1-x-c", pod_cidr="10.244.2.0/24", routing="native", node_ip="10.0.0.13",
                   host_routing="legacy", underlay_device="eth1", native_routing_cidr="10.240.0.0/12"),
])
def test_the_agent_runs_the_datapath_the_lab_asked_for(cfg: DatapathConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = agent_argv(cfg, netns="cl1-x-a", cgroup="/sys/fs/cgroup/cl1-x-a", kvstore="etcd",
                      endpoints=["http://10.0.0.254:2379"], cluster="cl1-x", lease_ttl=4, remove_datapath_on_exit=True)
    got = _parsed(argv, monkeypatch)
    assert got.datapath_config() == cfg
    assert (got.netns, got.cgroup, got.kvstore, got.kvstore_endpoints, got.cluster_name, got.kvstore_lease_ttl,
            got.remove_datapath_on_exit) == ("cl1-x-a", "/sys/fs/cgroup/cl1-x-a", "etcd", ("http://10.0.0.254:2379",),
                                             "cl1-x", 4, True)


@pytest.mark.parametrize(("change", "field"), [({"tc_mode": "clsact"}, "tc_mode"), ({"monitor_trace": True}, "monitor_trace"),
                                               ({"extra_rodata": {"x": 1}}, "extra_rodata")])
def test_a_setting_the_agent_has_no_flag_for_is_refused(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field}=.*the agent has no flag for it"):
        agent_argv(DatapathConfig(node_name="n", **change))  # type: ignore[arg-type]
