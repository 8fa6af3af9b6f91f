"""Programs from raw instructions, with no object file: ``BPF_PROG_LOAD`` of a few instructions.

For programs too small to compile, such as one that returns a constant: the XDP program that does
nothing but ``XDP_PASS``, which a veth's peer needs before XDP_TX works on the veth (the lab puts
one on its fabric ports, ``ciliumlite.lab.fabric``).

>>> with RawProgram.returning(ProgType.XDP, XdpAction.PASS, "xdp_pass") as prog:   # doctest: +SKIP
...     link = prog.attach_xdp("n0", netns="lab-fabric")
"""

from __future__ import annotations

import errno
import os
import struct

from ciliumlite.bpf._ffi import ffi, lib
from ciliumlite.bpf.errors import BpfError, ValidationError
from ciliumlite.bpf.link import FdLink
from ciliumlite.bpf.netns import NetnsRef
from ciliumlite.bpf.program import ProgType, XdpMode, attach_xdp_fd

#: ``struct bpf_insn``: opcode, dst_reg:4 | src_reg:4, off, imm (little endian, as the kernel reads it).
_INSN = struct.Struct("<BBhi")
_MOV64_IMM_R0 = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K, dst r0
_EXIT = 0x95  # BPF_JMP | BPF_EXIT
NAME_MAX = 15  # BPF_OBJ_NAME_LEN - 1


class RawProgram:
    """A program loaded from raw instructions; the kernel frees it when its fd and links close.

    Raises :class:`ValidationError` for instructions that are no whole number of ``bpf_insn`` or a
    name longer than the kernel keeps, :class:`BpfError` when the kernel refuses the load (the
    verifier's log is not asked for: these programs are a handful of instructions).
    """

    def __init__(self, prog_type: ProgType, insns: bytes, name: str, license: str = "GPL") -> None:
        if not insns or len(insns) % _INSN.size:
            raise ValidationError(f"raw program {name!r}: {len(insns)} bytes is no whole number of "
                                  f"{_INSN.size}-byte instructions")
        if len(name) > NAME_MAX:
            raise ValidationError(f"raw program name {name!r} is longer than {NAME_MAX} characters")
        self.name = name
        self.prog_type = prog_type
        fd = int(lib.bpf_prog_load(int(prog_type), name.encode(), license.encode(), insns, len(insns) // _INSN.size,
                                   ffi.NULL))
        if fd < 0:
            raise BpfError("load raw program", -fd, target=f"{name} ({prog_type.name})")
        self._fd: int | None = fd

    @classmethod
    def returning(cls, prog_type: ProgType, value: int, name: str) -> RawProgram:
        """A program that returns ``value`` and does nothing else (``r0 = value; exit``)."""
        return cls(prog_type, _INSN.pack(_MOV64_IMM_R0, 0, 0, int(value)) + _INSN.pack(_EXIT, 0, 0, 0), name)

    @property
    def fd(self) -> int:
        """The program fd. Raises :class:`BpfError` (``EBADF``) once closed."""
        if self._fd is None:
            raise BpfError("use raw program", errno.EBADF, target=self.name, hint="it was closed")
        return self._fd

    def attach_xdp(self, device: str | int, *, netns: NetnsRef = None, mode: XdpMode = "native") -> FdLink:
        """Attach as an XDP link on ``device`` in ``netns`` (``native`` = driver mode), as
        :meth:`Program.attach_xdp <ciliumlite.bpf.program.Program.attach_xdp>` does. Raises
        :class:`ValidationError` for an unknown mode or device, :class:`BpfError` when the kernel
        refuses (``EBUSY``: the device has an XDP program already)."""
        return attach_xdp_fd(self.fd, self.name, device, netns=netns, mode=mode)

    def close(self) -> None:
        """Close the fd (links made from it keep the program until they close). Safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RawProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)  # type: ignore[arg-type]
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<RawProgram {self.name} {self.prog_type.name} {'closed' if self._fd is None else f'fd {self._fd}'}>"


__all__ = ["RawProgram"]
