"""ORIGINAL.md §4 and §5: Django session authentication over the socket,
tokens, {% bagou_static %}; through the real server, broker and runner."""

import json
import urllib.request

import pytest

from bagou.tokens import make_token
from bghelpers import forwarding, session_for
from support import (error_code, expect_silence, recv_json, request, run,
                     send_json, ws_connect)


@pytest.fixture
def srv(amqp_server, exchanges, runner):
    bx, ex = exchanges
    return amqp_server(config=forwarding(ex), exchange=bx)


async def connect(srv, **kw):
    ws, cid = await ws_connect(srv, **kw)
    assert (await recv_json(ws))["event"] == "welcome"
    return ws, cid


def assert_user(data, user):
    """data["user"]: the user as Django's JSON serializer writes it,
    without the password hash."""
    u = data["user"]
    assert u["model"] == "auth.user" and u["pk"] == user.pk, u
    assert u["fields"]["username"] == user.username, u
    assert "password" not in u["fields"], u


def test_session_id_authenticates(srv):
    alice, sid = session_for("alice")
    bob, _ = session_for("bob")

    async def scenario():
        ws, cid = await connect(srv)
        own = "private-user-%d" % alice.pk
        # Before: the private channel is refused.
        reply = await request(ws, "subscribe", {"channel": own},
                              callback_id="p0")
        assert error_code(reply) == "forbidden", reply
        reply = await request(ws, "authenticate", {"sessionId": sid},
                              callback_id="a1")
        assert reply["event"] == "callback" and \
            reply["callbackId"] == "a1", reply
        assert set(reply["data"]) == {"user"}, reply
        assert_user(reply["data"], alice)
        # Then the on_authenticate handlers, with the user.
        assert await recv_json(ws) == {
            "event": "hello", "data": {"user": "alice",
                                       "authenticated": True,
                                       "session": True}}
        reply = await request(ws, "subscribe", {"channel": own},
                              callback_id="p1")
        assert reply["data"]["success"] is True, reply
        # Another user's private channel stays closed.
        reply = await request(ws, "subscribe",
                              {"channel": "private-user-%d" % bob.pk},
                              callback_id="p2")
        assert error_code(reply) == "forbidden", reply
        # Handlers now see client.user.
        reply = await request(ws, "echo", 0, callback_id="e")
        assert reply["data"]["user"] == "alice", reply
        assert reply["data"]["authenticated"] is True, reply
        # on_authenticate ran once, when the runner answered; the
        # server's notice that followed did not run it again.
        await expect_silence(ws, 0.5)
        await ws.close()

    run(scenario())


def test_private_user_channel_from_a_view(srv, exchanges):
    """What a view does: broadcast to the user's private channel."""
    alice, sid = session_for("alice")
    from django.test import override_settings
    from django.conf import settings
    bx, _ = exchanges
    conf = dict(settings.BAGOU, EXCHANGE=bx)

    async def scenario():
        ws, _ = await connect(srv)
        await request(ws, "authenticate", {"sessionId": sid},
                      callback_id="a")
        assert (await recv_json(ws))["event"] == "hello"
        own = "private-user-%d" % alice.pk
        await request(ws, "subscribe", {"channel": own}, callback_id="s")
        with override_settings(BAGOU=conf):
            from bagou.utils import broadcast
            broadcast(event="notice", channels=own, data={"n": 1})
        assert await recv_json(ws) == {"event": "notice", "channel": own,
                                       "data": {"n": 1}}
        await ws.close()

    run(scenario())


def test_unknown_session_gets_empty_data(srv):
    async def scenario():
        ws, _ = await connect(srv)
        for sid in ("no-such-session", ""):
            reply = await request(ws, "authenticate", {"sessionId": sid},
                                  callback_id="a")
            assert reply["event"] == "callback", reply
            assert reply.get("data") in ({}, None), reply
            hello = await recv_json(ws)
            assert hello["data"] == {"user": None, "authenticated": False,
                                     "session": bool(sid)}, hello
        reply = await request(ws, "subscribe",
                              {"channel": "private-user-1"},
                              callback_id="p")
        assert error_code(reply) == "forbidden", reply
        await ws.close()

    run(scenario())


def test_session_cookie_authenticates(srv):
    """No sessionId: the sessionid cookie the browser sent with the
    upgrade (forwarded by the server) is used."""
    carol, sid = session_for("carol")

    async def scenario():
        ws, _ = await connect(srv, extra_headers={
            "Cookie": "csrftoken=x; sessionid=%s" % sid})
        reply = await request(ws, "authenticate", {}, callback_id="a")
        assert_user(reply["data"], carol)
        assert (await recv_json(ws))["data"]["user"] == "carol"
        reply = await request(ws, "subscribe",
                              {"channel": "private-user-%d" % carol.pk},
                              callback_id="p")
        assert reply["data"]["success"] is True, reply
        await ws.close()

    run(scenario())


def test_logged_out_session_is_refused(srv):
    """The session engine decides: a session flushed by logout no longer
    authenticates."""
    dave, sid = session_for("dave")
    from django.conf import settings
    from importlib import import_module
    engine = import_module(settings.SESSION_ENGINE)
    engine.SessionStore(session_key=sid).flush()

    async def scenario():
        ws, _ = await connect(srv)
        reply = await request(ws, "authenticate", {"sessionId": sid},
                              callback_id="a")
        assert reply.get("data") in ({}, None), reply
        await ws.close()

    run(scenario())


def test_token_authenticates(amqp_server, exchanges, runner):
    """bagou.tokens.make_token: HS256 tokens the server checks."""
    bx, ex = exchanges
    secret = "s3cret-for-tests"
    srv = amqp_server(config=forwarding(ex, auth={"secret": secret}),
                      exchange=bx)
    token = make_token(42, channels=["private-user-42"],
                       info={"name": "Alice"}, secret=secret)

    async def scenario():
        ws, _ = await connect(srv)
        reply = await request(ws, "authenticate", {"token": token},
                              callback_id="t")
        assert reply["data"]["success"] is True, reply
        assert reply["data"]["user"] == {"id": "42",
                                         "info": {"name": "Alice"}}, reply
        # The server's notice ([forward] lifecycle = authenticate) runs
        # the on_authenticate handlers of a token login.
        assert await recv_json(ws) == {"event": "hello", "data": {
            "user": None, "authenticated": True, "session": False}}
        reply = await request(ws, "subscribe",
                              {"channel": "private-user-42"},
                              callback_id="p")
        assert reply["data"]["success"] is True, reply
        bad = make_token(42, secret="other")
        reply = await request(ws, "authenticate", {"token": bad},
                              callback_id="b")
        assert error_code(reply) == "auth_failed", reply
        expired = make_token(42, secret=secret, lifetime=-10)
        reply = await request(ws, "authenticate", {"token": expired},
                              callback_id="x")
        assert error_code(reply) == "auth_failed", reply
        await ws.close()

    run(scenario())


def test_bagou_static(srv, django_env):
    """{% load bagou_tags %}{% bagou_static %}: WEBSOCKET_URL from the
    settings, the client script from the server."""
    from django.template.loader import render_to_string
    from django.conf import settings
    from django.test import override_settings
    ws_url = srv.ws_url()
    with override_settings(BAGOU=dict(settings.BAGOU,
                                      WEBSOCKET_URL=ws_url)):
        html = render_to_string("page.html")
    assert '<script>var WEBSOCKET_URL = "%s";</script>' % ws_url in html
    script = "http://127.0.0.1:%d/bagou.js" % srv.port
    assert '<script src="%s"></script>' % script in html
    with urllib.request.urlopen(script, timeout=5) as r:
        assert r.status == 200
        assert "javascript" in r.headers["Content-Type"]
        assert b"BagouWebSocket" in r.read()
    # Older settings: WEBSOCKET_ADDR/PORT/PATH.
    legacy = {k: v for k, v in settings.BAGOU.items()
              if k != "WEBSOCKET_URL"}
    legacy.update(WEBSOCKET_ADDR="example.org", WEBSOCKET_PORT=8001,
                  WEBSOCKET_PATH="/ws")
    with override_settings(BAGOU=legacy):
        html = render_to_string("page.html")
    assert 'var WEBSOCKET_URL = "ws://example.org:8001/ws"' in html
    assert 'src="http://example.org:8001/bagou.js"' in html
    # Nothing in a URL can close the script element.
    with override_settings(BAGOU=dict(settings.BAGOU,
                                      WEBSOCKET_URL="ws://h/</script>")):
        html = render_to_string("page.html")
    assert "</script>\";" not in html and "\\u003C/script\\u003E" in html


def test_authenticate_without_callback_id(srv):
    erin, sid = session_for("erin")

    async def scenario():
        ws, _ = await connect(srv)
        await send_json(ws, {"event": "authenticate",
                             "data": {"sessionId": sid}})
        msg = await recv_json(ws)
        assert msg["event"] == "authenticated", msg
        assert_user(msg["data"], erin)
        assert (await recv_json(ws))["event"] == "hello"
        reply = await request(ws, "subscribe",
                              {"channel": "private-user-%d" % erin.pk},
                              callback_id="p")
        assert reply["data"]["success"] is True, reply
        await expect_silence(ws, 0.2)
        await ws.close()

    run(scenario())


def test_serialized_user_is_json_of_django_serializer(django_env):
    from django.core import serializers
    from bagou.auth import serialize_user
    user, _ = session_for("frank")
    mine = serialize_user(user)
    theirs = json.loads(serializers.serialize("json", [user]))[0]
    del theirs["fields"]["password"]
    assert mine == theirs
