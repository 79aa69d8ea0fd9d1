"""bagou.presence() and bagou.presence_stats(): the API listener's
/api/presence and /api/presence_stats from Python, against a real
bagou-server with members that joined over WebSocket; and their errors
(not a presence channel, a bad channel, no server), raised as
BagouError."""

import time

import jwt
import pytest

import bagou
from bagou import BagouError
from support import free_port, run, ws_connect, request

SECRET = "python-presence"


def token(sub, info):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600,
                       "channels": ["presence-*"], "info": info},
                      SECRET, algorithm="HS256")


def test_presence_and_stats(server):
    srv = server(config={"auth": {"secret": SECRET}})

    async def scenario():
        conns = []
        for user, tabs in (("bob", 1), ("ann", 2)):
            for _ in range(tabs):
                ws, _ = await ws_connect(srv, "/websocket?token="
                                         + token(user, {"n": user}))
                got = await request(ws, "subscribe",
                                    {"channel": "presence-lobby"},
                                    callback_id="s")
                assert got["data"]["success"] is True, got
                conns.append(ws)
        bagou.configure(HTTP_URL="http://127.0.0.1:%d/" % srv.api_port)
        try:
            assert bagou.presence("presence-lobby") == [
                {"user": "ann", "info": {"n": "ann"}},
                {"user": "bob", "info": {"n": "bob"}}]
            assert bagou.presence_stats("presence-lobby") == {
                "clients": 3, "users": 2}
            assert bagou.presence("presence-nobody") == []
            with pytest.raises(BagouError, match="400"):
                bagou.presence("lobby")
            with pytest.raises(BagouError, match="non-empty"):
                bagou.presence_stats("")
            bagou.configure(HTTP_URL="http://127.0.0.1:%d" % free_port())
            with pytest.raises(BagouError, match="cannot reach"):
                bagou.presence("presence-lobby")
        finally:
            bagou.configure()
        for ws in conns:
            await ws.close()
    run(scenario(), timeout=30)
