"""The agent's settings: one validated value from defaults, a config file and command-line flags.

The keys are cilium-agent's flag names where one exists (``routing-mode``, ``kvstore``,
``cluster-name``, ``devices``, ``mtu``, ``bpf-lb-mode``, ``ipv4-native-routing-cidr``,
``enable-bpf-masquerade``, ``bpf-lb-sock``, ``enable-policy``, ``socket-path``, ``state-dir``, ``kvstore-lease-ttl``),
written with dashes or underscores alike in a file. ``bgp-asn`` and ``bgp-peers`` are ciliumlite's
own (Cilium configures BGP through CRDs): with native routing they make the datapath run bird,
announcing the node's pod CIDR to each peer (``name=ip:asn``). Precedence, low to high: the
defaults here, the ``--config`` file (YAML or JSON), the flags given on the command line.
``enable-policy`` defaults to ``never`` here, not to Cilium's ``default``: policy code costs every
packet, and a node enforces only when asked.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ciliumlite.agent.client import SOCKET_NAME
from ciliumlite.bgp.config import BgpPeer
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath.config import LB_MAP_MAX, RUN_BASE, DatapathConfig

#: ``--routing-mode`` (Cilium's names) -> ``DatapathConfig.routing``. ``none`` is ciliumlite's own:
#: a single node without an underlay (no tunnel, no routes to other nodes).
ROUTING_MODES = {"tunnel": "vxlan", "native": "native", "none": "none"}
KVSTORES = ("etcd", "memory")
LB_MODES = ("snat", "dsr", "hybrid")
#: ``--enable-policy`` (Cilium's values): ``default`` enforces on the endpoints a policy selects
#: (``DatapathConfig.enable_policy``), ``never`` loads no policy code. Cilium's ``always`` (deny
#: what no policy allows, on every endpoint) is not built.
POLICY_MODES = ("default", "never")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PEER = re.compile(r"([^=\s]+)=([0-9.]+):(\d+)")


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs: its node, its datapath's settings and its kvstore.

    Build it with :meth:`from_sources` (a file and flags) or directly; either way it is validated
    once. Raises :class:`ValidationError` naming the key that is wrong.
    """

    node: str
    pod_cidr: str
    netns: str | None = None
    node_ip: str = "0.0.0.0"
    routing_mode: str = "tunnel"
    devices: str = "eth0"
    mtu: int = 1500
    ipv4_native_routing_cidr: str = "10.244.0.0/16"
    bpf_lb_mode: str = "snat"
    enable_bpf_masquerade: bool = False
    bpf_lb_sock: bool = True
    #: ``--bpf-lb-map-max`` (Cilium's flag): entries of each LB map (``DatapathConfig.lb_map_max``).
    bpf_lb_map_max: int = LB_MAP_MAX
    enable_policy: str = "never"
    kube_proxy_replacement: bool = True
    enable_host_legacy_routing: bool = False
    kvstore: str = "memory"
    kvstore_endpoints: tuple[str, ...] = ()
    kvstore_connect_timeout: float = 60.0
    kvstore_lease_ttl: int = 15
    cluster_name: str = "default"
    bgp_asn: int | None = None
    bgp_peers: tuple[str, ...] = ()
    cgroup: str | None = None
    state_dir: str = ""
    socket_path: str = ""
    remove_datapath_on_exit: bool = False
    debug: bool = False
    #: ``--prometheus-serve-addr`` (Cilium's flag): serve ``/metrics`` on ``HOST:PORT`` (empty: no server).
    prometheus_serve_addr: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.node, str) or not _NODE_NAME.fullmatch(self.node):
            raise ValidationError(f"node: {self.node!r} is not a node name (1-63 of A-Z a-z 0-9 . _ -)")
        if self.routing_mode not in ROUTING_MODES:
            raise ValidationError(f"routing-mode: {self.routing_mode!r} is not one of {', '.join(ROUTING_MODES)}")
        if self.kvstore not in KVSTORES:
            raise ValidationError(f"kvstore: {self.kvstore!r} is not one of {', '.join(KVSTORES)}")
        if self.bpf_lb_mode not in LB_MODES:
            raise ValidationError(f"bpf-lb-mode: {self.bpf_lb_mode!r} is not one of {', '.join(LB_MODES)}")
        if self.enable_policy not in POLICY_MODES:
            raise ValidationError(f"enable-policy: {self.enable_policy!r} is not one of {', '.join(POLICY_MODES)}"
                                  + (" (always is not built)" if self.enable_policy == "always" else ""))
        object.__setattr__(self, "kvstore_endpoints", _endpoints(self.kvstore_endpoints))
        object.__setattr__(self, "bgp_peers", _peers(self.bgp_peers))
        if self.bgp_asn is not None and (isinstance(self.bgp_asn, bool) or not isinstance(self.bgp_asn, int)):
            raise ValidationError(f"bgp-asn: {self.bgp_asn!r} is not an AS number")
        if self.kvstore == "etcd" and not self.kvstore_endpoints:
            raise ValidationError("kvstore-endpoints: --kvstore etcd needs at least one http://host:port")
        for ep in self.kvstore_endpoints:
            if not re.fullmatch(r"https?://[^/\s]+(:\d+)?/?", ep):
                raise ValidationError(f"kvstore-endpoints: {ep!r} is not an http(s)://host:port URL")
        if isinstance(self.kvstore_connect_timeout, bool) or not isinstance(self.kvstore_connect_timeout, (int, float)) \
                or not 0 < self.kvstore_connect_timeout <= 3600:
            raise ValidationError(f"kvstore-connect-timeout: {self.kvstore_connect_timeout!r} is not 0 < seconds <= 3600")
        if isinstance(self.kvstore_lease_ttl, bool) or not isinstance(self.kvstore_lease_ttl, int) \
                or not 2 <= self.kvstore_lease_ttl <= 3600:
            raise ValidationError(f"kvstore-lease-ttl: {self.kvstore_lease_ttl!r} is not an int in 2..3600 seconds")
        if not isinstance(self.cluster_name, str) or not _NODE_NAME.fullmatch(self.cluster_name):
            raise ValidationError(f"cluster-name: {self.cluster_name!r} is not a name (1-63 of A-Z a-z 0-9 . _ -)")
        if self.netns is not None and (not isinstance(self.netns, str) or not self.netns):
            raise ValidationError(f"netns: {self.netns!r} is not a namespace name or path")
        if self.cgroup is not None and not os.path.isabs(str(self.cgroup)):
            raise ValidationError(f"cgroup: {self.cgroup!r} must be an absolute path (a child cgroup of the node)")
        for key in ("state_dir", "socket_path"):
            value = getattr(self, key)
            if value and not os.path.isabs(value):
                raise ValidationError(f"{key.replace('_', '-')}: {value!r} must be an absolute path")
        if self.prometheus_serve_addr:
            _host, sep, port = str(self.prometheus_serve_addr).rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ValidationError(f"prometheus-serve-addr: {self.prometheus_serve_addr!r} is not HOST:PORT "
                                      "(e.g. 127.0.0.1:9962, or :9962 for every address)")
        try:
            ipaddress.IPv4Address(self.node_ip)
        except ValueError:
            raise ValidationError(f"node-ip: {self.node_ip!r} is not an IPv4 address") from None
        # Everything the datapath checks (pod CIDR, MTU, DSR with a tunnel, ...) is checked here
        # too, so a bad config fails before the agent touches the kvstore or the kernel.
        self.datapath_config()

    # -- derived settings ---------------------------------------------------------------------------
    def datapath_config(self) -> DatapathConfig:
        """The node's :class:`DatapathConfig`. Raises :class:`ValidationError` as it does."""
        try:
            return DatapathConfig(
                node_name=self.node, pod_cidr=self.pod_cidr, node_ip=self.node_ip,
                routing=ROUTING_MODES[self.routing_mode], underlay_device=self.devices,  # type: ignore[arg-type]
                mtu=self.mtu, native_routing_cidr=self.ipv4_native_routing_cidr,
                load_balancer_mode=self.bpf_lb_mode,  # type: ignore[arg-type]
                bpf_masquerade=self.enable_bpf_masquerade, kube_proxy_replacement=self.kube_proxy_replacement,
                socket_lb=self.bpf_lb_sock, lb_map_max=self.bpf_lb_map_max, enable_policy=self.enable_policy == "default", host_routing="legacy" if self.enable_host_legacy_routing else "bpf",
                state_dir=self.state_dir, bgp_asn=self.bgp_asn, bgp_peers=self.bgp_peer_list())
        except TypeError as exc:  # a value of the wrong type reached a comparison
            raise ValidationError(f"agent config: {exc}") from None

    def bgp_peer_list(self) -> tuple[BgpPeer, ...]:
        """``bgp-peers`` as :class:`~ciliumlite.bgp.BgpPeer` values. Raises :class:`ValidationError`
        naming the peer that is not ``name=ip:asn`` or that ``BgpPeer`` refuses."""
        out = []
        for text in self.bgp_peers:
            m = _PEER.fullmatch(text)
            if m is None:
                raise ValidationError(f"bgp-peers: {text!r} is not name=ip:asn (e.g. leaf=10.0.0.254:65001)")
            try:
                out.append(BgpPeer(m[1], m[2], int(m[3])))
            except ValidationError as exc:
                raise ValidationError(f"bgp-peers: {text!r}: {exc}") from None
        return tuple(out)

    @property
    def run_dir(self) -> str:
        """The node's runtime directory (``/run/ciliumlite/<node>`` unless ``state-dir`` is set)."""
        return self.state_dir or f"{RUN_BASE}/{self.node}"

    @property
    def api_socket(self) -> str:
        """Where the local API listens: ``socket-path``, or ``<run dir>/agent.sock``."""
        return self.socket_path or os.path.join(self.run_dir, SOCKET_NAME)

    def as_dict(self) -> dict[str, Any]:
        """The settings by their flag names (dashes), JSON-ready (``GET /v1/config``)."""
        return {k.replace("_", "-"): list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    # -- building one -------------------------------------------------------------------------------
    @classmethod
    def from_sources(cls, file_values: Mapping[str, Any] | None, flags: Mapping[str, Any]) -> AgentConfig:
        """Defaults, then ``file_values`` (a parsed config file), then the ``flags`` that are not None.

        Keys may use dashes or underscores. Raises :class:`ValidationError` for an unknown key
        (the list of known ones is in the message) or a bad value.
        """
        merged: dict[str, Any] = {}
        for source, values in (("config file", file_values or {}), ("flags", flags)):
            for key, value in values.items():
                name = str(key).replace("-", "_")
                if name not in _FIELDS:
                    raise ValidationError(f"{source}: unknown key {key!r} (known: "
                                          f"{', '.join(sorted(f.replace('_', '-') for f in _FIELDS))})")
                if value is not None:
                    merged[name] = value
        for required in ("node", "pod_cidr"):
            if required not in merged:
                raise ValidationError(f"{required.replace('_', '-')} is required (a flag --{required.replace('_', '-')} "
                                      "or a key of the --config file)")
        return cls(**merged)


_FIELDS = {f.name for f in dataclasses.fields(AgentConfig)}


def _endpoints(value: Any) -> tuple[str, ...]:
    # A flag gives "http://a:2379,http://b:2379"; a file may give a list.
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(p.strip() for v in value for p in v.split(",") if p.strip())
    raise ValidationError(f"kvstore-endpoints: {value!r} is not a URL or a list of URLs")


def _peers(value: Any) -> tuple[str, ...]:
    # A flag gives each peer once (--bgp-peer, repeatable) or "a=...,b=..."; a file a list of
    # "name=ip:asn" strings or of {name, address, asn} mappings.
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValidationError(f"bgp-peers: {value!r} is not a list of name=ip:asn")
    out = []
    for item in items:
        if isinstance(item, Mapping) and set(item) == {"name", "address", "asn"}:
            item = f"{item['name']}={item['address']}:{item['asn']}"
        if not isinstance(item, str):
            raise ValidationError(f"bgp-peers: {item!r} is not name=ip:asn (or a mapping of name, address, asn)")
        for part in item.split(","):
            if part.strip():
                out.append(part.strip())
    return tuple(out)


def load_file(path: str) -> dict[str, Any]:
    """A config file's keys: YAML (``.yaml``/``.yml``, or anything YAML parses) or JSON.

    Raises :class:`ValidationError` when the file cannot be read, does not parse, or is not a
    mapping of keys to values.
    """
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ValidationError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)  # JSON is YAML too
    except ValueError as exc:  # json.JSONDecodeError
        raise ValidationError(f"config file {path}: not valid JSON: {exc}") from None
    except Exception as exc:  # yaml.YAMLError (imported lazily: the CNI plugin never needs it)
        raise ValidationError(f"config file {path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValidationError(f"config file {path}: expected a mapping of keys to values, not {type(data).__name__}")
    return data


__all__ = ["KVSTORES", "ROUTING_MODES", "AgentConfig", "load_file"]
