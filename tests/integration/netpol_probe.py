"""Probe many targets at once from inside a pod (stdlib only; started by path, not imported).

Usage: python netpol_probe.py TIMEOUT TARGETS_JSON, TARGETS_JSON a list of ``[key, ip, port, proto]``
(proto ``tcp`` or ``udp``). Every target is probed concurrently, one thread each, so a step costs
one timeout however many flows are blocked: TCP connects, sends, half-closes (the lab echo server
answers after the client's FIN) and reads to EOF; UDP sends one datagram and waits for its echo.
Prints one JSON object ``{key: {"ok": bool, "server": name, "error": text}}``; ``server`` is the
name the lab echo server put in its reply (``payload|server|peer``), so the caller can tell that
the intended pod answered.
"""

import json
import socket
import sys
import threading


def probe(ip: str, port: int, proto: str, timeout: float) -> dict[str, object]:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    local = 0
    try:
        with socket.socket(socket.AF_INET, kind) as s:
            s.settimeout(timeout)
            try:
                s.connect((ip, port))
            finally:
                local = s.getsockname()[1]
            if proto == "tcp":
                s.sendall(b"p")
                s.shutdown(socket.SHUT_WR)
                chunks = []
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    chunks.append(b)
                data = b"".join(chunks)
            else:
                s.send(b"p")
                data = s.recv(65536)
    except OSError as exc:
        return {"ok": False, "server": "", "error": f"{type(exc).__name__}: {exc} (local port {local})"}
    parts = data.decode(errors="replace").split("|")
    return {"ok": len(parts) == 3, "server": parts[1] if len(parts) == 3 else "", "error": ""}


def main() -> None:
    timeout, targets = float(sys.argv[1]), json.loads(sys.argv[2])
    out: dict[str, dict[str, object]] = {}

    def one(key: str, ip: str, port: int, proto: str) -> None:
        out[key] = probe(ip, port, proto, timeout)

    threads = [threading.Thread(target=one, args=tuple(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
