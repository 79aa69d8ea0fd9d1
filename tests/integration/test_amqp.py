"""PROTOCOL §4 and §5 with a real RabbitMQ: one bagou-server node, and pika
as the application ("the Django side") publishing broadcasts.

Each test uses its own exchange (rabbitmq.unique_exchange) on the one
session broker, so no test sees another's broadcasts; one test uses the
default exchange name "bagou"."""

import asyncio
import json
import selectors
import threading
import time

import pytest
import websockets.exceptions

from rabbitmq import (Publisher, amqp_server, publisher,  # noqa: F401
                      unique_exchange)
from rawws import OP_TEXT, RawWS, SeqReceiver, pump
from support import (HOST, error_code, metric_sum, recv_json,
                     request, run, send_json, subscribe, wait_for,
                     ws_connect)


# ---------------------------------------------------------------- helpers

def start(amqp_server, publisher, config=None, workers=2, exchange=None):
    """A connected server on a fresh exchange and a pika publisher on it."""
    exchange = exchange or unique_exchange()
    srv = amqp_server(config=config, workers=workers, exchange=exchange)
    return srv, publisher(exchange)


async def clients(srv, channel_sets):
    """One connection per entry, subscribed to those channels."""
    out = []
    for channels in channel_sets:
        ws, cid = await ws_connect(srv)
        for ch in channels:
            await subscribe(ws, ch)
        out.append((ws, cid))
    return out


async def close_all(conns):
    for ws, _ in conns:
        await ws.close()


SENTINEL = {"event": "sentinel", "data": {}}


async def expect_only_sentinel(pub, wss):
    """Nothing else reached these connections: a broadcast to everyone,
    published through the same exchange after what they must not get, is
    the next thing each of them receives."""
    pub.publish({"event": "sentinel"})
    for ws in wss:
        assert await recv_json(ws) == SENTINEL


def rejected(srv):
    return metric_sum(srv.metrics(), "bagou_broadcasts_rejected_total")


# ---------------------------------------------------------------- §4 rules

def test_channel_string(amqp_server, publisher):
    srv, pub = start(amqp_server, publisher)

    async def scenario():
        conns = await clients(srv, [["news"], ["news", "other"], ["other"],
                                    []])
        pub.publish({"event": "message", "channel": "news",
                     "data": {"text": "Welcome!"}})
        want = {"event": "message", "channel": "news",
                "data": {"text": "Welcome!"}}
        assert await recv_json(conns[0][0]) == want
        assert await recv_json(conns[1][0]) == want
        await expect_only_sentinel(pub, [conns[2][0], conns[3][0]])
        await close_all(conns)

    run(scenario())


def test_default_exchange_name(amqp_server, publisher):
    """No [amqp] exchange in the config: the exchange is "bagou"."""
    srv = amqp_server()
    pub = publisher("bagou")

    async def scenario():
        (ws, _), = await clients(srv, [["news"]])
        pub.publish({"event": "hi", "channel": "news", "data": 1})
        assert await recv_json(ws) == {"event": "hi", "channel": "news",
                                       "data": 1}
        await ws.close()

    run(scenario())


def test_heartbeats_keep_an_idle_link(amqp_server, publisher):
    """[amqp] heartbeat = 1: the broker drops a peer that misses two, so
    an idle node must keep sending them; after 5 quiet seconds it is still
    on its first connection and broadcasts still flow."""
    exchange = unique_exchange()
    srv = amqp_server(config={"amqp": {"heartbeat": 1}}, exchange=exchange)
    pub = publisher(exchange)
    time.sleep(5)
    assert srv.health()["amqp"] == "connected"
    assert metric_sum(srv.metrics(), "bagou_amqp_reconnects_total") == 0

    async def scenario():
        (ws, _), = await clients(srv, [["beat"]])
        pub.publish({"event": "alive", "channel": "beat", "data": 1})
        assert await recv_json(ws) == {"event": "alive", "channel": "beat",
                                       "data": 1}
        await ws.close()

    run(scenario())


def test_any_routing_key(amqp_server, publisher):
    """[amqp] bindings = all: the node's queue is bound with "#", the
    routing key does not route, the body does (publishers that do not
    follow §5's keys; per-channel bindings: test_bindings.py)."""
    srv, pub = start(amqp_server, publisher,
                     config={"amqp": {"bindings": "all"}})

    async def scenario():
        conns = await clients(srv, [["news"], ["other"]])
        for key in ["", "other", "some.dotted.key", "#"]:
            pub.publish({"event": "k", "channel": "news", "data": key},
                        routing_key=key)
        for key in ["", "other", "some.dotted.key", "#"]:
            assert await recv_json(conns[0][0]) == {
                "event": "k", "channel": "news", "data": key}
        await expect_only_sentinel(pub, [conns[1][0]])
        await close_all(conns)

    run(scenario())


def test_channel_list_delivered_once_first_listed(amqp_server, publisher):
    srv, pub = start(amqp_server, publisher)

    async def scenario():
        conns = await clients(srv, [["b", "c"], ["a"], ["a", "b", "c"],
                                    ["zzz"], ["c"]])
        pub.publish({"event": "multi", "channel": ["a", "c", "b"],
                     "data": 7})
        # A sentinel to everyone follows: a duplicate would arrive first.
        pub.publish({"event": "sentinel"})
        expect = ["c", "a", "a", None, "c"]
        for (ws, _), ch in zip(conns, expect):
            msg = await recv_json(ws)
            if ch is None:
                assert msg == {"event": "sentinel", "data": {}}
                continue
            assert msg == {"event": "multi", "channel": ch, "data": 7}
            assert await recv_json(ws) == {"event": "sentinel", "data": {}}
        await close_all(conns)

    run(scenario())


@pytest.mark.parametrize("routing", [{}, {"channel": None},
                                     {"channel": []}],
                         ids=["absent", "null", "empty_list"])
def test_everyone(amqp_server, publisher, routing):
    srv, pub = start(amqp_server, publisher)

    async def scenario():
        conns = await clients(srv, [[], ["news"], []])
        pub.publish(dict({"event": "hello", "data": {"n": 1}}, **routing))
        for ws, _ in conns:
            assert await recv_json(ws) == {"event": "hello",
                                           "data": {"n": 1}}
        await expect_only_sentinel(pub, [ws for ws, _ in conns])
        await close_all(conns)

    run(scenario())


def test_data_default_and_any_json_value(amqp_server, publisher):
    srv, pub = start(amqp_server, publisher)
    values = [1, -2.5, "h\u00e9llo \u2713 \U0001F600", [1, [2, {}]], True,
              None, {"deep": {"er": [None, 1e10, "\"quoted\\"]}}]

    async def scenario():
        (ws, _), = await clients(srv, [["x"]])
        pub.publish({"event": "e", "channel": "x"})
        assert await recv_json(ws) == {"event": "e", "channel": "x",
                                       "data": {}}
        for v in values:
            pub.publish({"event": "e", "channel": "x", "data": v})
        for v in values:
            got = await recv_json(ws)
            if v is None:
                # null data: either passed through or defaulted to {}.
                assert got in ({"event": "e", "channel": "x", "data": None},
                               {"event": "e", "channel": "x", "data": {}}), \
                    got
            else:
                assert got == {"event": "e", "channel": "x", "data": v}
        await ws.close()

    run(scenario())


def test_client_single_id(amqp_server, publisher):
    srv, pub = start(amqp_server, publisher)

    async def scenario():
        conns = await clients(srv, [[], ["news"], ["news"]])
        # channel does not route when client is set (the reply keeps it).
        pub.publish({"event": "direct", "client": conns[0][1],
                     "channel": "news", "data": {"x": 1}})
        assert await recv_json(conns[0][0]) == {"event": "direct",
                                                "channel": "news",
                                                "data": {"x": 1}}
        await expect_only_sentinel(pub, [conns[1][0], conns[2][0]])
        await close_all(conns)

    run(scenario())


def test_client_list(amqp_server, publisher):
    srv, pub = start(amqp_server, publisher)

    async def scenario():
        conns = await clients(srv, [[], [], [], []])
        pub.publish({"event": "some",
                     "client": [conns[1][1], conns[3][1], conns[1][1],
                                "no-such-client"]})
        pub.publish({"event": "sentinel"})
        for i, (ws, _) in enumerate(conns):
            if i in (1, 3):
                assert await recv_json(ws) == {"event": "some"}
            assert await recv_json(ws) == {"event": "sentinel", "data": {}}
        await close_all(conns)

    run(scenario())


def test_exclude(amqp_server, publisher):
    srv, pub = start(amqp_server, publisher)

    async def scenario():
        conns = await clients(srv, [["room"], ["room"], ["room"]])
        pub.publish({"event": "e", "channel": "room",
                     "exclude": conns[1][1]})
        pub.publish({"event": "all", "exclude": conns[2][1]})
        pub.publish({"event": "sentinel"})
        assert [(await recv_json(conns[0][0]))["event"] for _ in range(3)] \
            == ["e", "all", "sentinel"]
        assert [(await recv_json(conns[1][0]))["event"] for _ in range(2)] \
            == ["all", "sentinel"]
        assert [(await recv_json(conns[2][0]))["event"] for _ in range(2)] \
            == ["e", "sentinel"]
        await close_all(conns)

    run(scenario())


def test_callback_id_passed_through(amqp_server, publisher):
    srv, pub = start(amqp_server, publisher)

    async def scenario():
        conns = await clients(srv, [[], ["c"]])
        pub.publish({"event": "callback", "client": conns[0][1],
                     "callbackId": "app-42",
                     "data": {"success": True, "x": 1}})
        assert await recv_json(conns[0][0]) == {
            "event": "callback", "callbackId": "app-42",
            "data": {"success": True, "x": 1}}
        pub.publish({"event": "m", "channel": "c", "callbackId": "k"})
        assert await recv_json(conns[1][0]) == {
            "event": "m", "channel": "c", "callbackId": "k", "data": {}}
        await close_all(conns)

    run(scenario())


# ---------------------------------------------------------------- order

N_SUBS = 100
N_ORDER = 10000
ORDER_TIMEOUT = 90.0


def OrderReceiver(ws):
    """Expects the broadcasts of this test, in order."""
    return SeqReceiver(ws, lambda n: {"event": "n", "channel": "order", "data": n})


def read_message(ws, timeout=10):
    op, payload = ws.recv_message(timeout=timeout)
    assert op == OP_TEXT, (op, payload)
    return json.loads(payload)


def test_per_publisher_order_10000_to_100(amqp_server, rabbitmq):
    exchange = unique_exchange()
    srv = amqp_server(exchange=exchange, workers=2)
    conns = []
    try:
        for _ in range(N_SUBS):
            conns.append(RawWS(HOST, srv.port, timeout=10))
        for ws in conns:
            assert read_message(ws)["event"] == "connect"
        sub = json.dumps({"event": "subscribe", "data": {"channel": "order"},
                          "callbackId": "s"})
        for ws in conns:
            ws.send_text(sub)
        for ws in conns:
            assert read_message(ws) == {
                "event": "callback", "callbackId": "s",
                "data": {"success": True, "channel": "order"}}

        sel = selectors.DefaultSelector()
        receivers = []
        for ws in conns:
            ws.sock.setblocking(False)
            r = OrderReceiver(ws)
            receivers.append(r)
            sel.register(ws.sock, selectors.EVENT_READ, r)

        publish_error = []

        def publish():
            try:
                pub = Publisher(rabbitmq, exchange)
                try:
                    for i in range(N_ORDER):
                        pub.publish({"event": "n", "channel": "order",
                                     "data": i}, routing_key="order")
                finally:
                    pub.close()
            except Exception as e:      # reported by the main thread
                publish_error.append(repr(e))

        publisher_thread = threading.Thread(target=publish, daemon=True)
        t0 = time.monotonic()
        publisher_thread.start()
        deadline = t0 + ORDER_TIMEOUT
        pump(sel, N_ORDER, deadline, lambda: bool(publish_error))
        elapsed = time.monotonic() - t0
        publisher_thread.join(timeout=10)
        sel.close()
        assert not publish_error, publish_error
        bad = [(i, r.next, r.errors[:3]) for i, r in enumerate(receivers)
               if r.errors or r.next != N_ORDER]
        assert not bad, ("%d of %d subscribers wrong after %.1f s "
                         "(rejected=%s); first: %r"
                         % (len(bad), N_SUBS, elapsed, rejected(srv),
                            bad[:5]))
    finally:
        for ws in conns:
            ws.close()


# ---------------------------------------------------------------- hostile

def _deep(n):
    return ('{"event":"e","channel":"x","data":' + "[" * n + "]" * n
            + "}").encode()


HOSTILE = [
    ("not_json", b"this is not json {"),
    ("empty", b""),
    ("json_array", b'[{"event":"e","channel":"x"}]'),
    ("json_string", b'"event"'),
    ("no_event", b'{"channel":"x","data":{}}'),
    ("event_not_string", b'{"event":5,"channel":"x"}'),
    ("bad_channel", b'{"event":"e","channel":"bad channel"}'),
    ("bad_channel_in_list", b'{"event":"e","channel":["x","a#b"]}'),
    ("channel_too_long", ('{"event":"e","channel":"%s"}'
                          % ("c" * 201)).encode()),
    ("bad_client_id", b'{"event":"e","client":5}'),
    ("invalid_utf8", b'{"event":"e","channel":"x","data":"\xff\xfe\xc3"}'),
    ("deep_nesting_10000", _deep(10000)),
    ("string_5MB", b'{"event":"e","channel":"x","data":"'
     + b"a" * (5 * 2**20) + b'"}'),
]


def short(value, limit=300):
    text = repr(value)
    if len(text) > limit:
        text = text[:limit] + "... (%d chars)" % len(text)
    return text


async def expect_next(ws, want, what, timeout=10.0):
    """The next message on ws must be want; a failure says what came
    instead (cut short), or how the connection ended."""
    try:
        got = await recv_json(ws, timeout=timeout)
    except websockets.exceptions.ConnectionClosed as e:
        raise AssertionError("%s: connection closed (%s) instead of %r"
                             % (what, e, want))
    assert got == want, "%s: got %s instead of %r" % (what, short(got), want)


async def hostile_clients(srv):
    """A subscriber of "x" and one on no channel; no size limit on their
    side, so whatever the server sends is seen and reported."""
    conns = []
    for channels in (["x"], []):
        ws, cid = await ws_connect(srv, max_size=None)
        for ch in channels:
            await subscribe(ws, ch)
        conns.append((ws, cid))
    return conns


@pytest.mark.parametrize("body", [b for _, b in HOSTILE],
                         ids=[n for n, _ in HOSTILE])
def test_hostile_body_rejected_counted(amqp_server, publisher, body):
    srv, pub = start(amqp_server, publisher)

    async def scenario():
        conns = await hostile_clients(srv)
        before = await asyncio.to_thread(rejected, srv)
        pub.publish(body, routing_key="x")
        pub.publish({"event": "valid", "channel": "x", "data": 1})
        pub.publish({"event": "valid-all"})
        what = "after the hostile body %s" % short(body, 80)
        await expect_next(conns[0][0], {"event": "valid", "channel": "x",
                                        "data": 1}, what + ", subscriber")
        await expect_next(conns[0][0], {"event": "valid-all", "data": {}},
                          what + ", subscriber")
        await expect_next(conns[1][0], {"event": "valid-all", "data": {}},
                          what + ", unsubscribed client")
        # Consumed in order: the hostile body was handled before the
        # valid ones were delivered.
        after = await asyncio.to_thread(rejected, srv)
        assert after == before + 1, (
            "bagou_broadcasts_rejected_total went from %s to %s for %s"
            % (before, after, short(body, 80)))
        await close_all(conns)

    run(scenario())
    assert srv.alive()


def test_hostile_burst_then_valid(amqp_server, publisher):
    """Every hostile body in a row, then a valid one: each is counted once,
    none reaches a client, the valid one does."""
    srv, pub = start(amqp_server, publisher)

    async def scenario():
        conns = await hostile_clients(srv)
        before = await asyncio.to_thread(rejected, srv)
        for _, body in HOSTILE:
            pub.publish(body, routing_key="x")
        pub.publish({"event": "valid", "channel": "x", "data": 2})
        await expect_next(conns[0][0], {"event": "valid", "channel": "x",
                                        "data": 2},
                          "after %d hostile bodies" % len(HOSTILE), 20.0)
        await expect_only_sentinel(pub, [conns[1][0]])
        after = await asyncio.to_thread(rejected, srv)
        assert after == before + len(HOSTILE), (
            "bagou_broadcasts_rejected_total went from %s to %s after %d "
            "hostile bodies" % (before, after, len(HOSTILE)))
        await close_all(conns)

    run(scenario())
    assert srv.alive()


def test_large_valid_broadcast_delivered(amqp_server, publisher):
    """A body just under [limits] max_message_size (default 65536) is a
    valid broadcast: delivered whole, not counted as rejected."""
    srv, pub = start(amqp_server, publisher)
    text = "\u00e9" * 30000            # 60,000 bytes of UTF-8

    async def scenario():
        (ws, _), = await clients(srv, [["x"]])
        before = await asyncio.to_thread(rejected, srv)
        body = json.dumps({"event": "big", "channel": "x", "data": text},
                          ensure_ascii=False).encode("utf-8")
        assert 60000 < len(body) < 65536
        pub.publish(body, routing_key="x")
        await expect_next(ws, {"event": "big", "channel": "x", "data": text},
                          "a 60 kB broadcast")
        assert await asyncio.to_thread(rejected, srv) == before
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- legacy

def original_broadcast(url, queue, event, data, channel=None,
                       callback_id=None):
    """The original Python helper, as applications still call it: the
    default exchange, routing key = the queue name."""
    import pika
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = connection.channel()
        ch.queue_declare(queue=queue, durable=True)
        ch.basic_publish(exchange="", routing_key=queue, body=json.dumps({
            "event": event, "callbackId": callback_id,
            "channel": channel, "data": data}))
    finally:
        connection.close()


def test_legacy_queue(amqp_server, publisher, rabbitmq):
    queue = unique_exchange("bagou-legacy")
    srv, pub = start(amqp_server, publisher, config={"amqp": {"queue": queue}})

    async def scenario():
        conns = await clients(srv, [["news"], ["b"], ["a", "b"], []])
        await asyncio.to_thread(original_broadcast, rabbitmq.url, queue,
                                "message", {"text": "hi"}, ["news"])
        msg = await recv_json(conns[0][0])
        assert msg.get("callbackId") is None, msg
        msg.pop("callbackId", None)
        assert msg == {"event": "message", "channel": "news",
                       "data": {"text": "hi"}}
        await asyncio.to_thread(original_broadcast, rabbitmq.url, queue,
                                "two", [1, 2], ["a", "b"], "cb-9")
        assert await recv_json(conns[1][0]) == {
            "event": "two", "channel": "b", "data": [1, 2],
            "callbackId": "cb-9"}
        assert await recv_json(conns[2][0]) == {
            "event": "two", "channel": "a", "data": [1, 2],
            "callbackId": "cb-9"}
        # channel None: everyone.
        await asyncio.to_thread(original_broadcast, rabbitmq.url, queue,
                                "all", {"k": "v"})
        for ws, _ in conns:
            msg = await recv_json(ws)
            msg.pop("callbackId", None)
            assert msg == {"event": "all", "data": {"k": "v"}}
        # The exchange path still works alongside.
        pub.publish({"event": "x", "channel": "news"})
        assert await recv_json(conns[0][0]) == {"event": "x",
                                                "channel": "news",
                                                "data": {}}
        await expect_only_sentinel(pub, [ws for ws, _ in conns[1:]])
        await close_all(conns)

    try:
        run(scenario())
    finally:
        try:
            pub.ch.queue_delete(queue)
        except Exception:
            pass


# ---------------------------------------------------------------- via AMQP

def test_post_broadcast_goes_through_rabbitmq(amqp_server, publisher):
    srv, pub = start(amqp_server, publisher)
    tap = pub.tap("#")

    async def scenario():
        conns = await clients(srv, [["news"], []])
        await asyncio.to_thread(srv.broadcast, {
            "event": "via-http", "channel": "news", "data": {"n": 1}})
        assert await recv_json(conns[0][0]) == {
            "event": "via-http", "channel": "news", "data": {"n": 1}}
        await asyncio.to_thread(srv.broadcast, {
            "event": "to-all", "data": [1]})
        for ws, _ in conns:
            assert await recv_json(ws) == {"event": "to-all", "data": [1]}
        await asyncio.to_thread(srv.broadcast, {
            "event": "two", "channel": ["news", "other"]})
        assert await recv_json(conns[0][0]) == {
            "event": "two", "channel": "news", "data": {}}
        await close_all(conns)

    run(scenario())
    key, body = pub.get(tap)
    assert key == "news", (key, body)
    assert body["event"] == "via-http" and body["channel"] in (
        "news", ["news"]) and body["data"] == {"n": 1}, body
    key, body = pub.get(tap)
    assert key == "", (key, body)
    assert body["event"] == "to-all" and body.get("channel") in (
        None, []) and body["data"] == [1], body
    key, body = pub.get(tap)
    assert key == "", (key, body)
    assert body["event"] == "two" and body["channel"] == ["news", "other"], \
        body
    assert pub.drain(tap) == []


def test_client_publish_goes_through_rabbitmq(amqp_server, publisher):
    srv, pub = start(amqp_server, publisher,
                     config={"channels": {"client_publish": "all"}})
    tap = pub.tap("#")

    async def scenario():
        a, aid = await ws_connect(srv)
        b, _ = await ws_connect(srv)
        await subscribe(b, "room")
        reply = await request(a, "publish", {"channel": "room",
                                             "event": "say",
                                             "data": [1, "x"]},
                              callback_id="p")
        assert reply == {"event": "callback", "callbackId": "p",
                         "data": {"success": True}}
        assert await recv_json(b) == {"event": "say", "channel": "room",
                                      "data": [1, "x"], "from": aid}
        # a is not subscribed: the sentinel to everyone comes next.
        await expect_only_sentinel(pub, [a])
        await a.close()
        await b.close()
        return aid

    aid = run(scenario())
    key, body = pub.get(tap)
    assert key == "room", (key, body)
    assert body["event"] == "say" and body["channel"] in (
        "room", ["room"]) and body["data"] == [1, "x"] \
        and body["from"] == aid, body
    # Only the test's own sentinel follows: the publish went out once.
    assert pub.drain(tap) == [("", {"event": "sentinel"})]


# ---------------------------------------------------------------- outage

def test_broker_outage(amqp_server, publisher, rabbitmq):
    exchange = unique_exchange()
    srv = amqp_server(exchange=exchange,
                      config={"channels": {"client_publish": "all"}})
    pub = publisher(exchange)

    async def scenario():
        conns = await clients(srv, [["room"], ["room"]])
        (a, aid), (b, _) = conns
        pub.publish({"event": "before", "channel": "room"})
        for ws, _ in conns:
            assert (await recv_json(ws))["event"] == "before"
        m = await asyncio.to_thread(srv.metrics)
        assert metric_sum(m, "bagou_amqp_connected") == 1
        reconnects = metric_sum(m, "bagou_amqp_reconnects_total")

        await asyncio.to_thread(rabbitmq.stop_app)
        try:
            t0 = time.monotonic()
            await asyncio.to_thread(srv.wait_amqp, "disconnected", 5.0)
            down_after = time.monotonic() - t0
            m = await asyncio.to_thread(srv.metrics)
            assert metric_sum(m, "bagou_amqp_connected") == 0

            # Sockets stay up.
            assert await request(a, "ping") == {"event": "pong"}
            assert await request(b, "ping", callback_id="pp") == {
                "event": "callback", "callbackId": "pp",
                "data": {"success": True}}

            # POST /broadcast fails loudly.
            status, _, body = await asyncio.to_thread(
                srv.post, "/broadcast", {"event": "lost", "channel": "room"})
            assert status == 503, (status, body)
            err = json.loads(body)
            assert err["error"]["code"] == "unavailable", err

            # So does a client publish, with and without a callbackId.
            reply = await request(a, "publish", {"channel": "room",
                                                 "event": "say"},
                                  callback_id="p1")
            assert reply["event"] == "callback" and \
                reply["callbackId"] == "p1", reply
            assert error_code(reply) == "unavailable", reply
            reply = await request(a, "publish", {"channel": "room",
                                                 "event": "say"})
            assert reply["event"] == "error", reply
            assert reply["data"]["code"] == "unavailable", reply
            assert reply["data"].get("event") == "publish", reply
            # Nothing reached b: the next message it gets, checked below,
            # is the "after" broadcast.
        finally:
            await asyncio.to_thread(rabbitmq.start_app)

        t0 = time.monotonic()
        await asyncio.to_thread(srv.wait_amqp, "connected", 15.0)
        up_after = time.monotonic() - t0
        m = await asyncio.to_thread(srv.metrics)
        assert metric_sum(m, "bagou_amqp_connected") == 1
        assert metric_sum(m, "bagou_amqp_reconnects_total") > reconnects, m

        # Broadcasts flow again: from pika, POST and a client publish.
        pub2 = publisher(exchange)
        pub2.publish({"event": "after", "channel": "room"})
        for ws, _ in conns:
            assert await recv_json(ws) == {"event": "after",
                                           "channel": "room", "data": {}}
        await asyncio.to_thread(srv.broadcast, {"event": "after-http",
                                                "channel": "room"})
        for ws, _ in conns:
            assert (await recv_json(ws))["event"] == "after-http"
        await send_json(a, {"event": "publish",
                            "data": {"channel": "room", "event": "say2"}})
        assert await recv_json(b) == {"event": "say2", "channel": "room",
                                      "data": {}, "from": aid}
        await close_all(conns)
        return down_after, up_after

    run(scenario(), timeout=90)
    assert srv.alive()
