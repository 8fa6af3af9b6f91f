"""The CLI and the agent: the ``ciliumlite agent`` command, and what ``status``, ``endpoint list``
and ``service list`` ask a running agent.

A node whose agent answers on its socket (``<state dir>/agent.sock``, found from the node's
registry entry) is shown from the agent: its endpoints with their container ids, the services it
programmed, and the kvstore's state (``KVStore: Ok  etcd: 1/1 connected, …``, like ``cilium
status``). A node without one, or whose agent does not answer, is shown from the registry and the
pins as before, with a note.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ciliumlite.agent.client import SOCKET_NAME, AgentClient, AgentError, AgentUnavailable
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.datapath.config import RUN_BASE

if TYPE_CHECKING:
    from ciliumlite.cli.commands import Run
    from ciliumlite.cli.format import Row
    from ciliumlite.inspect import RegisteredDatapath

#: How long the CLI waits for an agent's answer before it reads the pins instead.
CLI_TIMEOUT = 5.0


# -- finding and asking agents ---------------------------------------------------------------------------


def agent_socket(dp: RegisteredDatapath) -> str:
    """Where the agent of a registered datapath listens: ``<state dir or /run/ciliumlite/<node>>/agent.sock``."""
    state_dir = str(dp.config.get("state_dir") or "") or os.path.join(RUN_BASE, dp.node)
    return os.path.join(state_dir, SOCKET_NAME)


def _client(dp: RegisteredDatapath) -> AgentClient | None:
    path = agent_socket(dp)
    return AgentClient(path, timeout=CLI_TIMEOUT) if os.path.exists(path) else None


def live(run: Run, dps: list[RegisteredDatapath]) -> list[RegisteredDatapath]:
    """The entries, each with its agent's endpoints (with container ids) and services when it answers."""
    out = []
    for dp in dps:
        client = _client(dp)
        if client is None:
            out.append(dp)
            continue
        try:
            endpoints = client.endpoints()
            services = client.services()
        except (AgentUnavailable, AgentError) as exc:
            run.note(f"{dp.node}: {exc}; showing the registry instead")
            out.append(dp)
            continue
        rows = [{**e["endpoint"], "container_id": e["container_id"]} for e in endpoints]
        out.append(dataclasses.replace(dp, endpoints=rows, services={s["name"]: s for s in services}))
    return out


def relabel(dps: list[RegisteredDatapath], endpoint: str, add: dict[str, str], delete: list[str]) -> Row:
    """``endpoint labels``: the endpoint (its id, container id or name) found on the agents of
    ``dps``, given its labels with ``add`` set and ``delete`` removed; returns ``{"node", "id",
    "container_id", "identity", "labels"}`` as the agent answered. Raises :class:`ValidationError`
    when no agent has it (or several do), :class:`AgentError` from the agent."""
    found = []
    for dp in dps:
        client = _client(dp)
        if client is None:
            continue
        for e in client.endpoints():
            ids = {str(e["endpoint"].get("id")), str(e["container_id"]), str(e.get("name"))}
            if endpoint in ids:
                found.append((dp, client, e))
    if not found:
        raise ValidationError(f"no agent has an endpoint {endpoint!r} (endpoint labels talks to the node's agent: "
                              "see ciliumlite endpoint list; a Datapath used directly relabels with "
                              "Datapath.relabel_endpoint)")
    if len(found) > 1:
        raise ValidationError(f"endpoint {endpoint!r} is on {', '.join(d.node for d, _, _ in found)}: "
                              "name the node with --node")
    dp, client, e = found[0]
    labels = {k: v for k, v in dict(e["labels"]).items() if k not in delete}
    got = client.relabel_endpoint(str(e["container_id"]), {**labels, **add})
    return {"node": dp.node, "id": got["endpoint"]["id"], "container_id": got["container_id"],
            "identity": got["identity"], "labels": got["labels"]}


def with_agent(run: Run, row: Row, dp: RegisteredDatapath) -> Row:
    """``status``'s row of ``dp`` with ``agent`` and ``kvstore`` from its agent (None: no agent runs)."""
    row["agent"] = row["kvstore"] = None
    client = _client(dp)
    if client is None:
        return row
    try:
        st = client.status()
    except (AgentUnavailable, AgentError) as exc:
        run.note(f"{dp.node}: {exc}")
        row["agent"] = {"state": "not answering", "socket": client.socket_path, "error": str(exc)}
        return row
    row["agent"] = {"state": st.get("state"), "pid": st.get("pid"), "uptime_seconds": st.get("uptime_seconds"),
                    "socket": client.socket_path, "cluster_name": st.get("cluster_name"),
                    "cluster_nodes": st.get("cluster_nodes"), "errors": (st.get("errors") or {}).get("count", 0)}
    row["kvstore"] = st.get("kvstore")
    return row


def status_lines(row: Row, lines: list[str]) -> list[str]:
    """``lines`` (``status``'s text of one node) with the agent's and the kvstore's lines after the header."""
    agent = row.get("agent")
    if agent is None:
        return lines
    extra = [_kv("Agent", _agent_text(agent))]
    if row.get("kvstore") is not None:
        extra.append(_kv("KVStore", kvstore_text(row["kvstore"])))
    return lines[:1] + extra + lines[1:]


def _kv(key: str, value: Any) -> str:
    return f"  {key + ':':<24}{value}"  # the layout of format.status_lines


def _agent_text(agent: dict[str, Any]) -> str:
    if agent.get("state") == "not answering":
        return f"not answering on {agent['socket']}"
    up = _duration(agent.get("uptime_seconds"))
    errors = f", {agent['errors']} errors" if agent.get("errors") else ""
    return f"{agent.get('state')} (pid {agent.get('pid')}, up {up}{errors}) on {agent['socket']}"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _age(value: Any) -> str | None:
    # The store reports its last heartbeat as epoch seconds or an ISO time.
    now = datetime.datetime.now(datetime.UTC)
    try:
        if isinstance(value, (int, float)):
            when = datetime.datetime.fromtimestamp(value, datetime.UTC)
        elif isinstance(value, str) and value:
            when = datetime.datetime.fromisoformat(value)
            when = when if when.tzinfo else when.replace(tzinfo=datetime.UTC)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return f"{_duration(max(0.0, (now - when).total_seconds()))} ago"


def kvstore_text(kv: dict[str, Any]) -> str:
    """The ``KVStore:`` line of ``cilium status``: ``Ok  etcd: 1/1 connected, lease-ID=…, last heartbeat 2s ago``."""
    backend = kv.get("backend", "?")
    ok = "Ok" if kv.get("connected") else "Failure"
    if backend == "memory":
        return f"{ok}  memory: embedded in the agent (this node only)"
    endpoints = kv.get("endpoints") or []
    n = len(endpoints)
    parts = [f"{n if kv.get('connected') else 0}/{n} connected"]
    lease = kv.get("lease_id")
    if lease is not None:
        parts.append(f"lease-ID={lease:x}" if isinstance(lease, int) else f"lease-ID={lease}")
    if kv.get("lease_ttl") is not None:
        parts.append(f"lease-TTL={kv['lease_ttl']}s")
    age = _age(kv.get("last_heartbeat"))
    parts.append(f"last heartbeat {age}" if age else "no heartbeat yet")
    if kv.get("watch_revision") is not None:
        parts.append(f"watch revision {kv['watch_revision']}")
    text = f"{ok}  {backend}: " + ", ".join(parts)
    if endpoints:
        text += ": " + ", ".join(str(e) for e in endpoints)
    if kv.get("last_error"):
        text += f" (last error: {kv['last_error']})"
    return text


# -- ciliumlite agent ------------------------------------------------------------------------------------

def agent_command(
    config: Annotated[str | None, typer.Option("--config", metavar="FILE",
                                               help="YAML or JSON file with the same keys as the flags")] = None,
    node: Annotated[str | None, typer.Option("--node", metavar="NAME", help="this node's name")] = None,
    netns: Annotated[str | None, typer.Option("--netns", metavar="NS",
                                              help="the node's network namespace (name or path; default: this one)")] = None,
    pod_cidr: Annotated[str | None, typer.Option("--pod-cidr", metavar="CIDR", help="this node's pod CIDR")] = None,
    node_ip: Annotated[str | None, typer.Option("--node-ip", metavar="IP",
                                                help="this node's underlay address")] = None,
    routing_mode: Annotated[str | None, typer.Option("--routing-mode", metavar="tunnel|native|none",
                                                     help="VXLAN tunnel (default), native routes, or no underlay")] = None,
    devices: Annotated[str | None, typer.Option("--devices", metavar="DEV", help="the underlay device (eth0)")] = None,
    mtu: Annotated[int | None, typer.Option("--mtu", help="the underlay MTU (1500)")] = None,
    ipv4_native_routing_cidr: Annotated[str | None, typer.Option("--ipv4-native-routing-cidr", metavar="CIDR",
                                                                 help="the cluster's pod CIDR (10.244.0.0/16)")] = None,
    bpf_lb_mode: Annotated[str | None, typer.Option("--bpf-lb-mode", metavar="snat|dsr|hybrid")] = None,
    enable_bpf_masquerade: Annotated[bool | None, typer.Option("--enable-bpf-masquerade/--disable-bpf-masquerade")] = None,
    bpf_lb_sock: Annotated[bool | None, typer.Option(
        "--bpf-lb-sock/--no-bpf-lb-sock", help="socket LB: services translated at connect() (default on)")] = None,
    bpf_lb_map_max: Annotated[int | None, typer.Option(
        "--bpf-lb-map-max", metavar="N", help="entries of each LB map (65536); a service that does not fit is "
        "refused")] = None,
    enable_policy: Annotated[str | None, typer.Option(
        "--enable-policy", metavar="default|never",
        help="network policy: enforce on the endpoints a policy selects (default), or load none (never, the default)")] = None,
    kube_proxy_replacement: Annotated[bool | None, typer.Option(
        "--kube-proxy-replacement/--no-kube-proxy-replacement", help="services in BPF (default on)")] = None,
    enable_host_legacy_routing: Annotated[bool | None, typer.Option(
        "--enable-host-legacy-routing/--disable-host-legacy-routing", help="route pods through the kernel stack")] = None,
    kvstore: Annotated[str | None, typer.Option("--kvstore", metavar="etcd|memory",
                                                help="where the cluster lives (default memory: this node only)")] = None,
    kvstore_endpoints: Annotated[str | None, typer.Option("--kvstore-endpoints", metavar="URLS",
                                                          help="etcd client URLs, comma-separated")] = None,
    kvstore_connect_timeout: Annotated[float | None, typer.Option(
        "--kvstore-connect-timeout", metavar="SECONDS", help="give up reaching the kvstore at start after this (60)")] = None,
    kvstore_lease_ttl: Annotated[int | None, typer.Option("--kvstore-lease-ttl", metavar="SECONDS",
                                                          help="TTL of this agent's etcd lease (15)")] = None,
    cluster_name: Annotated[str | None, typer.Option("--cluster-name", help="the cluster's name in the kvstore keys")] = None,
    bgp_asn: Annotated[int | None, typer.Option("--bgp-asn", metavar="ASN",
                                                help="native routing over BGP: this node's AS (bird runs)")] = None,
    bgp_peer: Annotated[list[str] | None, typer.Option("--bgp-peer", metavar="NAME=IP:ASN",
                                                       help="a BGP peer of this node (repeatable)")] = None,
    cgroup: Annotated[str | None, typer.Option("--cgroup", "--cgroup-root", metavar="PATH",
                                               help="the node's child cgroup for socket LB (never the root)")] = None,
    state_dir: Annotated[str | None, typer.Option("--state-dir", metavar="DIR",
                                                  help="runtime files (default /run/ciliumlite/<node>)")] = None,
    socket_path: Annotated[str | None, typer.Option("--socket-path", metavar="PATH",
                                                    help="the API socket (default <state dir>/agent.sock)")] = None,
    remove_datapath_on_exit: Annotated[bool | None, typer.Option(
        "--remove-datapath-on-exit/--keep-datapath-on-exit",
        help="remove the datapath on SIGTERM (default: leave it forwarding, as cilium-agent does)")] = None,
    debug: Annotated[bool | None, typer.Option("--debug/--no-debug", "-D", help="debug logging")] = None,
    prometheus_serve_addr: Annotated[str | None, typer.Option(
        "--prometheus-serve-addr", metavar="HOST:PORT",
        help="serve Prometheus metrics (cilium_*) on HTTP at HOST:PORT/metrics (e.g. 127.0.0.1:9962)")] = None,
) -> None:
    """Run the node's agent: its datapath, its kvstore membership and its local API (until SIGTERM).

    Exit status: 0 after a clean shutdown, 1 when it could not start (the reason is logged), 2 for a bad config.
    """
    from ciliumlite.agent.config import AgentConfig, load_file
    from ciliumlite.bpf.errors import ValidationError

    flags = dict(node=node, netns=netns, pod_cidr=pod_cidr, node_ip=node_ip, routing_mode=routing_mode,
                 devices=devices, mtu=mtu, ipv4_native_routing_cidr=ipv4_native_routing_cidr, bpf_lb_mode=bpf_lb_mode,
                 enable_bpf_masquerade=enable_bpf_masquerade, bpf_lb_sock=bpf_lb_sock,
                 bpf_lb_map_max=bpf_lb_map_max, enable_policy=enable_policy, kube_proxy_replacement=kube_proxy_replacement,
                 enable_host_legacy_routing=enable_host_legacy_routing, kvstore=kvstore,
                 kvstore_endpoints=kvstore_endpoints, kvstore_connect_timeout=kvstore_connect_timeout,
                 kvstore_lease_ttl=kvstore_lease_ttl, cluster_name=cluster_name, bgp_asn=bgp_asn,
                 bgp_peers=tuple(bgp_peer) if bgp_peer else None, cgroup=cgroup, state_dir=state_dir,
                 socket_path=socket_path, remove_datapath_on_exit=remove_datapath_on_exit, debug=debug,
                 prometheus_serve_addr=prometheus_serve_addr)
    try:
        cfg = AgentConfig.from_sources(load_file(config) if config else None, flags)
    except ValidationError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    if os.geteuid() != 0:
        typer.echo("Error: the agent needs root (network namespaces, BPF programs)", err=True)
        raise typer.Exit(2)
    from ciliumlite.agent.daemon import main

    raise typer.Exit(main(cfg))


__all__ = ["agent_command", "agent_socket", "kvstore_text", "live", "relabel", "status_lines", "with_agent"]
