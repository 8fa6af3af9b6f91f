"""Run blocking netlink work off a running asyncio event loop (Jupyter, asyncio apps).

pyroute2's synchronous API drives an event loop of its own, which Python refuses to start inside a
thread that already runs one ("This event loop is already running"). Public entry points wrapped
with ``off_event_loop`` notice that and do their work in a helper thread, then return the result
as usual. Everywhere else they run directly, at no cost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ciliumlite-netlink")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def off_event_loop(fn: F) -> F:
    """Decorator: call ``fn`` in a helper thread when the caller's thread runs an event loop."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _loop_running():
            return fn(*args, **kwargs)
        return _pool.submit(fn, *args, **kwargs).result()

    return wrapper  # type: ignore[return-value]


def public_methods_off_event_loop(cls: type[T]) -> type[T]:
    """Class decorator: ``off_event_loop`` for ``__init__``, ``close``, context exit and public methods."""
    for name, value in list(vars(cls).items()):
        if callable(value) and (not name.startswith("_") or name in ("__init__", "__exit__")) \
                and not isinstance(value, (staticmethod, classmethod, type)):
            setattr(cls, name, off_event_loop(value))
    return cls
