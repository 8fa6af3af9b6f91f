"""Read a BPF ring buffer map (``BPF_MAP_TYPE_RINGBUF``) from Python."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ciliumlite.bpf._ffi import ffi, lib
from ciliumlite.bpf.errors import BpfError, ValidationError
from ciliumlite.bpf.map import Map, MapType


class RingBuffer:
    """Consume records a BPF program submits with ``bpf_ringbuf_output``/``bpf_ringbuf_submit``.

    >>> with RingBuffer(obj.map("events")) as rb:     # doctest: +SKIP
    ...     for raw in rb.read(timeout_ms=100):
    ...         print(raw.hex())
    """

    def __init__(self, ring: Map[Any, Any]) -> None:
        if ring.type != MapType.RINGBUF:
            raise ValidationError(f"map {ring.name} is a {ring.type.name}, not a RINGBUF")
        self.map = ring
        self._pending: list[bytes] = []

        @ffi.callback("int(void *, void *, size_t)")  # type: ignore[untyped-decorator]
        def _sample(_ctx: Any, data: Any, size: int) -> int:
            self._pending.append(bytes(ffi.buffer(data, size)))
            return 0

        self._cb = _sample  # keep the callback alive as long as the ring buffer
        self._h = lib.ring_buffer__new(ring.fd, _sample, ffi.NULL, ffi.NULL)
        if self._h == ffi.NULL:
            raise BpfError("open ring buffer", ffi.errno, target=ring.name)

    def poll(self, timeout_ms: int = 100) -> list[bytes]:
        """Wait up to ``timeout_ms`` for records and return those that arrived."""
        if self._h is None:
            raise ValidationError("the ring buffer is closed")
        rc = lib.ring_buffer__poll(self._h, timeout_ms)
        if rc < 0 and -rc != 4:  # EINTR: return what we have
            raise BpfError("poll ring buffer", -rc, target=self.map.name)
        out, self._pending = self._pending, []
        return out

    def read(self, timeout_ms: int = 100, max_seconds: float = 1.0) -> Iterator[bytes]:
        """Records arriving within ``max_seconds`` (bounded, for scripts and tests)."""
        import time

        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            yield from self.poll(timeout_ms)

    def follow(self, on_record: Callable[[bytes], None], *, stop: Callable[[], bool], timeout_ms: int = 100) -> None:
        """Call ``on_record`` for every record until ``stop()`` returns True."""
        while not stop():
            for raw in self.poll(timeout_ms):
                on_record(raw)

    def close(self) -> None:
        """Free the ring buffer reader."""
        if self._h is not None:
            lib.ring_buffer__free(self._h)
            self._h = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
