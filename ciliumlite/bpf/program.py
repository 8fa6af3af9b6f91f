"""Programs: attach to tc (tcx or clsact), XDP and cgroups, and run on test packets."""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, Literal

from ciliumlite.bpf import features
from ciliumlite.bpf._ffi import cstr, ffi, lib
from ciliumlite.bpf.btf import kernel_enum
from ciliumlite.bpf.errors import BpfError, ValidationError, check
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
    "BPF_CGROUP_SOCK_OPS": 3, "BPF_SK_MSG_VERDICT": 7,
}
#: Short cgroup attach names (as in SEC("cgroup/<name>")) -> kernel enum names.
CGROUP_ATTACH = {
    "ingress": "BPF_CGROUP_INET_INGRESS", "egress": "BPF_CGROUP_INET_EGRESS",
    "sock_create": "BPF_CGROUP_INET_SOCK_CREATE", "bind4": "BPF_CGROUP_INET4_BIND",
    "connect4": "BPF_CGROUP_INET4_CONNECT", "post_bind4": "BPF_CGROUP_INET4_POST_BIND",
    "sendmsg4": "BPF_CGROUP_UDP4_SENDMSG", "recvmsg4": "BPF_CGROUP_UDP4_RECVMSG",
    "getpeername4": "BPF_CGROUP_INET4_GETPEERNAME", "getsockname4": "BPF_CGROUP_INET4_GETSOCKNAME",
    "sockops": "BPF_CGROUP_SOCK_OPS",
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
    SOCK_OPS = 13
    SK_MSG = 16


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
class XdpContext(Record, c_name="xdp_md", size=24):
    """The ``struct xdp_md`` of an XDP test run: the receiving device (and its rx queue); ``data_end``
    is the frame's length (:meth:`Program.run` fills it in), ``data``/``data_meta`` 0 (no metadata);
    the kernel refuses an ``egress_ifindex``."""

    data: Annotated[int, U32] = 0
    data_end: Annotated[int, U32] = 0
    data_meta: Annotated[int, U32] = 0
    ingress_ifindex: Annotated[int, U32] = 0
    rx_queue_index: Annotated[int, U32] = 0
    egress_ifindex: Annotated[int, U32] = 0


#: ``BPF_PROG_TEST_RUN`` flag: XDP frames really leave (XDP_TX / XDP_REDIRECT) instead of being
#: returned (Linux 5.18, "live frames"); needs ``repeat`` and an ``XdpContext.ingress_ifindex``.
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


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


# struct bpf_prog_info (UAPI): type, id, tag[8], jited_prog_len, xlated_prog_len at 0..24; name[16]
# at 64; run_time_ns, run_cnt at 192; verified_insns at 216 (Linux 5.16+). 232 bytes on 6.x.
_PROG_INFO_SIZE = 232
_PROG_INFO_HEAD = struct.Struct("<II8sII")
_PROG_INFO_NAME = 64
_PROG_INFO_RUN = struct.Struct("<QQ")
_PROG_INFO_RUN_AT = 192
_PROG_INFO_VERIFIED_AT = 216


@dataclass(frozen=True, slots=True)
class ProgInfo:
    """What the kernel says about a loaded program (``BPF_OBJ_GET_INFO_BY_FD``).

    ``verified_insns`` is the number of instructions the verifier processed to accept it (the
    figure its 1,000,000 limit applies to); ``None`` on kernels before 5.16, which do not report
    it. ``run_time_ns``/``run_cnt`` stay 0 unless ``kernel.bpf_stats_enabled`` is on. ``name`` is
    the kernel's: the first 15 bytes of the C function's name.
    """

    id: int
    type: ProgType | int
    name: str
    tag: str
    xlated_len: int
    jited_len: int
    verified_insns: int | None
    run_time_ns: int = 0
    run_cnt: int = 0

    @classmethod
    def from_fd(cls, fd: int) -> ProgInfo:
        """Ask the kernel about the program behind ``fd``. Raises :class:`BpfError` (``EINVAL``
        for an fd that is no program)."""
        buf = ffi.new("char[]", _PROG_INFO_SIZE)
        n = ffi.new("__u32 *", _PROG_INFO_SIZE)
        check(lib.bpf_obj_get_info_by_fd(fd, buf, n), "get program info", f"fd {fd}")
        raw = bytes(ffi.buffer(buf, _PROG_INFO_SIZE))
        ptype, pid, tag, jited, xlated = _PROG_INFO_HEAD.unpack_from(raw)
        run_ns, run_cnt = _PROG_INFO_RUN.unpack_from(raw, _PROG_INFO_RUN_AT)
        # The kernel writes min(its size, ours) bytes and says how many: older kernels stop earlier.
        verified = struct.unpack_from("<I", raw, _PROG_INFO_VERIFIED_AT)[0] \
            if int(n[0]) >= _PROG_INFO_VERIFIED_AT + 4 else None
        try:
            kind: ProgType | int = ProgType(ptype)
        except ValueError:
            kind = ptype
        name = raw[_PROG_INFO_NAME:_PROG_INFO_NAME + 16].split(b"\0", 1)[0].decode(errors="replace")
        return cls(pid, kind, name, tag.hex(), xlated, jited, verified, run_ns, run_cnt)

    @classmethod
    def from_id(cls, prog_id: int) -> ProgInfo:
        """Ask the kernel about program ``prog_id`` (as a prog array or a link names it). Raises
        :class:`BpfError` (``ENOENT`` when no such program is loaded)."""
        fd = lib.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            raise BpfError("open program by id", -fd, target=f"id {prog_id}")
        try:
            return cls.from_fd(fd)
        finally:
            os.close(fd)


def resolve_ifindex(device: str | int, netns: NetnsRef) -> tuple[int, str]:
    """(ifindex, name) of a device given by name or index, looked up in ``netns``."""
    with entered(netns):
        try:
            if isinstance(device, int):
                return device, socket.if_indextoname(device)
            return socket.if_nametoindex(device), device
        except OSError as exc:
            raise ValidationError(f"no network device {device!r} in netns {netns or '(current)'}") from exc


def attach_xdp_fd(prog_fd: int, name: str, device: str | int, *, netns: NetnsRef = None,
                  mode: XdpMode = "native") -> FdLink:
    """Attach the XDP program ``prog_fd`` (called ``name`` in errors) as a link on ``device`` in
    ``netns``. Raises :class:`ValidationError` for an unknown mode or device, :class:`BpfError`
    when the kernel refuses (``EBUSY``: the device has an XDP program already)."""
    if mode not in XDP_FLAGS:
        raise ValidationError(f"XDP mode must be native or generic, not {mode!r}")
    ifindex, ifname = resolve_ifindex(device, netns)
    point = AttachPoint("xdp", ifname, ifindex, mode, "" if netns is None else str(netns))
    opts = ffi.new("struct bpf_link_create_opts *", {"sz": ffi.sizeof("struct bpf_link_create_opts"),
                                                      "flags": XDP_FLAGS[mode]})
    with entered(netns):
        fd = lib.bpf_link_create(prog_fd, ifindex, attach_type("BPF_XDP"), opts)
    if fd < 0:
        raise BpfError("attach xdp", -fd, target=f"{name} to {point}")
    return FdLink(int(fd), name, point)


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

    def info(self) -> ProgInfo:
        """The kernel's view of the loaded program: its id, sizes and ``verified_insns`` (how much
        of the verifier's 1M-instruction budget it used). Raises :class:`BpfError` before load."""
        return ProgInfo.from_fd(self.fd)

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
        return attach_xdp_fd(self.fd, self.name, device, netns=netns, mode=mode)

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

    def attach_sockmap(self, sockmap: Any) -> Link:
        """Attach an ``SEC("sk_msg")`` program to a SOCKMAP/SOCKHASH ``sockmap`` (a :class:`Map`) as
        a BPF link (``BPF_SK_MSG_VERDICT``, kernel 6.10+): it then runs for every message sent on
        a socket added to the map after the attach. Raises :class:`BpfError` (``EINVAL`` for a
        map that is no sockmap or a program that is no sk_msg; ``EBUSY`` when one is attached).
        """
        point = AttachPoint("sockmap", attach_type="sk_msg_verdict", device=getattr(sockmap, "name", ""))
        fd = lib.bpf_link_create(self.fd, int(sockmap.fd), attach_type("BPF_SK_MSG_VERDICT"), ffi.NULL)
        if fd < 0:
            raise BpfError("attach sk_msg", -fd, target=f"{self.name} to map {point.device}",
                           hint="sockmap links need Linux 6.10 or later")
        return FdLink(fd, self.name, point)

    # -- test run --------------------------------------------------------------------------------------
    def run(self, data: bytes = b"", *, repeat: int = 1, ctx: SkbContext | XdpContext | bytes | None = None,
            out_size: int | None = None, flags: int = 0, batch_size: int = 0) -> RunResult:
        """Run the program once (or ``repeat`` times) on ``data`` with BPF_PROG_TEST_RUN.

        Redirect verdicts are returned, not performed, unless ``flags`` has
        :data:`BPF_F_TEST_XDP_LIVE_FRAMES` (an XDP program's XDP_TX / XDP_REDIRECT frames then
        leave its ``ctx.ingress_ifindex``, ``batch_size`` at a time; no output frame).
        ``duration_ns`` is the kernel's average per run.
        """
        if repeat < 1:
            raise ValidationError("repeat must be >= 1")
        size_out = out_size or max(len(data) + 512, 256)
        out = ffi.new("char[]", size_out)
        din = ffi.from_buffer(data) if data else ffi.NULL
        if isinstance(ctx, XdpContext) and not ctx.data_end:
            # The kernel wants data_end == the frame's length (it runs nothing and returns
            # XDP_PASS otherwise on 6.18).
            ctx = dataclasses.replace(ctx, data_end=len(data))
        raw_ctx = ctx.pack() if isinstance(ctx, SkbContext | XdpContext) else ctx
        ctx_in = ffi.from_buffer(raw_ctx) if raw_ctx else ffi.NULL
        ctx_out = ffi.new("char[]", len(raw_ctx)) if raw_ctx else ffi.NULL
        opts = ffi.new("struct bpf_test_run_opts *", {
            "sz": ffi.sizeof("struct bpf_test_run_opts"), "data_in": din, "data_out": out,
            "data_size_in": len(data), "data_size_out": size_out, "ctx_in": ctx_in, "ctx_out": ctx_out,
            "ctx_size_in": len(raw_ctx or b""), "ctx_size_out": len(raw_ctx or b""), "repeat": repeat,
            "flags": flags, "batch_size": batch_size,
        })
        if flags & BPF_F_TEST_XDP_LIVE_FRAMES:  # the kernel refuses an output buffer in live mode
            opts.data_out, opts.data_size_out, opts.ctx_out, opts.ctx_size_out = ffi.NULL, 0, ffi.NULL, 0
        rc = lib.bpf_prog_test_run_opts(self.fd, opts)
        if rc < 0:
            raise BpfError("test_run program", -rc, target=self.name)
        ctx_bytes = bytes(ffi.buffer(ctx_out, opts.ctx_size_out)) if raw_ctx and opts.ctx_size_out else b""
        return RunResult(int(ffi.cast("int", opts.retval)), bytes(ffi.buffer(out, opts.data_size_out)),
                         int(opts.duration), ctx_bytes)
