"""Closing and detaching a node's datapath: :meth:`Datapath.close`, :meth:`Datapath.detach`.

A mixin of :class:`~ciliumlite.node.datapath.Datapath`, like
:class:`~ciliumlite.node.lifecycle.RestoreAndReload`: ``close`` removes everything the node made
(endpoints, programs, devices, routes, pins, state) and ``detach`` lets go of every fd and leaves
the node forwarding for a restore. Both go through the parts in the reverse order of setup.
"""

from __future__ import annotations

import os

from ciliumlite.bpf import fs
from ciliumlite.bpf.errors import CiliumliteError, NotSupportedError
from ciliumlite.bpf.link import FdLink
from ciliumlite.datapath import registry
from ciliumlite.node import routing as routing_mod
from ciliumlite.node import state as state_mod
from ciliumlite.node.parts import NodeParts


class Teardown(NodeParts):
    """The closing half of :class:`~ciliumlite.node.datapath.Datapath`."""

    # -- lifetime ---------------------------------------------------------------------------------------
    def pin_links(self) -> list[str]:
        """Pin every BPF link under ``<pin dir>/links`` so the datapath outlives this process.

        Classic tc (clsact) attachments outlive it anyway. Returns the pin paths. Raises
        :class:`NotSupportedError` with legacy host routing (it has no links).
        """
        if self._pin_dir is None:
            raise NotSupportedError("legacy host routing has no links to pin", feature="bpf host routing")
        os.makedirs(os.path.join(self._pin_dir, "links"), exist_ok=True)
        paths = []
        for i, link in enumerate(self.attachments()):
            if isinstance(link, FdLink) and link.pin_path is None:
                link.pin(os.path.join(self._pin_dir, "links", f"{i}-{link.program}"))
                paths.append(link.pin_path or "")
        return paths

    def close(self, remove: bool = False) -> None:
        """Close the datapath: let go of it and leave it running, or with ``remove=True`` remove it.

        ``remove=False`` (the default; same as :meth:`detach`), as libbpf and cilium/ebpf close
        objects: write the state, let go of every fd and leave the datapath attached and
        forwarding (links and maps are pinned) for :meth:`restore` in another process; a process
        that exits without closing leaves the same. ``remove=True``: remove every endpoint this
        datapath made, detach everything, unpin its maps and links and delete its state, as the
        lab, the tests and a ``with Datapath(...)`` block do. Raises :class:`CiliumliteError`
        naming what could not be removed (the rest is removed); keeping raises only ``OSError``
        from the state write.
        """
        if not remove:
            self.detach()
            return
        errors: list[str] = []
        self._closing = True
        registry.withdraw(self._config.node_name)
        for ep in self._endpoints.all():
            try:
                self._endpoints.remove(ep)
            except Exception as exc:
                errors.append(f"{ep.name}: {exc}")
        self._services.close()
        self._sockops.close()
        for part in (self._xdp, self._netdev, self._routing, self._tunnel):
            if part is not None:
                try:
                    part.close()
                except Exception as exc:
                    errors.append(f"{type(part).__name__}: {exc}")
        self._netdev = self._tunnel = None
        self._routing = routing_mod.NoRouting()
        self._close_policy()
        if self._maps is not None:
            self._maps.close()
            self._maps = None
        self._close_lxc()
        if self._pin_dir is not None:
            fs.remove_pin_dir(self._pin_dir)
            parent = os.path.dirname(self._pin_dir)
            if parent != fs.BPFFS and os.path.isdir(parent) and not os.listdir(parent):
                os.rmdir(parent)
            self._pin_dir = None
        state_mod.remove(self._config)
        registry.release(self._config.node_name)  # its record goes last, once its pins have
        if errors:
            raise CiliumliteError("closing the datapath left errors: " + "; ".join(errors))

    def _close_lxc(self) -> None:
        # The endpoints may have loaded bpf_lxc lazily (a restored node), or hold the facade's.
        for obj in {id(o): o for o in (self._lxc, self._endpoints.lxc) if o is not None}.values():
            obj.close()
        self._lxc = None

    def detach(self) -> None:
        """Let go of the datapath and leave it running: programs attached (links pinned), maps
        pinned, endpoints, devices and routes in place, the state written for :meth:`restore`.

        The registry entry stays (it is the record of what exists; a restore takes it over).
        Nothing is removed, so nothing raises but the state write (``OSError``).
        """
        with self._lock:
            if self._closing:
                return
            self._save_state()
            self._let_go()
            self._routing = routing_mod.NoRouting()  # its routes (and bird) stay for the next owner
            self._pin_dir = None

    def _let_go(self) -> None:
        # Detach, or a failed restore: close every fd this process holds, touch nothing in the kernel.
        self._closing = True
        self._endpoints.release()
        self._services.release()
        self._sockops.release()
        for part in (self._xdp, self._netdev, self._tunnel):
            if part is not None:
                part.release()
        self._netdev = self._tunnel = None
        self._close_policy()
        if self._maps is not None:
            self._maps.close()
            self._maps = None
        self._close_lxc()

    def _close_policy(self) -> None:
        if self._policy is not None:
            self._policy.close()
            self._policy = None


__all__ = ["Teardown"]
