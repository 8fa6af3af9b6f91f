"""One TCP or UDP request from inside a pod (stdlib only; started by path, not imported).

Usage: python _probe.py tcp|udp IP PORT PAYLOAD TIMEOUT  -> one JSON line on stdout.
"""

import json
import socket
import sys
import time


def main() -> None:
    proto, ip, port, payload, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    out: dict[str, object] = {"ok": False}
    t0 = time.perf_counter()
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        try:
            if proto == "tcp":
                s.connect((ip, port))
                out["peer"] = list(s.getpeername())
                s.sendall(payload.encode())
                s.shutdown(socket.SHUT_WR)
                chunks = []
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    chunks.append(b)
                data = b"".join(chunks)
            else:
                s.connect((ip, port))
                out["peer"] = list(s.getpeername())
                s.send(payload.encode())
                data, src = s.recvfrom(65536)
                out["reply_from"] = list(src)
            out["local"] = list(s.getsockname())
            out.update(ok=True, reply=data.decode(errors="replace"))
        except OSError as exc:
            out.update(error=f"{type(exc).__name__}: {exc}", errno=exc.errno)
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
