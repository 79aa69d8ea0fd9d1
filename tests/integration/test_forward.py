"""PROTOCOL §3 and §5, forwarding: client events without a compiled-in
handler go to the application through RabbitMQ ([forward] exchange), and
the application answers with broadcasts targeted at the client. The
application here is the real example, examples/app/app.py, run as a
subprocess against the session broker.

Each test uses its own pair of exchanges (broadcasts and forwarded
events), so tests sharing the broker never see each other's traffic."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rabbitmq import amqp_server, publisher, unique_exchange  # noqa: F401
from support import (REPO, error_code, expect_nothing_pending, metric_sum,
                     recv_json, request, run, send_json, subscribe,
                     wait_for, ws_connect)

APP = os.path.join(REPO, "examples", "app", "app.py")
APP_START_TIMEOUT = 20.0
APP_STOP_TIMEOUT = 10.0

SESSIONS = {
    "good": {"user": "42", "name": "Alice"},
    "bob-session": {"user": "7", "name": "Bob"},
}

LIFECYCLE = "open,close,subscribe,unsubscribe"


# ---------------------------------------------------------------- the app

class App:
    """examples/app/app.py as a subprocess; its stderr in a file."""

    def __init__(self, tmpdir, url, events, broadcasts, name):
        self.url = url
        self.events = events
        self.broadcasts = broadcasts
        self.sessions_path = os.path.join(tmpdir, name + "-sessions.json")
        self.log_path = os.path.join(tmpdir, name + ".log")
        with open(self.sessions_path, "w") as f:
            json.dump(SESSIONS, f)
        self.proc = None
        self._log = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, APP, "--url", self.url,
             "--events-exchange", self.events,
             "--broadcast-exchange", self.broadcasts,
             "--sessions", self.sessions_path, "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT)
        self.wait_consuming(1)
        return self

    def consuming_count(self):
        return self.log().count(" consuming ")

    def wait_consuming(self, n, timeout=APP_START_TIMEOUT):
        """Until the app has (re)connected and bound its queue n times."""
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("the app exited with %s:\n%s"
                                     % (self.proc.returncode, self.log()))
            return self.consuming_count() >= n
        wait_for(ready, timeout=timeout, what="the app consuming")

    def stop(self):
        """SIGTERM; returns the exit status (SIGKILL after a timeout)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=APP_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


@pytest.fixture
def app(tmp_path, rabbitmq):
    """Factory: app(events, broadcasts) -> a started App. Every app is
    stopped with SIGTERM at the end and must exit 0 (clean shutdown);
    its log is printed, so a failing test shows it."""
    started = []

    def start(events, broadcasts):
        a = App(str(tmp_path), rabbitmq.url, events, broadcasts,
                "app%d" % len(started))
        started.append(a)
        return a.start()

    yield start
    codes = []
    for a in started:
        codes.append(a.stop())
        print("---- %s\n%s" % (a.log_path, a.log()))
    assert all(c == 0 for c in codes), \
        "the app did not stop cleanly on SIGTERM: %r" % codes


# ---------------------------------------------------------------- helpers

def exchanges():
    """(broadcast exchange, events exchange), both fresh."""
    return unique_exchange("bagou-fwd"), unique_exchange("bagou-fwd-events")


def forwarding_config(events, lifecycle=None):
    cfg = {"forward": {"exchange": events}}
    if lifecycle:
        cfg["forward"]["lifecycle"] = lifecycle
    return cfg


async def connect(srv, channels=(), **kw):
    ws, cid = await ws_connect(srv, **kw)
    for ch in channels:
        await subscribe(ws, ch)
    return ws, cid


def callback_ok(cb, extra=None):
    data = {"success": True}
    data.update(extra or {})
    return {"event": "callback", "callbackId": cb, "data": data}


async def expect_app_done(ws, tag):
    """Nothing more reaches ws from the application: an "echo" sent now
    is answered next. The sentinel takes the same path as any answer of
    the app (forwarded through RabbitMQ, answered by the app, published to
    the broadcast exchange, consumed by ws's node), and each hop keeps
    the order: the node forwards in order, the app takes its queue one
    event at a time and publishes on one channel, the node's queue is
    FIFO and a connection's messages are sent in order. So a late or
    duplicate answer to any event the app got before this echo would
    arrive first. expect_nothing_pending (a ping, answered by the node
    itself) would not prove that: the app answers asynchronously."""
    cb = "done-" + tag
    reply = await request(ws, "echo", {"sentinel": tag}, callback_id=cb)
    assert reply == callback_ok(cb, {"echo": {"sentinel": tag}}), reply


def assert_failure(msg, cb, code):
    assert msg.get("event") == "callback" and msg.get("callbackId") == cb, \
        msg
    assert msg["data"].get("success") is False, msg
    assert error_code(msg) == code, msg


# ---------------------------------------------------------------- tests

def test_forwarded_not_auto_acked_then_answered_once(amqp_server, publisher,
                                                    app):
    bx, ex = exchanges()
    srv = amqp_server(config=forwarding_config(ex), exchange=bx)
    # The application side's exchange exists (as the app would declare
    # it), but no application consumes yet: a tap sees what is forwarded.
    events = publisher(ex)
    tap = events.tap("#")

    async def before_app():
        ws, cid = await connect(srv, ["room-1"])
        await request(ws, "store", {"name": "Zoe"}, callback_id="st")
        await send_json(ws, {"event": "hello", "data": {"x": [1, "y"]},
                             "callbackId": "h1"})
        await send_json(ws, {"event": "chat",
                             "data": {"room": "room-1", "text": "hi"},
                             "callbackId": "c1"})
        await send_json(ws, {"event": "quiet", "data": 5})
        # Not auto-acked: the application owes these callbacks. No app
        # is running, so only the node could answer, and it answers a
        # connection in order: the ping's pong is next.
        await expect_nothing_pending(ws)
        await ws.close()
        return cid

    cid = run(before_app())
    got = [events.get(tap) for _ in range(3)]
    assert [k for k, _ in got] == ["hello", "chat", "quiet"], got
    hello = got[0][1]
    client = hello.pop("client")
    assert hello == {"event": "hello", "data": {"x": [1, "y"]},
                     "callbackId": "h1"}, hello
    assert client["id"] == cid, client
    assert isinstance(client["node"], str) and client["node"], client
    assert client["user"] is None, client
    assert "info" not in client or client["info"] in (None, {}), client
    assert client["channels"] == ["room-1"], client
    assert client["store"] == {"name": "Zoe"}, client
    assert got[1][1]["data"] == {"room": "room-1", "text": "hi"}
    quiet = got[2][1]
    assert quiet["data"] == 5 and "callbackId" not in quiet, quiet
    assert "cookie" not in hello, hello
    assert events.drain(tap) == []

    app(ex, bx)

    async def with_app():
        ws, cid = await connect(srv, ["room-1"])
        other, _ = await connect(srv, ["room-1"])
        outside, _ = await connect(srv, ["room-2"])
        await request(ws, "store", {"name": "Zoe"}, callback_id="st")
        await send_json(ws, {"event": "chat", "callbackId": "c2",
                             "data": {"room": "room-1", "text": "hello"}})
        relay = {"event": "chat", "channel": "room-1",
                 "data": {"name": "Zoe", "text": "hello", "from": cid}}
        # The app publishes the relay, then the callback (one publisher:
        # in that order).
        assert await recv_json(ws) == relay
        assert await recv_json(ws) == callback_ok("c2")
        assert await recv_json(other) == relay
        # "echo": the callback only, with the data back.
        assert await request(ws, "echo", {"k": [1, 2]},
                             callback_id="e1") == \
            callback_ok("e1", {"echo": {"k": [1, 2]}})
        # An unknown event: the app answers it, once.
        reply = await request(ws, "nope", {"a": 1}, callback_id="n1")
        assert_failure(reply, "n1", "unknown_event")
        # A client event named like a lifecycle event, with a callbackId:
        # the app does not take it for the real close (no leave notice).
        reply = await request(ws, "close", {}, callback_id="fc")
        assert_failure(reply, "fc", "unknown_event")
        # Chat without being in the room: refused by the app, as an error
        # event without a callbackId.
        reply = await request(ws, "chat", {"room": "room-9", "text": "x"})
        assert reply["event"] == "error", reply
        assert reply["data"]["code"] == "not_allowed", reply
        assert reply["data"]["event"] == "chat", reply
        # Exactly once: nothing more arrives anywhere. Each connection's
        # own echo is the next thing it gets; other's and outside's are
        # sent after the app answered all of ws's events, so a duplicate
        # relay to them would have come first.
        await expect_app_done(ws, "ws")
        await expect_app_done(other, "other")
        await expect_app_done(outside, "outside")
        for w in (ws, other, outside):
            await w.close()

    run(with_app())


def test_builtins_and_compiled_in_handlers_are_not_forwarded(
        amqp_server, publisher):
    bx, ex = exchanges()
    srv = amqp_server(config=forwarding_config(ex), exchange=bx)
    events = publisher(ex)
    tap = events.tap("#")

    async def scenario():
        ws, cid = await connect(srv, ["news"])
        assert await request(ws, "ping") == {"event": "pong"}
        assert await request(ws, "store", {"k": 1}, callback_id="s") == \
            callback_ok("s")
        reply = await request(ws, "whoami", callback_id="w")
        assert reply["data"]["id"] == cid, reply
        assert await request(ws, "unsubscribe", {"channel": "news"},
                             callback_id="u") == \
            callback_ok("u", {"channel": "news"})
        await ws.close()

    run(scenario())
    # Lifecycle forwarding is off: nothing at all was forwarded.
    assert events.drain(tap, quiet=0.5) == []


def test_round_trip_across_two_nodes(amqp_server, app):
    bx, ex = exchanges()
    a_node = amqp_server(config=forwarding_config(ex), exchange=bx)
    b_node = amqp_server(config=forwarding_config(ex), exchange=bx)
    app(ex, bx)

    async def scenario():
        a1, _ = await connect(a_node, ["room-x"])
        a_out, _ = await connect(a_node, ["room-y"])
        b1, _ = await connect(b_node, ["room-x"])
        sender, sid = await connect(b_node, ["room-x"])
        await request(sender, "store", {"name": "Bea"}, callback_id="st")
        relay = {"event": "chat", "channel": "room-x",
                 "data": {"name": "Bea", "text": "across", "from": sid}}
        for i in range(3):
            relay["data"]["text"] = "across-%d" % i
            await send_json(sender, {"event": "chat", "callbackId": "x%d" % i,
                                     "data": {"room": "room-x",
                                              "text": "across-%d" % i}})
            assert await recv_json(sender) == relay
            assert await recv_json(sender) == callback_ok("x%d" % i)
            assert await recv_json(a1) == relay, "node A subscriber"
            assert await recv_json(b1) == relay, "node B subscriber"
        # Nothing more on either node: the app publishes to one exchange
        # that both nodes' queues are bound to, so each connection's own
        # echo answer reaches its node after any earlier relay.
        for i, ws in enumerate((a1, b1, sender, a_out)):
            await expect_app_done(ws, "rt%d" % i)
        # The callback goes to the connection on whichever node holds it:
        # now one on node A.
        reply = await request(a1, "nope", callback_id="na")
        assert_failure(reply, "na", "unknown_event")
        # Only a1 got that answer: sender's echo, sent after it, is
        # sender's next message.
        await expect_app_done(sender, "sender")
        for ws in (a1, a_out, b1, sender):
            await ws.close()

    run(scenario())


def test_cookie_login(amqp_server, publisher, app):
    bx, ex = exchanges()
    srv = amqp_server(config=forwarding_config(ex), exchange=bx)
    app(ex, bx)
    bpub = publisher(bx)

    async def scenario():
        ws, cid = await connect(srv, extra_headers={
            "Cookie": "csrftoken=abc123; sessionid=good; theme=dark"})
        # Anonymous until the application says otherwise.
        reply = await request(ws, "subscribe", {"channel": "private-42"},
                              callback_id="p0")
        assert_failure(reply, "p0", "forbidden")
        reply = await request(ws, "authenticate", {}, callback_id="a1")
        assert reply == callback_ok("a1", {"user": {
            "id": "42", "info": {"name": "Alice"}}}), reply
        # The reply's "auth" made the connection user 42, with its
        # private channel.
        assert await request(ws, "subscribe", {"channel": "private-42"},
                             callback_id="p1") == \
            callback_ok("p1", {"channel": "private-42"})
        reply = await request(ws, "subscribe", {"channel": "private-7"},
                              callback_id="p2")
        assert_failure(reply, "p2", "forbidden")
        bpub.publish({"event": "dm", "channel": "private-42",
                      "data": {"t": 1}})
        assert await recv_json(ws) == {"event": "dm",
                                       "channel": "private-42",
                                       "data": {"t": 1}}
        # Forwarded events now carry the user; the chat name comes from
        # the login's info.
        reply = await request(ws, "whoami", callback_id="w")
        assert reply["data"]["user"] == "42", reply
        await subscribe(ws, "room-a")
        await send_json(ws, {"event": "chat", "callbackId": "c",
                             "data": {"room": "room-a", "text": "hey"}})
        assert await recv_json(ws) == {
            "event": "chat", "channel": "room-a",
            "data": {"name": "Alice", "text": "hey", "from": cid}}
        assert await recv_json(ws) == callback_ok("c")
        await expect_app_done(ws, "login")
        await ws.close()

        # Without a callbackId the answer still authenticates.
        ws, _ = await connect(srv, extra_headers={
            "Cookie": "sessionid=bob-session"})
        await send_json(ws, {"event": "authenticate", "data": {}})
        msg = await recv_json(ws)
        assert msg["event"] == "authenticated", msg
        assert await request(ws, "subscribe", {"channel": "private-7"},
                             callback_id="p7") == \
            callback_ok("p7", {"channel": "private-7"})
        await ws.close()

    run(scenario())


def test_cookie_login_refused(amqp_server, app):
    bx, ex = exchanges()
    srv = amqp_server(config=forwarding_config(ex), exchange=bx)
    app(ex, bx)

    async def scenario():
        for headers in ({"Cookie": "sessionid=bad"},
                        {"Cookie": "csrftoken=abc"}, {}):
            ws, _ = await connect(srv, extra_headers=headers)
            reply = await request(ws, "authenticate", {}, callback_id="a")
            assert_failure(reply, "a", "auth_failed")
            reply = await request(ws, "subscribe",
                                  {"channel": "private-42"},
                                  callback_id="p")
            assert_failure(reply, "p", "forbidden")
            await send_json(ws, {"event": "authenticate", "data": {}})
            reply = await recv_json(ws)
            assert reply["event"] == "error", reply
            assert reply["data"]["code"] == "auth_failed", reply
            assert reply["data"]["event"] == "authenticate", reply
            await expect_app_done(ws, "refused")
            await ws.close()

    run(scenario())


def test_cookie_forwarded_only_with_authenticate(amqp_server, publisher):
    bx, ex = exchanges()
    srv = amqp_server(config=forwarding_config(ex), exchange=bx)
    events = publisher(ex)
    tap = events.tap("#")

    async def scenario():
        ws, cid = await connect(srv, extra_headers={
            "Cookie": "sessionid=good"})
        await send_json(ws, {"event": "authenticate", "data": {"x": 1},
                             "callbackId": "a"})
        await send_json(ws, {"event": "other", "callbackId": "o"})
        # No app: nothing answers these two; the node owes nothing.
        await expect_nothing_pending(ws)
        await ws.close()
        return cid

    cid = run(scenario())
    (k1, auth), (k2, other) = events.get(tap), events.get(tap)
    assert k1 == "authenticate" and k2 == "other", (k1, k2)
    assert auth["cookie"] == "sessionid=good", auth
    assert auth["data"] == {"x": 1} and auth["callbackId"] == "a", auth
    assert auth["client"]["id"] == cid, auth
    assert "cookie" not in other, other


def test_lifecycle_join_and_leave(amqp_server, publisher, app):
    bx, ex = exchanges()
    srv = amqp_server(config=forwarding_config(ex, LIFECYCLE), exchange=bx)
    events = publisher(ex)
    tap = events.tap("#")
    app(ex, bx)

    def join(cid, name, room="room-1"):
        return {"event": "join", "channel": room,
                "data": {"id": cid, "name": name}}

    def leave(cid, name, room="room-1"):
        return {"event": "leave", "channel": room,
                "data": {"id": cid, "name": name}}

    async def scenario():
        a, aid = await connect(srv)
        await subscribe(a, "room-1")
        # Forwarded after it happened: a is in the room and sees itself
        # join (no store name: the id is the name).
        assert await recv_json(a) == join(aid, aid)
        b, bid = await connect(srv)
        await request(b, "store", {"name": "Bob"}, callback_id="s")
        await subscribe(b, "room-1")
        # b is back in room-1 at once; its own leave notice may still be
        # on the way to b's worker and then reaches it first.
        got = await recv_json(b)
        if got == leave(bid, "Bob"):
            got = await recv_json(b)
        assert got == join(bid, "Bob")
        assert await recv_json(a) == join(bid, "Bob")
        await subscribe(b, "room-2")
        assert await recv_json(b) == join(bid, "Bob", "room-2")
        # Not a room: no notice. The "subscribe" to news was forwarded
        # before b's echo (same connection, in order), so a join notice
        # for it would reach b (and then a, sending after) first.
        await subscribe(b, "news")
        await expect_app_done(b, "news-b")
        await expect_app_done(a, "news-a")
        # Unsubscribe: the others in the room see the leave.
        assert await request(b, "unsubscribe", {"channel": "room-1"},
                             callback_id="u") == \
            callback_ok("u", {"channel": "room-1"})
        assert await recv_json(a) == leave(bid, "Bob")
        await subscribe(b, "room-1")
        # b is back in room-1 at once; its own leave notice may still be
        # on the way to b's worker and then reaches it first.
        got = await recv_json(b)
        if got == leave(bid, "Bob"):
            got = await recv_json(b)
        assert got == join(bid, "Bob")
        assert await recv_json(a) == join(bid, "Bob")
        # Close: a leave for every room it was in.
        c, cid = await connect(srv, ["room-2"])
        assert await recv_json(c) == join(cid, cid, "room-2")
        assert await recv_json(b) == join(cid, cid, "room-2")
        await b.close()
        assert await recv_json(a) == leave(bid, "Bob")
        assert await recv_json(c) == leave(bid, "Bob", "room-2")
        # One leave per room: the app had b's close before these echoes.
        # (That the node forwards "close" once is checked on the tap
        # below.)
        await expect_app_done(a, "end-a")
        await expect_app_done(c, "end-c")
        await a.close()
        await c.close()
        return aid, bid

    aid, bid = run(scenario())
    seen = [(k, b["client"]["id"], b["data"], "callbackId" in b)
            for k, b in events.drain(tap, quiet=1.0)]
    # (The "echo" sentinels are forwarded too: not lifecycle events.)
    mine = [s for s in seen if s[1] == bid and s[0] != "echo"]
    assert mine == [
        ("open", bid, {}, False),
        ("subscribe", bid, {"channel": "room-1"}, False),
        ("subscribe", bid, {"channel": "room-2"}, False),
        ("subscribe", bid, {"channel": "news"}, False),
        ("unsubscribe", bid, {"channel": "room-1"}, False),
        ("subscribe", bid, {"channel": "room-1"}, False),
        ("close", bid, {}, False),
    ], mine
    assert ("close", aid, {}, False) in seen, seen


def test_close_carries_channels_and_store(amqp_server, publisher):
    bx, ex = exchanges()
    srv = amqp_server(config=forwarding_config(ex, "close"), exchange=bx)
    events = publisher(ex)
    tap = events.tap("close")

    async def scenario():
        ws, cid = await connect(srv, ["room-1", "news"])
        await request(ws, "store", {"name": "Cy"}, callback_id="s")
        await ws.close()
        return cid

    cid = run(scenario())
    key, body = events.get(tap)
    assert key == "close" and body["event"] == "close", (key, body)
    assert body["client"]["id"] == cid, body
    assert sorted(body["client"]["channels"]) == ["news", "room-1"], body
    assert body["client"]["store"] == {"name": "Cy"}, body


def test_forwarding_while_broker_down(amqp_server, app, rabbitmq):
    bx, ex = exchanges()
    srv = amqp_server(config=forwarding_config(ex, LIFECYCLE), exchange=bx)
    the_app = app(ex, bx)

    async def scenario():
        ws, wid = await connect(srv)
        await subscribe(ws, "room-1")
        assert (await recv_json(ws))["event"] == "join"
        await asyncio.to_thread(rabbitmq.stop_app)
        try:
            await asyncio.to_thread(srv.wait_amqp, "disconnected", 10.0)
            t0 = time.monotonic()
            reply = await request(ws, "chat", {"room": "room-1",
                                               "text": "lost?"},
                                  callback_id="c1")
            # At once, not after a timeout.
            assert time.monotonic() - t0 < 1.0
            assert_failure(reply, "c1", "unavailable")
            reply = await request(ws, "chat", {"room": "room-1",
                                               "text": "lost?"})
            assert reply["event"] == "error", reply
            assert reply["data"]["code"] == "unavailable", reply
            assert reply["data"]["event"] == "chat", reply
            reply = await request(ws, "authenticate", {}, callback_id="a")
            assert_failure(reply, "a", "unavailable")
            # Lifecycle events cannot be forwarded, but the subscription
            # itself works.
            assert await request(ws, "subscribe", {"channel": "room-2"},
                                 callback_id="s") == \
                callback_ok("s", {"channel": "room-2"})
            # No late answer from the node (the app is cut off too: a
            # join it sent later would come before the chat below).
            await expect_nothing_pending(ws)
        finally:
            await asyncio.to_thread(rabbitmq.start_app)
        await asyncio.to_thread(srv.wait_amqp, "connected", 20.0)
        # The app reconnects on its own and binds a new queue.
        await asyncio.to_thread(the_app.wait_consuming, 2, 30.0)
        reply = await request(ws, "chat", {"room": "room-1",
                                           "text": "back"},
                              callback_id="c2")
        assert reply == {"event": "chat", "channel": "room-1",
                         "data": {"name": wid, "text": "back",
                                  "from": wid}}, reply
        assert await recv_json(ws) == callback_ok("c2")
        await ws.close()

    run(scenario(), timeout=120)
    assert srv.alive()


def test_undeclared_events_exchange_keeps_the_link(amqp_server, publisher):
    """Until the application has declared the [forward] exchange once, a
    forwarded event goes to an exchange that does not exist. RabbitMQ
    answers that with a channel error (404 NOT_FOUND); that must not cost
    the node its AMQP link, i.e. its broadcast queue and every broadcast
    published meanwhile, and "unavailable" for every client of the node
    (any anonymous client can send unknown events). The server should
    declare the forward exchange itself (topic, durable, as the app does)
    along with the broadcast exchange."""
    bx, ex = exchanges()          # ex is never declared here
    srv = amqp_server(config=forwarding_config(ex), exchange=bx)
    pub = publisher(bx)
    before = metric_sum(srv.metrics(), "bagou_amqp_reconnects_total")

    async def scenario():
        ws, _ = await connect(srv, ["news"])
        for i in range(3):
            await send_json(ws, {"event": "unknown-%d" % i,
                                 "callbackId": "u%d" % i})
        await asyncio.sleep(1.0)
        pub.publish({"event": "still-here", "channel": "news"})
        assert await recv_json(ws) == {"event": "still-here",
                                       "channel": "news", "data": {}}
        await ws.close()

    run(scenario())
    after = metric_sum(srv.metrics(), "bagou_amqp_reconnects_total")
    # "404 NOT_FOUND": the broker's reply, not a port that has 404 in it.
    assert "404 NOT_FOUND" not in srv.log() and after == before, \
        "a forwarded event to the undeclared exchange %s reset the " \
        "node's AMQP link (%d reconnects):\n%s" % (ex, after - before,
                                                   srv.log())


def test_node_shutdown_forwards_close(amqp_server, publisher, app):
    """A node stopped with SIGTERM (a deploy, a restart) closes its
    connections with 1001. With "close" in [forward] lifecycle the
    application must hear about each of them, as for any other close,
    or the people in a room on another node never see them leave (and
    any presence the application keeps goes stale). The close events
    have to be forwarded before the node lets go of RabbitMQ."""
    bx, ex = exchanges()
    events = publisher(ex)
    tap = events.tap("close")
    a_node = amqp_server(config=forwarding_config(ex, LIFECYCLE),
                         exchange=bx)
    b_node = amqp_server(config=forwarding_config(ex, LIFECYCLE),
                         exchange=bx)
    app(ex, bx)

    async def scenario():
        a, aid = await connect(a_node)
        await request(a, "store", {"name": "Ann"}, callback_id="s")
        await subscribe(a, "room-1")
        assert (await recv_json(a))["event"] == "join"
        b, bid = await connect(b_node)
        await subscribe(b, "room-1")
        assert (await recv_json(a))["event"] == "join"
        # Node B consumes the app's broadcasts at its own pace: a's join
        # may reach it after b subscribed, before b's own join.
        got = await recv_json(b)
        if got["event"] == "join" and got["data"]["id"] == aid:
            got = await recv_json(b)
        assert got["event"] == "join" and got["data"]["id"] == bid, got
        await asyncio.to_thread(a_node.stop)
        assert a_node.returncode == 0, a_node.returncode
        try:
            notice = await recv_json(b, 5.0)
        except AssertionError:
            raise AssertionError("no leave notice within 5 s after node A "
                                 "stopped; its log:\n%s"
                                 % a_node.log()) from None
        assert notice == {"event": "leave", "channel": "room-1",
                          "data": {"id": aid, "name": "Ann"}}, notice
        await b.close()
        return aid

    aid = run(scenario())
    got = [(k, body["client"]["id"], body["client"]["channels"])
           for k, body in events.drain(tap, quiet=0.5)]
    assert ("close", aid, ["room-1"]) in got, got


def test_client_cannot_forge_lifecycle_events(amqp_server, publisher):
    """"open" and "close" are not built-in events, so a client may send
    events with those names, and without a compiled-in handler they are
    forwarded like any other, with routing key "open"/"close". With
    [forward] lifecycle on, the application must be able to tell the
    server's lifecycle events from such client events: otherwise any
    client makes the application believe it left (leave notices to its
    rooms, presence dropped) while it stays connected and subscribed. A
    forged event must either not be forwarded under that name or differ
    from the real one (e.g. a field only the server sets)."""
    bx, ex = exchanges()
    srv = amqp_server(config=forwarding_config(ex, "open,close"),
                      exchange=bx)
    events = publisher(ex)
    tap = events.tap("#")

    async def scenario():
        ws, cid = await connect(srv, ["room-1"])
        await send_json(ws, {"event": "close", "data": {}})
        await send_json(ws, {"event": "open", "data": {}})
        # Refused as reserved names (an error event: no callbackId).
        for name in ("close", "open"):
            err = await recv_json(ws)
            assert err["event"] == "error", err
            assert err["data"]["code"] == "unknown_event", err
            assert err["data"]["event"] == name, err
        # No app: only the node answers, and nothing else is pending.
        await expect_nothing_pending(ws)
        await ws.close()
        return cid

    cid = run(scenario())
    got = [(k, json.dumps(b, sort_keys=True))
           for k, b in events.drain(tap, quiet=0.8)
           if b.get("client", {}).get("id") == cid]
    for name in ("open", "close"):
        bodies = [b for k, b in got if k == name]
        assert 1 <= len(bodies) <= 2, got
        assert len(set(bodies)) == len(bodies), \
            "a client-sent '%s' was forwarded exactly like the server's " \
            "lifecycle '%s': %s" % (name, name, bodies[0])
