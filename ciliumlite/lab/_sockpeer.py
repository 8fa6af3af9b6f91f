"""Both ends of checked TCP transfers, run inside pods (stdlib only; started by path, not imported).

Every byte is from ``random.Random(seed).randbytes`` (client to server: ``seed``, server to client:
``seed + 1``), so each side hashes what it sent or received and the caller compares the hashes
with :func:`expected_sha`: a lost, duplicated or reordered byte shows.

Usage:
  python _sockpeer.py server PORT
      prints ``ready``; for each connection reads a JSON header line, then acts on it, and prints
      one JSON line: ``up_bytes``, ``up_sha`` (what arrived), ``down_sha`` (what it sent),
      ``peek_ok``, ``error``.
  python _sockpeer.py client IP PORT HEADER_JSON
      connects, sends the header and the transfer it describes, prints one JSON line:
      ``up_sha``, ``down_bytes``, ``down_sha``, ``error``, ``sent``.

Header fields (all optional): ``up`` bytes client->server, ``down`` bytes server->client,
``chunk`` bytes per send, ``seed``, ``send`` (``sendall`` | ``sendfile`` | ``splice``, the
client's and the server's way to write), ``read`` (``recv`` | ``peek`` | ``splice``, the server's
way to read), ``halfclose`` (the client shuts its write side after ``up``, the server sends
``down`` after reading EOF), ``server_delay`` (seconds the server waits before reading),
``client_delay`` (seconds the client waits before reading ``down``), ``sock_timeout`` (the client socket's timeout, default 30 s), ``pace`` (seconds between
the client's chunks), ``rr`` (that many request/response rounds of ``chunk`` bytes instead).
"""

import hashlib
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from typing import Any


def payload(seed: int, n: int) -> bytes:
    """The ``n`` bytes a transfer with ``seed`` carries."""
    return random.Random(seed).randbytes(n)


def expected_sha(seed: int, n: int) -> str:
    """The sha256 of :func:`payload`."""
    return hashlib.sha256(payload(seed, n)).hexdigest()


def _send(sock: socket.socket, data: bytes, how: str, chunk: int, pace: float) -> int:
    sent = 0
    if how == "sendfile":
        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.flush()
            while sent < len(data):
                n = os.sendfile(sock.fileno(), f.fileno(), sent, min(chunk, len(data) - sent))
                if n == 0:
                    break
                sent += n
                if pace:
                    time.sleep(pace)
        return sent
    if how == "splice":
        r, w = os.pipe()
        try:
            view = memoryview(data)
            while sent < len(data):
                part = view[sent:sent + min(chunk, 65536)]
                written = os.write(w, part)
                left = written
                while left:
                    left -= os.splice(r, sock.fileno(), left)
                sent += written
                if pace:
                    time.sleep(pace)
        finally:
            os.close(r)
            os.close(w)
        return sent
    view = memoryview(data)
    while sent < len(data):
        part = view[sent:sent + chunk]
        sock.sendall(part)
        sent += len(part)
        if pace:
            time.sleep(pace)
    return sent


def _recv_all(sock: socket.socket, how: str, want: int | None, first: bytes = b"") -> tuple[bytes, bool]:
    """Read ``want`` bytes (None: until EOF); returns them and whether every MSG_PEEK matched."""
    buf = bytearray(first)
    peek_ok = True
    pipe = os.pipe() if how == "splice" else None
    try:
        while want is None or len(buf) < want:
            size = 65536 if want is None else min(65536, want - len(buf))
            if pipe is not None:
                n = os.splice(sock.fileno(), pipe[1], size)
                data = os.read(pipe[0], n) if n else b""
            elif how == "peek":
                peeked = sock.recv(size, socket.MSG_PEEK)
                data = sock.recv(len(peeked)) if peeked else b""
                peek_ok = peek_ok and data == peeked
            else:
                data = sock.recv(size)
            if not data:
                break
            buf += data
    finally:
        if pipe is not None:
            os.close(pipe[0])
            os.close(pipe[1])
    return bytes(buf), peek_ok


def _header(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    buf = b""
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("no header")
        buf += data
    line, _, rest = buf.partition(b"\n")
    return json.loads(line), rest


def _handle(conn: socket.socket) -> None:
    out: dict[str, Any] = {"error": None}
    try:
        with conn:
            h, rest = _header(conn)
            seed, chunk = int(h.get("seed", 1)), int(h.get("chunk", 65536))
            if h.get("rr"):
                got = bytearray(rest)
                for _ in range(int(h["rr"])):
                    while len(got) < chunk:
                        data = conn.recv(chunk - len(got))
                        if not data:
                            raise ConnectionError("eof in rr")
                        got += data
                    conn.sendall(bytes(got[:chunk]))
                    del got[:chunk]
                out["rounds"] = int(h["rr"])
                return
            time.sleep(float(h.get("server_delay", 0)))
            up = int(h.get("up", 0))
            data, peek_ok = _recv_all(conn, h.get("read", "recv"), None if h.get("halfclose") else up, rest)
            out.update(up_bytes=len(data), up_sha=hashlib.sha256(data).hexdigest(), peek_ok=peek_ok)
            down = payload(seed + 1, int(h.get("down", 0)))
            _send(conn, down, h.get("send", "sendall"), chunk, 0)
            out["down_sha"] = hashlib.sha256(down).hexdigest()
    except OSError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        print(json.dumps(out), flush=True)


def server(port: int) -> None:
    """Serve checked transfers on ``port``, one thread per connection, until killed."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_handle, args=(conn,), daemon=True).start()


def client(ip: str, port: int, h: dict[str, Any]) -> None:
    """Run the transfer ``h`` describes against ``ip:port`` and print what this side saw."""
    out: dict[str, Any] = {"error": None, "sent": 0}
    seed, chunk = int(h.get("seed", 1)), int(h.get("chunk", 65536))
    try:
        with socket.create_connection((ip, port), timeout=float(h.get("sock_timeout", 30))) as s:
            s.sendall(json.dumps(h).encode() + b"\n")
            if h.get("rr"):
                msg = payload(seed, chunk)
                digest = hashlib.sha256()
                for _ in range(int(h["rr"])):
                    s.sendall(msg)
                    got = bytearray()
                    while len(got) < chunk:
                        data = s.recv(chunk - len(got))
                        if not data:
                            raise ConnectionError("eof in rr")
                        got += data
                    digest.update(got)
                    out["sent"] += chunk
                out.update(rounds=int(h["rr"]), echo_ok=digest.hexdigest() == hashlib.sha256(
                    msg * int(h["rr"])).hexdigest())
                return
            up = payload(seed, int(h.get("up", 0)))
            out["sent"] = _send(s, up, h.get("send", "sendall"), chunk, float(h.get("pace", 0)))
            out["up_sha"] = hashlib.sha256(up).hexdigest()
            if h.get("halfclose"):
                s.shutdown(socket.SHUT_WR)
            time.sleep(float(h.get("client_delay", 0)))
            data, _ = _recv_all(s, "recv", None)
            out.update(down_bytes=len(data), down_sha=hashlib.sha256(data).hexdigest())
    except OSError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]))
    else:
        client(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))
