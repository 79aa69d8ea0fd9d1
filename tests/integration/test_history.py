"""History and recovery (PROTOCOL.md, history and recovery; issue 10):
positions on history channels, subscribe with "recover", the history
event and GET /api/history, standalone and with RabbitMQ (streams)."""

import asyncio
import json

from support import error_code, recv_json, request, run, send_json, \
    ws_connect

HIST = {"amqp": {"url": "none"},
        "history": {"channels": "^(chat|private-chat)", "size": "20",
                    "ttl": "300"}}


async def sub(ws, channel, recover=None, cb="s"):
    data = {"channel": channel}
    if recover is not None:
        data["recover"] = recover
    await send_json(ws, {"event": "subscribe", "data": data,
                         "callbackId": cb})


async def until_callback(ws, cb):
    """Messages up to the callback cb: (broadcasts before it, callback)."""
    got = []
    for _ in range(10000):
        msg = await recv_json(ws)
        if msg.get("event") == "callback" and msg.get("callbackId") == cb:
            return got, msg["data"]
        got.append(msg)
    raise AssertionError("no callback %s" % cb)


def post(srv, channel, i, **extra):
    body = {"event": "m", "channel": channel, "data": i}
    body.update(extra)
    srv.broadcast(body)


def test_standalone_offsets_subscribe_recover(server):
    srv = server(HIST)

    async def scenario():
        ws, _ = await ws_connect(srv)
        await sub(ws, "chat")
        got, data = await until_callback(ws, "s")
        assert got == []
        assert data["success"] is True and data["channel"] == "chat"
        epoch, top = data["epoch"], data["offset"]
        assert isinstance(epoch, str) and epoch and top == 0
        for i in range(3):
            await asyncio.to_thread(post, srv, "chat", i)
        seen = [await recv_json(ws) for _ in range(3)]
        assert [m["data"] for m in seen] == [0, 1, 2]
        offs = [m["offset"] for m in seen]
        assert offs == sorted(offs) and offs[0] >= 1
        await ws.close()
        # Missed while away: 3..5; recovered from offs[2].
        for i in range(3, 6):
            await asyncio.to_thread(post, srv, "chat", i)
        ws2, _ = await ws_connect(srv)
        await sub(ws2, "chat", {"epoch": epoch, "offset": offs[2]}, cb="r")
        got, data = await until_callback(ws2, "r")
        assert [m["data"] for m in got] == [3, 4, 5]
        assert data["recovered"] is True and data["epoch"] == epoch
        assert data["offset"] == got[-1]["offset"]
        # Another epoch: nothing replayed, recovered false.
        ws3, _ = await ws_connect(srv)
        await sub(ws3, "chat", {"epoch": "other", "offset": 1}, cb="e")
        got, data = await until_callback(ws3, "e")
        assert got == [] and data["recovered"] is False
        # History event: last 2, and since.
        r = await request(ws3, "history", {"channel": "chat", "limit": 2},
                          callback_id="h")
        pubs = r["data"]["publications"]
        assert [p["data"] for p in pubs] == [4, 5]
        assert "gap" not in r["data"]
        r = await request(ws3, "history", {"channel": "chat", "since": {
            "epoch": epoch, "offset": offs[1]}}, callback_id="h2")
        assert [p["data"] for p in r["data"]["publications"]] == [2, 3, 4, 5]
        for w in (ws2, ws3):
            await w.close()

    run(scenario())
