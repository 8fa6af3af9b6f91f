"""``ciliumlite-cni``: a CNI plugin (spec 1.0.0, also 0.3.x/0.4.0) that asks the node's agent for
the pod's network.

A runtime execs it with the network config on stdin and ``CNI_COMMAND``, ``CNI_CONTAINERID``,
``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH`` in the environment:

- ``ADD``: ``PUT /v1/endpoint/<container id>`` on the agent's socket (the agent makes the veth,
  addresses the pod, programs the datapath, allocates the identity); prints the result JSON
  (``interfaces``, ``ips``, ``routes``, ``dns``). A repeated ADD returns the same endpoint.
- ``DEL``: ``DELETE /v1/endpoint/<container id>``; an endpoint already gone is success.
- ``CHECK``: the agent verifies the endpoint (namespace, both devices, the program) and the
  address matches ``prevResult``.
- ``VERSION``: the versions supported.

The network config names the agent: ``agent_socket`` (a path) or ``node`` (the agent's default
socket ``/run/ciliumlite/<node>/agent.sock``). Optional: ``labels`` (added to every pod's
labels), ``dns`` (passed through to the result). ``K8S_POD_NAMESPACE`` / ``K8S_POD_NAME`` in
``CNI_ARGS`` give the namespace label (``io.kubernetes.pod.namespace``) and the endpoint's name.

Errors are the spec's JSON on stdout (``cniVersion``, ``code``, ``msg``, ``details``) with exit
status 1: 1 incompatible version, 2 unsupported field, 3 unknown container (CHECK), 4 invalid
environment (a missing variable, a netns that does not exist), 5 I/O failure, 6 undecodable
config, 7 invalid config, 11 try again later (the agent does not answer, or its kvstore does
not), 100 the agent refused the endpoint (conflict), 101 the agent failed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from ciliumlite.agent.client import AgentClient, AgentError, AgentUnavailable, default_socket

PLUGIN_TYPE = "ciliumlite-cni"
#: What this plugin speaks; the result format follows the config's ``cniVersion``.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
#: The label of a pod's Kubernetes namespace (the agent reads it too).
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
#: How long one call waits for the agent (an ADD makes devices and may allocate an identity).
AGENT_TIMEOUT = 60.0

# The spec's error codes (SPEC.md, "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
#: Plugin-specific (the spec leaves 100 and up to plugins).
AGENT_REFUSED = 100
AGENT_FAILED = 101


class CniError(Exception):
    """A failure reported in the spec's error format (``code``, ``msg``, ``details``)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        self.code = code
        self.msg = msg
        self.details = details
        super().__init__(f"{msg} ({code})" + (f": {details}" if details else ""))

    def as_json(self, version: str) -> dict[str, Any]:
        """The spec's error object."""
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class NetConf:
    """The parts of the network config this plugin reads."""

    cni_version: str
    name: str
    socket: str
    labels: dict[str, str] = field(default_factory=dict)
    dns: dict[str, Any] = field(default_factory=dict)
    prev_result: dict[str, Any] | None = None

    @classmethod
    def parse(cls, raw: bytes, *, need_agent: bool = True) -> NetConf:
        """Decode and check stdin. Raises :class:`CniError` (1, 2, 6 or 7)."""
        try:
            data = json.loads(raw.decode() if raw else "")
        except (ValueError, UnicodeDecodeError) as exc:
            raise CniError(DECODE_FAILURE, "cannot decode the network configuration", str(exc)) from None
        if not isinstance(data, dict):
            raise CniError(DECODE_FAILURE, "the network configuration is not a JSON object")
        version = data.get("cniVersion")
        if not isinstance(version, str) or not version:
            raise CniError(INVALID_CONFIG, "the network configuration has no cniVersion")
        if version not in SUPPORTED_VERSIONS:
            raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                           f"supported: {', '.join(SUPPORTED_VERSIONS)}")
        name = data.get("name")
        if need_agent and (not isinstance(name, str) or not name):
            raise CniError(INVALID_CONFIG, "the network configuration has no name")
        if need_agent and data.get("type") != PLUGIN_TYPE:
            raise CniError(INVALID_CONFIG, f"type is {data.get('type')!r}, not {PLUGIN_TYPE!r}")
        if data.get("ipam"):
            raise CniError(UNSUPPORTED_FIELD, "ipam is not supported: the agent allocates the pod's address")
        socket_path = data.get("agent_socket")
        node = data.get("node")
        if socket_path is not None and (not isinstance(socket_path, str) or not os.path.isabs(socket_path)):
            raise CniError(INVALID_CONFIG, f"agent_socket {socket_path!r} is not an absolute path")
        if node is not None and (not isinstance(node, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", node)):
            raise CniError(INVALID_CONFIG, f"node {node!r} is not a node name")
        if need_agent and socket_path is None and node is None:
            raise CniError(INVALID_CONFIG, "name the node's agent: agent_socket (a path) or node (a node name)")
        labels = data.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise CniError(INVALID_CONFIG, "labels must be an object of strings to strings")
        dns = data.get("dns") or {}
        if not isinstance(dns, dict):
            raise CniError(INVALID_CONFIG, "dns must be an object")
        prev = data.get("prevResult")
        return cls(version, str(name or ""), socket_path or (default_socket(node) if node else ""),
                   dict(labels), dict(dns), prev if isinstance(prev, dict) else None)


def parse_cni_args(value: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K=V;K2=V2``) as a dict. Raises :class:`CniError` (4) for a malformed pair."""
    out: dict[str, str] = {}
    for pair in filter(None, value.split(";")):
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        out[key] = val
    return out


def _env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise CniError(INVALID_ENVIRONMENT, f"{name} is not set")
    return value


def _agent_error(exc: AgentError) -> CniError:
    if exc.status == 400:
        return CniError(INVALID_CONFIG, "the agent refused the endpoint", exc.message)
    if exc.status == 409:
        return CniError(AGENT_REFUSED, "the agent refused the endpoint", exc.message)
    if exc.status == 503:
        return CniError(TRY_AGAIN_LATER, "the agent cannot make endpoints now", exc.message)
    return CniError(AGENT_FAILED, f"the agent failed ({exc.status} {exc.code})", exc.message)


def _unavailable(exc: AgentUnavailable) -> CniError:
    return CniError(TRY_AGAIN_LATER, "the ciliumlite agent is not available", str(exc))


def add_result(version: str, ep: Mapping[str, Any], netns: str, dns: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's ADD result for the agent's endpoint, in the format of ``version``."""
    ip: dict[str, Any] = {"address": f"{ep['ip']}/{ep.get('prefix', 32)}", "gateway": ep["gateway"], "interface": 1}
    if version.startswith("0."):
        ip["version"] = "4"  # dropped in 1.0.0
    return {"cniVersion": version,
            "interfaces": [{"name": ep["host_ifname"], "mac": ep.get("host_mac", "")},
                           {"name": ep["ifname"], "mac": ep["mac"], "sandbox": netns}],
            "ips": [ip], "routes": [{"dst": "0.0.0.0/0", "gw": ep["gateway"]}], "dns": dict(dns)}


class Plugin:
    """One invocation: ``env`` (the ``CNI_*`` variables) and the config bytes from stdin."""

    def __init__(self, env: Mapping[str, str], stdin: bytes) -> None:
        self.env = env
        self.stdin = stdin
        self.version = "1.0.0"  # for errors before the config's version is known

    def run(self) -> dict[str, Any] | None:
        """Do the command; returns what to print (None: nothing). Raises :class:`CniError`."""
        command = self.env.get("CNI_COMMAND", "")
        if command == "VERSION":
            return self.version_info()
        if command not in ("ADD", "DEL", "CHECK"):
            raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not ADD, DEL, CHECK or VERSION")
        conf = NetConf.parse(self.stdin)
        self.version = conf.cni_version
        container_id = _env(self.env, "CNI_CONTAINERID")
        ifname = _env(self.env, "CNI_IFNAME")
        args = parse_cni_args(self.env.get("CNI_ARGS", ""))
        client = AgentClient(conf.socket, timeout=AGENT_TIMEOUT)
        if command == "ADD":
            return self.add(conf, client, container_id, ifname, args)
        if command == "DEL":
            self.delete(client, container_id)
            return None
        self.check(conf, client, container_id, ifname)
        return None

    def version_info(self) -> dict[str, Any]:
        """VERSION: the versions supported (stdin may name the runtime's version)."""
        try:
            asked = json.loads(self.stdin or b"{}").get("cniVersion")
        except (ValueError, AttributeError):
            asked = None
        version = asked if isinstance(asked, str) and asked in SUPPORTED_VERSIONS else "1.0.0"
        return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}

    def add(self, conf: NetConf, client: AgentClient, container_id: str, ifname: str,
            args: Mapping[str, str]) -> dict[str, Any]:
        """ADD: ask the agent for the endpoint; the spec's result."""
        netns = _env(self.env, "CNI_NETNS")
        if not os.path.exists(netns):
            raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {netns} does not exist")
        labels = dict(conf.labels)
        pod_ns, pod = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
        if pod_ns:
            labels[NAMESPACE_LABEL] = pod_ns
        name = f"{pod_ns}/{pod}" if pod_ns and pod else (pod or None)
        try:
            ep = client.put_endpoint(container_id, netns=netns, ifname=ifname, labels=labels, name=name)
        except AgentUnavailable as exc:
            raise _unavailable(exc) from None
        except AgentError as exc:
            raise _agent_error(exc) from None
        return add_result(conf.cni_version, ep, netns, conf.dns)

    def delete(self, client: AgentClient, container_id: str) -> None:
        """DEL: remove the endpoint; one that is gone already is success (the spec's rule)."""
        try:
            client.delete_endpoint(container_id)
        except AgentUnavailable as exc:
            # The endpoint may still exist: say so, so the runtime tries again (it may not be gone).
            raise _unavailable(exc) from None
        except AgentError as exc:
            if exc.status != 404:
                raise _agent_error(exc) from None

    def check(self, conf: NetConf, client: AgentClient, container_id: str, ifname: str) -> None:
        """CHECK: the endpoint exists, is intact, and has the address of ``prevResult``."""
        netns = _env(self.env, "CNI_NETNS")
        try:
            ep = client.endpoint(container_id, check=True)
        except AgentUnavailable as exc:
            raise _unavailable(exc) from None
        except AgentError as exc:
            if exc.status == 404:
                raise CniError(UNKNOWN_CONTAINER, f"no endpoint for container {container_id}", exc.message) from None
            raise _agent_error(exc) from None
        problems = list(ep.get("check", {}).get("problems", []))
        if ep.get("ifname") != ifname:
            problems.append(f"the endpoint's interface is {ep.get('ifname')}, not CNI_IFNAME {ifname}")
        if os.path.exists(netns) and os.path.exists(ep.get("netns", "")) and \
                os.stat(netns).st_ino != os.stat(ep["netns"]).st_ino:
            problems.append(f"the endpoint is in {ep['netns']}, not CNI_NETNS {netns}")
        if conf.prev_result is not None:
            want = {str(i.get("address", "")) for i in conf.prev_result.get("ips", []) if isinstance(i, dict)}
            have = f"{ep['ip']}/{ep.get('prefix', 32)}"
            if want and have not in want:
                problems.append(f"the endpoint has {have}, prevResult says {', '.join(sorted(want))}")
        if problems:
            raise CniError(AGENT_FAILED, "the endpoint is not as it was made", "; ".join(problems))


def main(*, env: Mapping[str, str] | None = None, stdin: IO[bytes] | None = None, stdout: IO[str] | None = None) -> int:
    """The ``ciliumlite-cni`` executable: run one command, print the result or the error, return the
    exit status (0 or 1)."""
    env = os.environ if env is None else env
    out = stdout or sys.stdout
    plugin = Plugin(env, b"")
    try:
        try:
            plugin.stdin = (stdin or sys.stdin.buffer).read()
        except OSError as exc:
            raise CniError(IO_FAILURE, "cannot read the network configuration from stdin", str(exc)) from None
        result = plugin.run()
    except CniError as exc:
        out.write(json.dumps(exc.as_json(plugin.version)) + "\n")
        out.flush()
        return 1
    if result is not None:
        out.write(json.dumps(result) + "\n")
        out.flush()
    return 0


__all__ = ["PLUGIN_TYPE", "SUPPORTED_VERSIONS", "CniError", "NetConf", "Plugin", "add_result", "main",
           "parse_cni_args"]
