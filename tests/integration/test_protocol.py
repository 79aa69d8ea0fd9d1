"""PROTOCOL §3 and §4 (connect): client messages and their replies."""

import asyncio

import pytest
import websockets

from support import (error_code, expect_nothing_pending,
                     expect_only_sentinel, metric_sum, recv_json, request,
                     run, send_json, subscribe, ws_connect)


def ok_callback(cid, **data):
    return {"event": "callback", "callbackId": cid,
            "data": dict(success=True, **data)}


def assert_fail_callback(msg, cid, code):
    assert msg["event"] == "callback", msg
    assert msg["callbackId"] == cid, msg
    assert set(msg) == {"event", "callbackId", "data"}, msg
    data = msg["data"]
    assert data["success"] is False, msg
    assert data["error"]["code"] == code, msg
    assert isinstance(data["error"]["message"], str), msg


def assert_error_event(msg, code, event=None):
    assert msg["event"] == "error", msg
    assert set(msg) == {"event", "data"}, msg
    assert msg["data"]["code"] == code, msg
    assert isinstance(msg["data"]["message"], str), msg
    if event is not None:
        assert msg["data"]["event"] == event, msg


async def pong_next(ws):
    """Proves the connection is alive and nothing else was queued before."""
    reply = await request(ws, "ping")
    assert reply == {"event": "pong"}, reply


# ---------------------------------------------------------------- connect

def test_connect_event(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await ws.close()
        # Read the raw first message ourselves: exact shape.
        ws = await websockets.connect(srv.ws_url(), compression=None,
                                      open_timeout=5)
        msg = await recv_json(ws)
        assert set(msg) == {"event", "data"}, msg
        assert msg["event"] == "connect"
        assert set(msg["data"]) == {"id", "protocol"}, msg
        assert msg["data"]["protocol"] == 1
        cid = msg["data"]["id"]
        assert isinstance(cid, str) and 1 <= len(cid.encode()) <= 64
        assert cid.isascii() and cid.isprintable(), cid
        await ws.close()

    run(scenario())


def test_client_ids_unique_and_not_reused(server):
    srv = server(workers=2)

    async def scenario():
        ids = []
        socks = []
        for _ in range(20):
            ws, cid = await ws_connect(srv)
            socks.append(ws)
            ids.append(cid)
        for ws in socks:
            await ws.close()
        for _ in range(10):
            ws, cid = await ws_connect(srv)
            ids.append(cid)
            await ws.close()
        assert len(set(ids)) == len(ids), ids

    run(scenario())


# ---------------------------------------------------------------- subscribe

def test_subscribe_callback(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "subscribe", {"channel": "news"},
                              callback_id="c-17")
        assert reply == ok_callback("c-17", channel="news")
        await ws.close()

    run(scenario())


def test_subscribe_without_callback_is_silent_and_effective(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await send_json(ws, {"event": "subscribe",
                             "data": {"channel": "news"}})
        await expect_nothing_pending(ws)
        await asyncio.to_thread(srv.broadcast, {"event": "m",
                                                "channel": "news"})
        assert await recv_json(ws) == {"event": "m", "channel": "news",
                                       "data": {}}
        await ws.close()

    run(scenario())


def test_subscribe_idempotent(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        for cid in ("a", "b"):
            reply = await request(ws, "subscribe", {"channel": "news"},
                                  callback_id=cid)
            assert reply == ok_callback(cid, channel="news")
        m = await asyncio.to_thread(srv.metrics)
        assert metric_sum(m, "bagou_subscriptions") == 1
        await asyncio.to_thread(srv.broadcast, {"event": "once",
                                                "channel": "news"})
        await asyncio.to_thread(srv.broadcast, {"event": "sentinel"})
        assert (await recv_json(ws))["event"] == "once"
        assert (await recv_json(ws))["event"] == "sentinel"
        await ws.close()

    run(scenario())


def test_unsubscribe(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "news")
        reply = await request(ws, "unsubscribe", {"channel": "news"},
                              callback_id="u1")
        assert reply == ok_callback("u1", channel="news")
        await asyncio.to_thread(srv.broadcast, {"event": "gone",
                                                "channel": "news"})
        await asyncio.to_thread(srv.broadcast, {"event": "sentinel"})
        assert await recv_json(ws) == {"event": "sentinel", "data": {}}
        m = await asyncio.to_thread(srv.metrics)
        assert metric_sum(m, "bagou_subscriptions") == 0
        await ws.close()

    run(scenario())


def test_unsubscribe_idempotent(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        for cid in ("u1", "u2"):
            reply = await request(ws, "unsubscribe", {"channel": "never"},
                                  callback_id=cid)
            assert reply == ok_callback(cid, channel="never")
        await send_json(ws, {"event": "unsubscribe",
                             "data": {"channel": "never"}})
        await pong_next(ws)
        await ws.close()

    run(scenario())


VALID_CHANNELS = ["a", "x" * 200, "a-b_c.d:e/f@!~", "not-private-ish",
                  "UPPER.lower.123", "{}[]()<>?=+&%$^|`',;"]


@pytest.mark.parametrize("channel", VALID_CHANNELS,
                         ids=["one", "200", "punct", "dash", "mixed",
                              "symbols"])
def test_valid_channel_names(server, channel):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "subscribe", {"channel": channel},
                              callback_id="v")
        assert reply == ok_callback("v", channel=channel)
        await asyncio.to_thread(srv.broadcast, {"event": "e",
                                                "channel": channel})
        assert await recv_json(ws) == {"event": "e", "channel": channel,
                                       "data": {}}
        await ws.close()

    run(scenario())


INVALID_CHANNELS = [
    ("empty", ""),
    ("201_bytes", "x" * 201),
    ("space", "a b"),
    ("star", "news*"),
    ("hash", "news#"),
    ("quote", 'a"b'),
    ("backslash", "a\\b"),
    ("non_ascii", "caf\u00e9"),
    ("control", "a\x01b"),
    ("tab", "a\tb"),
    ("del", "a\x7fb"),
    ("newline", "a\n"),
]


@pytest.mark.parametrize("channel", [c for _, c in INVALID_CHANNELS],
                         ids=[i for i, _ in INVALID_CHANNELS])
@pytest.mark.parametrize("event", ["subscribe", "unsubscribe"])
def test_invalid_channel_callback(server, event, channel):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, event, {"channel": channel},
                              callback_id="bad")
        assert_fail_callback(reply, "bad", "invalid_channel")
        await pong_next(ws)
        await ws.close()

    run(scenario())


def test_invalid_channel_error_event(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "subscribe", {"channel": "a b"})
        assert_error_event(reply, "invalid_channel", "subscribe")
        reply = await request(ws, "unsubscribe", {"channel": ""})
        assert_error_event(reply, "invalid_channel", "unsubscribe")
        m = await asyncio.to_thread(srv.metrics)
        assert metric_sum(m, "bagou_subscriptions") == 0
        await ws.close()

    run(scenario())


@pytest.mark.parametrize("data", [{}, {"channel": 5}, {"channel": None},
                                  {"channel": ["a"]}, "news", None],
                         ids=["no_channel", "number", "null", "list",
                              "data_string", "no_data"])
def test_subscribe_bad_data(server, data):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "subscribe", data, callback_id="d")
        assert reply["callbackId"] == "d"
        assert error_code(reply) in ("invalid_channel", "bad_message")
        await pong_next(ws)
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- store

def test_store_success(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "store", {"user": "ann", "n": 1},
                              callback_id="s1")
        assert reply == ok_callback("s1")
        await send_json(ws, {"event": "store", "data": {"x": [1, 2]}})
        await pong_next(ws)
        await ws.close()

    run(scenario())


@pytest.mark.parametrize("data", [[1, 2], "text", 5, None, True],
                         ids=["list", "string", "number", "null", "bool"])
def test_store_not_object(server, data):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await send_json(ws, {"event": "store", "data": data,
                             "callbackId": "s"})
        assert_fail_callback(await recv_json(ws), "s", "bad_message")
        await send_json(ws, {"event": "store", "data": data})
        assert_error_event(await recv_json(ws), "bad_message", "store")
        await ws.close()

    run(scenario())


def test_store_merge_and_limit(server):
    srv = server()  # max_store_bytes 4096 by default

    async def scenario():
        ws, _ = await ws_connect(srv)
        # 3000 bytes fit.
        reply = await request(ws, "store", {"a": "x" * 3000},
                              callback_id="1")
        assert reply == ok_callback("1")
        # Merged with "a", 4500+ bytes: refused, store unchanged.
        reply = await request(ws, "store", {"b": "y" * 1500},
                              callback_id="2")
        assert_fail_callback(reply, "2", "bad_message")
        # Replacing "a" keeps it at 3000: fits only if "b" was not kept.
        reply = await request(ws, "store", {"a": "z" * 3000},
                              callback_id="3")
        assert reply == ok_callback("3")
        # Small keys still merge in.
        reply = await request(ws, "store", {"c": 1}, callback_id="4")
        assert reply == ok_callback("4")
        # Without callbackId the failure is an error event.
        await send_json(ws, {"event": "store", "data": {"d": "w" * 2000}})
        assert_error_event(await recv_json(ws), "bad_message", "store")
        await ws.close()

    run(scenario())


def test_store_limit_configurable(server):
    srv = server({"limits": {"max_store_bytes": 100}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "store", {"k": "v" * 50}, callback_id="1")
        assert reply == ok_callback("1")
        reply = await request(ws, "store", {"k": "v" * 150},
                              callback_id="2")
        assert_fail_callback(reply, "2", "bad_message")
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- ping

def test_ping_pong(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        assert await request(ws, "ping") == {"event": "pong"}
        assert await request(ws, "ping", {"any": [1]}) == {"event": "pong"}
        assert await request(ws, "ping", callback_id="p1") == \
            ok_callback("p1")
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- publish

def test_publish_default_not_allowed(server):
    srv = server()

    async def scenario():
        a, _ = await ws_connect(srv)
        b, _ = await ws_connect(srv)
        await subscribe(a, "room")
        await subscribe(b, "room")
        pub = {"channel": "room", "event": "say", "data": {"t": 1}}
        assert_fail_callback(await request(a, "publish", pub,
                                           callback_id="p"),
                             "p", "not_allowed")
        assert_error_event(await request(a, "publish", pub),
                           "not_allowed", "publish")
        await expect_only_sentinel(srv, [b])
        await a.close()
        await b.close()

    run(scenario())


def test_publish_none_explicit(server):
    srv = server({"channels": {"client_publish": "none"}})

    async def scenario():
        a, _ = await ws_connect(srv)
        await subscribe(a, "room")
        reply = await request(a, "publish", {"channel": "room", "event": "e",
                                             "data": 1}, callback_id="p")
        assert_fail_callback(reply, "p", "not_allowed")
        await a.close()

    run(scenario())


def test_publish_subscribed(server):
    srv = server({"channels": {"client_publish": "subscribed"}})

    async def scenario():
        a, aid = await ws_connect(srv)
        b, _ = await ws_connect(srv)
        c, _ = await ws_connect(srv)
        await subscribe(a, "room")
        await subscribe(b, "room")
        await subscribe(c, "other")
        reply = await request(a, "publish", {"channel": "room",
                                             "event": "say",
                                             "data": {"t": "hi"}},
                              callback_id="p1")
        expected = {"event": "say", "channel": "room", "data": {"t": "hi"},
                    "from": aid}
        # The sender is subscribed: it gets the callback and the message,
        # in either order.
        got = [reply, await recv_json(a)]
        assert ok_callback("p1") in got, got
        assert expected in got, got
        assert await recv_json(b) == expected
        await expect_only_sentinel(srv, [a, b, c])
        # Not subscribed to "other": refused, nothing delivered.
        reply = await request(a, "publish", {"channel": "other",
                                             "event": "say", "data": 2},
                              callback_id="p2")
        assert_fail_callback(reply, "p2", "not_allowed")
        assert_error_event(await request(a, "publish",
                                         {"channel": "other", "event": "say",
                                          "data": 2}),
                           "not_allowed", "publish")
        await expect_only_sentinel(srv, [a, b, c])
        for ws in (a, b, c):
            await ws.close()

    run(scenario())


def test_publish_all(server):
    srv = server({"channels": {"client_publish": "all"}})

    async def scenario():
        a, aid = await ws_connect(srv)
        b, _ = await ws_connect(srv)
        await subscribe(b, "room")
        reply = await request(a, "publish", {"channel": "room",
                                             "event": "say",
                                             "data": [1, "x"]},
                              callback_id="p")
        assert reply == ok_callback("p")
        assert await recv_json(b) == {"event": "say", "channel": "room",
                                      "data": [1, "x"], "from": aid}
        # The sender is not subscribed: it gets nothing more.
        await expect_only_sentinel(srv, [a, b])
        # Without callbackId, success is silent.
        await send_json(a, {"event": "publish",
                            "data": {"channel": "room", "event": "again",
                                     "data": {}}})
        assert (await recv_json(b))["event"] == "again"
        await expect_only_sentinel(srv, [a, b])
        await a.close()
        await b.close()

    run(scenario())


def test_publish_invalid_channel(server):
    srv = server({"channels": {"client_publish": "all"}})

    async def scenario():
        a, _ = await ws_connect(srv)
        reply = await request(a, "publish", {"channel": "bad chan",
                                             "event": "e", "data": {}},
                              callback_id="p")
        assert_fail_callback(reply, "p", "invalid_channel")
        await a.close()

    run(scenario())


def test_publish_order(server):
    srv = server({"channels": {"client_publish": "all"}}, workers=2)

    async def scenario():
        a, aid = await ws_connect(srv)
        subs = []
        for _ in range(4):   # spread over both workers
            ws, _ = await ws_connect(srv)
            await subscribe(ws, "seq")
            subs.append(ws)
        for i in range(100):
            await send_json(a, {"event": "publish",
                                "data": {"channel": "seq", "event": "n",
                                         "data": i}})
        for ws in subs:
            got = [(await recv_json(ws))["data"] for _ in range(100)]
            assert got == list(range(100))
        await expect_only_sentinel(srv, subs)
        for ws in subs + [a]:
            await ws.close()

    run(scenario())


# ---------------------------------------------------------------- other events

def test_unknown_event_with_callback_auto_success(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "chat.message", {"text": "hi"},
                              callback_id="u-1")
        assert reply == {"event": "callback", "callbackId": "u-1",
                         "data": {"success": True}}
        await ws.close()

    run(scenario())


def test_unknown_event_without_callback_ignored(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await send_json(ws, {"event": "chat.message", "data": {"t": 1}})
        await send_json(ws, {"event": "whatever"})
        await expect_nothing_pending(ws)
        await pong_next(ws)
        await ws.close()

    run(scenario())


BAD_MESSAGES = [
    ("invalid_json", "{"),
    ("not_json", "hello"),
    ("list", "[1, 2]"),
    ("number", "42"),
    ("string", '"ping"'),
    ("null", "null"),
    ("empty", ""),
    ("missing_event", '{"data": {}}'),
    ("event_number", '{"event": 5}'),
    ("event_null", '{"event": null}'),
    ("event_object", '{"event": {"x": 1}}'),
    ("trailing_garbage", '{"event": "ping"} x'),
]


@pytest.mark.parametrize("text", [t for _, t in BAD_MESSAGES],
                         ids=[i for i, _ in BAD_MESSAGES])
def test_bad_message_keeps_connection(server, text):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await ws.send(text)
        msg = await recv_json(ws)
        assert msg["event"] == "error", msg
        assert msg["data"]["code"] == "bad_message", msg
        assert isinstance(msg["data"]["message"], str)
        await pong_next(ws)
        await ws.close()

    run(scenario())


def test_callback_id_64_bytes_ok(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        cid = "c" * 64
        assert await request(ws, "ping", callback_id=cid) == ok_callback(cid)
        await ws.close()

    run(scenario())


@pytest.mark.parametrize("cid", ["c" * 65, 5, {"a": 1}, ["x"], True],
                         ids=["65_bytes", "number", "object", "list",
                              "bool"])
def test_bad_callback_id(server, cid):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await send_json(ws, {"event": "subscribe",
                             "data": {"channel": "x"}, "callbackId": cid})
        msg = await recv_json(ws)
        assert error_code(msg) == "bad_message", msg
        await pong_next(ws)
        # The message was refused whole: not subscribed.
        m = await asyncio.to_thread(srv.metrics)
        assert metric_sum(m, "bagou_subscriptions") == 0
        await ws.close()

    run(scenario())


def test_too_many_subscriptions(server):
    srv = server({"limits": {"max_subscriptions": 3}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        for ch in ("a", "b", "c"):
            await subscribe(ws, ch)
        reply = await request(ws, "subscribe", {"channel": "d"},
                              callback_id="d")
        assert_fail_callback(reply, "d", "too_many_subscriptions")
        assert_error_event(await request(ws, "subscribe",
                                         {"channel": "d"}),
                           "too_many_subscriptions", "subscribe")
        # Already subscribed: still fine (idempotent, not counted twice).
        await subscribe(ws, "b")
        # Refused "d" really is not subscribed.
        await asyncio.to_thread(srv.broadcast, {"event": "x",
                                                "channel": "d"})
        await asyncio.to_thread(srv.broadcast, {"event": "y",
                                                "channel": "a"})
        assert (await recv_json(ws))["event"] == "y"
        # Room again after leaving one.
        await request(ws, "unsubscribe", {"channel": "a"}, callback_id="u")
        await subscribe(ws, "d")
        await ws.close()

    run(scenario())


def test_each_callback_answered_once_in_order(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        msgs = [
            {"event": "subscribe", "data": {"channel": "a"}},
            {"event": "subscribe", "data": {"channel": "bad chan"}},
            {"event": "unsubscribe", "data": {"channel": "a"}},
            {"event": "store", "data": {"k": 1}},
            {"event": "store", "data": [1]},
            {"event": "ping"},
            {"event": "custom"},
            {"event": "publish", "data": {"channel": "a", "event": "e"}},
        ]
        for i, m in enumerate(msgs):
            await send_json(ws, dict(m, callbackId="id-%d" % i))
        got = [await recv_json(ws) for _ in msgs]
        assert [g.get("callbackId") for g in got] == \
            ["id-%d" % i for i in range(len(msgs))], got
        assert [g["data"]["success"] for g in got] == \
            [True, False, True, True, False, True, True, False], got
        await expect_nothing_pending(ws)
        await ws.close()

    run(scenario())


def test_deflate_offering_client(server):
    """A stock client offers permessage-deflate; the exchange still works."""
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv, compression="deflate")
        await subscribe(ws, "z")
        await asyncio.to_thread(srv.broadcast, {"event": "e", "channel": "z",
                                                "data": "x" * 5000})
        msg = await recv_json(ws)
        assert msg["data"] == "x" * 5000
        assert await request(ws, "ping") == {"event": "pong"}
        await ws.close()

    run(scenario())


def test_default_max_subscriptions_1000(server):
    # 1001 subscribes in a burst: the rate limit is not under test here.
    srv = server({"limits": {"rate": 0}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        for i in range(1000):
            await send_json(ws, {"event": "subscribe",
                                 "data": {"channel": "ch%d" % i}})
        reply = await request(ws, "subscribe", {"channel": "one-more"},
                              callback_id="x")
        assert_fail_callback(reply, "x", "too_many_subscriptions")
        m = await asyncio.to_thread(srv.metrics)
        assert metric_sum(m, "bagou_subscriptions") == 1000
        await ws.close()

    run(scenario())


def test_publish_after_unsubscribe_not_allowed(server):
    srv = server({"channels": {"client_publish": "subscribed"}})

    async def scenario():
        a, _ = await ws_connect(srv)
        b, _ = await ws_connect(srv)
        await subscribe(a, "room")
        await subscribe(b, "room")
        await request(a, "unsubscribe", {"channel": "room"}, callback_id="u")
        reply = await request(a, "publish", {"channel": "room", "event": "e",
                                             "data": {}}, callback_id="p")
        assert_fail_callback(reply, "p", "not_allowed")
        await expect_only_sentinel(srv, [b])
        await a.close()
        await b.close()

    run(scenario())


def test_store_empty_object(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        assert await request(ws, "store", {}, callback_id="e") == \
            ok_callback("e")
        await ws.close()

    run(scenario())


def test_callback_id_limit_counts_bytes(server):
    """64 bytes, not 64 characters: 32 x "é" fits, 33 x "é" does not."""
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        fits = "\u00e9" * 32
        assert await request(ws, "ping", callback_id=fits) == \
            ok_callback(fits)
        await send_json(ws, {"event": "ping", "callbackId": "\u00e9" * 33})
        assert error_code(await recv_json(ws)) == "bad_message"
        await ws.close()

    run(scenario())


def test_deeply_nested_json(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        deep = '{"event": "custom", "data": ' + "[" * 20000 + "]" * 20000 \
            + ', "callbackId": "d"}'
        await ws.send(deep)
        msg = await recv_json(ws)
        # Refused as bad_message, or accepted: never a crash.
        assert msg.get("callbackId") == "d" or \
            error_code(msg) == "bad_message", msg
        await pong_next(ws)
        await ws.close()

    run(scenario())
    assert srv.alive()


def test_ids_unique_across_nodes_and_restarts(server):
    srv1 = server()
    srv2 = server()

    async def ids_of(srv, n):
        out = []
        for _ in range(n):
            ws, cid = await ws_connect(srv)
            out.append(cid)
            await ws.close()
        return out

    first = run(ids_of(srv1, 5)) + run(ids_of(srv2, 5))
    srv1.stop()
    srv3 = server()
    later = run(ids_of(srv3, 5))
    ids = first + later
    assert len(set(ids)) == len(ids), ids
