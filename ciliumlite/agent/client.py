"""A small synchronous client of the agent's local API (the CLI and the CNI plugin use it).

It speaks HTTP/1.1 over the agent's unix socket with the standard library (``http.client`` on an
``AF_UNIX`` socket): the CNI plugin is exec'd once per container and must start fast, without an
event loop. The server side is aiohttp (:mod:`ciliumlite.agent.api`).

>>> client = AgentClient("/run/ciliumlite/worker1/agent.sock")       # doctest: +SKIP
>>> client.put_endpoint("c0ffee", netns="/var/run/netns/cni-1234")   # doctest: +SKIP
{'ip': '10.244.1.5', 'prefix': 32, 'gateway': '10.244.1.1', ...}
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ciliumlite.bpf.errors import CiliumliteError
from ciliumlite.datapath.config import RUN_BASE

SOCKET_NAME = "agent.sock"


def default_socket(node: str) -> str:
    """The API socket of the agent of ``node`` with the default state dir: ``/run/ciliumlite/<node>/agent.sock``."""
    return os.path.join(RUN_BASE, node, SOCKET_NAME)


class AgentUnavailable(CiliumliteError):
    """No agent answers on the socket: it is missing, refused, or the agent did not answer in time."""

    def __init__(self, socket_path: str, reason: str) -> None:
        self.socket_path = socket_path
        self.reason = reason
        super().__init__(f"no agent answers on {socket_path}: {reason}")


class AgentError(CiliumliteError):
    """The agent answered with an error: ``status`` (HTTP), ``code`` and ``message`` from its body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"agent: {message} ({status} {code})")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class AgentClient:
    """Calls to one agent's API on ``socket_path``; each call is one request on a fresh connection.

    Every method raises :class:`AgentUnavailable` when nothing answers on the socket (missing,
    connection refused, or no answer within ``timeout`` seconds) and :class:`AgentError` for an
    error answer (the agent's code and message).
    """

    def __init__(self, socket_path: str, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request; returns the status and the decoded JSON body (None when empty).

        Raises :class:`AgentUnavailable` or :class:`AgentError` (any status >= 400).
        """
        if not os.path.exists(self.socket_path):
            raise AgentUnavailable(self.socket_path, "the socket does not exist (is the agent running?)")
        conn = _UnixConnection(self.socket_path, self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise AgentUnavailable(self.socket_path, f"connection refused ({exc.strerror or exc})") from None
        except TimeoutError:
            raise AgentUnavailable(self.socket_path, f"no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnavailable(self.socket_path, f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = {"error": {"code": "bad-response", "message": raw[:200].decode(errors="replace")}}
        if resp.status >= 400:
            err = decoded.get("error") if isinstance(decoded, dict) else None
            err = err if isinstance(err, dict) else {}
            raise AgentError(resp.status, str(err.get("code", "unknown")), str(err.get("message", resp.reason)))
        return resp.status, decoded

    def _get(self, path: str) -> Any:
        return self.request("GET", path)[1]

    # -- the API ------------------------------------------------------------------------------------
    def healthz(self) -> dict[str, Any]:
        """``GET /v1/healthz``: ``{"status": "ok" | "degraded", ...}``."""
        return dict(self._get("/v1/healthz"))

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: node, datapath, kvstore, uptime, pid."""
        return dict(self._get("/v1/status"))

    def config(self) -> dict[str, Any]:
        """``GET /v1/config``: the agent's settings and its datapath's."""
        return dict(self._get("/v1/config"))

    def endpoints(self) -> list[dict[str, Any]]:
        """``GET /v1/endpoint``: every endpoint, with its container id."""
        return list(self._get("/v1/endpoint"))

    def endpoint(self, container_id: str, *, check: bool = False) -> dict[str, Any]:
        """``GET /v1/endpoint/{id}``; ``check`` adds ``{"check": {"ok", "problems"}}`` (the agent
        verifies the namespace, both devices and the program). Raises :class:`AgentError` (404)
        for an unknown container."""
        query = "?check=true" if check else ""
        return dict(self._get(f"/v1/endpoint/{quote(container_id, safe='')}{query}"))

    def put_endpoint(self, container_id: str, *, netns: str, ifname: str = "eth0",
                     labels: Mapping[str, str] | None = None, name: str | None = None) -> dict[str, Any]:
        """``PUT /v1/endpoint/{id}``: connect the container's namespace; returns its address and devices.

        Idempotent: the same container id again returns the endpoint made the first time. Raises
        :class:`AgentError` (400 bad input, 409 the id is in use with another namespace or ifname).
        """
        body: dict[str, Any] = {"netns": netns, "ifname": ifname, "labels": dict(labels or {})}
        if name is not None:
            body["name"] = name
        return dict(self.request("PUT", f"/v1/endpoint/{quote(container_id, safe='')}", body)[1])

    def relabel_endpoint(self, container_id: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``PATCH /v1/endpoint/{id}/labels``: new labels (None: the same, re-evaluated against the
        namespace's labels in the store), so a new identity in place; returns the endpoint as
        :meth:`endpoint` does. Raises :class:`AgentError` (404 unknown container, 400 bad labels,
        503 no identity could be allocated: nothing changed)."""
        body = {"labels": dict(labels)} if labels is not None else {}
        return dict(self.request("PATCH", f"/v1/endpoint/{quote(container_id, safe='')}/labels", body)[1])

    def delete_endpoint(self, container_id: str) -> None:
        """``DELETE /v1/endpoint/{id}``. Raises :class:`AgentError` (404) for an unknown container."""
        self.request("DELETE", f"/v1/endpoint/{quote(container_id, safe='')}")

    def reload(self) -> dict[str, Any]:
        """``POST /v1/datapath/reload``: replace every program of the node's datapath with a freshly
        loaded build, reusing its maps (``{"reloads", "seconds", "programs"}``). Raises
        :class:`AgentError` (501 legacy host routing, 503 not ready, 500 the build did not load:
        nothing was swapped)."""
        return dict(self.request("POST", "/v1/datapath/reload")[1])

    def services(self) -> list[dict[str, Any]]:
        """``GET /v1/service``: the services programmed on this node (``Service.to_dict`` form)."""
        return list(self._get("/v1/service"))


__all__ = ["SOCKET_NAME", "AgentClient", "AgentError", "AgentUnavailable", "default_socket"]
