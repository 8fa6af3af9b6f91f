"""``BgpError``: what ``Bird`` raises when bird or birdc fails.

A module of its own, below everything else in the package, so that any layer can raise or catch
it without importing ``ciliumlite.bgp.bird`` (today only ``bird`` raises it)."""

from __future__ import annotations

from ciliumlite.bpf.errors import CiliumliteError

__all__ = ["BgpError"]


class BgpError(CiliumliteError):
    """bird or birdc failed. ``output`` holds what bird itself said (stderr, reply or log lines)."""

    def __init__(self, message: str, *, output: str = "") -> None:
        self.output = output.rstrip()
        text = message
        if self.output:
            text += "\n--- bird says ---\n" + self.output
        super().__init__(text)
