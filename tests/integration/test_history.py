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


def api_history(srv, query):
    status, _, body = srv.api_get("/api/history?" + query)
    return status, json.loads(body)


def test_history_limits_since_api_and_private(server):
    cfg = json.loads(json.dumps(HIST))
    cfg["auth"] = {"secret": "s3cret"}
    srv = server(cfg)

    async def scenario():
        for i in range(25):
            await asyncio.to_thread(post, srv, "chat", i)
        await asyncio.to_thread(post, srv, "private-chat", "p")
        await asyncio.to_thread(post, srv, "nohist", "x")
        ws, _ = await ws_connect(srv)
        # Default 50, clamped to size (20): the last 20, oldest first.
        r = await request(ws, "history", {"channel": "chat"},
                          callback_id="a")
        d = r["data"]
        assert [p["data"] for p in d["publications"]] == list(range(5, 25))
        assert all(p["channel"] == "chat" and p["event"] == "m"
                   for p in d["publications"])
        offs = [p["offset"] for p in d["publications"]]
        assert offs == sorted(offs) and d["offset"] >= offs[-1]
        epoch = d["epoch"]
        r = await request(ws, "history", {"channel": "chat", "limit": 1000},
                          callback_id="b")
        assert len(r["data"]["publications"]) == 20
        r = await request(ws, "history", {"channel": "chat", "limit": 0},
                          callback_id="z")
        assert r["data"]["publications"] == []
        # since: the first `limit` after it.
        r = await request(ws, "history", {"channel": "chat", "limit": 3,
                          "since": {"epoch": epoch, "offset": offs[9]}},
                          callback_id="c")
        assert [p["data"] for p in r["data"]["publications"]] == [15, 16, 17]
        assert "gap" not in r["data"]
        # Older than what is kept, or another epoch: gap and the latest.
        for since in ({"epoch": epoch, "offset": 0},
                      {"epoch": "nope", "offset": offs[9]}):
            r = await request(ws, "history", {"channel": "chat", "limit": 2,
                              "since": since}, callback_id="g")
            assert r["data"]["gap"] is True
            assert [p["data"] for p in r["data"]["publications"]] == [23, 24]
        # Private channel: the rules of subscribe.
        r = await request(ws, "history", {"channel": "private-chat"},
                          callback_id="p")
        assert error_code(r) == "forbidden"
        # A channel without history says so.
        r = await request(ws, "history", {"channel": "nohist"},
                          callback_id="n")
        assert error_code(r) == "not_allowed"
        # Bad input: clear errors, the connection stays.
        for data, code in (({"channel": "chat", "limit": -1}, "bad_message"),
                           ({"channel": "chat", "limit": "5"}, "bad_message"),
                           ({"channel": "chat", "limit": 1.5}, "bad_message"),
                           ({"channel": "chat", "since": 3}, "bad_message"),
                           ({"channel": "chat", "since": {"epoch": "",
                             "offset": 1}}, "bad_message"),
                           ({"channel": "chat", "since": {"epoch": "e",
                             "offset": 2 ** 53}}, "bad_message"),
                           ({"channel": "a b"}, "invalid_channel"),
                           ({}, "invalid_channel")):
            r = await request(ws, "history", data, callback_id="x")
            assert error_code(r) == code, (data, r)
            assert "message" in r["data"]["error"]
        for recover in (5, "x", {"epoch": "e"}, {"offset": 3},
                        {"epoch": "e", "offset": -1},
                        {"epoch": "e", "offset": "3"},
                        {"epoch": "x" * 65, "offset": 1}):
            r = await request(ws, "subscribe", {"channel": "chat",
                              "recover": recover}, callback_id="y")
            assert error_code(r) == "bad_message", (recover, r)
        # Recover on a channel without history: recovered false.
        r = await request(ws, "subscribe", {"channel": "nohist", "recover": {
            "epoch": epoch, "offset": 1}}, callback_id="nr")
        assert r["data"] == {"success": True, "channel": "nohist",
                             "recovered": False}
        await ws.close()

    run(scenario())
    # The same through GET /api/history.
    st, d = api_history(srv, "channel=chat&limit=2")
    assert st == 200 and d["success"] is True
    assert [p["data"] for p in d["publications"]] == [23, 24]
    st, d = api_history(srv, "channel=private-chat")
    assert st == 200 and [p["data"] for p in d["publications"]] == ["p"]
    epoch = d["epoch"]
    st, d2 = api_history(srv, "channel=chat&limit=1&since_epoch=%s"
                         "&since_offset=1" % epoch)
    assert st == 200 and d2["gap"] is True
    for q, st_want in (("channel=nohist", 404), ("channel=a%20b", 400),
                       ("channel=chat&limit=x", 400),
                       ("channel=chat&since_epoch=e", 400),
                       ("channel=chat&since_offset=1", 400),
                       ("channel=chat&bogus=1", 400), ("", 400),
                       ("channel=%zz", 400), ("channel=chat%00x", 400),
                       ("channel=chat&limit=99999999999999999999999", 400),
                       ("channel=chat&since_epoch=e&since_offset="
                        "9007199254740992", 400)):
        st, d = api_history(srv, q)
        assert st == st_want, (q, st, d)
        assert d["error"]["code"] and d["error"]["message"]


def waiting_history_request(srv, headers=b""):
    """Publishes one broadcast on chat, then sends GET /api/history for the
    position after it (not reached: the node waits up to 3 s for it) on a
    raw connection. (that socket, the history answer before it, the
    monotonic time it was sent)."""
    import socket
    import time
    post(srv, "chat", 1)
    st, d = api_history(srv, "channel=chat")
    assert st == 200
    s = socket.create_connection(("127.0.0.1", srv.api_port), timeout=10)
    sent = time.monotonic()
    s.sendall(b"GET /api/history?channel=chat&since_epoch=%s"
              b"&since_offset=%d HTTP/1.1\r\nHost: x\r\n%s\r\n"
              % (d["epoch"].encode(), d["offset"] + 1, headers))
    return s, d, sent


def test_api_history_pending_does_not_block_the_api(server):
    """A history request the bus cannot answer yet (the next position of
    this epoch, not reached: it waits up to 3 s for it) is answered
    asynchronously: the API listener serves /api/info and /metrics
    meanwhile; the answer comes once the position is reached."""
    import select
    import time
    srv = server(HIST)
    s, d, t0 = waiting_history_request(srv, b"Connection: close\r\n")
    try:
        for path in ("/api/info", "/metrics", "/api/info"):
            status, _, _ = srv.api_get(path)
            assert status == 200, path
        assert time.monotonic() - t0 < 2.0
        # The history request is still waiting (nothing to read yet).
        assert select.select([s], [], [], 0)[0] == []
        post(srv, "chat", 2)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    assert time.monotonic() - t0 < 2.5
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data
    got = json.loads(body)
    assert "gap" not in got and got["publications"] == [], got
    assert got["offset"] == d["offset"] + 1


def test_stop_while_a_history_request_waits_ends_cleanly(server):
    """SIGTERM while /api/history waits for a position not reached: the
    node ends at once and cleanly, and the waiting request's memory is
    given back (it leaked before: under ASan the exit status said so)."""
    import select
    import time
    srv = server(HIST)
    s, _, _ = waiting_history_request(srv)
    try:
        time.sleep(0.3)
        # Still waiting on the bus (nothing to read yet).
        assert select.select([s], [], [], 0)[0] == []
        srv.stop()
    finally:
        s.close()
    assert srv.ended_problems() == []


def test_recover_while_broadcasts_flow_multi_worker(server):
    """Recovery racing live traffic (4 workers, a publisher that never
    stops): every broadcast after the position exactly once, in order,
    replay before live, across several resumes."""
    cfg = json.loads(json.dumps(HIST))
    cfg["history"]["size"] = "100000"
    srv = server(cfg, workers=4)

    async def scenario():
        stop = asyncio.Event()
        sent = []

        async def publisher():
            i = 0
            while not stop.is_set():
                await asyncio.to_thread(post, srv, "chat", i)
                sent.append(i)
                i += 1

        ws, _ = await ws_connect(srv)
        await sub(ws, "chat")
        _, d = await until_callback(ws, "s")
        epoch, pos = d["epoch"], d["offset"]
        task = asyncio.create_task(publisher())
        got = []
        for round_ in range(4):
            for _ in range(20):
                m = await recv_json(ws)
                got.append(m["data"])
                pos = m["offset"]
            await ws.close()
            await asyncio.sleep(0.05)
            ws, _ = await ws_connect(srv)
            await sub(ws, "chat", {"epoch": epoch, "offset": pos},
                      cb="r%d" % round_)
            before, d = await until_callback(ws, "r%d" % round_)
            assert d["recovered"] is True, d
            for m in before:
                assert m["offset"] > pos
                got.append(m["data"])
                pos = m["offset"]
        stop.set()
        await task
        last = sent[-1]
        while got[-1] != last:
            m = await recv_json(ws)
            got.append(m["data"])
        assert got == list(range(len(got))), got
        await ws.close()

    run(scenario())


def test_standalone_retention_and_restart_give_gaps(server):
    srv = server(HIST)

    async def scenario():
        ws, _ = await ws_connect(srv)
        await sub(ws, "chat")
        _, d = await until_callback(ws, "s")
        epoch = d["epoch"]
        await asyncio.to_thread(post, srv, "chat", "first")
        first = (await recv_json(ws))["offset"]
        await ws.close()
        for i in range(25):              # more than size (20)
            await asyncio.to_thread(post, srv, "chat", i)
        ws, _ = await ws_connect(srv)
        await sub(ws, "chat", {"epoch": epoch, "offset": first}, cb="old")
        got, d = await until_callback(ws, "old")
        assert got == [] and d["recovered"] is False
        await asyncio.to_thread(post, srv, "chat", "live")
        assert (await recv_json(ws))["data"] == "live"
        await ws.close()
        return epoch, d["offset"]

    epoch, top = run(scenario())
    srv.stop()
    srv.start()

    async def after_restart():
        ws, _ = await ws_connect(srv)
        await sub(ws, "chat", {"epoch": epoch, "offset": top}, cb="new")
        got, d = await until_callback(ws, "new")
        assert got == [] and d["recovered"] is False
        assert d["epoch"] != epoch
        await ws.close()

    run(after_restart())


# ------------------------------------------------------------ RabbitMQ

from rabbitmq import amqp_server, unique_exchange  # noqa: E402,F401


def amqp_cfg(exchange, size="100000", ttl="300"):
    return {"history": {"channels": "^(chat|private-chat)", "size": size,
                        "ttl": ttl, "stream": exchange + ".history"},
            "amqp": {"exchange": exchange}}


async def wait_caught_up(srv, channel="chat", timeout=10.0):
    """The node answers history (it has caught up with the stream)."""
    ws, _ = await ws_connect(srv)
    r = await request(ws, "history", {"channel": channel, "limit": 0},
                      callback_id="up", )
    await ws.close()
    return r["data"]


async def wait_history_last(srv, data, timeout=10.0):
    """Until the node has the broadcast whose data is `data`."""
    ws, _ = await ws_connect(srv)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await request(ws, "history", {"channel": "chat", "limit": 1},
                          callback_id="w")
        pubs = r["data"]["publications"]
        if pubs and pubs[-1]["data"] == data:
            break
        assert asyncio.get_running_loop().time() < deadline, r
        await asyncio.sleep(0.05)
    await ws.close()


async def publisher_task(srv, channel, sent, stop, delay=0.0):
    i = 0
    while not stop.is_set():
        await asyncio.to_thread(post, srv, channel, i)
        sent.append(i)
        i += 1
        if delay:
            await asyncio.sleep(delay)


async def resume(srv, epoch, pos, cb):
    ws, _ = await ws_connect(srv)
    await sub(ws, "chat", {"epoch": epoch, "offset": pos}, cb=cb)
    before, d = await until_callback(ws, cb)
    return ws, before, d


async def read_until(ws, got, last, pos):
    while not got or got[-1] != last:
        m = await recv_json(ws)
        assert m["offset"] > pos, m
        pos = m["offset"]
        got.append(m["data"])
    return pos


def test_amqp_resume_on_another_node_and_after_sigkill(amqp_server):
    ex = unique_exchange("hist")
    a = amqp_server(amqp_cfg(ex))
    b = amqp_server(amqp_cfg(ex))

    async def scenario():
        da = await wait_caught_up(a)
        db = await wait_caught_up(b)
        assert da["epoch"] == db["epoch"], (da, db)
        ws, _ = await ws_connect(a)
        await sub(ws, "chat")
        _, d = await until_callback(ws, "s")
        epoch, pos = d["epoch"], d["offset"]
        stop, sent, got = asyncio.Event(), [], []
        task = asyncio.create_task(publisher_task(a, "chat", sent, stop,
                                                  delay=0.002))
        for _ in range(30):
            m = await recv_json(ws)
            got.append(m["data"])
            pos = m["offset"]
        await ws.close()                 # cut while broadcasts flow
        await asyncio.sleep(0.2)
        # Resume on the other node: every missed broadcast once, in order.
        ws, before, d = await resume(b, epoch, pos, "rb")
        assert d["recovered"] is True, d
        for m in before:
            assert m["offset"] > pos
            pos = m["offset"]
            got.append(m["data"])
        assert len(before) > 0
        for _ in range(20):
            m = await recv_json(ws)
            assert m["offset"] > pos
            pos = m["offset"]
            got.append(m["data"])
        await ws.close()
        stop.set()
        await task
        assert got == list(range(len(got))), got
        return epoch, pos, sent[-1], len(got)

    epoch, pos, last, n_got = run(scenario())
    # The node it was on is killed (SIGKILL) and restarted; broadcasts
    # go on through b meanwhile.
    a.signal(9)
    a.wait_exit(10)

    async def while_down():
        for i in range(last + 1, last + 21):
            await asyncio.to_thread(post, b, "chat", i)
    run(while_down())
    a.start()
    a.wait_amqp("connected", timeout=15.0)

    async def after_restart():
        d = await wait_caught_up(a)
        assert d["epoch"] == epoch, d
        ws, before, d = await resume(a, epoch, pos, "ra")
        assert d["recovered"] is True, d
        got = [m["data"] for m in before]
        assert got == list(range(n_got, last + 21)), got
        await asyncio.to_thread(post, b, "chat", "live")
        m = await recv_json(ws)
        assert m["data"] == "live" and m["offset"] > before[-1]["offset"]
        # An unknown epoch, or a position older than what is kept.
        ws2, before, d = await resume(a, "other", pos, "re")
        assert before == [] and d["recovered"] is False
        await ws.close()
        await ws2.close()

    run(after_restart())


def test_amqp_read_back_new_stream_and_private(amqp_server, rabbitmq):
    ex = unique_exchange("hist")
    cfg = amqp_cfg(ex, size="5")
    cfg["auth"] = {"secret": "s3cret"}
    srv = amqp_server(cfg)

    async def scenario():
        d = await wait_caught_up(srv)
        epoch = d["epoch"]
        ws, _ = await ws_connect(srv)
        await sub(ws, "chat")
        _, d = await until_callback(ws, "s")
        await asyncio.to_thread(post, srv, "chat", "first")
        first = (await recv_json(ws))["offset"]
        await ws.close()
        for i in range(10):               # more than size (5)
            await asyncio.to_thread(post, srv, "chat", i)
            await asyncio.to_thread(post, srv, "chat-other", i)
        await wait_history_last(srv, 9)
        # Older than memory: read back from the stream, then memory.
        ws, before, d = await resume(srv, epoch, first, "old")
        assert d["recovered"] is True, d
        assert [m["data"] for m in before] == list(range(10))
        assert all(m["channel"] == "chat" for m in before)
        offs = [m["offset"] for m in before]
        assert offs == sorted(offs) and offs[0] > first
        await asyncio.to_thread(post, srv, "chat", "live")
        assert (await recv_json(ws))["data"] == "live"
        r = await request(ws, "history", {"channel": "chat", "limit": 3,
                          "since": {"epoch": epoch, "offset": first}},
                          callback_id="hb")
        assert "gap" not in r["data"]
        assert [p["data"] for p in r["data"]["publications"]] == [0, 1, 2]
        # Private channels: the rules of subscribe, recover or not.
        r = await request(ws, "subscribe", {"channel": "private-chat",
                          "recover": {"epoch": epoch, "offset": 1}},
                          callback_id="p")
        assert error_code(r) == "forbidden"
        await ws.close()
        return epoch, d["offset"]

    epoch, top = run(scenario())
    # A new stream (deleted while the node was down): offsets restart,
    # so the epoch is new and an old position is a gap.
    srv.stop()
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    conn.channel().queue_delete(ex + ".history")
    conn.close()
    srv.start()
    srv.wait_amqp("connected", timeout=15.0)

    async def after():
        d = await wait_caught_up(srv)
        assert d["epoch"] != epoch
        ws, before, d = await resume(srv, epoch, top, "new")
        assert before == [] and d["recovered"] is False
        await ws.close()

    run(after())


def test_amqp_positions_past_stream_retention(amqp_server, rabbitmq):
    """The stream no longer holds the position (x-max-age, small
    segments): recovered false, nothing replayed, live goes on."""
    import pika
    ex = unique_exchange("hist")
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    conn.channel().queue_declare(ex + ".history", durable=True, arguments={
        "x-queue-type": "stream", "x-max-age": "1s",
        "x-stream-max-segment-size-bytes": 2000})
    conn.close()
    srv = amqp_server(amqp_cfg(ex, size="5"))

    async def scenario():
        d = await wait_caught_up(srv)
        epoch = d["epoch"]
        ws, _ = await ws_connect(srv)
        await sub(ws, "chat")
        _, d = await until_callback(ws, "s")
        await asyncio.to_thread(post, srv, "chat", "first")
        first = (await recv_json(ws))["offset"]
        await ws.close()
        for i in range(40):
            await asyncio.to_thread(post, srv, "chat", "x" * 100)
        await asyncio.sleep(2.5)
        for i in range(40):
            await asyncio.to_thread(post, srv, "chat", i)
        await wait_history_last(srv, 39)
        ws, before, d = await resume(srv, epoch, first, "gone")
        assert before == [] and d["recovered"] is False, (before[:3], d)
        await asyncio.to_thread(post, srv, "chat", "live")
        assert (await recv_json(ws))["data"] == "live"
        await ws.close()

    run(scenario())
