"""Typed errors. Every error says what was attempted, on what, and what to do about it."""

from __future__ import annotations

import errno as _errno
import os

_HINTS: dict[int, str] = {
    _errno.EPERM: "run as root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN are needed)",
    _errno.EACCES: "run as root; for a load failure read the verifier log below",
    _errno.E2BIG: "the map is full: raise max_entries or delete entries",
    _errno.ENOENT: "the object does not exist (check the name, path or pin)",
    _errno.EEXIST: "it exists already: update without NOEXIST, or remove it first",
    _errno.ENODEV: "no such network device in that namespace",
    _errno.EOPNOTSUPP: "the kernel does not support this operation",
    _errno.EINVAL: "the kernel rejected the arguments (often: a feature this kernel lacks)",
    _errno.ENOSPC: "out of space: the map is full or the log buffer is too small",
    _errno.EBUSY: "something else is attached there already",
}


def _unpickle(cls: type[CiliumliteError], args: tuple[object, ...], state: dict[str, object]) -> CiliumliteError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class CiliumliteError(Exception):
    """Base of every error ciliumlite raises."""

    def __reduce__(self) -> tuple[object, ...]:
        # Pickle by message and attributes, not by re-calling __init__: subclasses take keyword-only
        # and required arguments that Exception's default (cls(*args)) cannot supply, which broke
        # errors sent back from multiprocessing workers (the fuzzer's).
        return (_unpickle, (type(self), self.args, dict(self.__dict__)))


class ValidationError(CiliumliteError, ValueError):
    """Bad input from the caller; nothing was changed."""


class LayoutError(CiliumliteError):
    """A Python record does not match the C struct described by the object's BTF."""


class NotSupportedError(CiliumliteError):
    """The kernel, libbpf or the machine lacks something this operation needs."""

    def __init__(self, message: str, *, feature: str, hint: str = "") -> None:
        self.feature = feature
        self.hint = hint
        super().__init__(f"{message} (missing: {feature})" + (f"; {hint}" if hint else ""))


class BpfError(CiliumliteError):
    """A libbpf or bpf() call failed. Keeps the errno, the operation, its object and any verifier log."""

    def __init__(
        self,
        operation: str,
        err: int,
        *,
        target: str = "",
        verifier_log: str = "",
        hint: str = "",
    ) -> None:
        self.operation = operation
        self.errno = abs(err)
        self.target = target
        self.verifier_log = verifier_log
        self.hint = hint or _HINTS.get(self.errno, "")
        super().__init__(self._format())

    @property
    def strerror(self) -> str:
        """The C library's text for the errno."""
        return os.strerror(self.errno) if self.errno else "unknown error"

    def _format(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        what = f"{self.operation} {self.target}".strip()
        text = f"{what}: {self.strerror} ({name})"
        if self.hint:
            text += f"; hint: {self.hint}"
        if self.verifier_log:
            tail = "\n".join(self.verifier_log.rstrip().splitlines()[-25:])
            text += f"\n--- verifier log (last lines) ---\n{tail}"
        return text


class VerifierError(BpfError):
    """Loading a program failed; ``verifier_log`` holds the kernel's explanation."""


class MapFullError(BpfError):
    """An update failed because the map has no free entry (E2BIG)."""


def check(rc: int, operation: str, target: str = "") -> int:
    """Raise the right BpfError for a libbpf int return (``-errno`` on failure)."""
    if rc < 0:
        raise error_for(operation, -rc, target)
    return rc


def error_for(operation: str, err: int, target: str = "") -> BpfError:
    """Build the typed error for an errno."""
    if err in (_errno.E2BIG, _errno.ENOSPC) and "update" in operation:
        return MapFullError(operation, err, target=target)
    return BpfError(operation, err, target=target)
