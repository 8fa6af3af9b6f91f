"""``healthCheckNodePort``: the HTTP endpoint an external load balancer probes on every node.

For a ``LoadBalancer`` service with ``externalTrafficPolicy=Local`` only the nodes that run one of
its backends can serve traffic from outside (the others drop it, ``DROP_NO_SERVICE``), so the
balancer in front must learn which nodes to use. Kubernetes gives such a service a
``healthCheckNodePort`` and kube-proxy, or Cilium's agent in its place (``pkg/service/healthserver``),
answers ``GET /`` on that port of every node: ``200`` with the number of local endpoints when the
node has at least one, ``503`` when it has none, the body the same JSON either way::

    {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 1, "serviceProxyHealthy": true}

:class:`HealthCheckServer` is that endpoint for one service on one node: a listening socket made
inside the node's network namespace (a socket stays in the namespace it was made in, so the
serving thread needs no ``setns``) and a daemon thread answering it. Local endpoints are the
service's backends in the node's pod CIDR that are not terminating, as kube-proxy counts ready
local endpoints: a node whose pods are all shutting down reports 503 and the balancer moves away
before they are gone. The datapath's services keep one server per such service and stop it on
close.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciliumlite.bpf.errors import ValidationError
from ciliumlite.bpf.netns import NetnsRef, entered
from ciliumlite.manifests.model import NAMESPACE_LABEL, SERVICE_LABEL
from ciliumlite.service import Service


def service_ref(svc: Service) -> tuple[str, str]:
    """(namespace, name) the probe reports: the Kubernetes Service's when the service came from a
    manifest, else the ``namespace/name`` of its own name (``""`` namespace without one)."""
    if NAMESPACE_LABEL in svc.labels and SERVICE_LABEL in svc.labels:
        return svc.labels[NAMESPACE_LABEL], svc.labels[SERVICE_LABEL]
    ns, _, name = svc.name.rpartition("/")
    return ns, name.split(":", 1)[0]


def local_endpoints(svc: Service, pod_network: IPv4Network) -> int:
    """The service's ready backends on this node (in ``pod_network``, not terminating)."""
    return sum(1 for b in svc.backends if not b.terminating and IPv4Address(b.ip) in pod_network)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        status, body = self.server.owner.response()
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a balancer probes every few seconds: nothing for the node's log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HealthCheckServer


class HealthCheckServer:
    """Answers the health check of one service on ``port`` of every address of ``netns``.

    Raises :class:`ValidationError` when the port is already taken in that namespace (the
    message names it) and what ``setns`` raises for a namespace that is gone.
    """

    def __init__(self, svc: Service, port: int, netns: NetnsRef, pod_network: IPv4Network) -> None:
        self.port = port
        self._pods = pod_network
        self._lock = threading.Lock()
        self._ref = service_ref(svc)
        self._local = local_endpoints(svc, pod_network)
        try:
            with entered(netns):  # the listening socket belongs to the node's namespace from here on
                server = _Server(("0.0.0.0", port), _Handler, bind_and_activate=False)
                try:
                    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    server.server_bind()
                    server.server_activate()
                except BaseException:
                    server.server_close()
                    raise
        except OSError as exc:
            raise ValidationError(f"service {svc.name}: health_check_node_port {port} cannot be served on "
                                  f"this node: {exc.strerror}") from exc
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"healthcheck-{port}", daemon=True)
        self._thread.start()

    def update(self, svc: Service) -> None:
        """Count the local endpoints of the service's new version."""
        with self._lock:
            self._ref = service_ref(svc)
            self._local = local_endpoints(svc, self._pods)

    @property
    def local(self) -> int:
        """The local endpoints the server reports now."""
        with self._lock:
            return self._local

    def response(self) -> tuple[int, dict[str, Any]]:
        """(status, body) of a probe: 200 with local endpoints, else 503."""
        with self._lock:
            ns, name = self._ref
            local = self._local
        return (200 if local else 503), {"service": {"namespace": ns, "name": name}, "localEndpoints": local,
                                         "serviceProxyHealthy": True}

    def close(self) -> None:
        """Stop answering and close the socket (the port is free again when this returns)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
