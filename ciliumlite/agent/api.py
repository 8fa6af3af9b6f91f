"""The agent's local API: JSON over HTTP on a unix socket (aiohttp), like cilium's ``cilium.sock``.

=========  ==========================  =============================================================
method     path                        answer
=========  ==========================  =============================================================
GET        ``/v1/healthz``             200 ``{"status": "ok" | "degraded", "kvstore": ...}``
GET        ``/v1/status``              200 node, datapath status, kvstore status, uptime, pid
GET        ``/v1/config``              200 the agent's settings and its datapath's
GET        ``/v1/endpoint``            200 every endpoint (with its container id)
GET        ``/v1/endpoint/{id}``       200 one endpoint (``?check=true``: verified), 404 unknown
PUT        ``/v1/endpoint/{id}``       201 made (200: it existed, the same), 400, 409, 503
DELETE     ``/v1/endpoint/{id}``       204 removed, 404 unknown
GET        ``/v1/service``             200 the services programmed on this node
POST       ``/v1/datapath/reload``     200 every program replaced (``Datapath.reload``), 501, 503
=========  ==========================  =============================================================

Every error is ``{"error": {"code": "...", "message": "..."}}``. The handlers run the agent's
(blocking: netlink, BPF, the kvstore) work in one worker thread, so the event loop keeps answering
``healthz`` while an endpoint is being made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from ciliumlite.agent.errors import AgentApiError, AgentStartError
from ciliumlite.bpf.errors import NotSupportedError, ValidationError

log = logging.getLogger("ciliumlite.agent")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 1 << 20


class AgentBackend(Protocol):
    """What the API serves (``ciliumlite.agent.daemon.Agent`` implements it); all blocking calls."""

    def healthz(self) -> dict[str, Any]:
        """Liveness and the kvstore's state."""

    def status(self) -> dict[str, Any]:
        """Everything ``GET /v1/status`` shows."""

    def config_dict(self) -> dict[str, Any]:
        """The agent's and the datapath's settings."""

    def endpoint_list(self) -> list[dict[str, Any]]:
        """Every endpoint."""

    def endpoint_get(self, container_id: str, check: bool = False) -> dict[str, Any]:
        """One endpoint (``check``: verified against the kernel); raises NotFound."""

    def endpoint_put(self, container_id: str, body: Any) -> tuple[bool, dict[str, Any]]:
        """Make (True) or find (False) a container's endpoint."""

    def endpoint_delete(self, container_id: str) -> None:
        """Remove a container's endpoint; raises NotFound."""

    def endpoint_relabel(self, container_id: str, body: Any) -> dict[str, Any]:
        """Give a container's endpoint new labels (a new identity, in place); raises NotFound."""

    def service_list(self) -> list[dict[str, Any]]:
        """The node's services."""

    def datapath_reload(self) -> dict[str, Any]:
        """Replace every program of the datapath (reusing its maps)."""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)  # datetimes and addresses as text


def json_response(data: Any, status: int = 200) -> web.Response:
    """``data`` as the API's JSON answer (values JSON does not know, as text)."""
    return web.json_response(data, status=status, dumps=_dumps)


def error_response(status: int, code: str, message: str) -> web.Response:
    """The API's error body with ``status``."""
    return json_response({"error": {"code": code, "message": message}}, status=status)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"the body is not JSON: {exc}") from None


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    # One error shape for every failure, aiohttp's own (404 route, 405 method) included.
    try:
        return await handler(request)
    except AgentApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except ValidationError as exc:
        return error_response(400, "invalid", str(exc))
    except NotSupportedError as exc:
        return error_response(501, "not-supported", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, "not-found" if exc.status == 404 else exc.reason.lower().replace(" ", "-"),
                              f"{request.method} {request.path}: {exc.reason}")
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal", f"{type(exc).__name__}: {exc}")


class ApiServer:
    """The API of one agent on ``socket_path`` (mode 0600), serving ``backend``.

    ``executor`` runs the backend's blocking calls (one thread: changes are serialised).
    """

    def __init__(self, backend: AgentBackend, socket_path: str, executor: concurrent.futures.Executor) -> None:
        self.backend = backend
        self.socket_path = socket_path
        self._executor = executor
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The aiohttp application (routes and the error middleware)."""
        app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
        app.add_routes([
            web.get("/v1/healthz", self._healthz),
            web.get("/v1/status", self._call(lambda r: self.backend.status())),
            web.get("/v1/config", self._call(lambda r: self.backend.config_dict())),
            web.get("/v1/endpoint", self._call(lambda r: self.backend.endpoint_list())),
            web.get("/v1/endpoint/{container_id}",
                    self._call(lambda r: self.backend.endpoint_get(
                        r.match_info["container_id"], check=r.query.get("check", "") in ("1", "true")))),
            web.put("/v1/endpoint/{container_id}", self._put_endpoint),
            web.delete("/v1/endpoint/{container_id}", self._delete_endpoint),
            web.patch("/v1/endpoint/{container_id}/labels", self._relabel_endpoint),
            web.get("/v1/service", self._call(lambda r: self.backend.service_list())),
            web.post("/v1/datapath/reload", self._call(lambda r: self.backend.datapath_reload())),
        ])
        return app

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _call(self, fn: Callable[[web.Request], Any]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return json_response(await self._run(lambda: fn(request)))
        return handler

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        # Answered on the loop itself: a liveness probe must not queue behind a slow endpoint add.
        return json_response(self.backend.healthz())

    async def _put_endpoint(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        cid = request.match_info["container_id"]
        created, result = await self._run(lambda: self.backend.endpoint_put(cid, body))
        return json_response(result, status=201 if created else 200)

    async def _relabel_endpoint(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        cid = request.match_info["container_id"]
        return json_response(await self._run(lambda: self.backend.endpoint_relabel(cid, body)))

    async def _delete_endpoint(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["container_id"]
        await self._run(lambda: self.backend.endpoint_delete(cid))
        return web.Response(status=204)

    async def start(self) -> None:
        """Listen on the socket (mode 0600; its directory is made as needed).

        Raises :class:`AgentStartError` when another agent answers on it, or it cannot be bound.
        """
        claim_socket(self.socket_path)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window in which others can connect
        try:
            await web.UnixSite(runner, self.socket_path).start()
        except OSError as exc:
            await runner.cleanup()
            raise AgentStartError(f"cannot listen on {self.socket_path}: {exc}") from exc
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        self._runner = runner

    async def stop(self) -> None:
        """Stop answering (requests in flight finish) and remove the socket."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)


def claim_socket(path: str) -> None:
    """Make ``path`` free for this agent: remove a stale socket a dead agent left.

    Raises :class:`AgentStartError` if an agent still answers there, or something that is not a
    socket is in the way.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if not os.path.lexists(path):
        return
    import stat

    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise AgentStartError(f"{path} exists and is not a socket: remove it or choose another --socket-path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: a crashed agent's socket
        return
    except OSError as exc:
        raise AgentStartError(f"cannot probe {path}: {exc}") from exc
    finally:
        probe.close()
    raise AgentStartError(f"another agent answers on {path}: one agent per node (stop it first)")


__all__ = ["AgentBackend", "ApiServer", "claim_socket", "error_response", "json_response"]
