#!/usr/bin/env python3
"""TCP request/response latency for scripts/bench.sh: a ping-pong over one connection.

    latency.py server HOST PORT READY_FILE   echo server; creates READY_FILE once it listens
    latency.py client HOST PORT [--count N] [--size B] [--warmup N] [--timeout S]
                                             N round trips of B bytes with TCP_NODELAY; prints
                                             "p50_us p99_us" (nearest rank) on one line

Each round trip sends B bytes and waits until all B have come back; the first --warmup round trips
are not measured. Every socket operation has a timeout, so the client always ends.
"""
import argparse
import math
import socket
import socketserver
import sys
import time


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(60)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                sock.sendall(data)
        except OSError:
            return


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def server(host, port, ready_file):
    with Server((host, port), Echo) as srv:
        open(ready_file, "w").close()
        srv.serve_forever()


def percentile(sorted_values, p):
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def client(host, port, count, size, warmup, timeout):
    payload = bytes(i % 251 for i in range(size))
    samples = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(size)
        view = memoryview(buf)
        for i in range(warmup + count):
            start = time.perf_counter_ns()
            sock.sendall(payload)
            got = 0
            while got < size:
                n = sock.recv_into(view[got:])
                if n == 0:
                    sys.exit("the server closed the connection")
                got += n
            elapsed = time.perf_counter_ns() - start
            if bytes(buf) != payload:
                sys.exit("echo mismatch")
            if i >= warmup:
                samples.append(elapsed)
    samples.sort()
    print(f"{percentile(samples, 50) / 1000:.0f} {percentile(samples, 99) / 1000:.0f}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("ready_file")
    c = sub.add_parser("client")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--count", type=int, default=2000)
    c.add_argument("--size", type=int, default=64)
    c.add_argument("--warmup", type=int, default=100)
    c.add_argument("--timeout", type=float, default=5.0)
    a = ap.parse_args()
    if a.cmd == "server":
        server(a.host, a.port, a.ready_file)
    else:
        client(a.host, a.port, a.count, a.size, a.warmup, a.timeout)


if __name__ == "__main__":
    main()
