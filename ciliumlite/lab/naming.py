"""Names of things a process creates on the host: ``cl<run id>…``, unique per process and call.

Tests use the run id to tell what this process made from what other runs on the machine made.
"""

from __future__ import annotations

import itertools
import secrets

RUN_ID = secrets.token_hex(2)
_counter = itertools.count(1)


def unique_name(prefix: str) -> str:
    """A short unique name such as ``cl3f2a-node7`` (it may become part of an interface name)."""
    return f"cl{RUN_ID}-{prefix}{next(_counter)}"


def lab_prefix(name: str) -> str:
    """The namespace prefix of a lab: ``cl<run id><n>-<name>``."""
    return f"cl{RUN_ID}{next(_counter)}-{name}"


def is_ours(name: str) -> bool:
    """True for names this process made."""
    return f"cl{RUN_ID}" in name
