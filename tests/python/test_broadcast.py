"""ORIGINAL.md §3 and PROTOCOL.md §4: broadcasting from Python through the
real RabbitMQ and bagou-server, with every form code written for
django-bagou used; the connection's life (reuse, fork, reconnect) and its
failures (never silent)."""

import os
import socket
import time

import pytest

import bagou
from bagou import BroadcastError, publish
from bagou.utils import broadcast
from bagou.utils import message as early
from support import (HOST, expect_silence, free_port, recv_json, run,
                     subscribe, ws_connect)


@pytest.fixture
def bx(exchanges):
    return exchanges[0]


@pytest.fixture
def configured(rabbitmq, bx):
    """bagou.configure() for this process (no Django settings needed)."""
    bagou.configure(AMQP_BROKER_URL=rabbitmq.url, EXCHANGE=bx,
                    CONFIRM_TIMEOUT=5)
    yield
    bagou.configure()


async def clients(srv, *channel_sets):
    out = []
    for chans in channel_sets:
        ws, cid = await ws_connect(srv)
        for ch in chans:
            await subscribe(ws, ch)
        out.append((ws, cid))
    return out


def test_every_original_form(amqp_server, bx, configured):
    srv = amqp_server(exchange=bx)

    async def scenario():
        (a, aid), (b, bid) = await clients(srv, ["bagou"], ["news", "bagou"])
        broadcast(event="message", channels="bagou",
                  data={"message": "Welcome!"})
        want = {"event": "message", "channel": "bagou",
                "data": {"message": "Welcome!"}}
        assert await recv_json(a) == want
        assert await recv_json(b) == want
        # Positional, django-bagou's order: (channels, event, data,
        # callback); a list of channels reaches b once.
        broadcast(["news", "bagou"], "note", {"n": 1}, "cb-1")
        got = await recv_json(b)
        assert got == {"event": "note", "channel": "news", "data": {"n": 1},
                       "callbackId": "cb-1"}, got
        assert (await recv_json(a))["channel"] == "bagou"
        # The earliest helpers.
        early.broadcast(type="everyone", data={"x": 1})
        for ws in (a, b):
            assert await recv_json(ws) == {"event": "everyone",
                                           "data": {"x": 1}}
        early.broadcast_to_channel(type="n2", channel="news", data=[1])
        assert await recv_json(b) == {"event": "n2", "channel": "news",
                                      "data": [1]}
        # The new form: clients= and exclude=.
        bagou.broadcast("only-a", data={"y": 2}, clients=[aid])
        assert await recv_json(a) == {"event": "only-a", "data": {"y": 2}}
        bagou.broadcast("not-b", "bagou", exclude=bid)
        assert await recv_json(a) == {"event": "not-b", "channel": "bagou",
                                      "data": {}}
        bagou.broadcast("sentinel", "bagou")
        assert (await recv_json(b))["event"] == "sentinel"
        assert (await recv_json(a))["event"] == "sentinel"
        await expect_silence(a, 0.2)
        await a.close()
        await b.close()

    run(scenario())


def test_one_connection_reused(amqp_server, bx, configured):
    srv = amqp_server(exchange=bx)
    p = publish.publisher()
    before = p.connects

    async def scenario():
        ((ws, _),) = await clients(srv, ["news"])
        for i in range(50):
            bagou.broadcast("n", "news", {"i": i})
        for i in range(50):
            assert (await recv_json(ws))["data"] == {"i": i}
        await ws.close()

    run(scenario())
    assert p.connects - before <= 1


def test_fork_safety(amqp_server, bx, configured):
    """publish, fork, publish in the child and in the parent: all three
    arrive, and the child used a connection of its own."""
    srv = amqp_server(exchange=bx)

    async def scenario():
        ((ws, _),) = await clients(srv, ["news"])
        bagou.broadcast("n", "news", {"who": "parent-before"})
        assert (await recv_json(ws))["data"] == {"who": "parent-before"}
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:        # the child: report, then leave at once
            code = 1
            try:
                os.close(r)
                p = publish.publisher()
                assert p._conn is None
                before = p.connects
                bagou.broadcast("n", "news", {"who": "child"})
                os.write(w, b"%d" % (p.connects - before))
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        child_connects = os.read(r, 16)
        os.close(r)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert child_connects == b"1"
        assert (await recv_json(ws))["data"] == {"who": "child"}
        # The parent's connection still works after the child closed its
        # copy of the socket.
        connects = publish.publisher().connects
        bagou.broadcast("n", "news", {"who": "parent-after"})
        assert (await recv_json(ws))["data"] == {"who": "parent-after"}
        assert publish.publisher().connects == connects
        await ws.close()

    run(scenario())


def test_threads_share_the_connection(amqp_server, bx, configured):
    import threading
    srv = amqp_server(exchange=bx)
    errors = []

    def publish_some(t):
        try:
            for i in range(20):
                bagou.broadcast("t", "news", {"t": t, "i": i})
        except Exception as e:      # reported to the test below
            errors.append(e)

    async def scenario():
        ((ws, _),) = await clients(srv, ["news"])
        threads = [threading.Thread(target=publish_some, args=(t,))
                   for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
        seen = {t: [] for t in range(4)}
        for _ in range(80):
            d = (await recv_json(ws))["data"]
            seen[d["t"]].append(d["i"])
        # Each thread's messages in its order.
        assert all(v == list(range(20)) for v in seen.values()), seen
        await ws.close()

    run(scenario())


def test_legacy_queue_name(amqp_server, rabbitmq):
    """QUEUE_NAME without EXCHANGE: the original single queue, consumed
    by a server with [amqp] queue."""
    queue = "bagou-legacy-%d" % os.getpid()
    srv = amqp_server(config={"amqp": {"queue": queue}})
    bagou.configure(AMQP_BROKER_URL=rabbitmq.url, QUEUE_NAME=queue)
    try:
        async def scenario():
            ((ws, _),) = await clients(srv, ["bagou"])
            broadcast("bagou", "message", {"legacy": True})
            assert await recv_json(ws) == {"event": "message",
                                           "channel": "bagou",
                                           "data": {"legacy": True}}
            await ws.close()
        run(scenario())
        # A queue nobody declared: a clear error, not a silent drop.
        bagou.configure(AMQP_BROKER_URL=rabbitmq.url,
                        QUEUE_NAME="no-such-queue-%d" % os.getpid())
        with pytest.raises(BroadcastError, match="does not exist"):
            broadcast("bagou", "message", {})
    finally:
        bagou.configure()


def test_unreachable_broker_raises(rabbitmq):
    port = free_port()         # nothing listens there
    bagou.configure(AMQP_BROKER_URL="amqp://guest:guest@%s:%d/"
                    % (HOST, port), CONNECT_TIMEOUT=2)
    try:
        t0 = time.monotonic()
        with pytest.raises(BroadcastError, match="cannot connect"):
            bagou.broadcast("message", "news")
        assert time.monotonic() - t0 < 5
    finally:
        bagou.configure()


def test_refusals_raise(rabbitmq):
    bagou.configure(AMQP_BROKER_URL=rabbitmq.url.replace("guest:guest",
                                                         "guest:wrong"))
    try:
        with pytest.raises(BroadcastError, match="login refused"):
            bagou.broadcast("message", "news")
        bagou.configure(AMQP_BROKER_URL=rabbitmq.url,
                        EXCHANGE="no-such-exchange-%d" % os.getpid())
        with pytest.raises(BroadcastError, match="does not exist"):
            bagou.broadcast("message", "news")
    finally:
        bagou.configure()


def test_bad_arguments():
    with pytest.raises(ValueError):
        bagou.broadcast("", "news")
    with pytest.raises(TypeError):
        bagou.broadcast("e", 42)
    with pytest.raises(TypeError):
        bagou.broadcast("e", "news", {"x": object()})


def test_broker_down_then_back(amqp_server, bx, configured, rabbitmq):
    """Down at publish time: an exception, not silence. Back: the next
    broadcast reconnects by itself."""
    srv = amqp_server(exchange=bx)
    bagou.broadcast("warm", "news")       # a connection to lose
    rabbitmq.stop_app()
    try:
        t0 = time.monotonic()
        with pytest.raises(BroadcastError):
            bagou.broadcast("lost", "news")
        assert time.monotonic() - t0 < 10
        with pytest.raises(BroadcastError, match="cannot connect"):
            bagou.broadcast("lost", "news")
    finally:
        rabbitmq.start_app()
    srv.wait_amqp("connected", 30)

    async def scenario():
        ((ws, _),) = await clients(srv, ["news"])
        bagou.broadcast("back", "news")
        assert (await recv_json(ws))["event"] == "back"
        await ws.close()

    run(scenario(), timeout=60)


def test_confirm_timeout(amqp_server, bx, rabbitmq):
    """A broker that stops taking messages (memory alarm: it blocks
    publishers) is reported after CONFIRM_TIMEOUT."""
    bagou.configure(AMQP_BROKER_URL=rabbitmq.url, EXCHANGE=bx,
                    CONFIRM_TIMEOUT=1.5)
    amqp_server(exchange=bx)
    try:
        bagou.broadcast("warm", "news")
        rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
        try:
            t0 = time.monotonic()
            with pytest.raises(BroadcastError):
                for _ in range(3):     # the alarm takes effect at once or
                    bagou.broadcast("blocked", "news")   # at the next
            assert time.monotonic() - t0 < 10
        finally:
            rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.8")
        deadline = time.monotonic() + 20
        while True:
            try:
                bagou.broadcast("after", "news")
                break
            except BroadcastError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        bagou.configure()


# ---------------------------------------------------------------- HTTP

def test_http_endpoint_without_broker(server):
    key = "k-" + str(os.getpid())
    srv = server(config={"http": {"api_key": key}})
    url = "http://%s:%d/broadcast" % (HOST, srv.port)
    bagou.configure(HTTP_URL=url, API_KEY=key)
    try:
        async def scenario():
            ((ws, cid),) = await clients(srv, ["news"])
            bagou.broadcast("over-http", "news", {"h": 1})
            broadcast(event="legacy-http", channels=["news"])
            assert await recv_json(ws) == {"event": "over-http",
                                           "channel": "news",
                                           "data": {"h": 1}}
            assert (await recv_json(ws))["event"] == "legacy-http"
            await ws.close()
        run(scenario())
        bagou.configure(HTTP_URL=url, API_KEY="wrong")
        with pytest.raises(BroadcastError, match="403"):
            bagou.broadcast("x", "news")
        bagou.configure(HTTP_URL=url, API_KEY=key)
        with pytest.raises(BroadcastError, match="400"):
            bagou.broadcast("x", "bad channel")
        bagou.configure(HTTP_URL="http://%s:%d/broadcast"
                        % (HOST, free_port()))
        with pytest.raises(BroadcastError, match="cannot reach"):
            bagou.broadcast("x", "news")
    finally:
        bagou.configure()


def test_no_socket_left_behind(amqp_server, bx, configured):
    """reset() (configure() calls it) closes the connection."""
    bagou.broadcast("x", "news")
    p = publish.publisher()
    sock = p._conn._impl._transport._sock
    bagou.configure()
    assert p._conn is None
    with pytest.raises(OSError):
        sock.getpeername()
    assert isinstance(sock, socket.socket)


def test_no_server_bound_is_a_warning(rabbitmq, publisher, caplog):
    """The exchange exists but no node is connected: RabbitMQ took the
    message and had nobody to give it to. Not an error (broadcasts are
    not a mailbox), but said in the log."""
    from rabbitmq import unique_exchange
    lonely = unique_exchange("bagou-lonely")
    publisher(lonely)                  # declares it, binds nothing
    bagou.configure(AMQP_BROKER_URL=rabbitmq.url, EXCHANGE=lonely)
    try:
        bagou.broadcast("message", "news")
        assert "no queue is bound to exchange '%s'" % lonely in caplog.text
    finally:
        bagou.configure()
