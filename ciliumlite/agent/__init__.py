"""The per-node agent (``ciliumlite agent``), its local API and the client of that API.

:mod:`ciliumlite.agent.daemon` is the process, :mod:`ciliumlite.agent.api` its HTTP API on a unix
socket, :mod:`ciliumlite.agent.client` the synchronous client the CLI and the CNI plugin use, and
:mod:`ciliumlite.agent.config` its settings. Only the client and the config are imported here, so
the CNI plugin (exec'd once per container) does not load the server.
"""

from ciliumlite.agent.client import AgentClient, AgentError, AgentUnavailable, default_socket
from ciliumlite.agent.config import AgentConfig

__all__ = ["AgentClient", "AgentConfig", "AgentError", "AgentUnavailable", "default_socket"]
