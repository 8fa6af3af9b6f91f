"""Long-lived TCP connections for the node-churn scenario (stdlib only; started by path, not imported).

Usage:
  python _stream.py server NAME PORT
      a line-echo server: prints ``ready``, then answers every line ``N`` with ``N|NAME``.
  python _stream.py client IP PORT INTERVAL LIMIT
      one connection kept busy: prints ``connected``, then sends a numbered line every INTERVAL
      seconds until SIGUSR1 or LIMIT seconds, and prints one JSON line: sent, answered, error,
      max_rtt, server (and peer).
"""

import json
import signal
import socket
import sys
import threading
import time
from typing import Any


def serve(name: str, port: int) -> None:
    """Echo lines back with ``|NAME`` appended, one thread per connection, until killed."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(16)
    print("ready", flush=True)

    def answer(conn: socket.socket) -> None:
        with conn:
            for line in conn.makefile("rb"):
                conn.sendall(line.rstrip(b"\n") + b"|" + name.encode() + b"\n")

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def client(ip: str, port: int, interval: float, limit: float) -> None:
    """Keep one connection busy and report what it saw (see the module docstring)."""
    stop: list[int] = []
    signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
    out: dict[str, Any] = {"sent": 0, "answered": 0, "error": "", "max_rtt": 0.0, "server": ""}
    try:
        s = socket.create_connection((ip, port), timeout=3)
        out["peer"] = list(s.getpeername())
    except OSError as exc:
        out["error"] = f"connect: {exc}"
        print(json.dumps(out), flush=True)
        return
    print("connected", flush=True)
    f = s.makefile("rb")
    end = time.monotonic() + limit
    while not stop and time.monotonic() < end:
        n = out["sent"]
        t0 = time.monotonic()
        try:
            s.sendall(b"%d\n" % n)
            out["sent"] += 1
            line = f.readline()
            if not line.startswith(b"%d|" % n):
                raise OSError(f"bad or no reply {line[:60]!r}")
        except OSError as exc:
            out["error"] = str(exc)
            break
        out["answered"] += 1
        out["server"] = line.split(b"|", 1)[1].strip().decode()
        out["max_rtt"] = max(out["max_rtt"], time.monotonic() - t0)
        time.sleep(interval)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
