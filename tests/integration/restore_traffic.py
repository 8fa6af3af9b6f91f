"""Steady traffic for test_restore.py, run inside a pod namespace (``ip netns exec``).

``server PORT``: a TCP echo server (a thread per connection) and a UDP echo server on PORT; prints
``ready``. ``client SPEC_JSON``: until stdin closes, keeps ``long`` long-lived TCP connections to
each target exchanging a message every 20 ms, opens new connections in a loop and sends numbered
UDP datagrams; then prints one JSON line of counts: ``broken`` (a long-lived connection saw an
error, EOF, a wrong echo or no echo within 3 s), ``connect_failed`` (a new connection that did not
connect or echo within 3 s), ``udp_sent`` / ``udp_lost`` (datagrams without an echo 2 s after the
end), ``exchanges`` and ``new_ok`` (how much traffic there was). Every loop is bounded by the
stop signal and by ``max_seconds``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

TIMEOUT = 3.0


def serve(port: int) -> None:
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(256)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while True:
            conn, _ = tcp.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def udp_echo() -> None:
        while True:
            data, peer = udp.recvfrom(2048)
            udp.sendto(data, peer)

    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=udp_echo, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills us)


class Client:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"broken": 0, "connect_failed": 0, "udp_sent": 0, "udp_lost": 0, "exchanges": 0, "new_ok": 0,
                       "long": 0}
        self.errors: list[str] = []

    def add(self, key: str, n: int = 1, error: str = "") -> None:
        with self.lock:
            self.counts[key] += n
            if error and len(self.errors) < 20:
                self.errors.append(error)

    def long_lived(self, host: str, port: int, ready: threading.Barrier) -> None:
        try:
            s = socket.create_connection((host, port), timeout=TIMEOUT)
        except OSError as exc:
            self.add("broken", error=f"long {host}:{port} connect: {exc}")
            ready.abort()
            return
        self.add("long")
        try:
            ready.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        i = 0
        with s:
            while not self.stop.is_set():
                msg = f"{i:08d}".encode()
                try:
                    s.sendall(msg)
                    got = b""
                    while len(got) < len(msg):
                        chunk = s.recv(len(msg) - len(got))
                        if not chunk:
                            raise OSError("EOF")
                        got += chunk
                    if got != msg:
                        raise OSError(f"echo {got!r} for {msg!r}")
                except OSError as exc:
                    self.add("broken", error=f"long {host}:{port}: {exc}")
                    return
                self.add("exchanges")
                i += 1
                self.stop.wait(0.02)

    def new_connections(self, targets: list[list[Any]]) -> None:
        i = 0
        while not self.stop.is_set():
            host, port = targets[i % len(targets)]
            i += 1
            try:
                with socket.create_connection((host, port), timeout=TIMEOUT) as s:
                    s.sendall(b"hello")
                    if s.recv(16) != b"hello":
                        raise OSError("bad echo")
                self.add("new_ok")
            except OSError as exc:
                self.add("connect_failed", error=f"new {host}:{port}: {exc}")
            self.stop.wait(0.01)

    def udp(self, host: str, port: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((host, port))
        s.settimeout(0.2)
        seen: set[int] = set()
        sent = 0

        def receive() -> None:
            while True:
                try:
                    data = s.recv(64)
                except TimeoutError:
                    if self.stop.is_set() and time.monotonic() > deadline[0]:
                        return
                    continue
                except OSError:
                    continue  # a refused send shows up here; the datagram counts as lost
                seen.add(int(data))

        deadline = [float("inf")]
        rx = threading.Thread(target=receive, daemon=True)
        rx.start()
        while not self.stop.is_set():
            try:
                s.send(str(sent).encode())
            except OSError:
                pass
            sent += 1
            self.stop.wait(0.005)
        deadline[0] = time.monotonic() + 2.0
        rx.join(timeout=5)
        self.add("udp_sent", sent)
        self.add("udp_lost", sent - len(seen & set(range(sent))), error="" if len(seen) >= sent else
                 f"udp {host}:{port}: {sent - len(seen)} lost")

    def run(self) -> None:
        spec = self.spec
        n_long = int(spec["long"]) * len(spec["long_targets"])
        ready = threading.Barrier(n_long + 1)
        threads = [threading.Thread(target=self.long_lived, args=(h, p, ready))
                   for h, p in spec["long_targets"] for _ in range(int(spec["long"]))]
        threads += [threading.Thread(target=self.new_connections, args=(spec["new_targets"],))]
        threads += [threading.Thread(target=self.udp, args=(h, p)) for h, p in spec["udp_targets"]]
        for t in threads:
            t.start()
        try:
            ready.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        print("running", flush=True)
        end = time.monotonic() + float(spec.get("max_seconds", 120))
        watcher = threading.Thread(target=lambda: (sys.stdin.read(), self.stop.set()), daemon=True)
        watcher.start()
        while not self.stop.is_set() and time.monotonic() < end:
            self.stop.wait(0.1)
        self.stop.set()
        for t in threads:
            t.join(timeout=10)
        print(json.dumps({**self.counts, "errors": self.errors}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]))
    else:
        Client(json.loads(sys.argv[2])).run()
