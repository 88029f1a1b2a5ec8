"""Floods from a client that never reads, against the voxio app (raw sockets, so nothing in a
client library answers or buffers for us).

A WebSocket client sends up to 1,000,000 ping frames and reads nothing (its receive buffer
shrunk to 4 KiB). The server may keep at most one pong pending and closes a connection that
keeps pinging past VOXIO_MAX_UNANSWERED_PINGS; its RSS must grow by less than 8 MB, and another
client must be served meanwhile. The measured figures are printed.
"""

import http.client
import os
import socket
import statistics
import threading
import time

FLOOD_PINGS = 1_000_000
BATCH = 10_000
# A masked ping frame with an empty payload (FIN + opcode 9, MASK bit, zero-length, mask key).
PING = b"\x89\x80\x00\x00\x00\x00"
RSS_GROWTH_LIMIT_KIB = 8 * 1024


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def websocket(port, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "the server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def handshake_ms(port):
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/socket.io/?EIO=4&transport=polling")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200 and body.startswith(b"0"), (response.status, body)
    return (time.monotonic() - started) * 1000


def test_ping_flood_from_a_client_that_never_reads(voxio_app):
    pid, port = voxio_app.proc.pid, voxio_app.port
    # Warm up: a connection of each kind, so the baseline holds what any first client costs.
    websocket(port).close()
    handshake_ms(port)
    time.sleep(0.5)
    before = rss_kib(pid)

    latencies = []
    stop = threading.Event()

    def other_client():
        while not stop.is_set():
            latencies.append(handshake_ms(port))
            time.sleep(0.05)

    watcher = threading.Thread(target=other_client)
    watcher.start()
    flood = websocket(port, rcvbuf=4096)
    flood.settimeout(2)
    batch = PING * BATCH
    sent = 0
    ended = "all sent"
    started = time.monotonic()
    try:
        while sent < FLOOD_PINGS:
            flood.sendall(batch)
            sent += BATCH
    except socket.timeout:
        ended = "the server stopped reading"
    except OSError as e:
        ended = f"the server closed the connection ({e.__class__.__name__})"
    flood_s = time.monotonic() - started
    time.sleep(1.0)
    after = rss_kib(pid)
    stop.set()
    watcher.join()
    # Now reading: what the server had queued, then the end of the connection it closed.
    closed_after = None
    drained = 0
    deadline = time.monotonic() + 15
    flood.settimeout(1)
    while time.monotonic() < deadline:
        try:
            chunk = flood.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            closed_after = time.monotonic() - started
            break
        drained += len(chunk)
    flood.close()

    growth = after - before
    median = statistics.median(latencies)
    print(
        f"\n# ping flood: {sent} pings sent in {flood_s:.1f} s, then {ended}; server RSS "
        f"{before} KiB -> {after} KiB ({growth:+d} KiB, limit {RSS_GROWTH_LIMIT_KIB}); another "
        f"client's handshake meanwhile: median {median:.1f} ms, worst {max(latencies):.1f} ms "
        f"over {len(latencies)}; the server closed the flooding connection "
        f"{closed_after if closed_after is None else round(closed_after, 1)} s after the flood "
        f"began ({drained} bytes were waiting for it)"
    )
    assert closed_after is not None, "the server closes a connection that pings past the limit"
    assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {growth} KiB"
    assert median < 50, f"another client waited {median:.1f} ms (median)"
    # The server is still serving, and the flooding connection is gone from its sessions.
    assert handshake_ms(port) < 1000
    assert os.path.exists(f"/proc/{pid}")
