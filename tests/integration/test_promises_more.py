"""More promises of docs/PROTOCOL.md that were UNTESTED in
docs/PROMISES.md: an HTTP/1.0 request on the public port is answered and
its connection ends; the API listener holds at most 1024 connections and
refuses the next one without an answer, then serves again once one
closed; an upgrade that reaches a node shutting down is answered 503;
a client publish is answered unavailable under backpressure."""

import asyncio
import json
import resource
import signal
import socket
import time

from rawws import OP_TEXT, RawWS, handshake_request
from support import (HOST, async_wait_for, error_code, metric_sum,
                     parse_metrics, recv_json, run, send_json, subscribe,
                     wait_for, ws_connect)

API_MAX = 1024


def read_to_eof(sock, timeout=5.0):
    """Everything the peer sends until it closes; fails on timeout."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_http10_without_keep_alive_answered_then_closed(server):
    """PROTOCOL.md §2.1: on the public port, an HTTP/1.0 request without
    keep-alive gets its answer, and then the server ends the connection
    (no second request is waited for)."""
    srv = server(workers=1)
    for path in (b"/health", b"/health/live"):
        with socket.create_connection((HOST, srv.port), timeout=5) as s:
            s.sendall(b"GET " + path + b" HTTP/1.0\r\nHost: x\r\n\r\n")
            data = read_to_eof(s)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(
            b"\r\n")[0], data[:200]
        assert body, data[:200]


def api_get_on(sock, path):
    """GET path on an open keep-alive API connection; (status, body)."""
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before an answer: %r" % data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the body"
        body += chunk
    return int(head.split(b" ")[1]), body[:length]


def test_api_listener_refuses_the_1025th_connection(server):
    """PROTOCOL.md §8 Listeners: at most 1024 API connections at once.
    With 1024 open (the last one answering /metrics, which counts 1024),
    the next connection is closed without an answer; once one of the
    1024 closes, a new connection is served again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = API_MAX + 512
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise AssertionError("RLIMIT_NOFILE hard limit %d < %d"
                                 % (hard, want))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    socks = []
    try:
        # The server inherits the raised limit.
        srv = server(workers=1)
        for _ in range(API_MAX - 1):
            socks.append(socket.create_connection((HOST, srv.api_port),
                                                  timeout=5))
        # 1023 held, plus the one asking: the server took them all.
        wait_for(lambda: metric_sum(srv.metrics(),
                                    "bagou_api_open_connections") == API_MAX,
                 timeout=20, what="1023 API connections accepted")
        last = socket.create_connection((HOST, srv.api_port), timeout=5)
        socks.append(last)
        status, body = api_get_on(last, "/metrics")
        assert status == 200
        assert metric_sum(parse_metrics(body.decode()),
                          "bagou_api_open_connections") == API_MAX
        # The 1025th: accepted by the kernel, closed by the server.
        with socket.create_connection((HOST, srv.api_port),
                                      timeout=5) as extra:
            try:
                extra.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert read_to_eof(extra) == b""
        # The ones held still work.
        status, _ = api_get_on(last, "/metrics")
        assert status == 200
        socks.pop(0).close()
        wait_for(lambda: metric_sum(srv.metrics(),
                                    "bagou_api_open_connections") == API_MAX,
                 timeout=10, what="a slot free again")
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_upgrade_during_shutdown_answered_503(server):
    """PROTOCOL.md §2.1: a node shutting down answers upgrades 503. A
    client that never answers the close keeps the worker in its stop
    window (up to 3 s); a connection opened before SIGTERM sends its
    upgrade request inside that window and gets 503, not a bare close."""
    srv = server(workers=1)
    stuck = RawWS(HOST, srv.port)
    op, payload = stuck.recv_message()
    assert op == OP_TEXT and b'"connect"' in payload, payload
    pending = socket.create_connection((HOST, srv.port), timeout=5)
    try:
        # Counted by the acceptor, then handed to the worker (an inbox
        # message, microseconds): the pause makes sure it was adopted.
        wait_for(lambda: metric_sum(srv.metrics(), "bagou_handshakes") >= 1,
                 timeout=5, what="the pending handshake counted")
        time.sleep(0.3)
        srv.signal(signal.SIGTERM)
        assert stuck.wait_close(timeout=5) == 1001
        pending.sendall(handshake_request(HOST, srv.port, "/websocket",
                                          ()))
        data = read_to_eof(pending)
        assert data.startswith(b"HTTP/1.1 503 "), data[:200]
        assert srv.wait_exit(10) == 0, srv.log()
    finally:
        pending.close()
        stuck.close()


def test_client_publish_unavailable_under_backpressure(server):
    """PROTOCOL.md §8 Backpressure: while a worker is congested, a
    client publish is answered unavailable ("the server is busy
    delivering"), like POST /broadcast's 503. Two subscribers that never
    read make the one worker congested (2 of its 3 connections backed
    up); once the 2 s rule has closed them, the same publish goes
    through and reaches a reading subscriber."""
    srv = server({"channels": {"client_publish": "all"},
                  "limits": {"rate": 0}}, workers=1)
    stalled = [RawWS(HOST, srv.port, rcvbuf=4096) for _ in range(2)]
    for ws in stalled:
        op, _ = ws.recv_message()
        assert op == OP_TEXT
        ws.send_text(json.dumps({"event": "subscribe", "callbackId": "s",
                                 "data": {"channel": "flood"}}))
        op, payload = ws.recv_message()
        assert json.loads(payload)["data"]["success"] is True, payload

    async def scenario():
        pub, _ = await ws_connect(srv)
        await subscribe(pub, "other")
        refused = None
        pad = "x" * 32000
        for seq in range(2000):
            status, _, body = await asyncio.to_thread(
                srv.post, "/broadcast", {"event": "flood",
                                         "channel": "flood",
                                         "data": {"seq": seq, "pad": pad}})
            if status != 202:
                refused = json.loads(body)
                break
        assert refused is not None, "never congested"
        assert "backpressure" in refused["error"]["message"], refused
        await send_json(pub, {"event": "publish", "callbackId": "p",
                              "data": {"channel": "other",
                                       "event": "hello"}})
        msg = await recv_json(pub)
        assert msg["event"] == "callback" and msg["callbackId"] == "p", msg
        assert msg["data"]["success"] is False, msg
        assert error_code(msg) == "unavailable", msg
        assert "busy" in msg["data"]["error"]["message"], msg
        # The stalled ones are closed (no byte taken for 2 s): accepted.
        await async_wait_for(
            lambda: metric_sum(srv.metrics(),
                               "bagou_slow_consumer_closes_total") == 2,
            timeout=15, what="the stalled subscribers closed")
        await send_json(pub, {"event": "publish", "callbackId": "q",
                              "data": {"channel": "other",
                                       "event": "hello"}})
        got = [await recv_json(pub), await recv_json(pub)]
        assert {"event": "callback", "callbackId": "q",
                "data": {"success": True}} in got, got
        assert any(m.get("event") == "hello" and
                   m.get("channel") == "other" for m in got), got
        await pub.close()

    try:
        run(scenario(), timeout=90)
        m = srv.metrics()
        assert metric_sum(m, "bagou_backpressure_refusals_total") >= 2
    finally:
        for ws in stalled:
            ws.close()
