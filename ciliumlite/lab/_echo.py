"""A TCP+UDP echo server run inside a pod (stdlib only; started by path, not imported).

Reply: ``<payload>|<server name>|<peer ip>:<peer port>`` so tests see who answered and whom it saw.
Usage: python _echo.py NAME PORT [PORT ...]; prints "ready" once listening; runs until killed.
"""

import selectors
import socket
import sys


def main() -> None:
    name, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
    sel = selectors.DefaultSelector()
    for port in ports:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("0.0.0.0", port))
        t.listen(128)
        sel.register(t, selectors.EVENT_READ, "tcp")
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", port))
        sel.register(u, selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if key.data == "tcp":
                conn, peer = sock.accept()
                conn.settimeout(2)
                try:
                    data = b""
                    while len(data) < (1 << 24):  # the client half-closes when done
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(data + f"|{name}|{peer[0]}:{peer[1]}".encode())
                except OSError:
                    pass
                finally:
                    conn.close()
            else:
                data, peer = sock.recvfrom(65536)
                sock.sendto(data + f"|{name}|{peer[0]}:{peer[1]}".encode(), peer)


if __name__ == "__main__":
    main()
