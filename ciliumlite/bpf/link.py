"""Links: one attachment of a program, owned by a Python object that detaches it on close.

BPF links (tcx, XDP, cgroup) are kernel objects behind an fd: closing the fd detaches, pinning the
link keeps it attached past this process. Classic tc (clsact + cls_bpf) is a netlink attachment;
ciliumlite removes exactly the filter it added, and the clsact qdisc only if ciliumlite created it.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any

from ciliumlite.bpf import fs
from ciliumlite.bpf._ffi import ffi, lib
from ciliumlite.bpf.errors import BpfError, NotSupportedError, check
from ciliumlite.bpf.netns import NetnsRef, netns_inode
from ciliumlite.bpf.netns import iproute as netns_iproute

LINK_TYPES = {1: "raw_tracepoint", 2: "tracing", 3: "cgroup", 4: "iter", 5: "netns", 6: "xdp",
              7: "perf_event", 8: "kprobe_multi", 9: "struct_ops", 10: "netfilter", 11: "tcx",
              12: "uprobe_multi", 13: "netkit"}
TC_INGRESS_PARENT, TC_EGRESS_PARENT = 0xFFFFFFF2, 0xFFFFFFF3
#: BPF_LINK_UPDATE only if the old program is the one named (include/uapi/linux/bpf.h).
BPF_F_REPLACE = 1 << 2


@dataclass(frozen=True, slots=True)
class AttachPoint:
    """Where a link is attached, in words a person reads."""

    kind: str
    device: str = ""
    ifindex: int = 0
    direction: str = ""
    netns: str = ""
    cgroup: str = ""
    attach_type: str = ""

    def __str__(self) -> str:
        if self.cgroup:
            return f"{self.kind} {self.attach_type} on cgroup {self.cgroup}"
        where = f"{self.device or self.ifindex}" + (f" in netns {self.netns}" if self.netns else "")
        return f"{self.kind} {self.direction} on {where}".replace("  ", " ")


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """The kernel's view of a BPF link."""

    id: int
    type: str
    prog_id: int


class Link:
    """An attachment. Use as a context manager, or call ``close()``."""

    def __init__(self, program: str, point: AttachPoint) -> None:
        self.program = program
        self.point = point
        self.closed = False

    def close(self) -> None:
        """Detach (unless pinned) and release."""
        raise NotImplementedError

    def detach(self) -> None:
        """Same as ``close()``."""
        self.close()

    def pin(self, path: str) -> None:
        """Keep the attachment past this process by pinning it at ``path``."""
        raise NotSupportedError(f"cannot pin a {self.point.kind} attachment", feature="bpf_link",
                                hint="use mode='tcx' (a BPF link) to pin tc attachments")

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "attached"
        return f"<{type(self).__name__} {self.program} {self.point} {state}>"


class FdLink(Link):
    """A BPF link (tcx, XDP, cgroup): a kernel object behind an fd."""

    def __init__(self, fd: int, program: str, point: AttachPoint, pin_path: str | None = None) -> None:
        super().__init__(program, point)
        self.fd = fd
        self.pin_path = pin_path

    @property
    def info(self) -> LinkInfo:
        """Id, type and program id as the kernel reports them."""
        buf = ffi.new("char[]", 64)
        n = ffi.new("__u32 *", 64)
        check(lib.bpf_obj_get_info_by_fd(self.fd, buf, n), "get link info", self.program)
        ltype, lid, prog_id = struct.unpack_from("<III", ffi.buffer(buf, 12))
        return LinkInfo(lid, LINK_TYPES.get(ltype, str(ltype)), prog_id)

    def pin(self, path: str) -> None:
        """Pin the link at ``path``: it stays attached after close() and after this process exits."""
        self.pin_path = fs.pin(self.fd, path, "link", self.program)

    def unpin(self) -> None:
        """Remove the pin; the link detaches when its last fd closes."""
        fs.unpin(self.pin_path)
        self.pin_path = None

    def update(self, program: Any, *, expected_prog_fd: int | None = None) -> None:
        """Swap the link's program for ``program`` (a :class:`Program` or a program fd) atomically.

        BPF_LINK_UPDATE: every packet runs either the old or the new program, never none (how
        Cilium replaces tcx, XDP and cgroup programs). With ``expected_prog_fd`` the kernel swaps
        only if that program is still attached (``BPF_F_REPLACE``). Raises :class:`BpfError`:
        ``ENOLINK`` for a defunct link (its device went), ``EPERM`` when the old program is not
        ``expected_prog_fd``, ``EINVAL`` for a program of another type or attach type.
        """
        if self.closed:
            raise BpfError("update link", errno.EBADF, target=self.program, hint="the link was closed")
        prog_fd = program if isinstance(program, int) else int(program.fd)
        opts = ffi.new("struct bpf_link_update_opts *", {"sz": ffi.sizeof("struct bpf_link_update_opts")})
        if expected_prog_fd is not None:
            opts.flags = BPF_F_REPLACE
            opts.old_prog_fd = expected_prog_fd
        rc = lib.bpf_link_update(self.fd, prog_fd, opts)
        if rc < 0:
            raise BpfError("update link", -rc, target=f"{self.program} at {self.point}")
        if not isinstance(program, int):
            self.program = program.name

    def prog_fd(self) -> int:
        """A new fd of the program attached now (the caller closes it). Raises :class:`BpfError`."""
        fd = lib.bpf_prog_get_fd_by_id(self.info.prog_id)
        if fd < 0:
            raise BpfError("open attached program", -fd, target=self.program)
        return int(fd)

    def destroy(self) -> None:
        """Detach now, even if pinned, and remove the pin."""
        if not self.closed:
            lib.bpf_link_detach(self.fd)
        self.unpin()
        self.close()

    @classmethod
    def open_pinned(cls, path: str) -> FdLink:
        """Adopt a link pinned at ``path`` (e.g. by an earlier run of a controller)."""
        fd = lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise BpfError("open pinned link", -fd, target=path)
        link = cls(fd, "", AttachPoint("link"), pin_path=path)
        info = link.info
        link.point = AttachPoint(info.type)
        link.program = f"prog id {info.prog_id}"
        return link

    def close(self) -> None:
        """Release the fd: this detaches the program unless the link is pinned."""
        if not self.closed:
            os.close(self.fd)
            self.closed = True

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            try:
                os.close(self.fd)
            except OSError:
                pass


# clsact qdiscs ciliumlite created, by (netns inode, ifindex): only those may be removed by us.
_created_qdiscs: set[tuple[int, int]] = set()
_qdisc_lock = threading.Lock()


def _iproute(netns: NetnsRef) -> Any:
    return netns_iproute(netns)  # never re-creates a namespace that has gone


class ClsactLink(Link):
    """A cls_bpf filter in direct-action mode under a clsact qdisc (classic tc, any kernel)."""

    def __init__(self, prog_fd: int, program: str, ifindex: int, direction: str, netns: NetnsRef,
                 priority: int, handle: int, device: str) -> None:
        super().__init__(program, AttachPoint("clsact", device, ifindex, direction,
                                              "" if netns is None else str(netns)))
        self._netns = netns
        self._ifindex = ifindex
        self._parent = TC_INGRESS_PARENT if direction == "ingress" else TC_EGRESS_PARENT
        self._prio, self._handle = priority, handle
        self._ns_key = (netns_inode(netns), ifindex)
        from pyroute2.netlink.exceptions import NetlinkError

        with _iproute(netns) as ipr, _qdisc_lock:
            try:
                ipr.tc("add", "clsact", ifindex)
                _created_qdiscs.add(self._ns_key)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise BpfError("create clsact qdisc", exc.code, target=str(self.point)) from exc
            try:
                ipr.tc("add-filter", "bpf", ifindex, handle, fd=prog_fd, name=program, parent=self._parent,
                       prio=priority, classid=1, direct_action=True)
            except NetlinkError as exc:
                self._drop_qdisc_if_empty(ipr)
                hint = (f"a filter already uses priority {priority}: pass another priority="
                        if exc.code == errno.EEXIST else "")
                raise BpfError("attach tc filter", exc.code, target=str(self.point), hint=hint) from exc

    @classmethod
    def adopt(cls, program: str, ifindex: int, direction: str, netns: NetnsRef, priority: int, handle: int,
              device: str, *, created_qdisc: bool = True) -> ClsactLink:
        """Take over a filter an earlier process attached (classic tc outlives its process).

        Nothing is written; the filter is only checked to exist. ``created_qdisc`` says whether
        ciliumlite made the clsact qdisc (then :meth:`close` may remove it once empty). Raises
        :class:`BpfError` (``ENOENT``) when there is no filter at that priority and handle.
        """
        link = cls.__new__(cls)
        Link.__init__(link, program, AttachPoint("clsact", device, ifindex, direction,
                                                 "" if netns is None else str(netns)))
        link._netns, link._ifindex = netns, ifindex
        link._parent = TC_INGRESS_PARENT if direction == "ingress" else TC_EGRESS_PARENT
        link._prio, link._handle = priority, handle
        link._ns_key = (netns_inode(netns), ifindex)
        with _iproute(netns) as ipr:
            found = [f for f in ipr.get_filters(ifindex, parent=link._parent)
                     if f.get_attr("TCA_OPTIONS") and (f["info"] >> 16) == priority]
        if not found:
            raise BpfError("adopt tc filter", errno.ENOENT, target=str(link.point),
                           hint=f"no bpf filter with priority {priority}: the attachment is gone")
        if created_qdisc:
            with _qdisc_lock:
                _created_qdiscs.add(link._ns_key)
        return link

    def replace(self, prog_fd: int, program: str) -> None:
        """Swap the filter's program in place: same parent, priority and handle (``tc filter replace``).

        The kernel swaps the classifier under RCU, so no packet sees the hook without a program
        (Cilium's legacy-tc replacement). Raises :class:`BpfError` with the netlink errno.
        """
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with _iproute(self._netns) as ipr:
                ipr.tc("replace-filter", "bpf", self._ifindex, self._handle, fd=prog_fd, name=program,
                       parent=self._parent, prio=self._prio, classid=1, direct_action=True)
        except NetlinkError as exc:
            raise BpfError("replace tc filter", exc.code, target=str(self.point)) from exc
        self.program = program

    def _drop_qdisc_if_empty(self, ipr: Any) -> None:
        if self._ns_key not in _created_qdiscs:
            return
        remaining = [f for parent in (TC_INGRESS_PARENT, TC_EGRESS_PARENT)
                     for f in ipr.get_filters(self._ifindex, parent=parent) if f.get_attr("TCA_OPTIONS")]
        if not remaining:
            ipr.tc("del", "clsact", self._ifindex)
            _created_qdiscs.discard(self._ns_key)

    def close(self) -> None:
        """Remove our filter, and the clsact qdisc if we created it and nothing else uses it."""
        if self.closed:
            return
        self.closed = True
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with _iproute(self._netns) as ipr, _qdisc_lock:
                try:
                    ipr.tc("del-filter", "bpf", self._ifindex, self._handle, parent=self._parent, prio=self._prio)
                except NetlinkError as exc:
                    if exc.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                        raise BpfError("detach tc filter", exc.code, target=str(self.point)) from exc
                try:
                    self._drop_qdisc_if_empty(ipr)
                except NetlinkError as exc:
                    if exc.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                        raise
        except OSError:
            # The namespace or device is gone, and the attachment went with it.
            _created_qdiscs.discard(self._ns_key)
