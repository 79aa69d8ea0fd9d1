"""The broker link failing in the middle of a publish (PROTOCOL.md §8
AMQP): a broadcast whose publish failed because the link dropped is kept
and published first on the next link, at most 3 times in all, then
dropped and counted reason=link. And the bus stalled on a slow broker:
once its fan-out queue is full, POST /broadcast answers 503 (§1). The
same proxy also reads the node's acks off the wire: deliveries are
acknowledged in batches.

The fault is made, not waited for: the node reaches RabbitMQ through
TrapProxy, a TCP relay in this process. Its listening socket has a tiny
receive buffer, so a broadcast of several MB cannot fit in the kernel's
buffers between the node and the broker: the node is still inside
amqp_basic_publish, writing, when the proxy has relayed TRAP_BYTES of
one connection. The proxy then resets that connection (SO_LINGER 0): the
node's next write fails, exactly the "publish failed as the link
dropped" case. The broker saw only part of the message and discards it,
so a delivery can only come from the re-publish.
"""

import asyncio
import json
import socket
import struct
import threading

import pytest

from rabbitmq import AmqpServer, publisher, unique_exchange  # noqa: F401
from support import (HOST, async_wait_for, metric_sum, recv_json, run,
                     stop_servers, subscribe, wait_for, ws_connect)

BIG = 8 * 1024 * 1024          # the broadcast's payload: over any buffer
TRAP_BYTES = 1024 * 1024       # relayed on one connection before a cut
# The node's socket buffer grows to tcp_wmem's 4 MB at most and the
# proxy's receive buffer is pinned at a few KB: when TRAP_BYTES have been
# relayed, at most ~5 MB of the publish have left amqp_basic_publish.
LIMITS = {"max_message_size": "10M", "max_queued_bytes": "24M"}
# Posting and parsing 8 MB of JSON takes seconds under ASan on a busy
# machine.
POST_TIMEOUT = 60


class TrapProxy:
    """A TCP relay to 127.0.0.1:target. arm(n): the next n connections
    (the current one included) that relay TRAP_BYTES from the client side
    are reset. Threads end when the sockets close; errors other than
    the expected socket ones are kept in .errors for the test."""

    def __init__(self, target):
        self.target = target
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by accepted sockets: no receive-window autotuning.
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.traps = 0
        self.cuts = 0
        self.stalls = 0
        self.acks = []          # (delivery tag, multiple) the node sent
        self.delivers = []      # (consumer tag, delivery tag) it got
        self.stalled = threading.Event()
        self.released = threading.Event()
        self.conns = []
        self.errors = []
        self.closed = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    @property
    def url(self):
        return "amqp://guest:guest@%s:%d/" % (HOST, self.port)

    def arm(self, n):
        with self.lock:
            self.traps = n

    def stall(self):
        """The next connection to relay TRAP_BYTES stops relaying from
        the client side (the node's writes block) until release()."""
        with self.lock:
            self.stalls = 1

    def release(self):
        self.released.set()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection((HOST, self.target),
                                              timeout=5)
                up.settimeout(None)
            except OSError as e:
                self.errors.append("upstream: %r" % e)
                client.close()
                continue
            with self.lock:
                self.conns.append((client, up))
            for src, dst, trap in ((client, up, True), (up, client, False)):
                threading.Thread(target=self._pump,
                                 args=(src, dst, client, up, trap),
                                 daemon=True).start()

    def _cut(self, client, up):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))
        for s in (client, up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _pump(self, src, dst, client, up, trap):
        relayed = 0
        frames = AckTap(self.acks) if trap else DeliverTap(self.delivers)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if frames is not None:
                    frames.feed(data)
                relayed += len(data)
                if trap and relayed >= TRAP_BYTES:
                    with self.lock:
                        cut = self.traps > 0
                        if cut:
                            self.traps -= 1
                            self.cuts += 1
                        stall = not cut and self.stalls > 0
                        if stall:
                            self.stalls -= 1
                    if cut:
                        self._cut(client, up)
                        return
                    if stall:
                        self.stalled.set()
                        if not self.released.wait(120):
                            self.errors.append("never released")
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.released.set()
        self.lsock.close()
        with self.lock:
            conns = list(self.conns)
        for client, up in conns:
            for s in (client, up):
                try:
                    s.close()
                except OSError:
                    pass


class AckTap:
    """Reads the AMQP frames a node sends (after the 8-byte protocol
    header) and appends (delivery tag, multiple) of each basic.ack."""

    def __init__(self, out):
        self.out = out
        self.buf = b""
        self.skip = 8

    def feed(self, data):
        self.buf += data
        if self.skip:
            n = min(self.skip, len(self.buf))
            self.buf = self.buf[n:]
            self.skip -= n
        while len(self.buf) >= 7:
            ftype, _, size = struct.unpack("!BHI", self.buf[:7])
            if len(self.buf) < 8 + size:
                return
            payload = self.buf[7:7 + size]
            self.buf = self.buf[8 + size:]
            if ftype == 1:
                self.frame(payload)

    def frame(self, payload):
        if payload[:4] == struct.pack("!HH", 60, 80):
            tag, bits = struct.unpack("!QB", payload[4:13])
            self.out.append((tag, bool(bits & 1)))


class DeliverTap(AckTap):
    """Reads the AMQP frames the broker sends a node and appends
    (consumer tag, delivery tag) of each basic.deliver: the control
    plane's deliveries share the channel's delivery tags."""

    def __init__(self, out):
        super().__init__(out)
        self.skip = 0

    def frame(self, payload):
        if payload[:4] == struct.pack("!HH", 60, 60):
            n = payload[4]
            ctag = payload[5:5 + n].decode()
            tag, = struct.unpack("!Q", payload[5 + n:13 + n])
            self.out.append((ctag, tag))


@pytest.fixture
def trapped(request, tmp_path, rabbitmq):
    """Factory: trapped(exchange) -> (server, proxy), a node whose only
    way to the session broker is a TrapProxy. Both stopped at the end."""
    servers, proxies = [], []
    request.node.bagou_servers = servers

    def start(exchange):
        proxy = TrapProxy(rabbitmq.port)
        proxies.append(proxy)
        srv = AmqpServer(str(tmp_path), proxy.url,
                         config={"amqp": {"exchange": exchange},
                                 "limits": dict(LIMITS)},
                         name="bagou%d" % len(servers))
        servers.append(srv)
        srv.start()
        srv.wait_amqp("connected", timeout=15.0)
        return srv, proxy

    yield start
    stop_servers(servers)
    for proxy in proxies:
        proxy.close()
        assert not proxy.errors, proxy.errors


def link_failures(srv):
    return metric_sum(srv.metrics(),
                      'bagou_amqp_publish_failures_total{reason="link"}')


def reconnects(srv):
    return metric_sum(srv.metrics(), "bagou_amqp_reconnects_total")


def connected_again(srv, n):
    """A condition: the node has reconnected n times and is up."""
    return lambda: reconnects(srv) >= n and \
        srv.amqp_state() == "connected"


def big_broadcast():
    return json.dumps({"channel": "news", "event": "big",
                       "data": "b" * BIG})


def test_failed_publish_is_sent_first_on_the_next_link(trapped):
    """One cut in the middle of an 8 MB publish: the node reconnects and
    publishes that broadcast again before anything else; the subscriber
    gets it whole, once, then the sentinel posted after the reconnect.
    Nothing is counted as dropped."""
    srv, proxy = trapped(unique_exchange("bagou-fault"))

    async def scenario():
        ws, _ = await ws_connect(srv, max_size=None)
        await subscribe(ws, "news")
        proxy.arm(1)
        await asyncio.to_thread(srv.broadcast, big_broadcast(),
                                timeout=POST_TIMEOUT)
        await async_wait_for(lambda: proxy.cuts == 1, timeout=30,
                             what="the cut")
        await async_wait_for(connected_again(srv, 1), timeout=30,
                             what="a new link")
        await asyncio.to_thread(srv.broadcast,
                                {"channel": "news", "event": "sentinel"})
        first = await recv_json(ws, timeout=30)
        assert first["event"] == "big", first["event"]
        assert first["data"] == "b" * BIG
        second = await recv_json(ws, timeout=10)
        assert second["event"] == "sentinel", second
        await ws.close()

    run(scenario(), timeout=90)
    assert proxy.cuts == 1
    assert link_failures(srv) == 0


def test_failed_publish_is_dropped_after_three_tries(trapped):
    """The same publish cut on three links in a row: tried 3 times, then
    dropped and counted reason=link; the fourth link is clean and carries
    the sentinel, which is the first thing the subscriber gets."""
    srv, proxy = trapped(unique_exchange("bagou-fault"))

    async def scenario():
        ws, _ = await ws_connect(srv, max_size=None)
        await subscribe(ws, "news")
        proxy.arm(3)
        await asyncio.to_thread(srv.broadcast, big_broadcast(),
                                timeout=POST_TIMEOUT)
        await async_wait_for(lambda: link_failures(srv) == 1, timeout=60,
                             what="the publish dropped after 3 tries")
        assert proxy.cuts == 3
        await async_wait_for(connected_again(srv, 3), timeout=30,
                             what="a clean link")
        await asyncio.to_thread(srv.broadcast,
                                {"channel": "news", "event": "sentinel"})
        first = await recv_json(ws, timeout=30)
        assert first["event"] == "sentinel", first["event"]
        await ws.close()

    run(scenario(), timeout=120)
    assert reconnects(srv) >= 3


def test_full_fan_out_queue_answers_503(trapped):
    """The bus thread blocked inside a publish (the proxy stops reading):
    a batch of 70,000 broadcasts fills the bus's queue (65,536 slots) and
    gets 503 unavailable "the broadcast bus is busy", with how many went
    in first. Once the broker reads again, all of them go out in order:
    the subscriber gets the blocked broadcast, then the sentinel."""
    srv, proxy = trapped(unique_exchange("bagou-fault"))
    n = 70000

    async def scenario():
        ws, _ = await ws_connect(srv, max_size=None)
        await subscribe(ws, "news")
        proxy.stall()
        await asyncio.to_thread(srv.broadcast, big_broadcast(),
                                timeout=POST_TIMEOUT)
        assert await asyncio.to_thread(proxy.stalled.wait, 30)
        batch = "[" + ",".join(['{"channel":"void","event":"f"}'] * n) + "]"
        status, _, body = await asyncio.to_thread(
            srv.post, "/broadcast", batch, timeout=POST_TIMEOUT)
        assert status == 503, (status, body[:200])
        err = json.loads(body)
        assert err["error"]["code"] == "unavailable", err
        assert "bus is busy" in err["error"]["message"], err
        published = err["published"]
        assert 60000 < published < n, err
        # The link is up, the bus only slow: /health stays ok.
        assert srv.amqp_state() == "connected"
        proxy.release()

        def sentinel():
            status, _, _ = srv.post("/broadcast", {"channel": "news",
                                                   "event": "sentinel"})
            return status == 202
        await async_wait_for(sentinel, timeout=60, interval=0.2,
                             what="the bus taking broadcasts again")
        first = await recv_json(ws, timeout=60)
        assert first["event"] == "big", first["event"]
        second = await recv_json(ws, timeout=60)
        assert second["event"] == "sentinel", second
        await ws.close()

    run(scenario(), timeout=180)
    assert proxy.cuts == 0
    assert link_failures(srv) == 0


def test_deliveries_acked_in_batches(trapped, publisher):
    """PROTOCOL.md §8 AMQP: deliveries are acknowledged in batches
    ("multiple") once every worker ring took them, not one by one: 1,000
    broadcasts published at once reach the subscriber, and the node's
    acks, read off the wire by the proxy, are fewer than 1,000, at least
    one with multiple set, and end at the last delivery tag."""
    ex = unique_exchange("bagou-fault")
    srv, proxy = trapped(ex)
    pub = publisher(ex)
    n = 1000

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "news")
        for i in range(n):
            pub.publish({"event": "e", "channel": "news", "data": i})
        pub.flush()
        for i in range(n):
            msg = await recv_json(ws, timeout=30)
            assert msg["data"] == i, msg
        await ws.close()

    run(scenario(), timeout=120)
    # Broadcasts are the deliveries not made to the control plane's
    # consumers (acked by none: they share the channel's tags).
    last = max(tag for ctag, tag in proxy.delivers
               if ctag not in ("bagou-control", "bagou-api"))
    assert sum(1 for ctag, _ in proxy.delivers
               if ctag not in ("bagou-control", "bagou-api")) == n
    # The last ack may follow the fan-out by a moment.
    wait_for(lambda: proxy.acks and proxy.acks[-1][0] == last, timeout=10,
             what="the ack of the last delivery")
    assert len(proxy.acks) < n, len(proxy.acks)
    assert any(multiple for _, multiple in proxy.acks), proxy.acks[:5]
    tags = [tag for tag, _ in proxy.acks]
    assert tags == sorted(tags), tags
