"""ORIGINAL.md §2: handlers in an installed app's events.py
(djproject/chat/events.py), run by `manage.py bagou` for the events the
real bagou-server forwards through a real RabbitMQ."""

import pytest

from bagou.events import on_close, on_message, on_open
from bagou.exceptions import EventError
from bghelpers import forwarding
from support import (expect_silence, recv_json, request, run, send_json,
                     subscribe, ws_connect)


@pytest.fixture
def srv(amqp_server, exchanges, runner):
    bx, ex = exchanges
    return amqp_server(config=forwarding(ex), exchange=bx)


async def connect(srv, channels=()):
    """A client past its on_open welcome."""
    ws, cid = await ws_connect(srv)
    welcome = await recv_json(ws)
    assert welcome["event"] == "welcome", welcome
    assert welcome["data"] == {"id": cid}, welcome
    for ch in channels:
        await subscribe(ws, ch)
    return ws, cid, welcome


def test_on_open_jsonify_reaches_that_client_only(srv):
    async def scenario():
        a, aid, welcome = await connect(srv)
        # Every field given to jsonify reaches the page.
        assert welcome == {"event": "welcome", "data": {"id": aid},
                           "note": "kept"}, welcome
        b, bid, _ = await connect(srv)
        await expect_silence(a, 0.3)
        await a.close()
        await b.close()

    run(scenario())


def test_handlers_run_in_registration_order(srv):
    async def scenario():
        ws, _, _ = await connect(srv)
        await send_json(ws, {"event": "order", "data": {}})
        assert await recv_json(ws) == {"event": "step", "data": 1}
        assert await recv_json(ws) == {"event": "step", "data": 2}
        await ws.close()

    run(scenario())


def test_callback_answered_by_handler_keeps_every_field(srv):
    async def scenario():
        ws, cid, _ = await connect(srv, ["news"])
        await request(ws, "store", {"name": "Ann"}, callback_id="s")
        assert (await recv_json(ws))["event"] == "stored"
        reply = await request(ws, "echo", {"x": [1, 2], "channel": "news"},
                              callback_id="e1")
        assert reply == {
            "event": "callback", "callbackId": "e1",
            "data": {"echo": {"x": [1, 2], "channel": "news"},
                     "channel": "news", "user": None,
                     "authenticated": False, "store": {"name": "Ann"}},
            "extra": {"kept": True}}, reply
        await expect_silence(ws, 0.3)
        await ws.close()

    run(scenario())


def test_unanswered_callback_gets_the_automatic_one(srv):
    async def scenario():
        ws, _, _ = await connect(srv)
        reply = await request(ws, "nobody-answers", {"a": 1},
                              callback_id="n1")
        assert reply["event"] == "callback", reply
        assert reply["callbackId"] == "n1", reply
        assert reply.get("data") in (None, {}), reply
        await expect_silence(ws, 0.3)
        await ws.close()

    run(scenario())


def test_handler_that_raises_answers_an_error(srv, runner):
    async def scenario():
        ws, _, _ = await connect(srv)
        reply = await request(ws, "boom", {}, callback_id="b1")
        assert reply == {"event": "callback", "callbackId": "b1",
                         "data": {"success": False, "error": {
                             "code": "internal",
                             "message": "the application failed to handle "
                                        "'boom'"}}}, reply
        # Without a callbackId: an error event.
        await send_json(ws, {"event": "boom", "data": {}})
        err = await recv_json(ws)
        assert err["event"] == "error", err
        assert err["data"]["code"] == "internal", err
        assert err["data"]["event"] == "boom", err
        # The runner goes on.
        reply = await request(ws, "echo", 1, callback_id="e2")
        assert reply["data"]["echo"] == 1, reply
        await ws.close()

    run(scenario())
    assert "RuntimeError: boom, as asked" in runner.log()


def test_channel_filter_on_message(srv):
    async def scenario():
        ws, cid, _ = await connect(srv)
        # Not in a room-* channel: the filtered handler does not run, no
        # handler answers, the automatic callback comes.
        reply = await request(ws, "say", {"text": "hi"}, callback_id="s1")
        assert reply["event"] == "callback" and reply["callbackId"] == "s1"
        await subscribe(ws, "room-7")
        joined = await recv_json(ws)
        assert joined["event"] == "joined", joined
        await send_json(ws, {"event": "say", "data": {"text": "hello"}})
        said = await recv_json(ws)
        assert said == {"event": "said", "channel": "room-7",
                        "data": {"text": "hello", "room": "room-7",
                                 "from": cid}}, said
        await ws.close()

    run(scenario())


def test_subscribe_and_unsubscribe_handlers(srv):
    async def scenario():
        a, aid, _ = await connect(srv, ["news"])
        await subscribe(a, "room-1")
        assert await recv_json(a) == {
            "event": "joined", "channel": "room-1",
            "data": {"id": aid, "channel": "room-1",
                     "channels": ["news", "room-1"]}}
        b, bid, _ = await connect(srv)
        await subscribe(b, "room-1")
        j = await recv_json(a)
        assert j["data"]["id"] == bid, j
        assert (await recv_json(b))["data"]["id"] == bid
        # Filter on the channel being subscribed: not a room, no handler.
        await subscribe(b, "lobby")
        await expect_silence(a, 0.3)
        await request(b, "unsubscribe", {"channel": "room-1"},
                      callback_id="u")
        assert await recv_json(a) == {"event": "left", "channel": "room-1",
                                      "data": {"id": bid}}
        await a.close()
        await b.close()

    run(scenario())


def test_on_close_handler(srv):
    async def scenario():
        watcher, _, _ = await connect(srv, ["watchers"])
        ws, cid, _ = await connect(srv, ["watched", "room-9"])
        assert (await recv_json(ws))["event"] == "joined"
        await ws.close()
        gone = await recv_json(watcher)
        assert gone["event"] == "gone", gone
        assert gone["data"]["id"] == cid, gone
        assert sorted(gone["data"]["channels"]) == ["room-9", "watched"]
        await watcher.close()

    run(scenario())


def test_on_open_and_on_close_refuse_a_filter():
    for event in (on_open, on_close):
        with pytest.raises(EventError):
            event(channel="^room-")
        with pytest.raises(EventError):
            event(lambda c: None, channel="x")
    with pytest.raises(EventError):
        on_message(channel="(unclosed")


def test_jsonify_as_given(srv):
    """client.jsonify(success=True, message=...) of django-bagou's
    introduction: the page receives exactly that object."""
    async def scenario():
        ws, _, _ = await connect(srv)
        await send_json(ws, {"event": "intro", "data": {}})
        assert await recv_json(ws) == {"success": True,
                                       "message": "Message received!"}
        await ws.close()

    run(scenario())


def test_on_store(srv):
    async def scenario():
        ws, _, _ = await connect(srv)
        reply = await request(ws, "store", {"name": "Zoe"}, callback_id="s")
        assert reply["data"]["success"] is True, reply
        assert await recv_json(ws) == {"event": "stored", "data": {
            "store": {"name": "Zoe"}, "merged": {"name": "Zoe"}}}
        await request(ws, "store", {"age": 7}, callback_id="s2")
        assert await recv_json(ws) == {"event": "stored", "data": {
            "store": {"name": "Zoe", "age": 7}, "merged": {"age": 7}}}
        await ws.close()

    run(scenario())
