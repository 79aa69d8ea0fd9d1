"""The compiled-in example module (handlers/example.c) through a real
server: the "whoami" event, and the on_subscribe hook that keeps
"readonly-" channels (^readonly-) for authenticated connections."""

import time
import urllib.parse

import jwt
import pytest

from support import (error_code, expect_nothing_pending,
                     expect_only_sentinel, recv_json, request, run,
                     send_json, subscribe, ws_connect)

SECRET = "handlers-secret"
AUTH = {"auth": {"secret": SECRET}}


def token(sub, **claims):
    payload = {"sub": sub, "exp": int(time.time()) + 3600}
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


async def authenticate(ws, sub):
    reply = await request(ws, "authenticate", {"token": token(sub)},
                          callback_id="auth")
    assert reply == {"event": "callback", "callbackId": "auth",
                     "data": {"success": True, "user": {"id": sub}}}, reply


async def whoami(ws, cid="w"):
    reply = await request(ws, "whoami", callback_id=cid)
    assert reply["event"] == "callback", reply
    assert reply["callbackId"] == cid, reply
    assert set(reply) == {"event", "callbackId", "data"}, reply
    return reply["data"]


# ---------------------------------------------------------------- whoami

def test_whoami_anonymous(server):
    srv = server()

    async def scenario():
        ws, cid = await ws_connect(srv)
        reply = await request(ws, "whoami", callback_id="w1")
        assert reply == {"event": "callback", "callbackId": "w1",
                         "data": {"success": True, "id": cid, "user": None,
                                  "channels": []}}, reply
        await expect_nothing_pending(ws)
        await ws.close()

    run(scenario())


def test_whoami_lists_channels(server):
    srv = server()

    async def scenario():
        ws, cid = await ws_connect(srv)
        for ch in ("news", "sport", "room-1"):
            await subscribe(ws, ch)
        me = await whoami(ws)
        assert me["id"] == cid
        assert sorted(me["channels"]) == ["news", "room-1", "sport"]
        reply = await request(ws, "unsubscribe", {"channel": "sport"},
                              callback_id="u")
        assert reply["data"]["success"] is True, reply
        assert sorted((await whoami(ws))["channels"]) == ["news", "room-1"]
        # Subscribing twice lists it once.
        await subscribe(ws, "news")
        assert sorted((await whoami(ws))["channels"]) == ["news", "room-1"]
        await ws.close()

    run(scenario())


def test_whoami_after_authenticate(server):
    srv = server(AUTH)

    async def scenario():
        ws, cid = await ws_connect(srv)
        assert (await whoami(ws))["user"] is None
        await authenticate(ws, "alice")
        me = await whoami(ws)
        assert me == {"success": True, "id": cid, "user": "alice",
                      "channels": []}
        await ws.close()

    run(scenario())


def test_whoami_token_at_connect(server):
    srv = server(AUTH)

    async def scenario():
        tok = urllib.parse.quote(token("bob"), safe="")
        ws, cid = await ws_connect(srv, path="/websocket?token=" + tok)
        me = await whoami(ws)
        assert me["id"] == cid and me["user"] == "bob"
        await ws.close()

    run(scenario())


def test_whoami_ids_are_per_connection(server):
    srv = server(workers=2)

    async def scenario():
        conns = [await ws_connect(srv) for _ in range(6)]
        ids = [(await whoami(ws))["id"] for ws, _ in conns]
        assert ids == [cid for _, cid in conns]
        assert len(set(ids)) == 6
        for ws, _ in conns:
            await ws.close()

    run(scenario())


def test_whoami_without_callback_sends_event(server):
    """Without a callbackId the example answers with a "whoami" event."""
    srv = server()

    async def scenario():
        ws, cid = await ws_connect(srv)
        await subscribe(ws, "news")
        msg = await request(ws, "whoami")
        assert msg == {"event": "whoami",
                       "data": {"id": cid, "user": None,
                                "channels": ["news"]}}, msg
        await ws.close()

    run(scenario())


def test_whoami_is_not_auto_acked_or_forwarded(server):
    """A compiled-in handler owns the reply: exactly one callback."""
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        for i in range(5):
            await send_json(ws, {"event": "whoami", "callbackId": "m%d" % i,
                                 "data": {"ignored": True}})
        for i in range(5):
            reply = await recv_json(ws)
            assert reply["callbackId"] == "m%d" % i, reply
            assert "id" in reply["data"], reply
        await expect_nothing_pending(ws)
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- readonly

@pytest.mark.parametrize("channel", ["readonly-news", "readonly-",
                                     "readonly-room-1"])
def test_readonly_anonymous_forbidden(server, channel):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "subscribe", {"channel": channel},
                              callback_id="r")
        assert reply["event"] == "callback" and reply["callbackId"] == "r"
        assert reply["data"]["success"] is False, reply
        assert reply["data"]["error"]["code"] == "forbidden", reply
        assert isinstance(reply["data"]["error"]["message"], str)
        # Without a callbackId: an error event.
        msg = await request(ws, "subscribe", {"channel": channel})
        assert msg["event"] == "error", msg
        assert msg["data"]["code"] == "forbidden", msg
        assert msg["data"]["event"] == "subscribe", msg
        # Not subscribed.
        assert (await whoami(ws))["channels"] == []
        srv.broadcast({"event": "m", "channel": channel, "data": 1})
        await expect_only_sentinel(srv, [ws])
        await ws.close()

    run(scenario())


@pytest.mark.parametrize("channel", ["readonly", "news-readonly-x",
                                     "Readonly-news", "xreadonly-news"])
def test_readonly_pattern_is_anchored(server, channel):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, channel)
        await ws.close()

    run(scenario())


def test_readonly_allowed_once_authenticated(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "subscribe", {"channel": "readonly-news"},
                              callback_id="before")
        assert error_code(reply) == "forbidden", reply
        await authenticate(ws, "carol")
        await subscribe(ws, "readonly-news")
        assert (await whoami(ws))["channels"] == ["readonly-news"]
        srv.broadcast({"event": "m", "channel": "readonly-news",
                       "data": {"n": 1}})
        assert await recv_json(ws) == {"event": "m",
                                       "channel": "readonly-news",
                                       "data": {"n": 1}}
        await ws.close()

    run(scenario())


def test_readonly_allowed_with_token_at_connect(server):
    srv = server(AUTH)

    async def scenario():
        tok = urllib.parse.quote(token("dave"), safe="")
        ws, _ = await ws_connect(srv, path="/websocket?token=" + tok)
        await subscribe(ws, "readonly-feed")
        await ws.close()

    run(scenario())


def test_readonly_failed_authentication_still_forbidden(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        bad = jwt.encode({"sub": "eve"}, "wrong-secret", algorithm="HS256")
        reply = await request(ws, "authenticate", {"token": bad},
                              callback_id="a")
        assert error_code(reply) == "auth_failed", reply
        reply = await request(ws, "subscribe", {"channel": "readonly-news"},
                              callback_id="s")
        assert error_code(reply) == "forbidden", reply
        await ws.close()

    run(scenario())


def test_channel_under_both_rules_needs_both(server):
    """"readonly-" is the example hook, private_prefix the built-in rule.
    With private_prefix "readonly-secret-", "readonly-secret-x" is under
    both: an anonymous connection fails the hook (and the rule), an
    authenticated one whose token does not list the channel passes the
    hook but fails the rule, and one whose token lists it passes both.
    "readonly-x" is under the hook alone."""
    srv = server({"auth": {"secret": SECRET,
                           "private_prefix": "readonly-secret-"}})
    both = "readonly-secret-x"

    async def scenario():
        anon, _ = await ws_connect(srv)
        reply = await request(anon, "subscribe", {"channel": both},
                              callback_id="a")
        assert error_code(reply) == "forbidden", reply
        reply = await request(anon, "subscribe", {"channel": "readonly-x"},
                              callback_id="b")
        assert error_code(reply) == "forbidden", reply

        user, _ = await ws_connect(srv)
        reply = await request(user, "authenticate",
                              {"token": token("u", channels=["other"])},
                              callback_id="auth")
        assert reply["data"]["success"] is True, reply
        await subscribe(user, "readonly-x")        # the hook alone: ok
        reply = await request(user, "subscribe", {"channel": both},
                              callback_id="c")
        assert error_code(reply) == "forbidden", reply

        allowed, _ = await ws_connect(srv)
        reply = await request(allowed, "authenticate",
                              {"token": token("v", channels=[both])},
                              callback_id="auth")
        assert reply["data"]["success"] is True, reply
        await subscribe(allowed, both)
        for ws in (anon, user, allowed):
            await ws.close()

    run(scenario())
