#!/usr/bin/env python3
"""A plain TCP relay for scripts/bench.sh: the reference for what the relay's own legs cost.

    tcp_relay.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT READY_FILE [--mode splice|copy]

Every connection accepted on LISTEN is relayed, both ways, to a new connection to TARGET; a FIN is
passed on as a FIN (shutdown), so iperf3 and the request/response client end normally. Two of these,
one in each namespace, give an app's bytes the same three kernel TCP connections as roamtun (app to
relay, relay to relay over the veth, relay to app), with no encryption, no TUN and no user-space
TCP: what the relay's shape alone costs on the machine the benchmark runs on.

    splice  moves the bytes through a pipe (splice(2)): no copy into user space at all
    copy    reads each buffer into user space and writes it out: one copy in and one out, as any
            relay that must touch the bytes (to encrypt them) pays at least

Blocking sockets, one thread per direction; the bench stops the process by PID.
"""
import argparse
import fcntl
import os
import socket
import sys
import threading

CHUNK = 1 << 20
F_SETPIPE_SZ = 1031


def pump_splice(src, dst):
    r, w = os.pipe()
    try:
        fcntl.fcntl(r, F_SETPIPE_SZ, CHUNK)
        # No SPLICE_F_MORE: like MSG_MORE it would hold a small write back (a request/response
        # round trip would wait for the kernel's 200 ms timer).
        while True:
            n = os.splice(src.fileno(), w, CHUNK, flags=os.SPLICE_F_MOVE)
            if n == 0:
                return
            while n:
                n -= os.splice(r, dst.fileno(), n, flags=os.SPLICE_F_MOVE)
    finally:
        os.close(r)
        os.close(w)


def pump_copy(src, dst):
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = src.recv_into(buf)
        if n == 0:
            return
        dst.sendall(view[:n])


def pump(src, dst, how, done):
    try:
        how(src, dst)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        # One side reset: reset the other too rather than leave it waiting.
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    finally:
        done.release()


def serve(conn, target, how):
    try:
        out = socket.create_connection(target, timeout=10)
    except OSError as err:
        print(f"tcp_relay: cannot reach {target}: {err}", file=sys.stderr)
        conn.close()
        return
    out.settimeout(None)
    for s in (conn, out):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done = threading.Semaphore(0)
    for src, dst in ((conn, out), (out, conn)):
        threading.Thread(target=pump, args=(src, dst, how, done), daemon=True).start()
    done.acquire()
    done.acquire()
    conn.close()
    out.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("listen_host")
    p.add_argument("listen_port", type=int)
    p.add_argument("target_host")
    p.add_argument("target_port", type=int)
    p.add_argument("ready_file")
    p.add_argument("--mode", choices=("splice", "copy"), default="splice")
    a = p.parse_args()
    how = pump_splice if a.mode == "splice" else pump_copy
    with socket.create_server((a.listen_host, a.listen_port), reuse_port=False) as srv:
        open(a.ready_file, "w").close()
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn, (a.target_host, a.target_port), how), daemon=True).start()


if __name__ == "__main__":
    main()
