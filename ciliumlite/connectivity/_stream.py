"""Steady traffic for the no-interrupted-connections scenarios (stdlib only; started by path, not imported).

Usage:
  python _stream.py server NAME PORT
      a line-echo server on TCP PORT (answers every line ``N`` with ``N|NAME``, a thread per
      connection) and a datagram echo on UDP PORT (``D`` -> ``D|NAME``); prints ``ready``.
  python _stream.py client IP PORT INTERVAL LIMIT
      one connection kept busy: prints ``connected``, then sends a numbered line every INTERVAL
      seconds until SIGUSR1 or LIMIT seconds, and prints one JSON line: sent, answered, error,
      max_rtt, server (and peer).
  python _stream.py traffic SPEC_JSON
      every path of the spec at once, until SIGUSR1 or ``limit`` seconds: a long-lived TCP
      connection per ``long`` target (a line every ``interval``; one error, EOF, wrong or late
      answer and it counts as broken and is not reopened), new connections in a loop to every
      ``new`` target (connect, one line, its answer, close; any failure is a failed connect), and
      numbered datagrams to every ``udp`` target (lost: no answer ``udp_wait`` s after the last
      one). Prints ``running`` once the long-lived connections are open, then one JSON line:
      ``{"paths": [{"label", "kind", "target", "sent", "answered", "broken" | "failed" | "lost",
      "server", "max_rtt", "errors"}]}``. Every loop is bounded by the stop signal and ``limit``.
"""

import json
import signal
import socket
import sys
import threading
import time
from typing import Any

#: How long one answer may take before the connection counts as broken (or the connect as failed).
ANSWER_TIMEOUT = 3.0


def serve(name: str, port: int) -> None:
    """Echo lines back with ``|NAME`` appended (TCP) and datagrams likewise (UDP), until killed."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(128)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    tag = b"|" + name.encode()

    def answer(conn: socket.socket) -> None:
        with conn:
            try:
                for line in conn.makefile("rb"):
                    conn.sendall(line.rstrip(b"\n") + tag + b"\n")
            except OSError:
                pass  # the client went away (or reset): its side counts what that means

    def datagrams() -> None:
        while True:
            data, peer = udp.recvfrom(2048)
            udp.sendto(data + tag, peer)

    threading.Thread(target=datagrams, daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def client(ip: str, port: int, interval: float, limit: float) -> None:
    """Keep one connection busy and report what it saw (see the module docstring)."""
    stop: list[int] = []
    signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
    out: dict[str, Any] = {"sent": 0, "answered": 0, "error": "", "max_rtt": 0.0, "server": ""}
    try:
        s = socket.create_connection((ip, port), timeout=ANSWER_TIMEOUT)
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


class Path:
    """The counts of one path (a target and a kind of traffic)."""

    def __init__(self, label: str, kind: str, ip: str, port: int) -> None:
        self.label, self.kind, self.ip, self.port = label, kind, ip, port
        self.sent = self.answered = self.bad = 0
        self.server = ""
        self.max_rtt = 0.0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def error(self, text: str) -> None:
        with self.lock:
            self.bad += 1
            if len(self.errors) < 5:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {text}")

    def answer(self, reply: bytes, rtt: float) -> None:
        with self.lock:
            self.answered += 1
            self.server = reply.split(b"|", 1)[1].strip().decode(errors="replace") if b"|" in reply else "?"
            self.max_rtt = max(self.max_rtt, rtt)

    def report(self) -> dict[str, Any]:
        bad = {"long": "broken", "new": "failed", "udp": "lost"}[self.kind]
        return {"label": self.label, "kind": self.kind, "target": f"{self.ip}:{self.port}", "sent": self.sent,
                "answered": self.answered, bad: self.bad, "server": self.server,
                "max_rtt": round(self.max_rtt, 4), "errors": self.errors}


def _long_lived(p: Path, stop: threading.Event, interval: float, opened: threading.Semaphore) -> None:
    try:
        s = socket.create_connection((p.ip, p.port), timeout=ANSWER_TIMEOUT)
    except OSError as exc:
        p.error(f"connect: {exc}")
        opened.release()
        return
    opened.release()
    with s:
        f = s.makefile("rb")
        while not stop.is_set():
            n = p.sent
            t0 = time.monotonic()
            try:
                s.sendall(b"%d\n" % n)
                p.sent += 1
                line = f.readline()
                if not line.startswith(b"%d|" % n):
                    raise OSError(f"bad or no answer {line[:60]!r} to line {n}")
            except OSError as exc:
                p.error(f"line {n}: {exc}")
                return  # a broken connection stays broken: that is what the scenario counts
            p.answer(line, time.monotonic() - t0)
            stop.wait(interval)


def _new_connections(paths: list[Path], stop: threading.Event, interval: float) -> None:
    i = 0
    while not stop.is_set():
        p = paths[i % len(paths)]
        i += 1
        t0 = time.monotonic()
        p.sent += 1
        try:
            with socket.create_connection((p.ip, p.port), timeout=ANSWER_TIMEOUT) as s:
                s.sendall(b"0\n")
                line = s.makefile("rb").readline()
                if not line.startswith(b"0|"):
                    raise OSError(f"bad or no answer {line[:60]!r}")
        except OSError as exc:
            p.error(str(exc))
        else:
            p.answer(line, time.monotonic() - t0)
        stop.wait(interval)


def _datagrams(p: Path, stop: threading.Event, interval: float, wait: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((p.ip, p.port))
    s.settimeout(0.2)
    seen: set[int] = set()
    sent_at: dict[int, float] = {}
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                data = s.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                continue  # an ICMP error for an earlier datagram: that one counts as lost
            try:
                n = int(data.split(b"|", 1)[0])
            except ValueError:
                continue
            if n not in seen and n in sent_at:
                seen.add(n)
                p.answer(data, time.monotonic() - sent_at[n])

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    while not stop.is_set():
        n = p.sent
        sent_at[n] = time.monotonic()
        p.sent += 1
        try:
            s.send(b"%d" % n)
        except OSError:
            pass  # counted as lost below, like a datagram the network dropped
        stop.wait(interval)
    end = time.monotonic() + wait
    while len(seen) < p.sent and time.monotonic() < end:
        time.sleep(0.05)
    done.set()
    rx.join(timeout=2)
    lost = p.sent - len(seen)
    if lost:
        p.bad = lost
        missing = sorted(set(range(p.sent)) - seen)
        p.errors.append(f"{lost} of {p.sent} datagrams unanswered (first: {missing[:8]})")


def traffic(spec: dict[str, Any]) -> None:
    """Run every path of ``spec`` until SIGUSR1 or its limit; print the counts (module docstring)."""
    stop = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    interval = float(spec.get("interval", 0.02))
    longs = [Path(label, "long", ip, int(port)) for label, ip, port in spec.get("long", [])]
    news = [Path(label, "new", ip, int(port)) for label, ip, port in spec.get("new", [])]
    udps = [Path(label, "udp", ip, int(port)) for label, ip, port in spec.get("udp", [])]
    opened = threading.Semaphore(0)
    threads = [threading.Thread(target=_long_lived, args=(p, stop, interval, opened), daemon=True) for p in longs]
    if news:
        threads.append(threading.Thread(target=_new_connections, args=(news, stop, interval), daemon=True))
    wait = float(spec.get("udp_wait", 2.0))
    threads += [threading.Thread(target=_datagrams, args=(p, stop, interval, wait), daemon=True) for p in udps]
    for t in threads:
        t.start()
    for _ in longs:
        opened.acquire(timeout=ANSWER_TIMEOUT + 2)
    print("running", flush=True)
    stop.wait(float(spec.get("limit", 120)))
    stop.set()
    for t in threads:
        t.join(timeout=ANSWER_TIMEOUT + wait + 2)
    print(json.dumps({"paths": [p.report() for p in longs + news + udps]}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "traffic":
        traffic(json.loads(sys.argv[2]))
    else:
        client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
