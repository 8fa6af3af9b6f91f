"""Which service features the compiled datapath objects carry, read from the objects alone."""

from __future__ import annotations

from ciliumlite.bpf import BpfObject
from ciliumlite.bpf.errors import CiliumliteError
from ciliumlite.datapath import loader, maps

__all__ = ["datapath_features"]


def datapath_features() -> dict[str, bool]:
    """Which service features the compiled datapath objects carry (no kernel needed, nothing loaded).

    ``socket-lb``: bpf_sock.o has the connect/sendmsg/recvmsg/getpeername programs;
    ``per-packet-lb``: bpf_lxc.o has ``enable_per_packet_lb``; ``nodeport``: bpf_host.o uses the
    service and SNAT maps; ``masquerade``: bpf_host.o has ``cil_to_netdev`` and
    ``enable_masquerade``; ``dsr``: bpf_host.o has ``lb_mode`` and ``cil_to_netdev`` (the reply
    rewrite). The Python side must also attach what it loads; scenarios say so when it does not.

    Never raises for a missing or unreadable object: its features are all False.
    """
    sock_p, _, _ = _inventory("bpf_sock")
    _, _, lxc_r = _inventory("bpf_lxc")
    host_p, host_m, host_r = _inventory("bpf_host")
    return {
        "socket-lb": {"cil_sock4_connect", "cil_sock4_sendmsg", "cil_sock4_recvmsg",
                      "cil_sock4_getpeername"} <= sock_p,
        "per-packet-lb": "enable_per_packet_lb" in lxc_r,
        "nodeport": {maps.LB_SERVICES.name, maps.SNAT.name} <= host_m,
        "masquerade": "cil_to_netdev" in host_p and "enable_masquerade" in host_r,
        "dsr": "cil_to_netdev" in host_p and "lb_mode" in host_r,
    }


def _inventory(name: str) -> tuple[set[str], set[str], set[str]]:
    """The programs, maps and rodata variables of compiled object ``name`` (empty sets if unreadable)."""
    try:
        obj = BpfObject(loader.object_path(name))
    except CiliumliteError:
        return set(), set(), set()
    try:
        return set(obj.programs), set(obj.map_names), set(obj.rodata)
    finally:
        obj.close()
