"""More promises of docs/PROTOCOL.md that were UNTESTED in
docs/PROMISES.md: an HTTP/1.0 request on the public port is answered and
its connection ends; the API listener holds at most 1024 connections and
refuses the next one without an answer, then serves again once one
closed; an upgrade that reaches a node shutting down is answered 503;
a client publish is answered unavailable under backpressure, an event
forwarded to the application is not; a worker
stuck at shutdown makes the exit status 1; reconnecting to the broker
backs off exponentially from 100 ms."""

import asyncio
import ctypes
import json
import os
import resource
import signal
import socket
import struct
import threading
import time

import pytest

from rabbitmq import amqp_server, publisher, unique_exchange  # noqa: F401
from rawws import OP_TEXT, RawWS, handshake_request
from support import (HOST, async_wait_for, error_code, metric_sum,
                     parse_metrics, recv_json, run, send_json,
                     stop_servers, subscribe, wait_for, ws_connect)

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



def stalled_subscribers(srv, channel, n):
    """n raw connections with a 4 KiB receive buffer, subscribed to
    channel, that then read nothing (slow consumers)."""
    stalled = [RawWS(HOST, srv.port, rcvbuf=4096) for _ in range(n)]
    for ws in stalled:
        op, _ = ws.recv_message()
        assert op == OP_TEXT
        ws.send_text(json.dumps({"event": "subscribe", "callbackId": "s",
                                 "data": {"channel": channel}}))
        op, payload = ws.recv_message()
        assert json.loads(payload)["data"]["success"] is True, payload
    return stalled

def test_client_publish_unavailable_under_backpressure(server):
    """PROTOCOL.md §8 Backpressure: while a worker is congested, a
    client publish is answered unavailable ("the server is busy
    delivering"), like POST /broadcast's 503. Two subscribers that never
    read make the one worker congested (2 of its 3 connections backed
    up); once the 2 s rule has closed them, the same publish goes
    through and reaches a reading subscriber."""
    srv = server({"channels": {"client_publish": "all"},
                  # Room between "backed up" (half of it) and the 4001
                  # cut: the two stalled sockets' kernel buffers differ
                  # by up to a few MB, and both must back up before
                  # either is cut.
                  "limits": {"rate": 0, "max_queued_bytes": 8 << 20,
                             "max_connection_memory": 16 << 20}},
                 workers=1)
    stalled = stalled_subscribers(srv, "flood", 2)

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


PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000               # __WALL: wait for any child or thread


def thread_id(pid, name):
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
            if f.read().strip() == name:
                return int(tid)
    raise AssertionError("no thread %r in %d" % (name, pid))


def test_worker_stuck_at_shutdown_exits_1(server):
    """PROTOCOL.md §8 Shutdown: a worker that has not stopped 4 s after
    SIGTERM makes the process exit 1 ("did not stop within 4 s"), still
    within the 5 s SIGTERM promise. The worker is frozen from outside:
    ptrace stops that one thread (an idle worker waits in epoll, holding
    no lock), so it never sees its stop event."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                            ctypes.c_void_p]
    srv = server(workers=2)
    tid = thread_id(srv.proc.pid, "bg-worker-1")
    if libc.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
        pytest.skip("ptrace not permitted here: errno %d"
                    % ctypes.get_errno())
    reaped = False
    try:
        assert libc.ptrace(PTRACE_INTERRUPT, tid, None, None) == 0
        _, status = os.waitpid(tid, WALL)          # the group-stop
        assert os.WIFSTOPPED(status), status
        srv.expected_exit = (1,)
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        # The traced thread's end is ours to reap before the process's.
        deadline = t0 + 10
        while time.monotonic() < deadline:
            got, status = os.waitpid(tid, WALL | os.WNOHANG)
            if got == tid and (os.WIFEXITED(status) or
                               os.WIFSIGNALED(status)):
                reaped = True
                break
            time.sleep(0.02)
        assert reaped, "the process did not end within 10 s"
        rc = srv.wait_exit(5)
        took = time.monotonic() - t0
        assert rc == 1, (rc, srv.log()[-2000:])
        assert 3.5 <= took <= 6.0, took
        assert "worker 1 did not stop within 4 s" in srv.log()
    finally:
        if not reaped:
            libc.ptrace(PTRACE_DETACH, tid, None, None)


class RefusingBroker:
    """A TCP listener that resets every connection at once, and notes
    when each one came: a broker that is never there."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.times = []
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done:
            try:
                s, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            self.times.append(time.monotonic())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
            s.close()

    def close(self):
        self.done = True
        self.thread.join(5)
        self.lsock.close()


@pytest.fixture
def url_server(request, tmp_path):
    """Factory: url_server(url, **kw) -> a started AmqpServer whose
    [amqp] url is url; stopped and checked at the end."""
    from rabbitmq import AmqpServer
    servers = []
    request.node.bagou_servers = servers

    def start(url, **kw):
        srv = AmqpServer(str(tmp_path), url, **kw)
        servers.append(srv)
        srv.start()
        return srv

    yield start
    stop_servers(servers)


def test_reconnect_backoff_doubles_from_100ms(url_server):
    """PROTOCOL.md §5: attempts to reach the broker back off
    exponentially from 100 ms, jittered: the wait before attempt k+1 is
    between half and all of 100 ms * 2^k (plus the attempt's own cost
    and some scheduling slack). Seven attempts cover 100 ms to 3.2 s;
    the 10 s cap is not waited for."""
    broker = RefusingBroker()
    try:
        srv = url_server("amqp://guest:guest@%s:%d/" % (HOST, broker.port),
                         workers=1)
        wait_for(lambda: len(broker.times) >= 7, timeout=20,
                 what="7 connection attempts")
        assert srv.amqp_state() == "disconnected"
    finally:
        broker.close()
    gaps = [b - a for a, b in zip(broker.times, broker.times[1:])][:6]
    for k, gap in enumerate(gaps):
        delay = 0.1 * 2 ** k
        assert delay / 2 - 0.1 <= gap <= delay + 1.0, (k, gaps)
    assert gaps[5] > 2 * gaps[2], gaps


def test_forwarded_event_not_refused_under_backpressure(amqp_server,
                                                        publisher):
    """PROTOCOL.md §8 Backpressure: events forwarded to the application
    are not refused while a worker is congested (they add nothing to the
    subscribers' queues). Congested as in the client publish test above
    (a client publish gets unavailable, so it was), a client's own event
    still reaches the [forward] exchange, and no failure answers it."""
    bx = unique_exchange("bagou-bp")
    fx = unique_exchange("bagou-bp-events")
    srv = amqp_server(config={"channels": {"client_publish": "all"},
                              "limits": {"rate": 0,
                                         "max_queued_bytes": 8 << 20,
                                         "max_connection_memory": 16 << 20},
                              "forward": {"exchange": fx}},
                      workers=1, exchange=bx)
    events = publisher(fx)
    tap = events.tap("#")
    stalled = stalled_subscribers(srv, "flood", 2)

    async def scenario():
        app, _ = await ws_connect(srv)
        pad = "x" * 32000
        refused = None
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
        await send_json(app, {"event": "publish", "callbackId": "p",
                              "data": {"channel": "other", "event": "x"}})
        await send_json(app, {"event": "order", "callbackId": "f",
                              "data": {"n": 1}})
        await send_json(app, {"event": "ping", "callbackId": "z"})
        first = await recv_json(app)
        assert first["callbackId"] == "p", first
        assert error_code(first) == "unavailable", first
        # The next answer is the ping's: nothing refused the event.
        second = await recv_json(app)
        assert second.get("callbackId") == "z", second
        key, body = await asyncio.to_thread(events.get, tap)
        assert key == "order" and body["callbackId"] == "f", (key, body)
        await app.close()

    try:
        run(scenario(), timeout=90)
    finally:
        for ws in stalled:
            ws.close()
