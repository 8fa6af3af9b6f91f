"""Netlink work on a node's devices through pyroute2, always inside an explicit namespace."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ciliumlite.bpf.errors import BpfError, ValidationError
from ciliumlite.bpf.netns import NetnsRef, entered
from ciliumlite.bpf.netns import iproute as netns_iproute


@contextmanager
def iproute(netns: NetnsRef) -> Iterator[Any]:
    """An IPRoute socket in ``netns`` (closed on exit)."""
    ipr = netns_iproute(netns)  # raises FileNotFoundError for a namespace that has gone
    try:
        yield ipr
    finally:
        ipr.close()


def netlink_error(exc: Exception) -> int:
    """The errno of a pyroute2 NetlinkError (EIO when unknown)."""
    return int(getattr(exc, "code", errno.EIO) or errno.EIO)


def ifindex(ipr: Any, ifname: str) -> int | None:
    """ifindex of ``ifname`` or None."""
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def link_mac(ipr: Any, index: int) -> str:
    """MAC address of a device."""
    return str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))


def set_sysctl(netns: NetnsRef, key: str, value: str) -> None:
    """Write a per-namespace sysctl (``net.ipv4.ip_forward``) for ``netns`` only."""
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(netns):
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise BpfError("set sysctl", exc.errno or errno.EIO, target=f"{key}={value} in {netns}") from exc


def create_veth(node_ns: NetnsRef, host_if: str, pod_ns: str, pod_if: str, mtu: int) -> None:
    """A veth pair: ``host_if`` in ``node_ns``, its peer ``pod_if`` created straight in ``pod_ns``."""
    from pyroute2.netlink.exceptions import NetlinkError

    if len(host_if) > 15 or len(pod_if) > 15:
        raise ValidationError(f"interface names are limited to 15 characters: {host_if!r}, {pod_if!r}")
    if not os.path.exists(f"/var/run/netns/{pod_ns}") and "/" not in pod_ns:
        raise ValidationError(f"pod network namespace {pod_ns!r} does not exist")
    with iproute(node_ns) as ipr:
        try:
            ipr.link("add", ifname=host_if, kind="veth", mtu=mtu,
                     peer={"ifname": pod_if, "net_ns_fd": pod_ns, "mtu": mtu})
        except NetlinkError as exc:
            raise BpfError("create veth", netlink_error(exc), target=f"{host_if} <-> {pod_ns}/{pod_if}") from exc


def create_vxlan(netns: NetnsRef, ifname: str, port: int, mtu: int) -> int:
    """A collect-metadata ("external") VXLAN device on ``port``, up; returns its ifindex."""
    from pyroute2.netlink.exceptions import NetlinkError

    with iproute(netns) as ipr:
        if ifindex(ipr, ifname) is None:
            try:
                ipr.link("add", ifname=ifname, kind="vxlan", vxlan_collect_metadata=1, vxlan_port=port,
                         vxlan_learning=0, mtu=mtu)
            except NetlinkError as exc:
                raise BpfError("create vxlan device", netlink_error(exc), target=f"{ifname} in {netns}") from exc
        idx = ifindex(ipr, ifname)
        assert idx is not None
        ipr.link("set", index=idx, state="up")
        return idx


def delete_link(netns: NetnsRef, ifname: str) -> None:
    """Delete a device if it exists (a veth takes its peer with it)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with iproute(netns) as ipr:
            idx = ifindex(ipr, ifname)
            if idx is not None:
                ipr.link("del", index=idx)
    except NetlinkError as exc:
        if netlink_error(exc) not in (errno.ENODEV, errno.ENOENT):
            raise
    except (FileNotFoundError, OSError):
        pass  # the namespace is gone, and its devices with it
