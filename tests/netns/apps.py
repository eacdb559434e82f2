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
    srv = socket.create_server((host, port), family=family_of(host), reuse_port=True)
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


def family_of(host):
    """The address family of a literal address: IPv6 if it has a colon."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# ---- UDP echo with a bounded window; the count is reported -----------------------------------------

def udp_echo_server(host, port, ready_file):
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.bind((host, port))
    open(ready_file, "w").close()
    while True:
        data, addr = s.recvfrom(65535)
        s.sendto(data, addr)


def udp_client(host, port, count, window, timeout):
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
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


# ---- roaming: a long bidirectional transfer, an interactive echo, a UDP stream ---------------------
#
# They run while the client switches uplinks and report what the apps saw: every byte (sha256 at both
# ends), every echo, the longest pause, the kernel's retransmissions on the app's own TCP connection.

def pattern(seed, size):
    """The bytes of a transfer, in 1 MiB chunks: the same for sender and receiver."""
    import random
    rng = random.Random(seed)
    left = size
    while left:
        n = min(left, 1 << 20)
        yield rng.randbytes(n)
        left -= n


def paced_send(sock, seed, size, rate):
    start = time.monotonic()
    sent = 0
    for chunk in pattern(seed, size):
        for i in range(0, len(chunk), 65536):
            sock.sendall(chunk[i:i + 65536])
            sent += len(chunk[i:i + 65536])
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)  # pacing, not synchronisation


def tcp_retrans(sock):
    # struct tcp_info: tcpi_total_retrans is the u32 at byte 100.
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int.from_bytes(info[100:104], sys.byteorder)


def bulk_server(host, port, ready_file):
    """Per connection: a 24-byte header (size, seed, rate); then sends `size` bytes of pattern(seed+1)
    while checking the `size` bytes of pattern(seed) it receives, and ends with the sha256 of what it
    received (32 bytes) so the client verifies both directions."""
    import threading
    srv = socket.create_server((host, port), family=family_of(host), reuse_port=False)
    open(ready_file, "w").close()
    while True:
        conn, _ = srv.accept()

        def serve(conn):
            with conn:
                head = b""
                while len(head) < 24:
                    more = conn.recv(24 - len(head))
                    if not more:
                        return
                    head += more
                size, seed, rate = (int.from_bytes(head[i:i + 8], "big") for i in (0, 8, 16))
                sender = threading.Thread(target=paced_send, args=(conn, seed + 1, size, rate))
                sender.start()
                h = hashlib.sha256()
                got = 0
                while got < size:
                    data = conn.recv(1 << 20)
                    if not data:
                        break
                    h.update(data)
                    got += len(data)
                sender.join()
                expected = hashlib.sha256()
                for chunk in pattern(seed, size):
                    expected.update(chunk)
                log(f"bulk-server: received {got}/{size} bytes, sha256 {'ok' if h.digest() == expected.digest() else 'MISMATCH'}")
                conn.sendall(h.digest())
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def bulk_client(host, port, size, seed, rate, timeout, read_after=None):
    """With `read_after`, an app that does not read: it reads nothing until that file exists."""
    import threading
    start = time.monotonic()
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(size.to_bytes(8, "big") + seed.to_bytes(8, "big") + rate.to_bytes(8, "big"))
    failure = []
    if read_after:
        while not os.path.exists(read_after) and time.monotonic() - start < timeout:
            time.sleep(0.05)

    def send():
        try:
            paced_send(sock, seed, size, rate)
        except OSError as e:
            failure.append(f"send: {e}")

    sender = threading.Thread(target=send)
    sender.start()
    h = hashlib.sha256()
    got = bytearray()
    received = 0
    last = time.monotonic()
    max_gap = 0.0
    trailer = b""
    try:
        while received < size or len(trailer) < 32:
            data = sock.recv(1 << 20)
            if not data:
                break
            now = time.monotonic()
            if received < size:
                # Pauses while the data flows; the wait for the server's trailer is not one.
                max_gap = max(max_gap, now - last)
                last = now
                take = data[:size - received]
                h.update(take)
                received += len(take)
                data = data[len(take):]
            trailer += data
    except OSError as e:
        failure.append(f"recv: {e}")
    sender.join()
    retrans = tcp_retrans(sock)
    sock.close()
    expected = hashlib.sha256()
    for chunk in pattern(seed + 1, size):
        expected.update(chunk)
    mine = expected.digest() == h.digest() and received == size
    sent_digest = hashlib.sha256()
    for chunk in pattern(seed, size):
        sent_digest.update(chunk)
    theirs = trailer[:32] == sent_digest.digest()
    secs = time.monotonic() - start
    log(f"bulk: {size >> 20} MiB each way in {secs:.1f}s; received {received} bytes sha256 {'ok' if mine else 'MISMATCH'}; "
        f"server's sha256 of our bytes {'ok' if theirs else 'MISMATCH'}; longest pause {max_gap * 1000:.0f} ms; "
        f"app TCP retransmissions {retrans}" + (f"; errors {failure}" if failure else ""))
    return 0 if mine and theirs and not failure else 1


def interactive(host, port, interval, stop_file, timeout):
    """An echo every `interval` seconds, each reply checked, until `stop_file` exists."""
    sock = socket.create_connection((host, port), timeout=timeout)
    f = sock.makefile("rwb", buffering=0)
    deadline = time.monotonic() + timeout
    n = 0
    worst = 0.0
    while not os.path.exists(stop_file):
        if time.monotonic() > deadline:
            log(f"interactive: no stop after {timeout}s")
            return 1
        line = f"echo {n} {'z' * (n % 97)}\n".encode()
        t = time.monotonic()
        f.write(line)
        reply = b""
        while not reply.endswith(b"\n"):
            more = f.read(len(line) - len(reply))
            if not more:
                log(f"interactive: connection closed after {n} echoes")
                return 1
            reply += more
        rtt = time.monotonic() - t
        worst = max(worst, rtt)
        if reply != line:
            log(f"interactive: echo {n} came back wrong: {reply[:40]!r}")
            return 1
        n += 1
        time.sleep(max(0.0, interval - rtt))  # pacing, not synchronisation
    retrans = tcp_retrans(sock)
    sock.close()
    log(f"interactive: {n} echoes all correct, slowest {worst * 1000:.0f} ms, app TCP retransmissions {retrans}")
    return 0


def udp_stream(host, port, rate, stop_file, timeout):
    """Numbered datagrams at `rate` per second to a UDP echo server until `stop_file` exists; reports
    how many came back. UDP may lose datagrams; the report says how many."""
    import threading
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.connect((host, port))
    s.settimeout(0.2)
    seen = set()
    done = threading.Event()

    def receive():
        while not done.is_set():
            try:
                data = s.recv(2048)
            except socket.timeout:
                continue
            except OSError:
                continue
            seen.add(int.from_bytes(data[:4], "big"))

    t = threading.Thread(target=receive)
    t.start()
    start = time.monotonic()
    sent = 0
    while not os.path.exists(stop_file) and time.monotonic() - start < timeout:
        try:
            s.send(sent.to_bytes(4, "big") + b"u" * 100)
        except OSError:
            pass  # no route for a moment: counted as lost
        sent += 1
        time.sleep(max(0.0, sent / rate - (time.monotonic() - start)))  # pacing
    time.sleep(0.5)  # stragglers: the last echoes are still on their way
    done.set()
    t.join()
    log(f"udp-stream: sent {sent}, echoed {len(seen)}, lost {sent - len(seen)}")
    return 0


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


# ---- isolation: many held connections, silence, packets written straight into a TUN -------------

def hold_many(host, port, count, ready_file, stop_file, timeout):
    """Opens `count` connections one after the other and keeps those that were accepted until
    `stop_file` exists; the ready file gets "opened N refused M"."""
    held, refused_n, other = [], 0, []
    for _ in range(count):
        try:
            held.append(socket.create_connection((host, port), timeout=10))
        except (ConnectionRefusedError, ConnectionResetError):
            refused_n += 1
        except OSError as e:
            other.append(repr(e))
    summary = f"opened {len(held)} refused {refused_n}" + (f" failed {len(other)}: {other[:2]}" if other else "")
    with open(ready_file + ".tmp", "w") as f:
        f.write(summary + "\n")
    os.rename(ready_file + ".tmp", ready_file)
    log(summary)
    deadline = time.monotonic() + timeout
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    for s in held:
        s.close()
    return 0


def udp_silent(host, port, count, wait):
    """Sends `count` datagrams; succeeds only if nothing at all comes back within `wait` seconds."""
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.connect((host, port))
    for i in range(count):
        s.send(b"anyone there? %d" % i)
    s.settimeout(wait)
    try:
        data = s.recv(65535)
        log(f"udp: {host}:{port} answered {data[:20]!r}")
        return 1
    except socket.timeout:
        log(f"udp: {count} datagrams to {host}:{port}, no answer in {wait:.1f} s")
        return 0
    except ConnectionRefusedError:
        log(f"udp: {host}:{port} answered with ICMP port unreachable")
        return 1


def udp_sink(host, port, ready_file, out_file):
    """Appends the source address of every datagram received to `out_file`."""
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.bind((host, port))
    open(ready_file, "w").close()
    while True:
        data, addr = s.recvfrom(65535)
        with open(out_file, "a") as f:
            f.write(f"{addr[0]} {data[:32].decode(errors='replace')}\n")


def _csum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def _ipv4(src, dst, proto, payload):
    import struct
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0x4000, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + _csum(hdr).to_bytes(2, "big") + hdr[12:]
    return hdr + payload


def _l4_csum(src, dst, proto, segment):
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + bytes([0, proto]) + len(segment).to_bytes(2, "big")
    return _csum(pseudo + segment)


def inject(iface, kind, src, dst, limit):
    """Writes one IPv4 packet from `src` (ip:port) to `dst` straight into `iface` (a TUN: the daemon
    reads it as if an app had sent it, whatever its source). kind `udp`: a datagram, nothing awaited.
    kind `syn`: a TCP SYN; succeeds if a RST from `dst` comes back within `limit` seconds."""
    import struct
    (sip, sport), (dip, dport) = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in (src, dst)]
    ETH_P_IP, ETH_P_ALL = 0x0800, 0x0003
    sniff = None
    if kind == "syn":
        sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        sniff.bind((iface, 0))
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x02, 65535, 0, 0)
        tcp = tcp[:16] + _l4_csum(sip, dip, 6, tcp).to_bytes(2, "big") + tcp[18:]
        packet = _ipv4(sip, dip, 6, tcp)
    else:
        body = b"injected from " + sip.encode()
        udp = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
        udp = udp[:6] + (_l4_csum(sip, dip, 17, udp) or 0xFFFF).to_bytes(2, "big") + udp[8:]
        packet = _ipv4(sip, dip, 17, udp)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    out.sendto(packet, (iface, ETH_P_IP))
    start = time.monotonic()
    if sniff is None:
        log(f"inject: UDP {src} -> {dst} written into {iface}")
        return 0
    while time.monotonic() - start < limit:
        sniff.settimeout(max(0.01, limit - (time.monotonic() - start)))
        try:
            p = sniff.recv(65535)
        except socket.timeout:
            break
        if len(p) < 40 or p[9] != 6:
            continue
        ihl = (p[0] & 15) * 4
        psrc, pdst = socket.inet_ntoa(p[12:16]), socket.inet_ntoa(p[16:20])
        tsport, tdport = struct.unpack("!HH", p[ihl:ihl + 4])
        flags = p[ihl + 13]
        if (psrc, tsport, pdst, tdport) == (dip, dport, sip, sport) and flags & 0x04:
            log(f"inject: SYN {src} -> {dst} answered with RST after {(time.monotonic() - start) * 1000:.0f} ms")
            return 0
    log(f"inject: SYN {src} -> {dst}: no RST within {limit:.1f} s")
    return 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ["echo-server", "peer-server", "halfclose-server", "udp-echo-server", "bulk-server"]:
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
    q = sub.add_parser("bulk-client")
    q.add_argument("host"), q.add_argument("port", type=int)
    q.add_argument("--size", type=int, default=256 << 20), q.add_argument("--seed", type=int, default=1)
    q.add_argument("--rate", type=int, default=0, help="bytes/s each way, 0: as fast as possible")
    q.add_argument("--timeout", type=float, default=300)
    q.add_argument("--read-after", help="read nothing until this file exists (an app that stops reading)")
    q = sub.add_parser("interactive")
    q.add_argument("host"), q.add_argument("port", type=int), q.add_argument("stop_file")
    q.add_argument("--interval", type=float, default=0.05), q.add_argument("--timeout", type=float, default=300)
    q = sub.add_parser("udp-stream")
    q.add_argument("host"), q.add_argument("port", type=int), q.add_argument("stop_file")
    q.add_argument("--rate", type=float, default=200), q.add_argument("--timeout", type=float, default=300)
    q = sub.add_parser("hold-many")
    q.add_argument("host"), q.add_argument("port", type=int), q.add_argument("count", type=int)
    q.add_argument("ready_file"), q.add_argument("stop_file"), q.add_argument("--timeout", type=float, default=60)
    q = sub.add_parser("udp-silent")
    q.add_argument("host"), q.add_argument("port", type=int)
    q.add_argument("--count", type=int, default=5), q.add_argument("--wait", type=float, default=1.0)
    q = sub.add_parser("udp-sink")
    q.add_argument("host"), q.add_argument("port", type=int), q.add_argument("ready_file"), q.add_argument("out_file")
    q = sub.add_parser("inject")
    q.add_argument("iface"), q.add_argument("kind", choices=["syn", "udp"]), q.add_argument("src"), q.add_argument("dst")
    q.add_argument("--limit", type=float, default=1.0)
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
    elif a.cmd == "bulk-server":
        bulk_server(a.host, a.port, a.ready_file)
    elif a.cmd == "bulk-client":
        return bulk_client(a.host, a.port, a.size, a.seed, a.rate, a.timeout, a.read_after)
    elif a.cmd == "interactive":
        return interactive(a.host, a.port, a.interval, a.stop_file, a.timeout)
    elif a.cmd == "udp-stream":
        return udp_stream(a.host, a.port, a.rate, a.stop_file, a.timeout)
    elif a.cmd == "hold-many":
        return hold_many(a.host, a.port, a.count, a.ready_file, a.stop_file, a.timeout)
    elif a.cmd == "udp-silent":
        return udp_silent(a.host, a.port, a.count, a.wait)
    elif a.cmd == "udp-sink":
        udp_sink(a.host, a.port, a.ready_file, a.out_file)
    elif a.cmd == "inject":
        return inject(a.iface, a.kind, a.src, a.dst, a.limit)
    elif a.cmd == "http-server":
        http_server(a.host, a.port, a.root, a.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
