"""Cached probes of what this kernel supports, for clear NotSupportedErrors and test skips."""

from __future__ import annotations

import functools

from ciliumlite.bpf._ffi import ffi, lib
from ciliumlite.bpf.btf import kernel_enum
from ciliumlite.bpf.errors import NotSupportedError, ValidationError

PROG_TYPE_SCHED_CLS = 3
PROG_TYPE_XDP = 6
PROG_TYPE_CGROUP_SOCK_ADDR = 18
MAP_TYPE_RINGBUF = 27


def _helper(name: str) -> bool:
    helper_id = kernel_enum("bpf_func_id").get(f"BPF_FUNC_{name}")
    return helper_id is not None and int(lib.libbpf_probe_bpf_helper(PROG_TYPE_SCHED_CLS, helper_id, ffi.NULL)) == 1


@functools.cache
def has_tcx() -> bool:
    """tcx BPF links on tc ingress/egress (Linux 6.6+)."""
    return "BPF_TCX_INGRESS" in kernel_enum("bpf_attach_type")


@functools.cache
def has_redirect_peer() -> bool:
    """``bpf_redirect_peer`` from tc programs (Linux 5.10+)."""
    return _helper("redirect_peer")


@functools.cache
def has_redirect_neigh() -> bool:
    """``bpf_redirect_neigh`` from tc programs (Linux 5.10+)."""
    return _helper("redirect_neigh")


@functools.cache
def has_ringbuf() -> bool:
    """BPF ring buffer maps (Linux 5.8+)."""
    return int(lib.libbpf_probe_bpf_map_type(MAP_TYPE_RINGBUF, ffi.NULL)) == 1


@functools.cache
def has_cgroup_sock_addr() -> bool:
    """cgroup connect4/sendmsg4/recvmsg4/getpeername4 hooks."""
    return int(lib.libbpf_probe_bpf_prog_type(PROG_TYPE_CGROUP_SOCK_ADDR, ffi.NULL)) == 1


@functools.cache
def has_batch_ops() -> bool:
    """Batch map syscalls (Linux 5.6+)."""
    return "BPF_MAP_LOOKUP_BATCH" in kernel_enum("bpf_cmd")


@functools.cache
def has_kernel_btf() -> bool:
    """The kernel exposes its BTF, which CO-RE relocations need."""
    return bool(kernel_enum("bpf_attach_type"))


@functools.cache
def has_sockmap_link() -> bool:
    """sk_msg programs attached to a sockmap as a BPF link, which can be pinned (Linux 6.10+)."""
    return "BPF_LINK_TYPE_SOCKMAP" in kernel_enum("bpf_link_type")


@functools.cache
def has_sockmap_splice_read() -> bool:
    """``splice`` from a socket in a sockmap also reads the bytes sk_msg redirected to it.

    Without ``tcp_bpf_splice_read`` in the kernel (a sockmap fix, in no release kernel tested here),
    splice reads only the TCP receive queue: a reader using it never sees redirected bytes. Read
    from ``/proc/kallsyms`` (False if unreadable). A kernel behaviour that ``status`` reports, not
    a feature anything requires, so it is not in :data:`PROBES`.
    """
    try:
        with open("/proc/kallsyms") as f:
            return any(line.rstrip().endswith(" tcp_bpf_splice_read") for line in f)
    except OSError:
        return False


PROBES = {
    "kernel_btf": has_kernel_btf,
    "tcx": has_tcx,
    "redirect_peer": has_redirect_peer,
    "redirect_neigh": has_redirect_neigh,
    "ringbuf": has_ringbuf,
    "cgroup_sock_addr": has_cgroup_sock_addr,
    "batch_ops": has_batch_ops,
    "sockmap_link": has_sockmap_link,
}


def probe_all() -> dict[str, bool]:
    """Every probe's result, by name."""
    return {name: fn() for name, fn in PROBES.items()}


def require(feature: str, what: str = "") -> None:
    """Raise NotSupportedError unless the kernel has ``feature`` (a key of PROBES)."""
    if feature not in PROBES:
        raise ValidationError(f"unknown feature {feature!r}; one of {', '.join(PROBES)}")
    if not PROBES[feature]():
        raise NotSupportedError(f"{what or 'this operation'} needs {feature}", feature=feature,
                                hint="use a newer kernel (see docs/sdk.md for the minimum versions)")
