"""Capturing frames on a lab device: ``Lab.capture`` runs ``_capture.py`` in the namespace and parses its lines."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from ciliumlite.bpf.errors import CiliumliteError
from ciliumlite.lab import procs


@dataclass(frozen=True)
class Frame:
    """One captured Ethernet frame carrying IPv4, with the fields people look at."""

    raw: bytes
    outgoing: bool

    @property
    def ip_header(self) -> bytes:
        """The IPv4 header, options included."""
        ihl = (self.raw[14] & 0x0F) * 4
        return self.raw[14:14 + ihl]

    @property
    def src(self) -> str:
        """IPv4 source."""
        return str(ipaddress.IPv4Address(self.raw[26:30]))

    @property
    def dst(self) -> str:
        """IPv4 destination."""
        return str(ipaddress.IPv4Address(self.raw[30:34]))

    @property
    def proto(self) -> int:
        """IP protocol number."""
        return self.raw[23]

    @property
    def ports(self) -> tuple[int, int]:
        """(source port, destination port) for TCP/UDP."""
        off = 14 + (self.raw[14] & 0x0F) * 4
        return int.from_bytes(self.raw[off:off + 2], "big"), int.from_bytes(self.raw[off + 2:off + 4], "big")

    def __str__(self) -> str:
        sp, dp = self.ports if self.proto in (6, 17) else (0, 0)
        return f"{self.src}:{sp} -> {self.dst}:{dp} proto {self.proto}" + (" (IP options)" if len(self.ip_header) > 20
                                                                                  else "")


class Capture:
    """Frames seen on one device while the ``with`` block ran (``Lab.capture``).

    Creating it raises :class:`CiliumliteError` if the capture does not start (no such device in
    the namespace, say); leaving the block raises ``subprocess.TimeoutExpired`` if the capture
    process does not end within 5 s of being killed.
    """

    def __init__(self, processes: procs.ProcessGroup, netns: str, ifname: str, seconds: float,
                 max_frames: int) -> None:
        self._processes = processes
        self._proc = processes.popen(netns, procs.python_script(procs.CAPTURE, ifname, str(seconds),
                                                                str(max_frames)))
        ready = self._proc.stdout.readline() if self._proc.stdout else ""
        if ready.strip() != "ready":
            processes.stop(self._proc)
            raise CiliumliteError(f"capture on {ifname} in {netns} did not start: {ready!r}")
        self.frames: list[Frame] = []

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # frames still in flight when the block ends
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            out, _ = self._proc.communicate(timeout=5)
        finally:
            self._processes.stop(self._proc)
        for line in out.splitlines():
            direction, _, hexdata = line.partition(" ")
            if hexdata:
                self.frames.append(Frame(bytes.fromhex(hexdata), direction == "out"))
