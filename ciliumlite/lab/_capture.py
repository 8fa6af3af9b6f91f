"""Capture IPv4 frames on one device inside a namespace (stdlib only; started by path, not imported).

Usage: python _capture.py IFNAME SECONDS MAX_FRAMES. Prints "ready" once bound, then one line per
frame: "<direction> <hex>" (direction "in" or "out"), and exits at the deadline or frame limit.
"""

import select
import socket
import sys
import time

ETH_P_ALL = 0x0003  # outgoing frames reach only ETH_P_ALL sockets
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4


def main() -> None:
    ifname, seconds, limit = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((ifname, ETH_P_ALL))
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        n = 0
        while n < limit and (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            frame, addr = s.recvfrom(65535)
            if len(frame) < 34 or frame[12:14] != b"\x08\x00":
                continue
            print("out" if addr[2] == PACKET_OUTGOING else "in", frame.hex(), flush=True)
            n += 1


if __name__ == "__main__":
    main()
