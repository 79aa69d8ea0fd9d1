"""Who may do what: private channels (PROTOCOL §6) for subscribe and client
publish, the per-connection rate limit (§2: rate_limited, close 1008 after
10 s of abuse), and the Origin check of upgrades (§1: 403)."""

import asyncio
import json
import time
import urllib.parse

import jwt
import pytest
import websockets

from support import (error_code, expect_only_sentinel, recv_json, request,
                     run, send_json, subscribe, wait_closed, ws_connect)

SECRET = "policy-secret"


def token(sub="alice", channels=None, ttl=3600, **claims):
    payload = {"sub": sub, "exp": int(time.time()) + ttl}
    if channels is not None:
        payload["channels"] = channels
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


def auth_config(**sections):
    cfg = {"auth": {"secret": SECRET}}
    for name, keys in sections.items():
        cfg.setdefault(name, {}).update(keys)
    return cfg


async def authed(srv, sub="alice", channels=None):
    """A connection authenticated with the authenticate event."""
    ws, cid = await ws_connect(srv)
    reply = await request(ws, "authenticate",
                          {"token": token(sub, channels)}, callback_id="auth")
    assert reply["event"] == "callback" and reply["data"]["success"] is True, \
        reply
    return ws, cid


async def sub_code(ws, channel, cid="s"):
    """Subscribes; returns None on success, else the error code."""
    reply = await request(ws, "subscribe", {"channel": channel},
                          callback_id=cid)
    assert reply["event"] == "callback" and reply["callbackId"] == cid, reply
    if reply["data"]["success"] is True:
        assert reply["data"]["channel"] == channel, reply
        return None
    return error_code(reply)


def assert_fail(msg, cid, code):
    assert msg["event"] == "callback", msg
    assert msg["callbackId"] == cid, msg
    assert msg["data"]["success"] is False, msg
    assert msg["data"]["error"]["code"] == code, msg
    assert isinstance(msg["data"]["error"]["message"], str), msg


# ================================================================ private

def test_private_anonymous_forbidden(server):
    srv = server(auth_config())

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "subscribe", {"channel": "private-x"},
                              callback_id="p")
        assert_fail(reply, "p", "forbidden")
        # Without a callbackId: an error event naming the event.
        msg = await request(ws, "subscribe", {"channel": "private-x"})
        assert msg["event"] == "error", msg
        assert msg["data"]["code"] == "forbidden", msg
        assert msg["data"]["event"] == "subscribe", msg
        # Not subscribed: a broadcast to it does not arrive.
        srv.broadcast({"event": "secret", "channel": "private-x",
                       "data": {"n": 1}})
        await expect_only_sentinel(srv, [ws])
        # Public channels are unaffected.
        assert await sub_code(ws, "public-x") is None
        assert await sub_code(ws, "privatex") is None
        assert await sub_code(ws, "x-private-y") is None
        await ws.close()

    run(scenario())


def test_private_forbidden_without_auth_secret(server):
    """No [auth] secret: nobody can authenticate, so private channels are
    closed to everybody."""
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        assert await sub_code(ws, "private-x") == "forbidden"
        await ws.close()

    run(scenario())


def test_private_exact_channel_allowed(server):
    srv = server(auth_config())

    async def scenario():
        ws, _ = await authed(srv, channels=["private-x"])
        assert await sub_code(ws, "private-x") is None
        # Idempotent.
        assert await sub_code(ws, "private-x") is None
        assert await sub_code(ws, "private-y") == "forbidden"
        assert await sub_code(ws, "private-x-1") == "forbidden"
        assert await sub_code(ws, "private-") == "forbidden"
        # It receives what is broadcast there.
        srv.broadcast({"event": "secret", "channel": "private-x",
                       "data": {"n": 1}})
        assert await recv_json(ws) == {"event": "secret",
                                       "channel": "private-x",
                                       "data": {"n": 1}}
        await ws.close()

    run(scenario())


def test_private_prefix_pattern(server):
    srv = server(auth_config())

    async def scenario():
        ws, _ = await authed(srv, channels=["private-room-*"])
        assert await sub_code(ws, "private-room-1") is None
        assert await sub_code(ws, "private-room-abc-def") is None
        assert await sub_code(ws, "private-roo") == "forbidden"
        assert await sub_code(ws, "private-roomx") == "forbidden"
        assert await sub_code(ws, "private-room") == "forbidden"
        assert await sub_code(ws, "private-other") == "forbidden"
        await ws.close()

    run(scenario())


def test_private_several_patterns(server):
    srv = server(auth_config())

    async def scenario():
        ws, _ = await authed(srv, channels=["private-a", "private-team-*",
                                            "public-ignored"])
        assert await sub_code(ws, "private-a") is None
        assert await sub_code(ws, "private-team-7") is None
        assert await sub_code(ws, "private-b") == "forbidden"
        assert await sub_code(ws, "public-ignored") is None
        await ws.close()

    run(scenario())


@pytest.mark.parametrize("channels", [None, []])
def test_private_token_without_channels_forbidden(server, channels):
    srv = server(auth_config())

    async def scenario():
        ws, _ = await authed(srv, channels=channels)
        reply = await request(ws, "subscribe", {"channel": "private-x"},
                              callback_id="p")
        assert_fail(reply, "p", "forbidden")
        assert await sub_code(ws, "news") is None
        await ws.close()

    run(scenario())


def test_private_token_at_connect(server):
    srv = server(auth_config())

    async def scenario():
        tok = urllib.parse.quote(token("bob", ["private-bob-*"]), safe="")
        ws, _ = await ws_connect(srv, path="/websocket?token=" + tok)
        assert await sub_code(ws, "private-bob-inbox") is None
        assert await sub_code(ws, "private-alice-inbox") == "forbidden"
        await ws.close()

    run(scenario())


def test_private_custom_prefix(server):
    srv = server(auth_config(auth={"private_prefix": "secret-"}))

    async def scenario():
        anon, _ = await ws_connect(srv)
        assert await sub_code(anon, "secret-x") == "forbidden"
        # "private-" is an ordinary name now.
        assert await sub_code(anon, "private-x") is None
        user, _ = await authed(srv, channels=["secret-x"])
        assert await sub_code(user, "secret-x") is None
        assert await sub_code(user, "secret-y") == "forbidden"
        await anon.close()
        await user.close()

    run(scenario())


def test_private_refusal_is_per_connection(server):
    srv = server(auth_config(), workers=2)

    async def scenario():
        allowed, _ = await authed(srv, "a", ["private-x"])
        other, _ = await authed(srv, "b", ["private-y"])
        anon, _ = await ws_connect(srv)
        assert await sub_code(allowed, "private-x") is None
        assert await sub_code(other, "private-x") == "forbidden"
        assert await sub_code(anon, "private-x") == "forbidden"
        srv.broadcast({"event": "m", "channel": "private-x", "data": 1})
        assert (await recv_json(allowed))["data"] == 1
        await expect_only_sentinel(srv, [other, anon])
        for ws in (allowed, other, anon):
            await ws.close()

    run(scenario())


def test_reauthenticate_loses_private_channels(server):
    """A connection that authenticates again as someone whose token does
    not allow a private channel it joined earlier must not keep receiving
    that channel (§6: private channels need an identity whose channels
    allow them)."""
    srv = server(auth_config())

    async def scenario():
        ws, _ = await authed(srv, "alice", ["private-alice"])
        assert await sub_code(ws, "private-alice") is None
        reply = await request(ws, "authenticate",
                              {"token": token("mallory", [])},
                              callback_id="re")
        assert reply["data"]["success"] is True, reply
        srv.broadcast({"event": "for-alice", "channel": "private-alice",
                       "data": {"secret": 1}})
        # The connection stays open and the sentinel is the next thing it
        # gets: mallory does not receive alice's private channel.
        await expect_only_sentinel(srv, [ws])
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- publish

def test_private_publish_anonymous_not_allowed(server):
    srv = server(auth_config(channels={"client_publish": "all"}))

    async def scenario():
        listener, _ = await authed(srv, "l", ["private-x"])
        await subscribe(listener, "private-x")
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "publish", {"channel": "private-x",
                                              "event": "m", "data": 1},
                              callback_id="pub")
        assert_fail(reply, "pub", "not_allowed")
        msg = await request(ws, "publish", {"channel": "private-x",
                                            "event": "m", "data": 2})
        assert msg["event"] == "error" and \
            msg["data"]["code"] == "not_allowed", msg
        assert msg["data"]["event"] == "publish", msg
        await expect_only_sentinel(srv, [listener, ws])
        # A public channel is fine for the same client.
        reply = await request(ws, "publish", {"channel": "public",
                                              "event": "m", "data": 3},
                              callback_id="ok")
        assert reply == {"event": "callback", "callbackId": "ok",
                         "data": {"success": True}}
        await ws.close()
        await listener.close()

    run(scenario())


def test_private_publish_token_rules(server):
    srv = server(auth_config(channels={"client_publish": "all"}))

    async def scenario():
        listener, _ = await authed(srv, "l", ["private-*"])
        await subscribe(listener, "private-room-1")
        await subscribe(listener, "private-other")
        # Allowed by its token: delivered, with "from".
        pub, pub_id = await authed(srv, "p", ["private-room-*"])
        reply = await request(pub, "publish", {"channel": "private-room-1",
                                               "event": "say",
                                               "data": {"t": "hi"}},
                              callback_id="1")
        assert reply == {"event": "callback", "callbackId": "1",
                         "data": {"success": True}}
        msg = await recv_json(listener)
        assert msg["event"] == "say" and msg["channel"] == "private-room-1"
        assert msg["data"] == {"t": "hi"}
        assert msg.get("from") == pub_id, msg
        # Not in its token: not_allowed, nothing delivered.
        reply = await request(pub, "publish", {"channel": "private-other",
                                               "event": "say", "data": 1},
                              callback_id="2")
        assert_fail(reply, "2", "not_allowed")
        # A token without channels: not_allowed.
        plain, _ = await authed(srv, "n", None)
        reply = await request(plain, "publish",
                              {"channel": "private-room-1", "event": "say",
                               "data": 1}, callback_id="3")
        assert_fail(reply, "3", "not_allowed")
        await expect_only_sentinel(srv, [listener])
        for ws in (listener, pub, plain):
            await ws.close()

    run(scenario())


# ================================================================ rate

async def send_many(ws, n, prefix="r", event="ping"):
    """Sends n messages with callbackIds at once, then reads the n replies
    (in order); returns the list of error codes (None for success)."""
    for i in range(n):
        await send_json(ws, {"event": event, "callbackId": "%s%d" % (prefix, i)})
    codes = []
    for i in range(n):
        reply = await recv_json(ws)
        assert reply["event"] == "callback", reply
        assert reply["callbackId"] == "%s%d" % (prefix, i), (i, reply)
        codes.append(None if reply["data"]["success"] else
                     reply["data"]["error"]["code"])
    return codes


def test_rate_limit_burst_then_limited(server):
    srv = server({"limits": {"rate": 5, "burst": 5}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        codes = await send_many(ws, 15)
        ok = codes.count(None)
        # The burst goes through (plus what refilled meanwhile), the rest
        # is rate_limited, and each callbackId is answered exactly once.
        assert 5 <= ok <= 7, codes
        assert codes[:5] == [None] * 5, codes
        assert set(codes[ok:]) == {"rate_limited"}, codes
        await expect_only_sentinel(srv, [ws])
        await ws.close()

    run(scenario())


def test_rate_limited_without_callback_is_error_event(server):
    srv = server({"limits": {"rate": 1, "burst": 2}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        for _ in range(2):
            assert await request(ws, "ping") == {"event": "pong"}
        msg = await request(ws, "ping")
        assert msg["event"] == "error", msg
        assert msg["data"]["code"] == "rate_limited", msg
        assert msg["data"]["event"] == "ping", msg
        assert isinstance(msg["data"]["message"], str)
        # Unknown events (auto-ack) and bad messages count too.
        msg = await request(ws, "anything", callback_id="x")
        assert_fail(msg, "x", "rate_limited")
        await ws.close()

    run(scenario())


def test_rate_limited_messages_are_not_processed(server):
    srv = server({"limits": {"rate": 1, "burst": 3}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        # Burst used up by pings, then a subscribe and a store in the same
        # write: both must be refused and have no effect.
        for i in range(4):
            await send_json(ws, {"event": "ping", "callbackId": "p%d" % i})
        await send_json(ws, {"event": "subscribe",
                             "data": {"channel": "rl-chan"},
                             "callbackId": "sub"})
        await send_json(ws, {"event": "store", "data": {"k": 1},
                             "callbackId": "st"})
        replies = [await recv_json(ws) for _ in range(6)]
        assert [r["callbackId"] for r in replies] == \
            ["p0", "p1", "p2", "p3", "sub", "st"], replies
        assert replies[4]["data"]["success"] is False, replies[4]
        assert replies[4]["data"]["error"]["code"] == "rate_limited"
        assert replies[5]["data"]["error"]["code"] == "rate_limited"
        # Once tokens are back: not subscribed to rl-chan.
        await asyncio.sleep(1.6)
        srv.broadcast({"event": "m", "channel": "rl-chan", "data": 1})
        await expect_only_sentinel(srv, [ws])
        reply = await request(ws, "whoami", callback_id="w")
        assert reply["data"]["success"] is True, reply
        assert reply["data"]["channels"] == [], reply
        await ws.close()

    run(scenario())


def test_rate_limit_recovers(server):
    srv = server({"limits": {"rate": 5, "burst": 5}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        codes = await send_many(ws, 10, prefix="a")
        assert "rate_limited" in codes
        await asyncio.sleep(1.3)  # 5/s refills the 5-message burst
        codes = await send_many(ws, 5, prefix="b")
        assert codes == [None] * 5, codes
        await ws.close()

    run(scenario())


def test_rate_limit_is_per_connection(server):
    srv = server({"limits": {"rate": 2, "burst": 3}}, workers=1)

    async def scenario():
        a, _ = await ws_connect(srv)
        b, _ = await ws_connect(srv)
        codes = await send_many(a, 8, prefix="a")
        assert codes.count("rate_limited") >= 4, codes
        codes = await send_many(b, 3, prefix="b")
        assert codes == [None] * 3, codes
        await a.close()
        await b.close()

    run(scenario())


def test_rate_under_limit_never_limited(server):
    srv = server({"limits": {"rate": 5, "burst": 5}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        deadline = time.monotonic() + 4.0
        n = 0
        while time.monotonic() < deadline:
            reply = await request(ws, "ping", callback_id="u%d" % n)
            assert reply == {"event": "callback", "callbackId": "u%d" % n,
                             "data": {"success": True}}, reply
            n += 1
            await asyncio.sleep(0.3)  # about 3.3 messages/s
        assert n >= 10
        await ws.close()

    run(scenario())


def test_rate_zero_is_off(server):
    srv = server({"limits": {"rate": 0, "burst": 1}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        codes = await send_many(ws, 1000)
        assert codes == [None] * 1000
        await ws.close()

    run(scenario())


def test_rate_default_allows_a_burst_of_200(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        codes = await send_many(ws, 190, prefix="a")
        assert codes == [None] * 190
        await ws.close()
        # And the default does limit: 500 at once on a fresh connection.
        ws, _ = await ws_connect(srv)
        codes = await send_many(ws, 500, prefix="b")
        assert codes[:200] == [None] * 200
        assert codes.count("rate_limited") >= 100, codes.count(None)
        await ws.close()

    run(scenario())


def test_rate_sustained_abuse_closes_1008(server):
    srv = server({"limits": {"rate": 5, "burst": 5}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        limited = []
        first_limited = []

        async def reader():
            try:
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("event") == "error" and \
                            msg["data"]["code"] == "rate_limited":
                        if not first_limited:
                            first_limited.append(time.monotonic())
                        limited.append(msg)
            except websockets.exceptions.ConnectionClosed:
                pass

        task = asyncio.ensure_future(reader())
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 14.0 and not task.done():
                await send_json(ws, {"event": "ping"})  # ~20 messages/s
                await asyncio.sleep(0.05)
        except websockets.exceptions.ConnectionClosed:
            pass
        code = await wait_closed(ws, timeout=5)
        t_closed = time.monotonic()
        await asyncio.wait_for(task, 5)
        assert code == 1008, (code, len(limited))
        assert first_limited, "never rate_limited"
        streak = t_closed - first_limited[0]
        assert 9.0 <= streak <= 13.0, streak
        assert len(limited) >= 100, len(limited)

    run(scenario(), timeout=40)


def test_rate_bursty_client_under_average_not_closed(server):
    """A client going over the burst now and then, but whose average stays
    under the rate, is limited during its bursts and never closed."""
    srv = server({"limits": {"rate": 5, "burst": 5}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        t0 = time.monotonic()
        total_limited = 0
        k = 0
        while time.monotonic() - t0 < 12.0:
            codes = await send_many(ws, 7, prefix="b%d-" % k)
            total_limited += codes.count("rate_limited")
            k += 1
            await asyncio.sleep(2.0)  # 7 per 2 s: 3.5/s on average
        assert total_limited > 0
        assert await request(ws, "ping") == {"event": "pong"}
        await ws.close()

    run(scenario(), timeout=40)


# ================================================================ origins

ORIGINS = {"server": {"origins": "https://a.example,https://b.example"}}


@pytest.mark.parametrize("origin", ["https://a.example",
                                    "https://b.example"])
def test_origin_listed_accepted(server, origin):
    srv = server(ORIGINS)

    async def scenario():
        ws, _ = await ws_connect(srv, origin=origin)
        assert await request(ws, "ping") == {"event": "pong"}
        await ws.close()

    run(scenario())


@pytest.mark.parametrize("origin", [
    None,
    "https://c.example",
    "http://a.example",
    "https://a.example.evil.com",
    "https://evil.com/https://a.example",
    "https://a.exampl",
    "https://a.example:8443",
    "https://a.example,https://b.example",
    "null",
])
def test_origin_not_listed_refused_403(server, origin):
    srv = server(ORIGINS)

    async def scenario():
        kw = {} if origin is None else {"origin": origin}
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as exc:
            ws, _ = await ws_connect(srv, **kw)
            await ws.close()
        assert exc.value.status_code == 403

    run(scenario())
    # No socket was made.
    assert srv.health()["connections"] == 0


def test_origins_list_with_spaces(server):
    srv = server({"server": {"origins":
                             "https://a.example, https://b.example"}})

    async def scenario():
        for origin in ("https://a.example", "https://b.example"):
            ws, _ = await ws_connect(srv, origin=origin)
            await ws.close()
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as exc:
            await ws_connect(srv, origin="https://c.example")
        assert exc.value.status_code == 403

    run(scenario())


@pytest.mark.parametrize("config", [None, {"server": {"origins": ""}}])
def test_empty_origins_accept_any(server, config):
    srv = server(config)

    async def scenario():
        for origin in (None, "https://anything.example", "null",
                       "http://localhost:3000"):
            kw = {} if origin is None else {"origin": origin}
            ws, _ = await ws_connect(srv, **kw)
            assert await request(ws, "ping") == {"event": "pong"}
            await ws.close()

    run(scenario())


def test_origins_do_not_apply_to_http(server):
    srv = server(ORIGINS)
    status, _, _ = srv.get("/health",
                           headers={"Origin": "https://evil.example"})
    assert status == 200
