"""Socket acceleration's counters and sockhash, read from a loaded object or from the pins.

The counters mirror ``SOCKOPS_C_*`` of ``csrc/include/ciliumlite/sockops.h`` (append only). They
are kept apart from ``cilium_metrics``: sk_msg counts messages (the chunks ``tcp_bpf_sendmsg``
hands to the program, up to about 64 KiB each), not packets, and the sockops events are no
forwarding verdicts.

>>> read_counters("/sys/fs/bpf/ciliumlite/worker1")["msg_redirect"]   # doctest: +SKIP
SockopsCount(count=401, bytes=40026)
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any, Final

from ciliumlite.bpf import Map
from ciliumlite.bpf.errors import BpfError
from ciliumlite.datapath.maps import SOCK_CFG, SOCK_CTR, SOCK_OPS
from ciliumlite.datapath.records import SockKey

#: Counter index -> name, as ``sockops.h`` numbers them.
COUNTERS: Final[dict[int, str]] = {
    0: "sock_added",        # a socket put in cilium_sock_ops
    1: "sock_not_local",    # established, but an end is no local pod
    2: "sock_add_failed",   # the sockhash refused it (full, or the 4-tuple is taken)
    3: "msg_redirect",      # a message handed to the peer socket
    4: "msg_pass",          # a message through TCP/IP (any reason)
    5: "pass_no_peer",      # the first message found no peer in the map
    6: "pass_disabled",     # switched off while the socket lived
    7: "pass_endpoint",     # an end's endpoint went or was re-made
    8: "pass_peer_gone",    # redirecting, then the peer left the map (closed)
    9: "pass_no_state",     # in the map without its per-socket state
    10: "sock_closed",      # a tracked socket reached TCP_CLOSE
    11: "sock_excluded",    # a port of it is in cilium_sock_exc
}


@dataclass(frozen=True)
class SockopsCount:
    """One counter summed over CPUs: events or messages, and their bytes (messages only)."""

    count: int
    bytes: int


def sum_counters(ctr: Map[int, Any]) -> dict[str, SockopsCount]:
    """``cilium_sock_ctr`` summed over CPUs, by name (every name of :data:`COUNTERS`)."""
    out = {name: SockopsCount(0, 0) for name in COUNTERS.values()}
    for idx, per_cpu in ctr.items():
        name = COUNTERS.get(int(idx))
        if name is not None:
            out[name] = SockopsCount(sum(v.count for v in per_cpu), sum(v.bytes for v in per_cpu))
    return out


def sockets(sockhash: Map[SockKey, int]) -> list[SockKey]:
    """The sockets in ``cilium_sock_ops`` (each seen from its own side), sorted."""
    return sorted(sockhash.keys(), key=lambda k: (k.local_ip4, k.local_port, k.remote_ip4, k.remote_port))


def pinned(pin_dir: str) -> bool:
    """Whether socket acceleration's maps exist under ``pin_dir`` (it was enabled once)."""
    return os.path.exists(os.path.join(pin_dir, SOCK_OPS.name))


def read_counters(pin_dir: str) -> dict[str, SockopsCount]:
    """The counters of the node pinned at ``pin_dir``. Raises :class:`BpfError` (ENOENT) when the
    feature was never enabled there."""
    with SOCK_CTR.from_pins(pin_dir) as ctr:
        return sum_counters(ctr)


def read_status(pin_dir: str | None) -> dict[str, Any] | None:
    """What ``ciliumlite status`` shows of the node pinned at ``pin_dir``, read from the pins alone
    (another process owns the node): the runtime switch (``cilium_sock_cfg``), the sockets in the
    sockhash and the messages redirected and passed. None when the feature was never enabled there
    (or the node's pins went while they were read). Raises :class:`BpfError` for other failures.
    """
    if not pin_dir or not pinned(pin_dir):
        return None
    try:
        with SOCK_CFG.from_pins(pin_dir) as cfg, SOCK_OPS.from_pins(pin_dir) as sockhash, \
                SOCK_CTR.from_pins(pin_dir) as ctr:
            switch = cfg.get(0)
            n_sockets = len(list(sockhash.keys()))
            c = sum_counters(ctr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return {"enabled": bool(switch is not None and switch.enabled), "sockets": n_sockets,
            "messages_redirected": c["msg_redirect"].count, "bytes_redirected": c["msg_redirect"].bytes,
            "messages_passed": c["msg_pass"].count, "bytes_passed": c["msg_pass"].bytes}


__all__ = ["COUNTERS", "SockopsCount", "pinned", "read_counters", "read_status", "sockets", "sum_counters"]
