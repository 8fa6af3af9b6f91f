"""How the node's parts keep, describe, adopt and swap their program attachments.

BPF links (tcx, cgroup) detach when their last fd closes, so a ``kill -9`` of the owner would
take the datapath down: every link is pinned under ``<pin dir>/links`` the moment it is made.
Classic tc filters outlive their process anyway. A link's description (kind, pin, kernel id,
where) goes into the node's state file, so a new process can adopt exactly that link and notice
when the pin it finds is not the one its state names (another node's, or a re-made one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

from ciliumlite.bpf.errors import BpfError
from ciliumlite.bpf.link import AttachPoint, ClsactLink, FdLink, Link
from ciliumlite.bpf.netns import NetnsRef
from ciliumlite.bpf.program import Program

LINKS_DIR = "links"


def link_pin(pin_dir: str, name: str) -> str:
    """Where the link called ``name`` of a node is pinned (``<pin dir>/links/<name>``)."""
    return os.path.join(pin_dir, LINKS_DIR, name)


def keep(link: Link, pin_dir: str | None, name: str) -> Link:
    """Pin ``link`` (a BPF link) at ``<pin dir>/links/<name>`` so it outlives this process; a
    clsact filter, which outlives it anyway, is returned as it is. A stale pin of that name (an
    endpoint re-made after a crash) is replaced. Raises :class:`BpfError` when pinning fails (the
    link is detached then)."""
    if not isinstance(link, FdLink) or pin_dir is None:
        return link
    path = link_pin(pin_dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    try:
        link.pin(path)
    except BaseException:
        link.close()
        raise
    return link


def drop(link: Link) -> None:
    """Detach for good: remove the pin (if any), then close."""
    if isinstance(link, FdLink):
        link.unpin()
    link.close()


def release(link: Link) -> None:
    """Let go of ``link`` and leave it attached: a pinned link's fd is closed (its pin holds it),
    a clsact filter is only forgotten. Raises nothing."""
    if isinstance(link, FdLink):
        link.close()
    else:
        link.closed = True  # the filter stays in the kernel; this object no longer owns it


def describe(link: Link) -> dict[str, Any]:
    """The state-file entry of ``link``: kind, pin path and kernel link id (BPF links), where."""
    out: dict[str, Any] = {"program": link.program, "point": dataclasses.asdict(link.point)}
    if isinstance(link, FdLink):
        out.update(kind="fd", pin=link.pin_path, id=link.info.id)
    else:
        out.update(kind="clsact")
    return out


class AdoptError(Exception):
    """A described link cannot be adopted: ``reason`` is ``missing`` or ``other``."""

    def __init__(self, message: str, reason: str, path: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path


def adopt(desc: dict[str, Any], netns: NetnsRef) -> Link:
    """The attachment ``desc`` describes, taken over without touching it.

    Raises :class:`AdoptError`: ``missing`` when the pin or filter is gone, ``other`` when the
    pin holds another link than the one described (another node's pins, or a re-made link).
    """
    point = AttachPoint(**desc["point"])
    if desc.get("kind") == "fd":
        path = str(desc.get("pin") or "")
        try:
            link = FdLink.open_pinned(path)
        except BpfError as exc:
            raise AdoptError(f"the pinned link {path} of {desc['program']} is missing ({exc})", "missing",
                             path) from exc
        if link.info.id != desc.get("id"):
            found = link.info.id
            link.close()
            raise AdoptError(f"the link pinned at {path} is link {found}, not link {desc.get('id')} that "
                             "the state names", "other", path)
        link.program, link.point = desc["program"], point
        return link
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return ClsactLink.adopt(desc["program"], point.ifindex, point.direction, netns, 1, 1, point.device)
    except (BpfError, OSError, NetlinkError) as exc:  # NetlinkError: ENODEV for a device that went
        raise AdoptError(f"the tc filter of {desc['program']} on {point} is missing ({exc})", "missing",
                         str(point)) from exc


def swap(link: Link, program: Program) -> None:
    """Run ``program`` at ``link``'s attach point instead, atomically (no packet sees no program).

    Raises :class:`BpfError` (the old program stays attached then).
    """
    if isinstance(link, FdLink):
        link.update(program)
    elif isinstance(link, ClsactLink):
        link.replace(program.fd, program.name)
    else:
        raise BpfError("replace program", 95, target=str(link.point), hint="not a tcx, cgroup or tc link")


def swap_back(link: Link, prog_fd: int, name: str) -> None:
    """Put the program behind ``prog_fd`` back at ``link`` (a failed reload's rollback)."""
    if isinstance(link, FdLink):
        link.update(prog_fd)
        link.program = name
    elif isinstance(link, ClsactLink):
        link.replace(prog_fd, name)


def attached_prog_fd(link: Link, fallback: Program | None) -> int | None:
    """A new fd of the program ``link`` runs now, for a rollback (the caller closes it); for a clsact
    filter the program of the object that attached it (None if that object is not loaded here)."""
    if isinstance(link, FdLink):
        return link.prog_fd()
    if fallback is not None:
        return os.dup(fallback.fd)
    return None


__all__ = ["LINKS_DIR", "AdoptError", "adopt", "attached_prog_fd", "describe", "drop", "keep", "link_pin",
           "release", "swap", "swap_back"]
