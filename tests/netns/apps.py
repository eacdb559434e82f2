#!/usr/bin/env python3
"""The apps the netns tests run on each end: small servers and clients that check what they receive.

Every client exits 0 only when what it verified is right, prints one line saying what it measured,
and bounds its own run time. Servers run until killed (the harness kills them by PID).
"""
import argparse
import asyncio
import hashlib
import http.server
import os
import socket
import sys
import time


def log(msg):
    print(msg, flush=True)


# ---- TCP echo: many concurrent connections, every byte compared ----------------------------------

async def echo_handler(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    finally:
        writer.close()


async def echo_server(host, port, ready_file):
    server = await asyncio.start_server(echo_handler, host, port, backlog=1024)
    open(ready_file, "w").close()
    async with server:
        await server.serve_forever()


async def echo_one(host, port, size, seed):
    payload = hashlib.shake_256(seed.to_bytes(8, "big")).digest(size)
    reader, writer = await asyncio.open_connection(host, port)

    async def send():
        for i in range(0, size, 65536):
            writer.write(payload[i:i + 65536])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    got = bytearray()
    while True:
        chunk = await reader.read(262144)
        if not chunk:
            break
        got += chunk
    await sender
    writer.close()
    return got == payload, len(got)


async def echo_clients(host, port, count, size, timeout):
    start = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(echo_one(host, port, size, i) for i in range(count)), return_exceptions=True), timeout)
    ok = sum(1 for r in results if r is not None and not isinstance(r, BaseException) and r[0])
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    errors += [f"connection {i}: got {r[1]} bytes, wrong content" if r[1] == size else f"connection {i}: got {r[1]} of {size} bytes"
               for i, r in enumerate(results) if not isinstance(r, BaseException) and not r[0]]
    secs = time.monotonic() - start
    log(f"echo: {ok}/{count} connections returned all {size} bytes intact in {secs:.1f}s"
        + (f"; {len(errors)} failed, e.g. {errors[:3]}" if errors else ""))
    return 0 if ok == count else 1


# ---- who am I talking to: the server reports the peer address it sees ----------------------------

def peer_server(host, port, ready_file):
    srv = socket.create_server((host, port), reuse_port=True)
    open(ready_file, "w").close()
    while True:
        conn, addr = srv.accept()
        with conn:
            conn.sendall(f"{addr[0]}\n".encode())


def ask_peer(host, port):
    with socket.create_connection((host, port), timeout=10) as s:
        print(s.makefile().readline().strip())
    return 0


# ---- half-close: the client shuts its sending side, the server answers after EOF -----------------

def halfclose_server(host, port, ready_file):
    srv = socket.create_server((host, port), reuse_port=True)
    open(ready_file, "w").close()
    while True:
        conn, _ = srv.accept()
        with conn:
            h = hashlib.sha256()
            n = 0
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                h.update(data)
                n += len(data)
            # Only after the client's FIN: the answer proves the FIN travelled and the way back is open.
            conn.sendall(f"{n} {h.hexdigest()}\n".encode())


def halfclose_client(host, port, size):
    payload = os.urandom(size)
    with socket.create_connection((host, port), timeout=20) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        answer = s.makefile().readline().split()
    expected = [str(size), hashlib.sha256(payload).hexdigest()]
    if answer != expected:
        log(f"half-close: server answered {answer}, expected {expected}")
        return 1
    log(f"half-close: server got all {size} bytes after our FIN and answered on the open half")
    return 0


# ---- refused: a connection to a closed port must fail fast and as a refusal ----------------------

def refused(host, port, limit):
    start = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=10).close()
        log("refused: the connection was accepted")
        return 1
    except ConnectionRefusedError:
        secs = time.monotonic() - start
        log(f"refused: ECONNREFUSED after {secs * 1000:.0f} ms")
        return 0 if secs < limit else 1
    except OSError as e:
        log(f"refused: failed with {e!r} instead of ECONNREFUSED")
        return 1


# ---- hold: keep a connection open and record how it ends ---------------------------------------------

def hold(host, port, ready_file, out_file, timeout):
    with socket.create_connection((host, port), timeout=10) as s:
        s.settimeout(timeout)
        open(ready_file, "w").close()
        try:
            data = s.recv(1)
            how = "eof" if not data else "data"
        except ConnectionResetError:
            how = "reset"
        except socket.timeout:
            how = "hang"
    with open(out_file, "w") as f:
        f.write(how + "\n")
    return 0


# ---- UDP echo with a bounded window; the count is reported -----------------------------------------

def udp_echo_server(host, port, ready_file):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    open(ready_file, "w").close()
    while True:
        data, addr = s.recvfrom(65535)
        s.sendto(data, addr)


def udp_client(host, port, count, window, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    s.settimeout(0.5)
    sent = received = 0
    seen = set()
    deadline = time.monotonic() + timeout
    while (sent < count or received < sent) and time.monotonic() < deadline:
        while sent < count and sent - received < window:
            s.send(sent.to_bytes(4, "big") + b"x" * 60)
            sent += 1
        try:
            data = s.recv(65535)
        except socket.timeout:
            # A datagram was lost: stop waiting for it so the window can move on.
            received += 1
            continue
        seq = int.from_bytes(data[:4], "big")
        if seq not in seen and data[4:] == b"x" * 60:
            seen.add(seq)
        received += 1
    log(f"udp: sent {sent}, echoed back {len(seen)} ({count - len(seen)} lost)")
    return 0 if len(seen) == count else 1


# ---- HTTP: GET a file, PUT a body; the server answers PUT with the body's sha256 ------------------

class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PUT(self):
        length = int(self.headers["Content-Length"])
        h = hashlib.sha256()
        while length:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            length -= len(chunk)
        body = (h.hexdigest() + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def http_server(host, port, root, ready_file):
    os.chdir(root)
    srv = http.server.ThreadingHTTPServer((host, port), Handler)
    open(ready_file, "w").close()
    srv.serve_forever()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ["echo-server", "peer-server", "halfclose-server", "udp-echo-server"]:
        q = sub.add_parser(name)
        q.add_argument("host"), q.add_argument("port", type=int), q.add_argument("ready_file")
    q = sub.add_parser("http-server")
    q.add_argument("host"), q.add_argument("port", type=int), q.add_argument("root"), q.add_argument("ready_file")
    q = sub.add_parser("echo-clients")
    q.add_argument("host"), q.add_argument("port", type=int)
    q.add_argument("--count", type=int, default=200), q.add_argument("--size", type=int, default=1 << 20)
    q.add_argument("--timeout", type=float, default=120)
    q = sub.add_parser("ask-peer")
    q.add_argument("host"), q.add_argument("port", type=int)
    q = sub.add_parser("halfclose-client")
    q.add_argument("host"), q.add_argument("port", type=int), q.add_argument("--size", type=int, default=1 << 20)
    q = sub.add_parser("refused")
    q.add_argument("host"), q.add_argument("port", type=int), q.add_argument("--limit", type=float, default=1.0)
    q = sub.add_parser("hold")
    q.add_argument("host"), q.add_argument("port", type=int), q.add_argument("ready_file"), q.add_argument("out_file")
    q.add_argument("--timeout", type=float, default=30)
    q = sub.add_parser("udp-client")
    q.add_argument("host"), q.add_argument("port", type=int)
    q.add_argument("--count", type=int, default=10000), q.add_argument("--window", type=int, default=32)
    q.add_argument("--timeout", type=float, default=60)
    a = p.parse_args()

    if a.cmd == "echo-server":
        asyncio.run(echo_server(a.host, a.port, a.ready_file))
    elif a.cmd == "echo-clients":
        return asyncio.run(echo_clients(a.host, a.port, a.count, a.size, a.timeout))
    elif a.cmd == "peer-server":
        peer_server(a.host, a.port, a.ready_file)
    elif a.cmd == "ask-peer":
        return ask_peer(a.host, a.port)
    elif a.cmd == "halfclose-server":
        halfclose_server(a.host, a.port, a.ready_file)
    elif a.cmd == "halfclose-client":
        return halfclose_client(a.host, a.port, a.size)
    elif a.cmd == "refused":
        return refused(a.host, a.port, a.limit)
    elif a.cmd == "hold":
        return hold(a.host, a.port, a.ready_file, a.out_file, a.timeout)
    elif a.cmd == "udp-echo-server":
        udp_echo_server(a.host, a.port, a.ready_file)
    elif a.cmd == "udp-client":
        return udp_client(a.host, a.port, a.count, a.window, a.timeout)
    elif a.cmd == "http-server":
        http_server(a.host, a.port, a.root, a.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
