"""Connection and process lifecycle: closes, pings, SIGTERM."""

import asyncio
import json
import signal
import socket
import time

from rawws import OP_PING, OP_TEXT, RawWS
from support import (HOST, metric_sum, recv_json, request, run, wait_closed,
                     wait_for, ws_connect)


def test_sigterm_closes_clients_1001_and_exits_0(server):
    srv = server(workers=2)

    async def scenario():
        conns = [await ws_connect(srv) for _ in range(4)]
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        codes = [await wait_closed(ws, timeout=5) for ws, _ in conns]
        assert codes == [1001] * 4
        rc = await asyncio.to_thread(srv.wait_exit,
                                     5 - (time.monotonic() - t0))
        assert rc == 0, "exit status %r (None: still running after 5 s)" % rc

    run(scenario())


def test_sigterm_idle_exits_0(server):
    srv = server()
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit(5) == 0
    assert time.monotonic() - t0 < 5


def test_sigterm_with_raw_client_sees_close_frame(server):
    srv = server()
    ws = RawWS(HOST, srv.port)
    try:
        op, payload = ws.recv_message()
        assert op == OP_TEXT and json.loads(payload)["event"] == "connect"
        srv.signal(signal.SIGTERM)
        assert ws.wait_close(timeout=5) == 1001
    finally:
        ws.close()
    assert srv.wait_exit(5) == 0


def test_client_close_normal(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await ws.close(1000, "bye")
        assert ws.close_code == 1000   # the server echoed the close
        await asyncio.to_thread(
            wait_for, lambda: srv.health()["connections"] == 0,
            what="connection counted out")

    run(scenario())


def test_abrupt_disconnect_cleans_up(server):
    srv = server()
    socks = []
    for _ in range(5):
        ws = RawWS(HOST, srv.port)
        ws.send_text(json.dumps({"event": "subscribe",
                                 "data": {"channel": "gone"}}))
        socks.append(ws)
    wait_for(lambda: srv.health()["connections"] == 5,
             what="5 connections")
    wait_for(lambda: metric_sum(srv.metrics(), "bagou_subscriptions") == 5,
             what="5 subscriptions")
    for ws in socks:
        ws.close()      # no close frame: TCP FIN only
    wait_for(lambda: srv.health()["connections"] == 0,
             what="connections back to 0")
    wait_for(lambda: metric_sum(srv.metrics(), "bagou_subscriptions") == 0,
             what="subscriptions back to 0")
    srv.broadcast({"event": "e", "channel": "gone"})
    assert srv.alive()


def test_connect_disconnect_churn(server):
    srv = server(workers=2)
    before = metric_sum(srv.metrics(), "bagou_connections_total")

    async def scenario():
        for _ in range(50):
            ws, _ = await ws_connect(srv)
            await ws.close()

    run(scenario())
    wait_for(lambda: srv.health()["connections"] == 0,
             what="connections back to 0")
    after = metric_sum(srv.metrics(), "bagou_connections_total")
    assert after - before == 50


def test_server_sends_pings(server):
    srv = server({"server": {"ping_interval": 1}})
    ws = RawWS(HOST, srv.port)
    try:
        deadline = time.monotonic() + 6
        seen = False
        while time.monotonic() < deadline and not seen:
            fin, op, payload = ws.recv_frame(timeout=deadline -
                                             time.monotonic())
            if op == OP_PING:
                ws.send_frame(0xA, payload)
                seen = True
        assert seen, "no ping within 6 s with ping_interval = 1"
    finally:
        ws.close()


def test_client_survives_server_pings(server):
    srv = server({"server": {"ping_interval": 1}})

    async def scenario():
        ws, _ = await ws_connect(srv, ping_interval=None)
        await asyncio.sleep(3.5)
        assert await request(ws, "ping") == {"event": "pong"}
        await ws.close()

    run(scenario())


def test_client_pings_answered(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv, ping_interval=None)
        waiter = await ws.ping(b"abc")
        await asyncio.wait_for(waiter, 5)
        assert await request(ws, "ping") == {"event": "pong"}
        await ws.close()

    run(scenario())


def test_many_sequential_messages(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        for i in range(200):
            await ws.send(json.dumps({"event": "ping",
                                      "callbackId": str(i)}))
        for i in range(200):
            msg = await recv_json(ws)
            assert msg["callbackId"] == str(i)
        await ws.close()

    run(scenario())


def test_sigterm_with_stuck_client_exits_in_time(server):
    """A client that stopped reading must not hold up the shutdown."""
    srv = server({"limits": {"max_queued_bytes": "8m"}})
    stuck = RawWS(HOST, srv.port, rcvbuf=4096)
    normal = RawWS(HOST, srv.port)
    try:
        for ws in (stuck, normal):
            ws.send_text(json.dumps({"event": "subscribe",
                                     "data": {"channel": "s"},
                                     "callbackId": "s"}))
        for ws in (stuck, normal):
            ws.recv_message()          # connect
            ws.recv_message()          # subscribe callback
        pad = "x" * 30000
        for i in range(40):            # ~1.2 MB queued toward "stuck"
            srv.broadcast({"event": "e", "channel": "s", "data": pad})
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert normal.wait_close(timeout=5) == 1001
        rc = srv.wait_exit(max(0.1, 5 - (time.monotonic() - t0)))
        assert rc == 0, "exit status %r (None: still running after 5 s)" % rc
    finally:
        stuck.close()
        normal.close()


def test_sigterm_exits_in_time_while_broker_hangs(server):
    """A broker that accepts TCP and never answers keeps the AMQP thread in
    its handshake; SIGTERM must still end the process, status 0, within
    5 s."""
    silent = socket.socket()
    silent.bind((HOST, 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    try:
        srv = server(workers=1, extra_args=(
            "--amqp-url", "amqp://guest:guest@127.0.0.1:%d/" % port))
        time.sleep(0.5)        # the first attempt is now waiting
        assert srv.health()["amqp"] == "disconnected"
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        rc = srv.wait_exit(6)
        elapsed = time.monotonic() - t0
        assert rc == 0, (rc, srv.log())
        assert elapsed < 5.0, elapsed
    finally:
        silent.close()


def test_first_clients_find_the_link_up(tmp_path, rabbitmq):
    """At start the node serves once its first attempt to reach RabbitMQ
    has ended: the very first request it answers already says
    "amqp": "connected" (before, clients that came in the link's first
    tens of milliseconds had their forwarded events refused
    "unavailable": a page reconnecting to a restarted node stayed
    unauthenticated)."""
    import http.client
    import subprocess
    from rabbitmq import AmqpServer
    from support import free_port, http_get
    srv = AmqpServer(str(tmp_path), rabbitmq.url, name="first")
    srv.port, srv.api_port = free_port(), free_port()
    srv._log = open(srv.log_path, "ab")
    srv.proc = subprocess.Popen(srv.argv(), stdin=subprocess.DEVNULL,
                                stdout=srv._log, stderr=subprocess.STDOUT)
    try:
        first = None
        deadline = time.monotonic() + 30
        while first is None and time.monotonic() < deadline:
            assert srv.proc.poll() is None, srv.log()
            try:
                _, _, body = http_get(srv.port, "/health", timeout=2.0)
                first = json.loads(body)
            except (OSError, http.client.HTTPException):
                time.sleep(0.002)
        assert first is not None, srv.log()
        assert first["amqp"] == "connected", first
    finally:
        srv.stop()
    assert srv.ended_problems() == []
