"""Programs: attach to tc (tcx or clsact), XDP and cgroups, and run on test packets."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, Literal

from ciliumlite.bpf import features
from ciliumlite.bpf._ffi import cstr, ffi, lib
from ciliumlite.bpf.btf import kernel_enum
from ciliumlite.bpf.errors import BpfError, ValidationError
from ciliumlite.bpf.link import AttachPoint, ClsactLink, FdLink, Link
from ciliumlite.bpf.netns import NetnsRef, entered
from ciliumlite.bpf.record import U32, At, Record

TcMode = Literal["auto", "tcx", "clsact"]
XdpMode = Literal["native", "generic"]
XDP_FLAGS = {"generic": 2, "native": 4}

# enum bpf_attach_type values from the kernel's BTF when present; these are the UAPI numbers otherwise.
_ATTACH_FALLBACK = {
    "BPF_CGROUP_INET_INGRESS": 0, "BPF_CGROUP_INET_EGRESS": 1, "BPF_CGROUP_INET_SOCK_CREATE": 2,
    "BPF_CGROUP_INET4_BIND": 8, "BPF_CGROUP_INET4_CONNECT": 10, "BPF_CGROUP_INET4_POST_BIND": 12,
    "BPF_CGROUP_UDP4_SENDMSG": 14, "BPF_CGROUP_UDP4_RECVMSG": 19, "BPF_CGROUP_INET4_GETPEERNAME": 29,
    "BPF_CGROUP_INET4_GETSOCKNAME": 31, "BPF_XDP": 37, "BPF_TCX_INGRESS": 46, "BPF_TCX_EGRESS": 47,
}
#: Short cgroup attach names (as in SEC("cgroup/<name>")) -> kernel enum names.
CGROUP_ATTACH = {
    "ingress": "BPF_CGROUP_INET_INGRESS", "egress": "BPF_CGROUP_INET_EGRESS",
    "sock_create": "BPF_CGROUP_INET_SOCK_CREATE", "bind4": "BPF_CGROUP_INET4_BIND",
    "connect4": "BPF_CGROUP_INET4_CONNECT", "post_bind4": "BPF_CGROUP_INET4_POST_BIND",
    "sendmsg4": "BPF_CGROUP_UDP4_SENDMSG", "recvmsg4": "BPF_CGROUP_UDP4_RECVMSG",
    "getpeername4": "BPF_CGROUP_INET4_GETPEERNAME", "getsockname4": "BPF_CGROUP_INET4_GETSOCKNAME",
}


def attach_type(name: str) -> int:
    """The kernel's number for an ``enum bpf_attach_type`` name."""
    return kernel_enum("bpf_attach_type").get(name, _ATTACH_FALLBACK[name])


class ProgType(IntEnum):
    """Program types ciliumlite attaches (``enum bpf_prog_type``)."""

    UNSPEC = 0
    SOCKET_FILTER = 1
    KPROBE = 2
    SCHED_CLS = 3
    SCHED_ACT = 4
    TRACEPOINT = 5
    XDP = 6
    CGROUP_SKB = 8
    CGROUP_SOCK = 9
    CGROUP_SOCK_ADDR = 18


class TcAction(IntEnum):
    """tc program verdicts."""

    UNSPEC = -1
    OK = 0
    RECLASSIFY = 1
    SHOT = 2
    PIPE = 3
    STOLEN = 4
    QUEUED = 5
    REPEAT = 6
    REDIRECT = 7


class XdpAction(IntEnum):
    """XDP program verdicts."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


@dataclass(frozen=True, slots=True)
class SkbContext(Record, c_name="__sk_buff", size=192):
    """The ``struct __sk_buff`` fields a tc test run may set (the kernel rejects the others)."""

    mark: Annotated[int, U32, At(8)] = 0
    priority: Annotated[int, U32, At(32)] = 0
    ingress_ifindex: Annotated[int, U32, At(36)] = 0
    ifindex: Annotated[int, U32, At(40)] = 0
    cb0: Annotated[int, U32, At(48)] = 0
    cb1: Annotated[int, U32, At(52)] = 0
    cb2: Annotated[int, U32, At(56)] = 0
    cb3: Annotated[int, U32, At(60)] = 0
    cb4: Annotated[int, U32, At(64)] = 0


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of ``Program.run``: verdict, output frame and kernel-measured time per run."""

    retval: int
    data: bytes
    duration_ns: int
    ctx: bytes = b""

    @property
    def tc_action(self) -> TcAction:
        """The verdict read as a tc action."""
        try:
            return TcAction(self.retval)
        except ValueError:
            return TcAction.UNSPEC

    @property
    def xdp_action(self) -> XdpAction:
        """The verdict read as an XDP action."""
        return XdpAction(self.retval)


def resolve_ifindex(device: str | int, netns: NetnsRef) -> tuple[int, str]:
    """(ifindex, name) of a device given by name or index, looked up in ``netns``."""
    with entered(netns):
        try:
            if isinstance(device, int):
                return device, socket.if_indextoname(device)
            return socket.if_nametoindex(device), device
        except OSError as exc:
            raise ValidationError(f"no network device {device!r} in netns {netns or '(current)'}") from exc


class Program:
    """One program of a loaded BpfObject."""

    def __init__(self, handle: Any, object_name: str) -> None:
        self._h = handle
        self.name = cstr(lib.bpf_program__name(handle))
        self.section = cstr(lib.bpf_program__section_name(handle))
        self.object_name = object_name

    def _invalidate(self) -> None:
        self._h = None

    @property
    def fd(self) -> int:
        """The program fd (valid while its object is loaded and open)."""
        if self._h is None:
            raise BpfError("use program", errno.EBADF, target=self.name, hint="its BpfObject was closed")
        fd = int(lib.bpf_program__fd(self._h))
        if fd < 0:
            raise BpfError("use program", errno.EBADF, target=self.name,
                           hint="load the object first (BpfObject.load())")
        return fd

    @property
    def type(self) -> ProgType | int:
        """The program type libbpf derived from the section name."""
        if self._h is None:
            return ProgType.UNSPEC
        t = int(lib.bpf_program__type(self._h))
        try:
            return ProgType(t)
        except ValueError:
            return t

    def __repr__(self) -> str:
        t = self.type
        return f"<Program {self.name} sec={self.section} type={getattr(t, 'name', t)}>"

    # -- attach ----------------------------------------------------------------------------------------
    def attach_tc(self, device: str | int, direction: Literal["ingress", "egress"] = "ingress", *,
                  netns: NetnsRef = None, mode: TcMode = "auto", priority: int = 1, handle: int = 1) -> Link:
        """Attach to tc ``direction`` of ``device`` in ``netns``.

        ``mode="auto"`` uses a tcx link where the kernel has tcx (6.6+), else clsact + cls_bpf in
        direct-action mode. ``priority``/``handle`` apply to clsact only.
        """
        if direction not in ("ingress", "egress"):
            raise ValidationError(f"tc direction must be 'ingress' or 'egress', not {direction!r}")
        if mode not in ("auto", "tcx", "clsact"):
            raise ValidationError(f"tc mode must be auto, tcx or clsact, not {mode!r}")
        ifindex, ifname = resolve_ifindex(device, netns)
        if mode == "tcx" or (mode == "auto" and features.has_tcx()):
            features.require("tcx", "attach_tc(mode='tcx')")
            kind = "BPF_TCX_INGRESS" if direction == "ingress" else "BPF_TCX_EGRESS"
            point = AttachPoint("tcx", ifname, ifindex, direction, "" if netns is None else str(netns))
            with entered(netns):
                fd = lib.bpf_link_create(self.fd, ifindex, attach_type(kind), ffi.NULL)
            if fd < 0:
                raise BpfError("attach tcx", -fd, target=f"{self.name} to {point}")
            return FdLink(fd, self.name, point)
        return ClsactLink(self.fd, self.name, ifindex, direction, netns, priority, handle, ifname)

    def attach_xdp(self, device: str | int, *, netns: NetnsRef = None, mode: XdpMode = "native") -> Link:
        """Attach as an XDP link (``native`` = driver mode, ``generic`` = skb mode)."""
        if mode not in XDP_FLAGS:
            raise ValidationError(f"XDP mode must be native or generic, not {mode!r}")
        ifindex, ifname = resolve_ifindex(device, netns)
        point = AttachPoint("xdp", ifname, ifindex, mode, "" if netns is None else str(netns))
        opts = ffi.new("struct bpf_link_create_opts *", {"sz": ffi.sizeof("struct bpf_link_create_opts"),
                                                          "flags": XDP_FLAGS[mode]})
        with entered(netns):
            fd = lib.bpf_link_create(self.fd, ifindex, attach_type("BPF_XDP"), opts)
        if fd < 0:
            raise BpfError("attach xdp", -fd, target=f"{self.name} to {point}")
        return FdLink(fd, self.name, point)

    def attach_cgroup(self, path: str, attach: str | None = None) -> Link:
        """Attach to the cgroup v2 directory ``path`` (never pass the cgroup root in tests).

        ``attach`` is a short name like ``connect4``; by default it comes from the section name
        (``SEC("cgroup/connect4")``).
        """
        name = attach or self.section.rsplit("/", 1)[-1]
        if name not in CGROUP_ATTACH:
            raise ValidationError(f"unknown cgroup attach type {name!r}; one of {', '.join(CGROUP_ATTACH)}")
        try:
            cg = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ValidationError(f"cannot open cgroup {path!r}: {exc.strerror}") from exc
        point = AttachPoint("cgroup", cgroup=path, attach_type=name)
        try:
            fd = lib.bpf_link_create(self.fd, cg, attach_type(CGROUP_ATTACH[name]), ffi.NULL)
        finally:
            os.close(cg)
        if fd < 0:
            raise BpfError("attach cgroup", -fd, target=f"{self.name} to {point}")
        return FdLink(fd, self.name, point)

    # -- test run --------------------------------------------------------------------------------------
    def run(self, data: bytes = b"", *, repeat: int = 1, ctx: SkbContext | bytes | None = None,
            out_size: int | None = None) -> RunResult:
        """Run the program once (or ``repeat`` times) on ``data`` with BPF_PROG_TEST_RUN.

        Redirect verdicts are returned, not performed. ``duration_ns`` is the kernel's average per run.
        """
        if repeat < 1:
            raise ValidationError("repeat must be >= 1")
        size_out = out_size or max(len(data) + 512, 256)
        out = ffi.new("char[]", size_out)
        din = ffi.from_buffer(data) if data else ffi.NULL
        raw_ctx = ctx.pack() if isinstance(ctx, SkbContext) else ctx
        ctx_in = ffi.from_buffer(raw_ctx) if raw_ctx else ffi.NULL
        ctx_out = ffi.new("char[]", len(raw_ctx)) if raw_ctx else ffi.NULL
        opts = ffi.new("struct bpf_test_run_opts *", {
            "sz": ffi.sizeof("struct bpf_test_run_opts"), "data_in": din, "data_out": out,
            "data_size_in": len(data), "data_size_out": size_out, "ctx_in": ctx_in, "ctx_out": ctx_out,
            "ctx_size_in": len(raw_ctx or b""), "ctx_size_out": len(raw_ctx or b""), "repeat": repeat,
        })
        rc = lib.bpf_prog_test_run_opts(self.fd, opts)
        if rc < 0:
            raise BpfError("test_run program", -rc, target=self.name)
        ctx_bytes = bytes(ffi.buffer(ctx_out, opts.ctx_size_out)) if raw_ctx else b""
        return RunResult(int(ffi.cast("int", opts.retval)), bytes(ffi.buffer(out, opts.data_size_out)),
                         int(opts.duration), ctx_bytes)
