"""The agent's errors, each with the HTTP status and code its API answers with."""

from __future__ import annotations

from ciliumlite.bpf.errors import CiliumliteError


class AgentApiError(CiliumliteError):
    """An error the API answers with ``status`` and ``{"error": {"code", "message"}}``."""

    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class NotFound(AgentApiError):
    """No such endpoint (or route) on this agent."""

    status = 404
    code = "not-found"


class Conflict(AgentApiError):
    """The request clashes with what exists (a container id used with another namespace or ifname)."""

    status = 409
    code = "conflict"


class KvstoreUnavailable(AgentApiError):
    """The kvstore did not answer (identities cannot be allocated): try again later."""

    status = 503
    code = "kvstore-unavailable"


class NotReady(AgentApiError):
    """The agent is starting or stopping and takes no changes now."""

    status = 503
    code = "not-ready"


class AgentStartError(CiliumliteError):
    """The agent could not start (the message says why: kvstore unreachable, datapath refused, ...)."""


__all__ = ["AgentApiError", "AgentStartError", "Conflict", "KvstoreUnavailable", "NotFound", "NotReady"]
