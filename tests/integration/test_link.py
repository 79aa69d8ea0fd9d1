"""Issue 8, items 2 and 6: one message can fail, the broker link cannot;
and a publisher flood is pushed back on, instead of every subscriber being
cut.

- A client string that would reach AMQP out of bounds (a 300-byte event
  name with forwarding on: AMQP routing keys end at 255 bytes) is refused
  at the edge with bad_message; before, the bus took rabbitmq-c's
  encoding error for a dead link, reconnected and re-sent that message
  first, forever (81 reconnects in seconds, every client "unavailable").
- A forwarded event to an exchange deleted behind the node's back makes
  RabbitMQ close the channel (404): the channel is reopened on the same
  connection, that one event is lost, nothing loops, nothing reconnects.
- POST /broadcast faster than the subscribers read: 503 "unavailable"
  (backpressure) instead of 202 and 4001 for everyone; deliveries from
  RabbitMQ faster than the subscribers read are held unacked (prefetch)
  instead of fanned out into 4001.
"""

import asyncio
import json
import threading
import time

from rabbitmq import amqp_server, publisher, unique_exchange  # noqa: F401
from rawws import OP_CLOSE, OP_TEXT, Closed, RawWS
from support import (HOST, error_code, http_post, metric_sum, recv_json,
                     run, send_json, subscribe, wait_for, ws_connect)

PAYLOAD = "x" * 32000          # one broadcast: ~32 KB on the wire
FLOOD_SECONDS = 20.0           # bound of a flood phase
READ_PAUSE = 0.05              # a slow reader: 20 messages (640 KB) a second


def metric(srv, name):
    return metric_sum(srv.metrics(), name)


def failure(msg, cb):
    assert msg.get("event") == "callback" and msg.get("callbackId") == cb, \
        msg
    assert msg["data"].get("success") is False, msg
    return error_code(msg)


# ------------------------------------------------------ A: bounded strings

def test_long_event_name_forwarded_fails_alone(amqp_server, publisher):
    """The reproduced attack: a 300-byte event name with [forward]
    exchange set. The sender gets bad_message, /metrics counts it, the
    link never reconnects, and a broadcast published through RabbitMQ
    right after still reaches another client; a 128-byte name (the
    limit) is still forwarded, with that routing key."""
    bx = unique_exchange("bagou-link")
    ex = unique_exchange("bagou-link-events")
    srv = amqp_server(config={"forward": {"exchange": ex}}, exchange=bx)
    pub = publisher(bx)
    events = publisher(ex)
    tap = events.tap("#")
    reconnects = metric(srv, "bagou_amqp_reconnects_total")
    bad = metric_sum(srv.metrics(),
                     'bagou_client_errors_total{code="bad_message"}')

    async def scenario():
        attacker, _ = await ws_connect(srv)
        other, _ = await ws_connect(srv)
        await subscribe(other, "news")
        for i, n in enumerate((300, 129, 60000)):
            await send_json(attacker, {"event": "e" * n,
                                       "callbackId": "cb%d" % i})
            msg = await recv_json(attacker)
            assert failure(msg, "cb%d" % i) == "bad_message", msg
        await send_json(attacker, {"event": "a\nb", "callbackId": "ctl"})
        assert failure(await recv_json(attacker), "ctl") == "bad_message"
        # The limit itself is fine, and goes out as the routing key.
        await send_json(attacker, {"event": "k" * 128, "callbackId": "ok",
                                   "data": {"n": 1}})
        key, body = events.get(tap)
        assert key == "k" * 128 and body["callbackId"] == "ok", body
        # The sentinel: the node queue and the link are intact.
        pub.publish({"event": "sentinel", "channel": "news"})
        assert await recv_json(other) == {"event": "sentinel",
                                          "channel": "news", "data": {}}
        await attacker.close()
        await other.close()

    run(scenario())
    m = srv.metrics()
    assert metric_sum(m, "bagou_amqp_reconnects_total") == reconnects, \
        srv.log()
    assert metric_sum(
        m, 'bagou_client_errors_total{code="bad_message"}') == bad + 4
    assert metric_sum(m, "bagou_amqp_publish_failures_total") == 0
    assert metric_sum(m, "bagou_amqp_connected") == 1


def test_huge_routing_key_via_client_publish(amqp_server, publisher):
    """A client publish names the channel, and a one-channel broadcast
    is routed by it: a 300-byte channel is refused at the edge
    (invalid_channel), the link stays, the next broadcast arrives."""
    bx = unique_exchange("bagou-link")
    srv = amqp_server(config={"channels": {"client_publish": "all"}},
                      exchange=bx)
    pub = publisher(bx)
    reconnects = metric(srv, "bagou_amqp_reconnects_total")

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "news")
        await send_json(ws, {"event": "publish", "callbackId": "p1",
                             "data": {"channel": "c" * 300,
                                      "event": "big"}})
        assert failure(await recv_json(ws), "p1") == "invalid_channel"
        # An over-long event name inside a publish is data, not a key.
        await send_json(ws, {"event": "publish", "callbackId": "p2",
                             "data": {"channel": "news",
                                      "event": "e" * 300}})
        got = [await recv_json(ws), await recv_json(ws)]
        assert {"event": "callback", "callbackId": "p2",
                "data": {"success": True}} in got, got
        pub.publish({"event": "sentinel", "channel": "news"})
        assert await recv_json(ws) == {"event": "sentinel",
                                       "channel": "news", "data": {}}
        await ws.close()

    run(scenario())
    assert metric(srv, "bagou_amqp_reconnects_total") == reconnects


def test_deleted_forward_exchange_reopens_channel_once(amqp_server,
                                                       publisher):
    """The [forward] exchange is deleted while the node is connected:
    RabbitMQ closes the channel over the next forwarded event (404
    NOT_FOUND). The node reopens the channel on the same connection (and
    declares the exchange again), without re-sending that event: a burst
    of events costs at most one reopen each, the count then stays still,
    no reconnect happens, and broadcasts still arrive."""
    bx = unique_exchange("bagou-link")
    ex = unique_exchange("bagou-link-events")
    srv = amqp_server(config={"forward": {"exchange": ex}}, exchange=bx)
    pub = publisher(bx)
    reconnects = metric(srv, "bagou_amqp_reconnects_total")
    pub.ch.exchange_delete(ex)

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "news")
        for i in range(5):
            await send_json(ws, {"event": "lost-%d" % i})
        wait_for(lambda: metric(srv, "bagou_amqp_channel_reopens_total")
                 >= 1, timeout=10, what="the channel reopened")
        await asyncio.sleep(1.5)
        reopens = metric(srv, "bagou_amqp_channel_reopens_total")
        assert 1 <= reopens <= 5, reopens
        await asyncio.sleep(1.0)
        assert metric(srv, "bagou_amqp_channel_reopens_total") == reopens
        # The exchange is back: forwarding works again.
        events = publisher(ex)
        tap = events.tap("#")
        await send_json(ws, {"event": "after", "callbackId": "a1"})
        key, body = events.get(tap)
        assert key == "after" and body["callbackId"] == "a1", body
        pub.publish({"event": "sentinel", "channel": "news"})
        assert await recv_json(ws) == {"event": "sentinel",
                                       "channel": "news", "data": {}}
        await ws.close()

    run(scenario())
    m = srv.metrics()
    assert metric_sum(m, "bagou_amqp_reconnects_total") == reconnects, \
        srv.log()
    assert metric_sum(
        m, 'bagou_amqp_publish_failures_total{reason="broker"}') >= 1
    assert "reopening it" in srv.log()


# ----------------------------------------------------- B: backpressure

def raw_subscribe(srv, channel, rcvbuf):
    ws = RawWS(HOST, srv.port, rcvbuf=rcvbuf)
    op, payload = ws.recv_message()
    assert op == OP_TEXT and json.loads(payload)["event"] == "connect"
    ws.send_text(json.dumps({"event": "subscribe", "callbackId": "s",
                             "data": {"channel": channel}}))
    op, payload = ws.recv_message()
    assert json.loads(payload)["data"]["success"] is True, payload
    return ws


class SlowReader(threading.Thread):
    """Reads one message at a time with a pause: a subscriber that does
    read, slower than the flood. Stops at the sentinel, a close or the
    deadline; what failed is re-raised by result()."""

    def __init__(self, ws, pause, deadline):
        super().__init__(daemon=True)
        self.ws = ws
        self.pause = pause
        self.deadline = deadline
        self.seqs = []
        self.close_code = None
        self.sentinel = False
        self.error = None

    def run(self):
        try:
            while time.monotonic() < self.deadline:
                op, payload = self.ws.recv_message(
                    timeout=self.deadline - time.monotonic())
                if op == OP_CLOSE:
                    self.close_code = self.ws.close_code
                    return
                msg = json.loads(payload)
                if msg["event"] == "sentinel":
                    self.sentinel = True
                    return
                self.seqs.append(msg["data"]["seq"])
                time.sleep(self.pause)
        except Closed:
            self.close_code = "eof"
        except BaseException as e:  # reaches the test through result()
            self.error = e

    def result(self, timeout):
        self.join(timeout)
        assert not self.is_alive(), "the reader did not finish"
        if self.error is not None:
            raise self.error
        return self


def flood_posts(srv, stop):
    """POSTs 32 KB broadcasts one after another until stop(statuses) or
    FLOOD_SECONDS; returns (accepted seqs, 503 bodies)."""
    accepted, refused = [], []
    end = time.monotonic() + FLOOD_SECONDS
    seq = 0
    while time.monotonic() < end and not stop(accepted, refused):
        status, _, body = http_post(srv.api_port, "/broadcast", {
            "event": "flood", "channel": "flood",
            "data": {"seq": seq, "pad": PAYLOAD}})
        if status == 202:
            accepted.append(seq)
        else:
            assert status == 503, (status, body)
            refused.append(json.loads(body))
        seq += 1
    return accepted, refused


def post_sentinel(srv):
    """The sentinel, retried while backpressure refuses it."""
    end = time.monotonic() + FLOOD_SECONDS
    while time.monotonic() < end:
        status, _, _ = http_post(srv.api_port, "/broadcast", {
            "event": "sentinel", "channel": "flood"})
        if status == 202:
            return
        assert status == 503
        time.sleep(0.05)
    raise AssertionError("the sentinel was refused for %.0f s"
                         % FLOOD_SECONDS)


def test_post_flood_gets_503_readers_are_not_cut(server):
    """One worker, two subscribers of "flood": one never reads (a slow
    consumer), one reads slower than POST /broadcast comes in. The
    publisher gets 503 with a JSON reason while the reader is backed
    up; the reader is never cut and receives every accepted broadcast in
    order. The subscriber that never reads is cut with 4001, as
    PROTOCOL.md says: each time the publisher is let through again it
    receives as much as the reader, so its queue passes
    max_queued_bytes. Without backpressure ([limits] backpressure = 0)
    the reader is cut too."""
    srv = server(workers=1)
    stalled = raw_subscribe(srv, "flood", rcvbuf=4096)
    reader_ws = raw_subscribe(srv, "flood", rcvbuf=16384)
    reader = SlowReader(reader_ws, READ_PAUSE, time.monotonic() + 60)
    reader.start()
    try:
        accepted, refused = flood_posts(
            srv, lambda a, r: len(r) >= 20)
        print("flood: %d accepted, %d refused" % (len(accepted),
                                                  len(refused)))
        assert len(refused) >= 20, (len(accepted), len(refused))
        assert all(r["error"]["code"] == "unavailable" and
                   "backpressure" in r["error"]["message"]
                   for r in refused), refused[:3]
        post_sentinel(srv)
        reader.result(60)
        assert reader.close_code is None, \
            "the reading subscriber was cut (%r)" % reader.close_code
        assert reader.sentinel
        assert reader.seqs == accepted, (len(reader.seqs), len(accepted))
        m = srv.metrics()
        assert metric_sum(m, "bagou_backpressure_refusals_total") \
            >= len(refused)
        assert metric_sum(m, "bagou_slow_consumer_closes_total") == 1
        assert stalled.wait_close(timeout=10) in (4001, None)
    finally:
        stalled.close()
        reader_ws.close()


def test_post_flood_without_backpressure_cuts_the_reader(server):
    """The same flood with [limits] backpressure = 0 (the old behaviour):
    every POST is accepted and the reading subscriber is cut with 4001.
    This is what the test above guards against."""
    srv = server(workers=1, config={"limits": {"backpressure": 0}})
    reader_ws = raw_subscribe(srv, "flood", rcvbuf=16384)
    reader = SlowReader(reader_ws, READ_PAUSE, time.monotonic() + 60)
    reader.start()
    try:
        accepted, refused = flood_posts(
            srv, lambda a, r: len(a) >= 600 or not reader.is_alive())
        print("flood: %d accepted, reader closed: %r" % (
            len(accepted), reader.close_code))
        assert refused == []
        post_sentinel(srv)
        reader.result(60)
        assert reader.close_code in (4001, "eof"), reader.close_code
        assert metric(srv, "bagou_slow_consumer_closes_total") == 1
    finally:
        reader_ws.close()


def test_amqp_flood_is_paced_not_cut(amqp_server, publisher):
    """600 broadcasts of 32 KB published to RabbitMQ at once (19 MB),
    one subscriber reading slowly. The node holds deliveries unacked
    while the subscriber is backed up ([amqp] prefetch bounds them; the
    broker keeps the rest), so the subscriber is never cut and receives
    all 600 in order; the pause is counted. The reader starts once the
    node holds deliveries (else a slow broker could let it keep up)."""
    bx = unique_exchange("bagou-link")
    srv = amqp_server(workers=1, exchange=bx,
                      config={"amqp": {"prefetch": 100}})
    pub = publisher(bx)
    ws = raw_subscribe(srv, "flood", rcvbuf=16384)
    try:
        n = 600
        t0 = time.monotonic()
        for i in range(n):
            pub.publish({"event": "flood", "channel": "flood",
                         "data": {"seq": i, "pad": PAYLOAD}})
        pub.publish({"event": "sentinel", "channel": "flood"})
        pub.flush()
        # Nobody reads yet: the node must hold deliveries, not queue them.
        wait_for(lambda: metric(srv, "bagou_amqp_held_deliveries") > 0,
                 timeout=30, what="deliveries held by the node")
        time.sleep(0.5)
        held = metric(srv, "bagou_amqp_held_deliveries")
        assert 0 < held <= 100, "prefetch 100 must bound %d" % held
        t1 = time.monotonic()
        reader = SlowReader(ws, 0.002, time.monotonic() + 90)
        reader.start()
        reader.result(90)
        print("amqp flood: published in %.1f s, read in %.1f s" % (
            t1 - t0, time.monotonic() - t1))
        assert reader.close_code is None, reader.close_code
        assert reader.sentinel
        assert reader.seqs == list(range(n)), len(reader.seqs)
        m = srv.metrics()
        assert metric_sum(m, "bagou_slow_consumer_closes_total") == 0
        assert metric_sum(m, "bagou_amqp_consume_pauses_total") >= 1
        assert metric_sum(m, "bagou_amqp_held_deliveries") == 0
        assert metric_sum(m, "bagou_amqp_reconnects_total") == 0
    finally:
        ws.close()


def test_stalled_subscriber_cannot_hold_publishers_back(server):
    """A subscriber alone on its worker stops reading: once backed up it
    makes the worker congested and POST /broadcast answers 503, but only
    until it has taken no byte for 2 s (BG_STALL_MS); then it is cut with
    4001 as a slow consumer and broadcasts are accepted again."""
    srv = server(workers=1)
    stalled = raw_subscribe(srv, "flood", rcvbuf=4096)
    try:
        accepted, refused = flood_posts(srv, lambda a, r: len(r) >= 1)
        assert len(refused) == 1, (len(accepted), refused)
        t0 = time.monotonic()
        post_sentinel(srv)
        waited = time.monotonic() - t0
        print("stalled: 503s for %.1f s after %d accepted" % (
            waited, len(accepted)))
        # 2 s without a byte taken, checked every 0.5 s; far from the
        # ping timeout (70 s) that was the only way out before.
        assert 1.0 <= waited <= 10.0, waited
        assert metric(srv, "bagou_slow_consumer_closes_total") == 1
        assert stalled.wait_close(timeout=10) in (4001, None)
        wait_for(lambda: srv.health()["connections"] == 0,
                 what="the stalled subscriber counted out")
    finally:
        stalled.close()
