"""PROTOCOL.md "Resource limits": every accepted socket counted, handshakes
and per-address limits, the handshake deadline, /health at the limits, the
per-connection memory budget, memory going back after a crowd leaves, and
throttled logs."""

import json
import os
import re
import socket
import time

import pytest

from rawws import OP_TEXT, HandshakeError, RawWS, build_frame, parse_frames
from support import HOST, SANITIZER, http_get, metric_sum, wait_for


def raw_socket(srv):
    """A TCP connection that says nothing."""
    s = socket.create_connection((HOST, srv.port), timeout=5)
    return s


def upgrade_status(srv, **kw):
    """The HTTP status a WebSocket upgrade gets (101 when it opens)."""
    try:
        ws = RawWS(HOST, srv.port, **kw)
    except HandshakeError as e:
        return e.status
    ws.close()
    return 101


def client(srv):
    ws = RawWS(HOST, srv.port)
    op, payload = ws.recv_message()
    assert op == OP_TEXT and json.loads(payload)["event"] == "connect"
    return ws


def admitted(srv):
    """Sockets the public listener counts (/metrics is asked on the API
    listener, which the public limits do not count)."""
    return metric_sum(srv.metrics(), "bagou_sockets")


def rss_kb(srv):
    with open("/proc/%d/status" % srv.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def close_all(socks):
    for s in socks:
        s.close()


# ---------------------------------------------------------- max_connections

def test_max_connections_default_from_rlimit(server):
    srv = server(workers=2)
    m = re.search(r"limits: max_connections (\d+) \(RLIMIT_NOFILE (\d+)\)",
                  srv.log())
    assert m, srv.log()
    limit, nofile = int(m.group(1)), int(m.group(2))
    assert limit == max(16, nofile - 256 - 8 * 2)
    assert metric_sum(srv.metrics(), "bagou_max_connections") == limit


def test_max_connections_counts_silent_sockets(server):
    srv = server({"server": {"max_connections": 5},
                  "limits": {"max_handshakes": 0, "max_per_address": 0}})
    # The fixture's start-up probes of /health/live must have left.
    wait_for(lambda: admitted(srv) == 0, what="no socket counted")
    socks = [raw_socket(srv) for _ in range(5)]
    try:
        # Let the acceptor take them all (asked on the API listener: a
        # /health before they are in would take a place of its own).
        wait_for(lambda: admitted(srv) >= 5,
                 what="the 5 silent sockets accepted")
        # /health is answered anyway.
        wait_for(lambda: srv.health()["status"] == "ok", what="health")
        assert upgrade_status(srv) == 503
        status, _, body = http_get(srv.port, "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        close_all(socks)
    wait_for(lambda: upgrade_status(srv) == 101, what="room again")
    m = srv.metrics()
    assert m['bagou_connections_refused_total{reason="max_connections"}'] \
        >= 1
    # Every socket gave its place back.
    wait_for(lambda: admitted(srv) == 0, what="counts back to zero")


def test_max_handshakes_leaves_websockets_alone(server):
    srv = server({"limits": {"max_handshakes": 4, "max_per_address": 0}})
    # Established WebSockets are not handshakes.
    clients = [client(srv) for _ in range(6)]
    socks = []
    try:
        # Twice max_handshakes is the hard limit (past max_handshakes the
        # oldest are cut: test_handshake_pressure_cuts_slow_sockets).
        socks = [raw_socket(srv) for _ in range(8)]
        time.sleep(0.3)
        assert upgrade_status(srv) == 503
        status, _, body = http_get(srv.port, "/health")
        assert status == 200
        assert json.loads(body)["connections"] == 6
        close_all(socks)
        socks = []
        wait_for(lambda: upgrade_status(srv) == 101, what="room again")
        m = srv.metrics()
        assert m['bagou_connections_refused_total'
                 '{reason="max_handshakes"}'] >= 1
        # The open WebSockets still work.
        clients[0].send_text(json.dumps({"event": "ping",
                                         "callbackId": "p"}))
        op, payload = clients[0].recv_message()
        assert json.loads(payload)["callbackId"] == "p"
    finally:
        close_all(socks)
        for ws in clients:
            ws.close()


def test_handshake_pressure_cuts_slow_sockets(server):
    """At max_handshakes, silent sockets do not lock real clients out: a
    new client still upgrades, and while the limit is reached the
    workers close sockets that have been handshakes for a second or more
    at their next tick, long before handshake_timeout (60 s here), until
    the count is below the limit again."""
    srv = server({"limits": {"max_handshakes": 4, "max_per_address": 0,
                             "handshake_timeout": 60}})
    socks = [raw_socket(srv) for _ in range(4)]
    try:
        time.sleep(0.3)
        assert upgrade_status(srv) == 101
        t0 = time.monotonic()
        wait_for(lambda: metric_sum(srv.metrics(), "bagou_handshakes") < 4,
                 timeout=10, what="handshakes below max_handshakes")
        assert time.monotonic() - t0 < 5
        assert metric_sum(srv.metrics(),
                          "bagou_handshake_timeouts_total") >= 1
        assert upgrade_status(srv) == 101
    finally:
        close_all(socks)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_does_not_spin(server, monkeypatch):
    """RLIMIT_NOFILE 160 and max_connections set above it: accept4 meets
    EMFILE. The acceptor answers from its reserved descriptor and pauses
    instead of spinning, and recovers once sockets close."""
    import support
    argv = support.Server.argv
    monkeypatch.setattr(support.Server, "argv", lambda self: [
        "prlimit", "--nofile=160:160", "--"] + argv(self))
    srv = server({"server": {"max_connections": 1000},
                  "limits": {"max_handshakes": 0, "max_per_address": 0}},
                 workers=1)
    socks = []
    try:
        for _ in range(200):
            socks.append(raw_socket(srv))
        time.sleep(0.5)
        before = cpu_seconds(srv.proc.pid)
        time.sleep(1.0)
        assert cpu_seconds(srv.proc.pid) - before < 0.5
        wait_for(lambda: "Too many open files" in srv.log(),
                 what="EMFILE logged")
    finally:
        close_all(socks)
    wait_for(lambda: http_get(srv.port, "/health")[0] == 200,
             what="/health after the crowd left")
    m = srv.metrics()
    assert m['bagou_connections_refused_total{reason="descriptors"}'] >= 1
    assert len([x for x in srv.log().splitlines()
                if "Too many open files" in x]) <= 4


# ---------------------------------------------------------- per address

def test_per_address_limit(server):
    srv = server({"limits": {"max_per_address": 3,
                             "limit_loopback": "yes"}})
    clients = [client(srv) for _ in range(3)]
    try:
        assert upgrade_status(srv) == 429
        status, _, _ = http_get(srv.port, "/metrics")
        assert status == 429
        status, _, _ = http_get(srv.port, "/health")
        assert status == 200
        clients.pop().close()
        wait_for(lambda: upgrade_status(srv) == 101, what="room again")
    finally:
        for ws in clients:
            ws.close()
    wait_for(lambda: metric_sum(srv.metrics(), "bagou_open_connections") == 0,
             what="clients gone")
    m = srv.metrics()
    assert m['bagou_connections_refused_total{reason="max_per_address"}'] \
        >= 2


def test_loopback_exempt_by_default(server):
    srv = server({"limits": {"max_per_address": 2}})
    clients = [client(srv) for _ in range(4)]
    for ws in clients:
        ws.close()


# ---------------------------------------------------------- deadline

def test_handshake_timeout_cuts_slowloris(server):
    srv = server({"limits": {"handshake_timeout": 1}})
    ws = client(srv)   # an established WebSocket is never cut
    s = raw_socket(srv)
    start = time.monotonic()
    closed = None
    try:
        s.sendall(b"GET /websocket HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(0.2)
        while time.monotonic() - start < 6:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                if s.recv(100) == b"":
                    closed = time.monotonic() - start
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = time.monotonic() - start
                break
    finally:
        s.close()
    assert closed is not None and closed < 4.0, closed
    time.sleep(1.0)
    ws.send_text(json.dumps({"event": "ping", "callbackId": "still"}))
    op, payload = ws.recv_message()
    assert json.loads(payload)["callbackId"] == "still"
    ws.close()
    assert metric_sum(srv.metrics(), "bagou_handshake_timeouts_total") >= 1


def test_keepalive_http_gets_a_fresh_deadline(server):
    srv = server({"limits": {"handshake_timeout": 2}})
    import http.client
    conn = http.client.HTTPConnection(HOST, srv.port, timeout=5)
    try:
        for _ in range(3):
            status, _, _ = http_get(srv.port, "/health", conn=conn)
            assert status == 200
            time.sleep(1.2)
    finally:
        conn.close()


# ---------------------------------------------------------- memory

def chan_name(tag):
    """A distinct channel name of 200 bytes, the longest allowed."""
    return ("n%s-" % tag).ljust(200, "x")


def pipeline(ws, texts):
    ws.send_raw(b"".join(build_frame(OP_TEXT, t.encode()) for t in texts))


def read_until_callback(ws, cb, timeout=30.0):
    """Messages until the callback cb; returns them."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no callback %s" % cb
        op, payload = ws.recv_message(timeout=left)
        msg = json.loads(payload)
        out.append(msg)
        if msg.get("callbackId") == cb:
            return out


def subscribe_many(ws, prefix, n):
    names = [chan_name("%s-%d" % (prefix, i)) for i in range(n)]
    pipeline(ws, [json.dumps({"event": "subscribe",
                              "data": {"channel": c}}) for c in names]
             + [json.dumps({"event": "ping", "callbackId": "done"})])
    msgs = read_until_callback(ws, "done")
    errors = [m for m in msgs if m.get("event") == "error"]
    return names, errors


def sanitized():
    """True for an ASan build: its allocator keeps freed memory."""
    from support import server_binary
    with open(server_binary(), "rb") as f:
        return b"__asan_init" in f.read()


@pytest.mark.skipif(sanitized(), reason="ASan's allocator keeps memory")
@pytest.mark.skipif(SANITIZER != "", reason="RSS under a sanitizer says "
                    "nothing about the server's own memory; make test "
                    "runs this file against the plain build")
def test_memory_returns_after_crowd_leaves(server):
    srv = server({"limits": {"rate": 0}}, workers=1)
    warm = [client(srv) for _ in range(4)]
    for i, ws in enumerate(warm):
        subscribe_many(ws, "warm%d" % i, 50)
        ws.close()
    time.sleep(0.5)
    base = rss_kb(srv)
    crowd = []
    for i in range(60):
        ws = client(srv)
        _, errors = subscribe_many(ws, "c%d" % i, 1000)
        assert errors == []
        crowd.append(ws)
    assert metric_sum(srv.metrics(), "bagou_subscriptions") == 60000
    peak = rss_kb(srv)
    assert peak - base > 12000, (base, peak)   # ~18 MB held
    # Half leave their channels first, then everyone goes.
    for i, ws in enumerate(crowd[:30]):
        pipeline(ws, [json.dumps({"event": "unsubscribe", "data": {
            "channel": chan_name("c%d-%d" % (i, k))}})
            for k in range(1000)]
            + [json.dumps({"event": "ping", "callbackId": "u"})])
        read_until_callback(ws, "u")
    for ws in crowd:
        ws.close()
    wait_for(lambda: metric_sum(srv.metrics(), "bagou_open_connections") == 0,
             timeout=10, what="crowd gone")
    # The worker trims within its next ticks.
    wait_for(lambda: rss_kb(srv) - base < (peak - base) / 4,
             timeout=10, interval=0.5,
             what="RSS near the baseline (base %d KB, peak %d KB)"
             % (base, peak))


def test_budget_refuses_subscriptions(server):
    srv = server({"limits": {"rate": 0, "max_connection_memory": "64k"}})
    ws = client(srv)

    def call(event, channel, cb):
        ws.send_text(json.dumps({"event": event, "callbackId": cb,
                                 "data": {"channel": channel}}))
        return read_until_callback(ws, cb)[-1]["data"]

    try:
        held = 0
        for i in range(400):
            reply = call("subscribe", chan_name(i), "s%d" % i)
            if not reply["success"]:
                assert reply["error"]["code"] == "too_many_subscriptions"
                break
            held += 1
        # 64 KiB at 128 + 200 bytes a subscription: at most 199.
        assert 150 <= held <= 199, held
        # Leaving one makes room for one.
        assert call("unsubscribe", chan_name(0), "u")["success"]
        assert call("subscribe", chan_name(held), "again")["success"]
        assert not call("subscribe", chan_name(held + 1), "full")[
            "success"]
    finally:
        ws.close()


def test_budget_closes_a_queue_past_it(server):
    srv = server({"limits": {"max_connection_memory": "48k",
                             "max_queued_bytes": "1m"}})
    ws = RawWS(HOST, srv.port, rcvbuf=4096)
    big = "y" * 8000
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            srv.broadcast({"event": "m", "data": big})
            if metric_sum(srv.metrics(), "bagou_memory_closes_total") >= 1:
                break
        assert metric_sum(srv.metrics(), "bagou_memory_closes_total") >= 1
        assert metric_sum(srv.metrics(),
                          "bagou_slow_consumer_closes_total") == 0
    finally:
        ws.close()


# ---------------------------------------------------------- logs

def test_client_triggered_logs_are_throttled(server):
    srv = server()
    # Headers larger than lws's header space: lws logs an error each.
    junk = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 14000 + b"\r\n\r\n"
    start = time.monotonic()
    for _ in range(1000):
        s = raw_socket(srv)
        try:
            s.sendall(junk)
            s.settimeout(2)
            try:
                s.recv(100)
            except OSError:
                pass
        finally:
            s.close()
    windows = int((time.monotonic() - start) // 10) + 2
    lines = [x for x in srv.log().splitlines() if "libwebsockets" in x]
    # 10 lines and one count per 10 s window, on a slow machine too.
    assert 1 <= len(lines) <= 11 * windows, (len(lines), windows)
    wait_for(lambda: re.search(r"libwebsockets: \d+ similar lines "
                               r"suppressed in the last 10 s", srv.log()),
             timeout=15, interval=0.5, what="the suppressed count")
