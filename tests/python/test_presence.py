"""bagou.presence() and bagou.presence_stats(): the server API's presence
commands from Python, over the API listener (HTTP_URL) and over the API
queue of RabbitMQ, against real bagou-server nodes whose members joined
over WebSocket; their errors raised as ApiError; and the bagou-api
command line's presence subcommands."""

import json
import subprocess
import sys
import time

import jwt
import pytest

import bagou
from bagou import ApiError
from support import free_port, request, run, ws_connect

SECRET = "python-presence"


def token(sub, info):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600,
                       "channels": ["presence-*"], "info": info},
                      SECRET, algorithm="HS256")


async def join(srv, user, channel="presence-lobby"):
    ws, _ = await ws_connect(srv, "/websocket?token="
                             + token(user, {"n": user}))
    got = await request(ws, "subscribe", {"channel": channel},
                        callback_id="s")
    assert got["data"]["success"] is True, got
    return ws


WANT = [{"user": "ann", "info": {"n": "ann"}},
        {"user": "bob", "info": {"n": "bob"}}]


def test_presence_over_http(server):
    srv = server(config={"auth": {"secret": SECRET}})

    async def scenario():
        conns = [await join(srv, "bob"), await join(srv, "ann"),
                 await join(srv, "ann")]
        bagou.configure(HTTP_URL="http://127.0.0.1:%d/" % srv.api_port)
        try:
            assert bagou.presence("presence-lobby") == WANT
            assert bagou.presence_stats("presence-lobby") == {
                "clients": 3, "users": 2}
            assert bagou.presence("presence-nobody") == []
            with pytest.raises(ApiError) as e:
                bagou.presence("lobby")
            assert (e.value.status, e.value.code) == (400, "bad_message")
            with pytest.raises(ApiError) as e:
                bagou.presence_stats("a b")
            assert (e.value.status, e.value.code) == (400,
                                                      "invalid_channel")
            out = subprocess.run(
                [sys.executable, "-m", "bagou.api", "--http-url",
                 "http://127.0.0.1:%d" % srv.api_port, "presence_stats",
                 "--channel", "presence-lobby"], capture_output=True,
                text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout) == {"clients": 3, "users": 2}
            bagou.configure(HTTP_URL="http://127.0.0.1:%d" % free_port())
            with pytest.raises(ApiError) as e:
                bagou.presence("presence-lobby")
            assert e.value.status == 503
        finally:
            bagou.configure()
        for ws in conns:
            await ws.close()
    run(scenario(), timeout=60)


def test_presence_over_amqp(amqp_server, rabbitmq, exchanges):
    exchange = exchanges[0]
    cfg = {"auth": {"secret": SECRET}, "presence": {"timeout": 3}}
    a = amqp_server(config=cfg, exchange=exchange)
    b = amqp_server(config=cfg, exchange=exchange)

    async def scenario():
        conns = [await join(a, "bob"), await join(b, "ann")]
        bagou.configure(AMQP_BROKER_URL=rabbitmq.url, EXCHANGE=exchange)
        try:
            deadline = time.monotonic() + 10
            while bagou.presence("presence-lobby") != WANT:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert bagou.presence_stats("presence-lobby") == {
                "clients": 2, "users": 2}
            with pytest.raises(ApiError) as e:
                bagou.presence("lobby")
            assert e.value.status == 400
        finally:
            bagou.configure()
        for ws in conns:
            await ws.close()
    run(scenario(), timeout=60)
