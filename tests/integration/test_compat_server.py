"""Compatibility with the original Django Bagou (docs/ORIGINAL contract,
issue 9), the server side:

* a reply to explicit clients (what the original client.jsonify(**kwargs)
  sent) reaches the page with every top-level field it was published with,
  "event" included only if published (PROTOCOL.md §4, replies);
* [forward] lifecycle may list store and authenticate: forwarded after
  they happen, marked "lifecycle": true (PROTOCOL.md §5);
* the original session login: authenticate with data {"sessionId": ...}
  goes to the application, whose reply with "auth" authenticates the
  connection and whose "data" reaches the page unchanged.

The application side here is the test itself (a pika tap on the events
exchange and a publisher on the broadcast exchange), so each forwarded
body is checked exactly."""

import asyncio
import time

import jwt

from rabbitmq import amqp_server, publisher, unique_exchange  # noqa: F401
from support import (expect_silence, recv_json, request, run, send_json,
                     subscribe, ws_connect)

SECRET = "compat-secret-0123456789abcdef0123"


def exchanges():
    return unique_exchange("bagou-compat"), unique_exchange("bagou-compat-ev")


def assert_forbidden(reply, cb):
    assert reply["callbackId"] == cb, reply
    assert reply["data"]["success"] is False, reply
    assert reply["data"]["error"]["code"] == "forbidden", reply


# ---------------------------------------------------------------- replies

def test_reply_to_a_client_keeps_every_field(server):
    srv = server()

    async def scenario():
        ws, cid = await ws_connect(srv)
        other, oid = await ws_connect(srv)
        await subscribe(ws, "news")
        await subscribe(other, "news")
        # The seed's sample: client.jsonify(success=True,
        # message="Message received!"), no event at all.
        srv.broadcast({"client": cid, "success": True,
                       "message": "Message received!"})
        assert await recv_json(ws) == {"success": True,
                                       "message": "Message received!"}
        # A callback answer with fields of its own, kept in their order;
        # routing fields (client, exclude) and auth never reach the page.
        srv.broadcast({"event": "callback", "callbackId": "u-1",
                       "client": [cid, oid], "exclude": oid,
                       "data": {"success": True}, "message": "saved",
                       "count": 3, "nested": {"a": [1, None]}})
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert raw == ('{"event":"callback","callbackId":"u-1",'
                       '"data":{"success":true},"message":"saved",'
                       '"count":3,"nested":{"a":[1,null]}}'), raw
        # No data published: none delivered (the original callback
        # without data); a channel given with client is a label.
        srv.broadcast({"event": "callback", "callbackId": "u-2",
                       "client": cid})
        assert await recv_json(ws) == {"event": "callback",
                                       "callbackId": "u-2"}
        srv.broadcast({"event": "message", "client": cid,
                       "channel": "room", "data": {"name": "Al"}})
        assert await recv_json(ws) == {"event": "message", "channel": "room",
                                       "data": {"name": "Al"}}
        # Channel broadcasts are unchanged: event required, fields
        # fixed, unknown ones dropped, data defaulted.
        status, _, body = srv.post("/broadcast", {"success": True,
                                                  "channel": "news"})
        assert status == 400 and b"bad_message" in body, (status, body)
        status, _, body = srv.post("/broadcast", {"success": True})
        assert status == 400 and b"bad_message" in body, (status, body)
        srv.broadcast({"event": "note", "channel": "news", "extra": 1})
        want = {"event": "note", "channel": "news", "data": {}}
        assert await recv_json(ws) == want
        assert await recv_json(other) == want
        await expect_silence(other, 0.2)
        await ws.close()
        await other.close()

    run(scenario())


def test_reply_fields_across_amqp(amqp_server, publisher):
    """The same through RabbitMQ, as the Python package publishes it."""
    bx, _ = exchanges()
    srv = amqp_server(exchange=bx)
    pub = publisher(bx)

    async def scenario():
        ws, cid = await ws_connect(srv)
        pub.publish({"client": cid, "success": True,
                     "message": "Message received!"})
        assert await recv_json(ws) == {"success": True,
                                       "message": "Message received!"}
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- lifecycle

def test_lifecycle_store_and_authenticate(amqp_server, publisher):
    bx, ex = exchanges()
    srv = amqp_server(config={
        "auth": {"secret": SECRET},
        "forward": {"exchange": ex,
                    "lifecycle": "store,authenticate,subscribe"}},
        exchange=bx)
    events = publisher(ex)
    tap = events.tap("#")
    tok = jwt.encode({"sub": "alice", "info": {"name": "Alice"},
                      "exp": int(time.time()) + 3600}, SECRET,
                     algorithm="HS256")

    async def scenario():
        ws, cid = await ws_connect(srv)
        assert (await request(ws, "store", {"name": "Zoe"},
                              callback_id="s1"))["data"]["success"]
        assert (await request(ws, "store", {"age": 7},
                              callback_id="s2"))["data"]["success"]
        # A refused store is not forwarded.
        reply = await request(ws, "store", [1], callback_id="s3")
        assert reply["data"]["error"]["code"] == "bad_message", reply
        reply = await request(ws, "authenticate", {"token": "bad"},
                              callback_id="a0")
        assert reply["data"]["error"]["code"] == "auth_failed", reply
        reply = await request(ws, "authenticate", {"token": tok},
                              callback_id="a1")
        assert reply["data"]["success"] is True, reply
        await subscribe(ws, "news")
        await ws.close()
        return cid

    cid = run(scenario())
    got = [(k, b) for k, b in events.drain(tap, quiet=1.0)
           if b["client"]["id"] == cid]
    assert [k for k, _ in got] == ["store", "store", "authenticate",
                                   "subscribe"], got
    (_, st1), (_, st2), (_, auth), (_, sub) = got
    # store: data = what the client stored; client.store = the merge.
    assert st1["data"] == {"name": "Zoe"}, st1
    assert st1["client"]["store"] == {"name": "Zoe"}, st1
    assert st2["data"] == {"age": 7}, st2
    assert st2["client"]["store"] == {"name": "Zoe", "age": 7}, st2
    assert auth["data"] == {"user": {"id": "alice",
                                     "info": {"name": "Alice"}}}, auth
    assert auth["client"]["user"] == "alice", auth
    for body in (st1, st2, auth, sub):
        assert body["lifecycle"] is True, body
        assert "callbackId" not in body and "cookie" not in body, body


def test_session_id_login(amqp_server, publisher):
    """ORIGINAL.md §4: the page sends authenticate with
    {"sessionId": <the sessionid cookie>}; no [auth] secret, so it is
    forwarded (no Cookie header here at all); the application's reply
    with "auth" authenticates the connection and its data reaches the
    page unchanged; then the authenticate lifecycle event follows."""
    bx, ex = exchanges()
    srv = amqp_server(config={"forward": {"exchange": ex,
                                          "lifecycle": "authenticate"}},
                      exchange=bx)
    events = publisher(ex)
    tap = events.tap("#")
    bpub = publisher(bx)
    user = {"model": "auth.user", "pk": 42,
            "fields": {"username": "alice", "email": "a@example.com",
                       "is_staff": False, "last_login": None,
                       "date_joined": "2012-03-04T05:06:07Z",
                       "groups": [], "ratio": 0.5}}

    def answer():
        """The application: one forwarded authenticate, answered."""
        key, body = events.get(tap)
        assert key == "authenticate" and "lifecycle" not in body, body
        assert "cookie" not in body, body
        sid = body["data"].get("sessionId")
        reply = {"event": "callback", "callbackId": body["callbackId"],
                 "client": body["client"]["id"]}
        if sid == "good-session":
            reply["data"] = {"user": user}
            reply["auth"] = {"user": "42", "info": {"name": "alice"},
                             "channels": ["private-42"]}
        else:
            reply["data"] = {}   # unknown session: empty data, as before
        bpub.publish(reply)
        return body

    async def scenario():
        ws, cid = await ws_connect(srv)
        assert_forbidden(await request(ws, "subscribe",
                                       {"channel": "private-42"},
                                       callback_id="p0"), "p0")
        # An unknown session: the empty answer, still anonymous.
        await send_json(ws, {"event": "authenticate", "callbackId": "a0",
                             "data": {"sessionId": "nope"}})
        body = await asyncio.to_thread(answer)
        assert body["data"] == {"sessionId": "nope"}, body
        assert await recv_json(ws) == {"event": "callback",
                                       "callbackId": "a0", "data": {}}
        assert_forbidden(await request(ws, "subscribe",
                                       {"channel": "private-42"},
                                       callback_id="p1"), "p1")
        # The good session.
        await send_json(ws, {"event": "authenticate", "callbackId": "a1",
                             "data": {"sessionId": "good-session"}})
        body = await asyncio.to_thread(answer)
        assert body["client"]["id"] == cid and \
            body["client"]["user"] is None, body
        assert await recv_json(ws) == {"event": "callback",
                                       "callbackId": "a1",
                                       "data": {"user": user}}
        await subscribe(ws, "private-42")
        reply = await request(ws, "whoami", callback_id="w")
        assert reply["data"]["user"] == "42", reply
        await ws.close()
        return cid

    cid = run(scenario())
    after = [(k, b) for k, b in events.drain(tap, quiet=1.0)
             if b["client"]["id"] == cid]
    assert len(after) == 1, after
    key, body = after[0]
    assert key == "authenticate" and body["lifecycle"] is True, body
    assert body["data"] == {"user": {"id": "42",
                                     "info": {"name": "alice"}}}, body
    assert body["client"]["user"] == "42", body
