#!/usr/bin/env python3
"""A stranger's connection flood, for tests/netns/flood.sh: TCP connections to the server that never
send a byte, from many source addresses, held open and renewed at a rate.

    flood.py HOST PORT --sources 198.18.9.10 --count 64 --hold 2000 --rate 300 --duration 20 --stats F

Keeps up to --hold connections open (the oldest closed first when a new one needs room), opens
--rate new ones per second, round-robin over --count consecutive source addresses starting at
--sources, and stops after --duration seconds (at most 120). Prints (and writes to --stats) how many
it opened, how many the server closed or refused, and how many were open at the end.
"""
import argparse
import collections
import errno
import ipaddress
import json
import resource
import selectors
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--sources", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--hold", type=int, default=1000)
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--stats")
    a = p.parse_args()
    duration = min(a.duration, 120)
    hold = min(a.hold, 20000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, hold + 256), hard))
    base = ipaddress.ip_address(a.sources)
    sources = [str(base + i) for i in range(a.count)]
    sel = selectors.DefaultSelector()
    open_socks = collections.deque()
    stats = collections.Counter()
    start = time.monotonic()
    next_open = start
    n = 0
    while (now := time.monotonic()) - start < duration:
        # Open what the rate allows by now.
        while next_open <= now:
            next_open += 1 / a.rate
            if len(open_socks) >= hold:
                old = open_socks.popleft()
                sel.unregister(old)
                old.close()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((sources[n % len(sources)], 0))
            n += 1
            err = s.connect_ex((a.host, a.port))
            if err not in (0, errno.EINPROGRESS):
                stats["connect_failed"] += 1
                s.close()
                continue
            stats["opened"] += 1
            open_socks.append(s)
            sel.register(s, selectors.EVENT_READ)
        # Whatever the server closed: it reads as EOF or a reset.
        for key, _ in sel.select(timeout=max(0, min(next_open - time.monotonic(), 0.05))):
            s = key.fileobj
            try:
                data = s.recv(1)
                stats["server_closed" if not data else "server_spoke"] += 1
            except OSError:
                stats["server_reset"] += 1
            sel.unregister(s)
            open_socks.remove(s)
            s.close()
    stats["open_at_end"] = len(open_socks)
    for s in open_socks:
        s.close()
    line = json.dumps(dict(stats), sort_keys=True)
    print(f"flood: {line}")
    if a.stats:
        with open(a.stats, "w") as f:
            f.write(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
