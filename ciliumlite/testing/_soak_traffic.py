"""The soak's traffic client (stdlib only; started by path inside a pod or the outside host, never imported).

Usage: ``python _soak_traffic.py SPEC_JSON``. The spec::

    {"long": [[label, ip, port, count], ...],   # count long-lived TCP connections to each target
     "new":  [[label, ip, port], ...],          # new connections, round robin, one every new_interval
     "udp":  [[label, ip, port], ...],          # request/response datagrams, one every interval each
     "interval": 0.2, "new_interval": 0.1, "report": 1.0, "limit": 900, "udp_wait": 3.0}

Long-lived connections send a numbered line with a 32-byte pattern every ``interval`` and check
that the whole line comes back, followed by ``|server`` (the stream server of
``ciliumlite/connectivity/_stream.py`` names itself after its pod). An error, EOF, a wrong or
late answer (:data:`ANSWER_TIMEOUT`) is a *break*: it is reported with the server the connection
last talked to, the time and the error, and the connection is opened again (a failed reopen is a
connect failure of that path). New connections connect, send one line, check its echo and close.
UDP datagrams are numbered; one not answered within ``udp_wait`` seconds is lost.

Every ``report`` seconds, and once more after SIGUSR1 or ``limit`` seconds (then ``"final":
true``), it prints one JSON line of cumulative counts: ``{"t", "final", "paths": [...], "breaks":
[...]}``. Every loop is bounded by the stop signal and the limit; lists are bounded too.
"""

import json
import signal
import socket
import sys
import threading
import time
from typing import Any

ANSWER_TIMEOUT = 3.0
MAX_BREAKS = 500
MAX_ERRORS = 20
PATTERN = b"0123456789abcdefghijklmnopqrstuv"


class Counts:
    """The cumulative counts of one path (target and kind)."""

    def __init__(self, label: str, kind: str, ip: str, port: int) -> None:
        self.label, self.kind, self.ip, self.port = label, kind, ip, port
        self.sent = self.answered = self.failed = self.broken = self.opened = 0
        self.bytes_sent = self.bytes_checked = 0
        self.max_rtt = 0.0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {text}")

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {"label": self.label, "kind": self.kind, "target": f"{self.ip}:{self.port}",
                    "sent": self.sent, "answered": self.answered, "failed": self.failed, "broken": self.broken,
                    "opened": self.opened, "bytes_sent": self.bytes_sent, "bytes_checked": self.bytes_checked,
                    "max_rtt": round(self.max_rtt, 4), "errors": list(self.errors)}


BREAKS: list[dict[str, Any]] = []
BREAKS_LOCK = threading.Lock()


def _line(n: int) -> bytes:
    return b"%d:%s" % (n, PATTERN)


def _long_lived(p: Counts, stop: threading.Event, interval: float, opened: threading.Semaphore) -> None:
    first = True
    while not stop.is_set():
        try:
            s = socket.create_connection((p.ip, p.port), timeout=ANSWER_TIMEOUT)
        except OSError as exc:
            with p.lock:
                p.failed += 1
            p.error(f"connect: {exc}")
            if first:
                opened.release()
                first = False
            stop.wait(1.0)
            continue
        with p.lock:
            p.opened += 1
        if first:
            opened.release()
            first = False
        server, n, t_open = "", 0, time.time()
        with s:
            f = s.makefile("rb")
            while not stop.is_set():
                line = _line(n)
                t0 = time.monotonic()
                try:
                    s.sendall(line + b"\n")
                    with p.lock:
                        p.sent += 1
                        p.bytes_sent += len(line) + 1
                    reply = f.readline()
                    if not reply.startswith(line + b"|"):
                        raise OSError(f"bad or no answer {reply[:60]!r} to line {n}")
                except OSError as exc:
                    with p.lock:
                        p.broken += 1
                    p.error(f"{server or '?'} line {n}: {exc}")
                    with BREAKS_LOCK:
                        if len(BREAKS) < MAX_BREAKS:
                            BREAKS.append({"label": p.label, "server": server, "t": round(time.time(), 3),
                                           "opened": round(t_open, 3), "lines": n, "error": str(exc)[:120]})
                    break
                rtt = time.monotonic() - t0
                server = reply[len(line) + 1:].strip().decode(errors="replace")
                with p.lock:
                    p.answered += 1
                    p.bytes_checked += len(reply)
                    p.max_rtt = max(p.max_rtt, rtt)
                n += 1
                stop.wait(interval)
        stop.wait(0.5)  # then open it again


def _new_connections(paths: list[Counts], stop: threading.Event, interval: float) -> None:
    i = 0
    while not stop.is_set():
        p = paths[i % len(paths)]
        i += 1
        t0 = time.monotonic()
        with p.lock:
            p.sent += 1
        line = _line(i)
        try:
            with socket.create_connection((p.ip, p.port), timeout=ANSWER_TIMEOUT) as s:
                s.sendall(line + b"\n")
                reply = s.makefile("rb").readline()
                if not reply.startswith(line + b"|"):
                    raise OSError(f"bad or no answer {reply[:60]!r}")
        except OSError as exc:
            with p.lock:
                p.failed += 1
            p.error(str(exc))
        else:
            with p.lock:
                p.answered += 1
                p.bytes_checked += len(reply)
                p.max_rtt = max(p.max_rtt, time.monotonic() - t0)
        stop.wait(interval)


def _datagrams(p: Counts, stop: threading.Event, interval: float, wait: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((p.ip, p.port))
    s.settimeout(0.2)
    pending: dict[int, float] = {}  # sent, not answered yet: number -> when
    lock = threading.Lock()
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                data = s.recv(2048)
            except OSError:
                continue  # a timeout, or an ICMP error for an earlier datagram (that one is lost)
            try:
                n = int(data.split(b"|", 1)[0])
            except ValueError:
                continue
            with lock:
                t0 = pending.pop(n, None)
            if t0 is not None:
                with p.lock:
                    p.answered += 1
                    p.max_rtt = max(p.max_rtt, time.monotonic() - t0)

    def expire(now: float) -> None:
        with lock:
            old = [n for n, t0 in pending.items() if now - t0 > wait]
            for n in old:
                del pending[n]
        if old:
            with p.lock:
                p.failed += len(old)
            p.error(f"{len(old)} datagrams unanswered (first {old[0]})")

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    n = 0
    while not stop.is_set():
        with lock:
            pending[n] = time.monotonic()
        with p.lock:
            p.sent += 1
        try:
            s.send(b"%d" % n)
        except OSError:
            pass  # expires as lost, like a datagram the network dropped
        n += 1
        expire(time.monotonic())
        stop.wait(interval)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        with lock:
            if not pending:
                break
        time.sleep(0.05)
    expire(time.monotonic() + wait + 1)
    done.set()
    rx.join(timeout=2)
    s.close()


def main(spec: dict[str, Any]) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    interval = float(spec.get("interval", 0.2))
    longs = [(Counts(label, "long", ip, int(port)), int(count)) for label, ip, port, count in spec.get("long", [])]
    news = [Counts(label, "new", ip, int(port)) for label, ip, port in spec.get("new", [])]
    udps = [Counts(label, "udp", ip, int(port)) for label, ip, port in spec.get("udp", [])]
    opened = threading.Semaphore(0)
    threads = [threading.Thread(target=_long_lived, args=(p, stop, interval, opened), daemon=True)
               for p, count in longs for _ in range(count)]
    n_long = len(threads)
    if news:
        threads.append(threading.Thread(target=_new_connections, args=(news, stop, float(spec.get("new_interval", 0.1))),
                                        daemon=True))
    wait = float(spec.get("udp_wait", 3.0))
    threads += [threading.Thread(target=_datagrams, args=(p, stop, interval, wait), daemon=True) for p in udps]
    for t in threads:
        t.start()
    for _ in range(n_long):
        opened.acquire(timeout=ANSWER_TIMEOUT + 2)
    print("running", flush=True)
    paths = [p for p, _ in longs] + news + udps
    started = time.monotonic()
    limit = float(spec.get("limit", 900))
    report = float(spec.get("report", 1.0))

    def emit(final: bool) -> None:
        with BREAKS_LOCK:
            breaks = list(BREAKS)
        print(json.dumps({"t": round(time.time(), 3), "final": final, "paths": [p.report() for p in paths],
                          "breaks": breaks}), flush=True)

    while not stop.is_set() and time.monotonic() - started < limit:
        stop.wait(report)
        if not stop.is_set():
            emit(False)
    stop.set()
    for t in threads:
        t.join(timeout=ANSWER_TIMEOUT + wait + 2)
    emit(True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
