"""PROTOCOL §6 (and the authenticate event of §3): HS256 tokens at connect
(?token=) and by the authenticate event, every hostile token we could
think of, and the expiry of a token while connected (close 4002)."""

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.parse

import jwt
import pytest
import websockets

from support import (HOST, error_code, expect_nothing_pending, metric_sum,
                     recv_json, request, run, send_json, wait_closed,
                     ws_connect)

SECRET = "integration-secret-\u00e9-42"
AUTH = {"auth": {"secret": SECRET}}


# ---------------------------------------------------------------- tokens

def b64url(raw):
    if isinstance(raw, str):
        raw = raw.encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(sub="alice", secret=SECRET, ttl=3600, **claims):
    """A genuine HS256 token (PyJWT). ttl None: no exp."""
    payload = {}
    if sub is not None:
        payload["sub"] = sub
    if ttl is not None:
        payload["exp"] = int(time.time()) + ttl
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def signed(payload, secret=SECRET):
    """Exactly these claims, HS256 (PyJWT)."""
    return jwt.encode(payload, secret, algorithm="HS256")


def raw_token(header, payload, key=SECRET, digest=hashlib.sha256):
    """header.payload (dicts or text) HMAC'd with key (None: unsigned)."""
    if not isinstance(header, str):
        header = json.dumps(header, separators=(",", ":"))
    if not isinstance(payload, str):
        payload = json.dumps(payload, separators=(",", ":"))
    signing = b64url(header) + "." + b64url(payload)
    if key is None:
        return signing + "."
    mac = hmac.new(key.encode(), signing.encode(), digest).digest()
    return signing + "." + b64url(mac)


def future():
    return int(time.time()) + 3600


def hostile_tokens():
    """(name, token) pairs that must all be refused with auth_failed."""
    good = token()
    head, body, sig = good.split(".")
    claims = {"sub": "alice", "exp": future()}
    rs_header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}))
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    return [
        ("wrong_secret", token(secret="not-the-secret")),
        ("tampered_claims", head + "." +
         b64url(json.dumps({"sub": "admin", "exp": future()})) + "." + sig),
        ("flipped_signature", head + "." + body + "." + flipped),
        ("no_signature", head + "." + body + "."),
        ("alg_none_pyjwt", jwt.encode(claims, None, algorithm="none")),
        ("alg_none_by_hand", raw_token({"alg": "none", "typ": "JWT"},
                                       claims, key=None)),
        ("alg_none_signed", raw_token({"alg": "none"}, claims)),
        ("alg_missing", raw_token({"typ": "JWT"}, claims)),
        ("alg_lowercase", raw_token({"alg": "hs256"}, claims)),
        # HS256 token whose header is swapped for RS256 afterwards.
        ("rs256_header_swapped", rs_header + "." + body + "." + sig),
        # A header really saying RS256, HMAC-signed with the secret as if
        # it were the RSA public key (algorithm confusion).
        ("rs256_hmac_signed", raw_token({"alg": "RS256", "typ": "JWT"},
                                        claims)),
        ("es256_hmac_signed", raw_token({"alg": "ES256"}, claims)),
        ("hs512", jwt.encode(claims, SECRET, algorithm="HS512")),
        ("hs384", jwt.encode(claims, SECRET, algorithm="HS384")),
        ("hs256_header_hs512_sig", raw_token({"alg": "HS256"}, claims,
                                             digest=hashlib.sha512)),
        ("expired", token(ttl=-10)),
        ("expired_long_ago", token(ttl=None, exp=1)),
        ("not_yet_valid", token(nbf=int(time.time()) + 600)),
        ("malformed_base64", head + "." + body[:5] + "!!" + body[5:] +
         "." + sig),
        ("standard_base64_padding", head + "==." + body + "." + sig),
        ("header_not_json", b64url("not json") + "." + body + "." + sig),
        ("payload_not_json", raw_token({"alg": "HS256"}, "not json")),
        ("payload_array", raw_token({"alg": "HS256"}, '["sub","alice"]')),
        ("two_parts", head + "." + body),
        ("one_part", head),
        ("four_parts", good + ".extra"),
        ("trailing_dot", good + "."),
        ("empty_parts", ".."),
        ("garbage", "this is not a token"),
        ("oversized", token(pad="p" * 9000)),
        ("sub_missing", token(sub=None, user="alice")),
        ("sub_number", signed({"sub": 42, "exp": future()})),
        ("sub_null", signed({"sub": None, "exp": future()})),
        ("sub_list", signed({"sub": ["alice"], "exp": future()})),
        ("sub_empty", token(sub="")),
        ("sub_too_long", token(sub="u" * 300)),
        ("exp_string", token(ttl=None, exp=str(future()))),
        ("exp_bool", token(ttl=None, exp=True)),
        ("exp_null", token(ttl=None, exp=None)),
        ("nbf_string", token(nbf="0")),
        ("channels_string", token(channels="private-x")),
        ("channels_object", token(channels={"private-x": True})),
        ("channels_with_number", token(channels=["private-x", 7])),
        ("channels_with_empty", token(channels=[""])),
        ("channels_too_many", token(channels=["private-%d" % i
                                              for i in range(257)])),
        ("info_string", token(info="admin")),
        ("info_list", token(info=["admin"])),
    ]


HOSTILE = hostile_tokens()
HOSTILE_IDS = [name for name, _ in HOSTILE]


def ok_auth(cid, sub, info=None):
    user = {"id": sub}
    if info is not None:
        user["info"] = info
    return {"event": "callback", "callbackId": cid,
            "data": {"success": True, "user": user}}


def assert_auth_failed_callback(msg, cid):
    assert msg["event"] == "callback", msg
    assert msg["callbackId"] == cid, msg
    assert msg["data"]["success"] is False, msg
    assert msg["data"]["error"]["code"] == "auth_failed", msg
    assert isinstance(msg["data"]["error"]["message"], str), msg
    assert msg["data"]["error"]["message"], msg


def assert_connect_auth_failed(msg):
    assert msg["event"] == "error", msg
    assert set(msg) == {"event", "data"}, msg
    assert msg["data"]["code"] == "auth_failed", msg
    assert msg["data"]["event"] == "connect", msg
    assert isinstance(msg["data"]["message"], str), msg
    assert msg["data"]["message"], msg


async def whoami(ws, cid="who"):
    reply = await request(ws, "whoami", callback_id=cid)
    assert reply["event"] == "callback" and reply["callbackId"] == cid, reply
    assert reply["data"]["success"] is True, reply
    return reply["data"]


async def connect_with_token(srv, tok, extra_query=""):
    q = "?" + extra_query + ("&" if extra_query else "") + \
        "token=" + urllib.parse.quote(tok, safe="")
    return await ws_connect(srv, path="/websocket" + q)


# ---------------------------------------------------------------- connect

def test_token_at_connect_valid(server):
    srv = server(AUTH)

    async def scenario():
        ws, cid = await connect_with_token(srv, token("alice"))
        # Nothing after the connect event: no error, no callback.
        await expect_nothing_pending(ws)
        me = await whoami(ws)
        assert me["id"] == cid
        assert me["user"] == "alice"
        await ws.close()

    run(scenario())


def test_token_at_connect_among_other_query_args(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await connect_with_token(srv, token("bob"),
                                         extra_query="v=1&lang=fr")
        await expect_nothing_pending(ws)
        assert (await whoami(ws))["user"] == "bob"
        await ws.close()

    run(scenario())


def test_token_at_connect_invalid_stays_anonymous(server):
    srv = server(AUTH)

    async def scenario():
        ws, cid = await connect_with_token(srv, token(secret="wrong"))
        assert_connect_auth_failed(await recv_json(ws))
        # Still open, still anonymous, still usable.
        assert await request(ws, "ping") == {"event": "pong"}
        me = await whoami(ws)
        assert me["id"] == cid and me["user"] is None
        # And it may authenticate properly afterwards.
        reply = await request(ws, "authenticate", {"token": token("carol")},
                              callback_id="a")
        assert reply == ok_auth("a", "carol")
        assert (await whoami(ws))["user"] == "carol"
        await ws.close()

    run(scenario())


def test_token_at_connect_without_secret(server):
    srv = server()

    async def scenario():
        ws, _ = await connect_with_token(srv, token("alice"))
        msg = await recv_json(ws)
        assert_connect_auth_failed(msg)
        assert "not configured" in msg["data"]["message"], msg
        assert (await whoami(ws))["user"] is None
        await ws.close()

    run(scenario())


def test_empty_token_at_connect_is_no_token(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv, path="/websocket?token=")
        await expect_nothing_pending(ws)
        assert (await whoami(ws))["user"] is None
        await ws.close()

    run(scenario())


# Tokens that fit in a URL comfortably (the long ones: below).
SHORT_HOSTILE_IDS = [n for n, t in HOSTILE if len(t) < 3000]
LONG_HOSTILE_IDS = [n for n, t in HOSTILE if len(t) >= 3000]


@pytest.mark.parametrize("name", SHORT_HOSTILE_IDS)
def test_hostile_token_at_connect(server, name):
    srv = server(AUTH)
    tok = dict(HOSTILE)[name]

    async def scenario():
        ws, _ = await connect_with_token(srv, tok)
        assert_connect_auth_failed(await recv_json(ws))
        assert (await whoami(ws))["user"] is None
        await ws.close()

    run(scenario())


@pytest.mark.parametrize("name", LONG_HOSTILE_IDS)
def test_long_hostile_token_at_connect(server, name):
    """A long hostile token in the URL (the oversized one is over 8192
    bytes): either the upgrade is refused (no socket) or the connection
    opens anonymous with auth_failed; never an authenticated connection,
    and the server carries on."""
    srv = server(AUTH)
    tok = dict(HOSTILE)[name]
    assert len(tok) >= 3000

    async def scenario():
        try:
            ws, _ = await connect_with_token(srv, tok)
        except (websockets.exceptions.InvalidStatusCode,
                websockets.exceptions.InvalidHandshake, OSError):
            return
        assert_connect_auth_failed(await recv_json(ws))
        assert (await whoami(ws))["user"] is None
        await ws.close()

    run(scenario())
    assert srv.alive()
    assert srv.health()["status"] == "ok"


def test_long_valid_token_at_connect(server):
    """A valid token of about 6 KB (a rich "info" and many private
    channels) is under the 8192-byte limit: it authenticates at connect
    just as it does with the authenticate event."""
    srv = server(AUTH)
    info = {"bio": "x" * 2500}
    chans = ["private-room-%03d" % i for i in range(100)]
    tok = token("long", info=info, channels=chans)
    assert 5000 < len(tok) < 8192

    async def scenario():
        # The authenticate event takes it...
        ws, _ = await ws_connect(srv)
        assert await request(ws, "authenticate", {"token": tok},
                             callback_id="a") == ok_auth("a", "long", info)
        await ws.close()
        # ...and so must ?token=.
        ws, _ = await connect_with_token(srv, tok)
        await expect_nothing_pending(ws)
        assert (await whoami(ws))["user"] == "long"
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- event

def test_authenticate_success_with_info(server):
    srv = server(AUTH)
    info = {"name": "Alice", "roles": ["admin"], "n": 3}

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "authenticate",
                              {"token": token("alice", info=info)},
                              callback_id="a1")
        assert reply == ok_auth("a1", "alice", info)
        await expect_nothing_pending(ws)
        assert (await whoami(ws))["user"] == "alice"
        await ws.close()

    run(scenario())


def test_authenticate_success_without_info(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "authenticate",
                              {"token": token("bob", ttl=None)},
                              callback_id="a2")
        # No "info" key at all when the token has none.
        assert reply == ok_auth("a2", "bob")
        await ws.close()

    run(scenario())


def test_authenticate_unicode_sub(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        sub = "\u00e9l\u00e8ve \"7\" \u2713"
        reply = await request(ws, "authenticate", {"token": token(sub)},
                              callback_id="u")
        assert reply == ok_auth("u", sub)
        assert (await whoami(ws))["user"] == sub
        await ws.close()

    run(scenario())


def test_authenticate_without_callback(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        # Success is silent.
        await send_json(ws, {"event": "authenticate",
                             "data": {"token": token("dave")}})
        await expect_nothing_pending(ws)
        assert (await whoami(ws))["user"] == "dave"
        # Failure is an error event naming the event.
        msg = await request(ws, "authenticate",
                            {"token": token(secret="nope")})
        assert msg["event"] == "error", msg
        assert msg["data"]["code"] == "auth_failed", msg
        assert msg["data"]["event"] == "authenticate", msg
        assert isinstance(msg["data"]["message"], str), msg
        await ws.close()

    run(scenario())


def test_authenticate_not_configured(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "authenticate", {"token": token()},
                              callback_id="nc")
        assert_auth_failed_callback(reply, "nc")
        assert "not configured" in reply["data"]["error"]["message"]
        assert (await whoami(ws))["user"] is None
        await ws.close()

    run(scenario())


@pytest.mark.parametrize("data", [None, {}, {"token": 5}, {"token": None},
                                  {"token": ["a.b.c"]}, {"tok": "x"},
                                  "a.b.c", [], {"token": ""}])
def test_authenticate_bad_data(server, data):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        msg = {"event": "authenticate", "callbackId": "bd"}
        if data is not None:
            msg["data"] = data
        await send_json(ws, msg)
        assert_auth_failed_callback(await recv_json(ws), "bd")
        await expect_nothing_pending(ws)
        assert (await whoami(ws))["user"] is None
        await ws.close()

    run(scenario())


@pytest.mark.parametrize("name", HOSTILE_IDS)
def test_hostile_token_authenticate(server, name):
    srv = server(AUTH)
    tok = dict(HOSTILE)[name]

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "authenticate", {"token": tok},
                              callback_id="h")
        assert_auth_failed_callback(reply, "h")
        await expect_nothing_pending(ws)
        assert (await whoami(ws))["user"] is None
        # A hostile token grants no private channel either.
        reply = await request(ws, "subscribe", {"channel": "private-x"},
                              callback_id="p")
        assert error_code(reply) == "forbidden", reply
        await ws.close()

    run(scenario())


def test_hostile_tokens_one_connection(server):
    """All of them in a row on one connection, then a good one: the
    connection survives and every failure is answered once."""
    srv = server(AUTH, workers=1)

    async def scenario():
        ws, _ = await ws_connect(srv)
        for i, (name, tok) in enumerate(HOSTILE):
            reply = await request(ws, "authenticate", {"token": tok},
                                  callback_id="h%d" % i)
            assert reply["callbackId"] == "h%d" % i, (name, reply)
            assert reply["data"]["success"] is False, (name, reply)
            assert reply["data"]["error"]["code"] == "auth_failed", \
                (name, reply)
        reply = await request(ws, "authenticate", {"token": token("zed")},
                              callback_id="ok")
        assert reply == ok_auth("ok", "zed")
        await ws.close()

    run(scenario(), timeout=60)
    m = srv.metrics()
    assert srv.alive()
    assert metric_sum(m, "bagou_connections_total") >= 1


def test_reauthenticate_switches_user(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        assert await request(ws, "authenticate", {"token": token("first")},
                             callback_id="1") == ok_auth("1", "first")
        assert await request(ws, "authenticate",
                             {"token": token("second", info={"k": 1})},
                             callback_id="2") == \
            ok_auth("2", "second", {"k": 1})
        assert (await whoami(ws))["user"] == "second"
        await ws.close()

    run(scenario())


def test_failed_reauthenticate_keeps_identity(server):
    """A failed authenticate changes nothing: the connection keeps the
    identity it had."""
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        assert await request(ws, "authenticate", {"token": token("keep")},
                             callback_id="1") == ok_auth("1", "keep")
        reply = await request(ws, "authenticate",
                              {"token": token(secret="bad")},
                              callback_id="2")
        assert_auth_failed_callback(reply, "2")
        assert (await whoami(ws))["user"] == "keep"
        await ws.close()

    run(scenario())


def test_tokens_are_per_connection(server):
    srv = server(AUTH, workers=2)

    async def scenario():
        conns = [await ws_connect(srv) for _ in range(4)]
        for i, (ws, _) in enumerate(conns[:2]):
            assert await request(ws, "authenticate",
                                 {"token": token("user%d" % i)},
                                 callback_id="a") == \
                ok_auth("a", "user%d" % i)
        users = [(await whoami(ws))["user"] for ws, _ in conns]
        assert users == ["user0", "user1", None, None]
        for ws, _ in conns:
            await ws.close()

    run(scenario())


# ---------------------------------------------------------------- expiry

def test_expiry_closes_4002_after_authenticate(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        exp = int(time.time()) + 2
        t0 = time.monotonic()
        reply = await request(ws, "authenticate",
                              {"token": token("brief", ttl=None, exp=exp)},
                              callback_id="e")
        assert reply == ok_auth("e", "brief")
        code = await wait_closed(ws, timeout=10)
        elapsed = time.monotonic() - t0
        assert code == 4002, code
        assert 0.9 <= elapsed <= 6.0, elapsed
        # Not before exp (1 s clock granularity).
        assert time.time() >= exp - 1.0

    run(scenario())


def test_expiry_closes_4002_token_at_connect(server):
    srv = server(AUTH)

    async def scenario():
        t0 = time.monotonic()
        ws, _ = await connect_with_token(srv, token("brief", ttl=2))
        code = await wait_closed(ws, timeout=10)
        elapsed = time.monotonic() - t0
        assert code == 4002, code
        assert 0.9 <= elapsed <= 6.0, elapsed

    run(scenario())


def test_expiry_other_connections_unaffected(server):
    srv = server(AUTH, workers=1)

    async def scenario():
        brief, _ = await ws_connect(srv)
        lasting, _ = await ws_connect(srv)
        anon, _ = await ws_connect(srv)
        assert (await request(brief, "authenticate",
                              {"token": token("b", ttl=2)},
                              callback_id="b"))["data"]["success"]
        assert (await request(lasting, "authenticate",
                              {"token": token("l", ttl=3600)},
                              callback_id="l"))["data"]["success"]
        assert await wait_closed(brief, timeout=10) == 4002
        await asyncio.sleep(0.5)
        for ws in (lasting, anon):
            assert await request(ws, "ping") == {"event": "pong"}
        await lasting.close()
        await anon.close()

    run(scenario())


def test_reauthenticate_without_exp_cancels_expiry(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        assert (await request(ws, "authenticate",
                              {"token": token("u", ttl=2)},
                              callback_id="1"))["data"]["success"]
        assert (await request(ws, "authenticate",
                              {"token": token("u", ttl=None)},
                              callback_id="2"))["data"]["success"]
        await asyncio.sleep(3.5)
        assert await request(ws, "ping") == {"event": "pong"}
        assert (await whoami(ws))["user"] == "u"
        await ws.close()

    run(scenario())


def test_reauthenticate_extends_expiry(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        assert (await request(ws, "authenticate",
                              {"token": token("u", ttl=2)},
                              callback_id="1"))["data"]["success"]
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        assert (await request(ws, "authenticate",
                              {"token": token("u", ttl=4)},
                              callback_id="2"))["data"]["success"]
        # Alive past the first token's expiry...
        await asyncio.sleep(2.0)
        assert await request(ws, "ping") == {"event": "pong"}
        # ...and closed at the second's.
        assert await wait_closed(ws, timeout=10) == 4002
        assert 2.5 <= time.monotonic() - t0 <= 8.0

    run(scenario())


def test_token_without_exp_never_expires(server):
    srv = server(AUTH)

    async def scenario():
        ws, _ = await connect_with_token(srv, token("forever", ttl=None))
        await asyncio.sleep(2.5)
        assert await request(ws, "ping") == {"event": "pong"}
        assert (await whoami(ws))["user"] == "forever"
        await ws.close()

    run(scenario())


def test_fractional_exp_accepted(server):
    """RFC 7519 §2: exp is a NumericDate, a JSON number that may be
    fractional. PyJWT writes exp = time.time() + 3600 as it is, so such a
    token must authenticate (and a fractional exp in the past must not)."""
    srv = server(AUTH)

    async def scenario():
        ws, _ = await ws_connect(srv)
        reply = await request(ws, "authenticate",
                              {"token": token("f", ttl=None,
                                              exp=time.time() - 5.5)},
                              callback_id="past")
        assert_auth_failed_callback(reply, "past")
        reply = await request(ws, "authenticate",
                              {"token": token("f", ttl=None,
                                              exp=time.time() + 3600.5)},
                              callback_id="future")
        assert reply == ok_auth("future", "f"), reply
        await ws.close()

    run(scenario())
