"""PROTOCOL §2: frames the server refuses, size limits, slow consumers."""

import asyncio
import http.client
import json
import threading
import time

import pytest

from rawws import (OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, Closed,
                   RawWS)
from support import (HOST, metric_sum, recv_json, request, run, subscribe,
                     wait_closed, wait_for, ws_connect)


def padded_ping(size):
    """A valid ping message of exactly size bytes."""
    base = json.dumps({"event": "ping", "data": ""})
    msg = json.dumps({"event": "ping", "data": "p" * (size - len(base))})
    assert len(msg) == size
    return msg


def raw_client(srv, **kw):
    ws = RawWS(HOST, srv.port, **kw)
    op, payload = ws.recv_message()
    assert op == OP_TEXT and json.loads(payload)["event"] == "connect"
    return ws


# ---------------------------------------------------------------- frames

def test_binary_frame_closes_1003(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await ws.send(b'{"event": "ping"}')
        assert await wait_closed(ws) == 1003

    run(scenario())
    wait_for(lambda: srv.health()["connections"] == 0,
             what="connection gone")


def test_invalid_utf8_closes_1007(server):
    srv = server()
    ws = raw_client(srv)
    try:
        ws.send_frame(OP_TEXT, b'{"event": "ping", "data": "\xff\xfe"}')
        assert ws.wait_close() == 1007
    finally:
        ws.close()


def test_invalid_utf8_overlong_closes_1007(server):
    srv = server()
    ws = raw_client(srv)
    try:
        # An overlong encoding of "/" and a lone surrogate half.
        ws.send_frame(OP_TEXT, b'{"event": "ping", "data": "\xc0\xaf'
                               b'\xed\xa0\x80"}')
        assert ws.wait_close() == 1007
    finally:
        ws.close()


def test_valid_utf8_accepted(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        text = "h\u00e9llo \u2713 \U0001F600"
        reply = await request(ws, "ping", {"t": text},
                              callback_id="\u00e9t\u00e9")
        assert reply == {"event": "callback", "callbackId": "\u00e9t\u00e9",
                         "data": {"success": True}}
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- sizes

def test_oversized_message_closes_1009(server):
    srv = server({"limits": {"max_message_size": 1024}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        await ws.send(padded_ping(1025))
        assert await wait_closed(ws) == 1009

    run(scenario())


def test_message_at_limit_accepted(server):
    srv = server({"limits": {"max_message_size": 1024}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        await ws.send(padded_ping(1024))
        assert await recv_json(ws) == {"event": "pong"}
        await ws.close()

    run(scenario())


def test_default_limit_65536(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await ws.send(padded_ping(65536))
        assert await recv_json(ws) == {"event": "pong"}
        await ws.send(padded_ping(70000))
        assert await wait_closed(ws) == 1009

    run(scenario())


def test_fragmented_message_reassembled(server):
    srv = server()
    ws = raw_client(srv)
    try:
        msg = padded_ping(300).encode()
        ws.send_frame(OP_TEXT, msg[:100], fin=False)
        ws.send_frame(OP_CONT, msg[100:200], fin=False)
        ws.send_frame(OP_CONT, msg[200:], fin=True)
        op, payload = ws.recv_message()
        assert op == OP_TEXT
        assert json.loads(payload) == {"event": "pong"}
    finally:
        ws.close()


def test_fragmented_oversized_closes_1009(server):
    srv = server({"limits": {"max_message_size": 1024}})
    ws = raw_client(srv)
    try:
        msg = padded_ping(1800).encode()
        ws.send_frame(OP_TEXT, msg[:600], fin=False)
        ws.send_frame(OP_CONT, msg[600:1200], fin=False)
        try:
            ws.send_frame(OP_CONT, msg[1200:], fin=True)
        except OSError:
            pass    # already closed: fine, the close frame is what counts
        assert ws.wait_close() == 1009
    finally:
        ws.close()


def test_large_broadcast_single_frame(server):
    """Server frames are never fragmented up to max_message_size."""
    srv = server()
    ws = raw_client(srv)
    try:
        ws.send_text(json.dumps({"event": "subscribe",
                                 "data": {"channel": "big"}}))
        ws.send_text(json.dumps({"event": "ping", "callbackId": "1"}))
        op, payload = ws.recv_message()
        assert json.loads(payload)["callbackId"] == "1"
        data = "d" * 60000
        srv.broadcast({"event": "big", "channel": "big", "data": data})
        fin, op, payload = ws.recv_frame()
        assert (fin, op) == (True, OP_TEXT)
        assert json.loads(payload) == {"event": "big", "channel": "big",
                                       "data": data}
    finally:
        ws.close()


# ---------------------------------------------------------- slow consumer

# 32 broadcasts of 8 KB fit in the queue: a client that reads is never
# that far behind, one that stopped soon is.
SLOW_CONFIG = {"limits": {"max_message_size": 16384,
                          "max_queued_bytes": 262144}}


def test_slow_consumer_closed_others_unaffected(server):
    srv = server(SLOW_CONFIG, workers=1)   # both clients on one worker
    slow = raw_client(srv, rcvbuf=4096)
    pad = "x" * 8000
    published = []

    def publish_until_closed():
        """Publishes 8 KB broadcasts until the server closes the slow
        consumer (checked every 20), at most 1000, then 20 more."""
        conn = http.client.HTTPConnection(HOST, srv.api_port, timeout=10)
        try:
            seq = 0
            extra = None
            busy = 0
            while seq < 1000 and (extra is None or extra > 0):
                body = json.dumps({"event": "fire", "channel": "fire",
                                   "data": {"seq": seq, "pad": pad}})
                conn.request("POST", "/broadcast", body=body,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                # 503 is backpressure (the normal reader, in this same
                # process, fell behind for a moment): retry, as a
                # publisher must (PROTOCOL §8), a bounded number of times.
                if resp.status == 503 and busy < 200:
                    busy += 1
                    time.sleep(0.02)
                    continue
                assert resp.status == 202, resp.status
                published.append(seq)
                seq += 1
                if extra is not None:
                    extra -= 1
                elif seq % 20 == 0:
                    m = srv.metrics()
                    if metric_sum(m, "bagou_slow_consumer_closes_total") >= 1:
                        extra = 20
        finally:
            conn.close()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "fire")
        # The slow one subscribes, sees its ack, then never reads again.
        await asyncio.to_thread(slow.send_text, json.dumps(
            {"event": "subscribe", "data": {"channel": "fire"},
             "callbackId": "s"}))
        op, payload = await asyncio.to_thread(slow.recv_message)
        assert json.loads(payload)["data"]["success"] is True

        got = []

        async def reader():
            # Until publishing is over and everything published arrived;
            # bounded by the wait_for below.
            while not (done.is_set() and len(got) >= len(published)):
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.5)
                except asyncio.TimeoutError:
                    continue
                got.append(json.loads(raw)["data"]["seq"])

        done = threading.Event()
        task = asyncio.ensure_future(reader())

        def publish():
            try:
                publish_until_closed()
            finally:
                done.set()

        await asyncio.to_thread(publish)
        await asyncio.wait_for(task, 60)
        assert got == published, "normal client lost or reordered messages"
        await ws.close()

    run(scenario(), timeout=120)
    m = srv.metrics()
    assert metric_sum(m, "bagou_slow_consumer_closes_total") >= 1
    # Reading again: whatever was buffered, then 4001 or a dropped socket.
    code = slow.wait_close(timeout=15)
    slow.close()
    assert code in (4001, None), code
    assert len(published) < 1000, "slow consumer never closed"
    wait_for(lambda: srv.health()["connections"] == 0,
             what="connections back to 0")


def test_ping_between_fragments(server):
    """A control frame may arrive between the fragments of a message."""
    srv = server()
    ws = raw_client(srv)
    try:
        msg = padded_ping(200).encode()
        ws.send_frame(OP_TEXT, msg[:100], fin=False)
        ws.send_frame(OP_PING, b"mid")
        ws.send_frame(OP_CONT, msg[100:], fin=True)
        seen_pong = False
        while True:
            fin, op, payload = ws.recv_frame()
            if op == OP_PONG:
                assert payload == b"mid"
                seen_pong = True
                continue
            assert op == OP_TEXT
            assert json.loads(payload) == {"event": "pong"}
            break
        assert seen_pong
    finally:
        ws.close()


def test_unmasked_client_frame_closes(server):
    """RFC 6455 §5.1: a server must close on an unmasked client frame
    (1002; deps/lws/0001-rfc6455-strict-rx-and-close.patch)."""
    srv = server()
    ws = raw_client(srv)
    try:
        ws.send_frame(OP_TEXT, b'{"event": "ping"}', mask=False)
        while True:
            op, payload = ws.recv_message()
            assert op != OP_TEXT, "unmasked frame was processed: %r" \
                % payload
            if op == OP_CLOSE:
                break
        assert ws.close_code == 1002
    finally:
        ws.close()
    wait_for(lambda: srv.health()["connections"] == 0,
             what="connection gone")


def test_slow_readers_closed_4001(server):
    """Clients that keep reading, but slower than broadcasts arrive, are
    closed like ones that stopped: each drains what was sent, then gets
    the close frame 4001 (or its TCP connection ends), and is counted out,
    while broadcasts keep coming. Four concurrent publishers make the
    server see bursts; four readers make a rare path likely. With
    backpressure off: with it on, the publishers get 503 instead and the
    readers are not cut (test_link.py)."""
    srv = server({"limits": dict(SLOW_CONFIG["limits"], backpressure=0)},
                 workers=2)
    readers = []
    for _ in range(4):
        ws = raw_client(srv)
        ws.send_text(json.dumps({"event": "subscribe",
                                 "data": {"channel": "fire"},
                                 "callbackId": "s"}))
        op, payload = ws.recv_message()
        assert json.loads(payload)["data"]["success"] is True
        readers.append({"ws": ws, "got": 0, "end": None})
    stop = threading.Event()

    def read(state):
        ws = state["ws"]
        try:
            while True:
                op, _ = ws.recv_message(timeout=8)
                if op == OP_CLOSE:
                    state["end"] = ws.close_code
                    return
                state["got"] += 1
                if not stop.is_set():
                    time.sleep(0.005)     # 8 KB per 5 ms: too slow
        except Closed:
            state["end"] = "tcp closed"
        except TimeoutError:
            state["end"] = "nothing for 8 s"

    def publish(n):
        conn = http.client.HTTPConnection(HOST, srv.api_port, timeout=10)
        pad = "x" * 8000
        try:
            for seq in range(n):
                status, _, _ = srv.post("/broadcast", {
                    "event": "fire", "channel": "fire",
                    "data": {"seq": seq, "pad": pad}}, conn=conn)
                assert status == 202
        finally:
            conn.close()

    threads = [threading.Thread(target=read, args=(r,), daemon=True)
               for r in readers]
    pubs = [threading.Thread(target=publish, args=(300,), daemon=True)
            for _ in range(4)]
    for t in threads + pubs:
        t.start()
    # Broadcasts keep coming after the closes (the publishers finish).
    for t in pubs:
        t.join(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    for r in readers:
        r["ws"].close()
    closes = metric_sum(srv.metrics(), "bagou_slow_consumer_closes_total")
    assert closes >= 1, "clients reading 8 KB per 5 ms never found slow"
    bad = [(r["end"], r["got"]) for r in readers
           if r["end"] not in (4001, "tcp closed")]
    assert not bad, ("%d slow-consumer closes; readers never closed "
                     "(how they ended, messages got): %r" % (closes, bad))
    wait_for(lambda: srv.health()["connections"] == 0,
             what="the closed slow consumers counted out")


# A broadcast body within max_message_size whose data jansson writes back
# longer: each 1e9 (3 bytes) comes out as 1000000000.0 (12 bytes).
EXPAND_CONFIG = {"limits": {"max_message_size": 16384,
                            "max_queued_bytes": 16384}}
EXPAND_BODY = ('{"event":"e","channel":"f","data":['
               + ",".join(["1e9"] * 3900) + "]}")


def subscribed_raw_client(srv, channel):
    ws = raw_client(srv)
    ws.send_text(json.dumps({"event": "subscribe",
                             "data": {"channel": channel},
                             "callbackId": "s"}))
    op, payload = ws.recv_message()
    assert json.loads(payload)["data"]["success"] is True
    return ws


def outcome(ws, timeout):
    """What a client sees next: ("message", payload), ("close", code),
    ("tcp closed", None) or ("nothing", None) after timeout seconds."""
    try:
        op, payload = ws.recv_message(timeout=timeout)
    except Closed:
        return ("tcp closed", None)
    except TimeoutError:
        return ("nothing", None)
    if op == OP_CLOSE:
        return ("close", ws.close_code)
    return ("message", payload)


def outcomes(clients, timeout):
    """outcome() of every client, waited for in parallel."""
    results = [None] * len(clients)

    def one(i):
        results[i] = outcome(clients[i], timeout)

    threads = [threading.Thread(target=one, args=(i,), daemon=True)
               for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return results


# Four clients: on two workers, some are on another worker than the POST.
def test_accepted_broadcast_never_closes_idle_client(server):
    """Idle, reading clients are not slow consumers: a broadcast the
    server accepts is delivered (or refused at POST), never a 4001."""
    assert len(EXPAND_BODY) < 16384
    srv = server(EXPAND_CONFIG, workers=2)
    clients = [subscribed_raw_client(srv, "f") for _ in range(4)]
    try:
        status, _, body = srv.post("/broadcast", EXPAND_BODY)
        assert status in (202, 413), (status, body)
        seen = outcomes(clients, 3)
        closes = metric_sum(srv.metrics(),
                            "bagou_slow_consumer_closes_total")
        if status == 202:
            kinds = [k for k, _ in seen]
            assert kinds == ["message"] * 4, (
                "POST of %d bytes -> 202; the 4 clients saw %r; "
                "slow_consumer_closes_total=%d"
                % (len(EXPAND_BODY), seen, closes))
            for _, payload in seen:
                assert json.loads(payload)["data"] == [1e9] * 3900
        else:
            assert [k for k, _ in seen] == ["nothing"] * 4, seen
        assert closes == 0
        assert srv.health()["connections"] == 4
    finally:
        for ws in clients:
            ws.close()


def server_side_tcp_state(server_port, client_port):
    """The TCP state of the server's end of a loopback connection, read
    from /proc/net/tcp (1 = ESTABLISHED), or None once it is gone."""
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            lport = int(fields[1].split(":")[1], 16)
            rport = int(fields[2].split(":")[1], 16)
            if lport == server_port and rport == client_port:
                return int(fields[3], 16)
    return None


def test_slow_consumer_close_reaches_idle_client(server):
    """A slow consumer closed from the broadcast fan-out is really closed
    at once, though nothing else happens on its worker afterwards
    (libwebsockets runs its kill timers only after one of its own events).
    The slow client sits alone on worker 0; HTTP goes to the idle worker 1;
    the server's end of the socket is watched in /proc/net/tcp, so the
    check itself causes no traffic on worker 0. Backpressure is off, so
    the close comes from the fan-out (with it on, the stall timer closes
    the client: test_link.py). The client reads nothing, so the close
    handshake ends at [limits] close_timeout (1 s here)."""
    srv = server({"limits": dict(SLOW_CONFIG["limits"], backpressure=0,
                                 close_timeout=1)},
                 workers=2)
    slow = subscribed_raw_client_rcvbuf(srv, "fire", 4096)
    client_port = slow.sock.getsockname()[1]
    assert server_side_tcp_state(srv.port, client_port) == 1
    pad = "x" * 8000
    try:
        for seq in range(400):
            status, _, _ = srv.post("/broadcast", json.dumps(
                {"event": "fire", "channel": "fire",
                 "data": {"seq": seq, "pad": pad}}))
            assert status == 202
            if seq % 10 == 9 and metric_sum(
                    srv.metrics(), "bagou_slow_consumer_closes_total"):
                break
        # The fan-out may still be behind the last 202 (under load).
        wait_for(lambda: metric_sum(
            srv.metrics(), "bagou_slow_consumer_closes_total") >= 1,
            timeout=10, what="the slow consumer found slow")
        assert metric_sum(srv.metrics(),
                          "bagou_slow_consumer_closes_total") == 1
        wait_for(lambda: server_side_tcp_state(srv.port, client_port) != 1,
                 timeout=4, what="the server closing the slow consumer")
    finally:
        slow.close()


def subscribed_raw_client_rcvbuf(srv, channel, rcvbuf):
    ws = raw_client(srv, rcvbuf=rcvbuf)
    ws.send_text(json.dumps({"event": "subscribe",
                             "data": {"channel": channel},
                             "callbackId": "s"}))
    op, payload = ws.recv_message()
    assert json.loads(payload)["data"]["success"] is True
    return ws

