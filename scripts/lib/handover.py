#!/usr/bin/env python3
"""The two ends of the handover benchmark (scripts/bench-handover.sh).

stream-server: sends to every connection, forever, paced at --rate bytes/s (0: as fast as it can).
gap-client:    receives one stream; once the file --mark exists (the harness is about to cut or switch
               a link) it records the longest time without a byte, until --window seconds after the
               mark or until --stop exists; writes that pause in ms to --out ("never" when no byte came
               after the mark); with --from S, only the gaps that end S s or more after the mark count
               (a later stall, not the event's own pause). Plain TCP, or MPTCP with --mptcp (no
               mptcpize needed).
"""
import argparse
import os
import socket
import sys
import threading
import time

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)


def make_socket(mptcp):
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP if mptcp else 0)


def stream_server(host, port, rate, mptcp, ready):
    srv = make_socket(mptcp)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(16)
    open(ready, "w").close()
    # Paced: a write per millisecond, so the pacing itself adds at most ~1 ms to any gap measured.
    chunk = os.urandom(max(1024, rate // 1000) if rate else 65536)

    def serve(conn):
        start = time.monotonic()
        sent = 0
        try:
            while True:
                conn.sendall(chunk)
                sent += len(chunk)
                if rate:
                    ahead = sent / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)  # pacing
        except OSError:
            conn.close()

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def gap_client(host, port, mptcp, ready, mark, stop, window, at_least, out, timeout, count_from=0.0):
    sock = make_socket(mptcp)
    sock.settimeout(5)
    sock.connect((host, port))
    sock.settimeout(0.01)
    got = 0
    deadline = time.monotonic() + timeout
    marked_at = None
    last = None
    worst = 0.0
    resumed = False
    calm_since = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if marked_at is None and os.path.exists(mark):
            marked_at = now
            last = now
        if marked_at is not None and (now - marked_at > window or os.path.exists(stop)):
            break
        # Done once the event is over (at least `at_least` s) and bytes have flowed without a pause
        # over 20 ms for a second.
        if (resumed and now - marked_at > at_least and now - last < 0.05 and calm_since is not None
                and now - calm_since > 1.0):
            break
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        except OSError:
            break
        if not data:
            break
        now = time.monotonic()
        got += len(data)
        if got >= 1 << 20 and not os.path.exists(ready):
            open(ready, "w").close()
        if marked_at is not None:
            gap = now - last
            if now - marked_at >= count_from:
                worst = max(worst, gap)
            if gap > 0.02 or calm_since is None:
                calm_since = now
            last = now
            resumed = True
    # A stream with no byte in the last second of the window never came back; otherwise the pause
    # still running at the end counts too.
    if marked_at is None:
        result = "no-mark"
    else:
        tail = time.monotonic() - last
        result = "never" if not resumed or tail > 1.0 else f"{max(worst, tail) * 1000:.1f}"
    with open(out, "w") as f:
        f.write(result + "\n")
    sock.close()
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("stream-server")
    q.add_argument("host"), q.add_argument("port", type=int), q.add_argument("ready")
    q.add_argument("--rate", type=int, default=2_000_000), q.add_argument("--mptcp", action="store_true")
    q = sub.add_parser("gap-client")
    q.add_argument("host"), q.add_argument("port", type=int)
    q.add_argument("--ready", required=True), q.add_argument("--mark", required=True)
    q.add_argument("--stop", required=True), q.add_argument("--out", required=True)
    q.add_argument("--window", type=float, default=10), q.add_argument("--timeout", type=float, default=60)
    q.add_argument("--from", dest="count_from", type=float, default=0.0)
    q.add_argument("--at-least", type=float, default=0, help="the event lasts at least this long (s)")
    q.add_argument("--mptcp", action="store_true")
    a = p.parse_args()
    if a.cmd == "stream-server":
        stream_server(a.host, a.port, a.rate, a.mptcp, a.ready)
    else:
        return gap_client(a.host, a.port, a.mptcp, a.ready, a.mark, a.stop, a.window, a.at_least, a.out,
                          a.timeout, a.count_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())
