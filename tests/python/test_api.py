"""bagou.disconnect(), subscribe(), unsubscribe(), channels(), info() and
the bagou-api command line against a real bagou-server (docs/PROTOCOL.md
"Server API"): over RabbitMQ (the API queue) and over HTTP (the API
listener), with their errors as ApiError."""

import asyncio
import json
import subprocess
import sys
import time

import jwt
import pytest

import bagou
from bagou import ApiError
from support import recv_json, run, wait_closed, ws_connect

SECRET = "python-api-secret"
KEY = "python-api-key"
CONFIG = {"auth": {"secret": SECRET}, "http": {"api_key": KEY},
          "cluster": {"heartbeat": 1, "timeout": 3}}


def token(user):
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600},
                      SECRET, algorithm="HS256")


@pytest.fixture
def node(amqp_server, exchanges):
    return amqp_server(config=CONFIG, exchange=exchanges[0])


@pytest.fixture(params=["amqp", "http"])
def form(request, rabbitmq, exchanges, node):
    """bagou configured for one transport, for this test."""
    if request.param == "amqp":
        bagou.configure(AMQP_BROKER_URL=rabbitmq.url, EXCHANGE=exchanges[0],
                        API_KEY=KEY)
    else:
        bagou.configure(HTTP_URL="http://127.0.0.1:%d" % node.api_port,
                        API_KEY=KEY)
    yield request.param
    bagou.configure()


def test_every_function(node, form):
    async def scenario():
        ws, cid = await ws_connect(node,
                                   path="/websocket?token=" + token("42"))
        got = await asyncio.to_thread(bagou.subscribe, "news", user=42)
        assert got == {"subscribed": 1, "missing": []}
        assert await recv_json(ws) == {"event": "subscribed",
                                       "data": {"channel": "news"}}
        got = await asyncio.to_thread(bagou.channels, "ne")
        assert got == {"channels": {"news": 1}, "missing": []}
        got = await asyncio.to_thread(bagou.unsubscribe, "news", client=cid)
        assert got == {"unsubscribed": 1, "missing": []}
        assert await recv_json(ws) == {"event": "unsubscribed",
                                       "data": {"channel": "news"}}
        nodes = await asyncio.to_thread(bagou.info)
        assert len(nodes) == 1 and nodes[0]["version"]
        got = await asyncio.to_thread(bagou.disconnect, user="42",
                                      code=4200, reason="bye")
        assert got == {"disconnected": 1, "missing": []}
        assert await wait_closed(ws) == 4200
        assert ws.close_reason == "bye"

    run(scenario())


def test_errors(node, form):
    with pytest.raises(ApiError) as e:
        bagou.disconnect(client="no-such-client")
    assert (e.value.status, e.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as e:
        bagou.disconnect(user="1", code=1000)
    assert (e.value.status, e.value.code) == (400, "bad_message")
    with pytest.raises(ApiError) as e:
        bagou.subscribe("bad channel", user="1")
    assert (e.value.status, e.value.code) == (400, "invalid_channel")
    with pytest.raises(TypeError):
        bagou.disconnect()
    bagou.configure(**dict(bagou.conf.get().raw, API_KEY=""))
    with pytest.raises(ApiError) as e:
        bagou.info()
    assert (e.value.status, e.value.code) == (401, "unauthorized")


def test_unreachable_is_503(rabbitmq, exchanges):
    # A broker nobody listens on, then a broker without any node.
    bagou.configure(AMQP_BROKER_URL="amqp://guest:guest@127.0.0.1:9/",
                    CONNECT_TIMEOUT=2)
    try:
        with pytest.raises(ApiError) as e:
            bagou.info()
        assert e.value.status == 503
        bagou.configure(AMQP_BROKER_URL=rabbitmq.url,
                        EXCHANGE=exchanges[0] + "-nobody")
        with pytest.raises(ApiError) as e:
            bagou.info()
        assert e.value.status == 503 and "no bagou-server node" in \
            e.value.message
    finally:
        bagou.configure()


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bagou.api"] + list(args),
                          capture_output=True, text=True, timeout=30,
                          env=env)


def test_cli(node, rabbitmq, exchanges):
    import os
    env = dict(os.environ, BAGOU_AMQP_URL=rabbitmq.url,
               BAGOU_EXCHANGE=exchanges[0], BAGOU_API_KEY=KEY)

    async def scenario():
        ws, cid = await ws_connect(node,
                                   path="/websocket?token=" + token("7"))
        r = await asyncio.to_thread(cli, "subscribe", "--user", "7",
                                    "--channel", "c1", env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"subscribed": 1, "missing": []}
        assert await recv_json(ws) == {"event": "subscribed",
                                       "data": {"channel": "c1"}}
        # Over HTTP, the API listener.
        r = await asyncio.to_thread(
            cli, "--http-url", "http://127.0.0.1:%d" % node.api_port,
            "channels", "--prefix", "c", env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["channels"] == {"c1": 1}
        r = await asyncio.to_thread(cli, "info", env=env)
        assert r.returncode == 0 and len(json.loads(r.stdout)) == 1
        r = await asyncio.to_thread(cli, "disconnect", "--client", cid,
                                    "--code", "4321", env=env)
        assert r.returncode == 0, r.stderr
        assert await wait_closed(ws) == 4321
        r = await asyncio.to_thread(cli, "disconnect", "--client", cid,
                                    env=env)
        assert r.returncode == 1 and "404 not_found" in r.stderr
        r = await asyncio.to_thread(cli, "--key", "wrong", "disconnect",
                                    "--user", "7", env=env)
        assert r.returncode == 1 and "403 forbidden" in r.stderr
        r = await asyncio.to_thread(cli, "disconnect", env=env)
        assert r.returncode == 2

    run(scenario())
