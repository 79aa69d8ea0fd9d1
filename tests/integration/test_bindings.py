"""Per-channel bindings (PROTOCOL.md §5, "Bindings"; issue 12 item 4):
a node's queue is bound with "" and with each channel its clients are
subscribed to, so RabbitMQ gives it nothing else; it still gets every
broadcast it should, also after the broker link was cut and rebuilt, and
a subscribe's answer comes only once the binding is in place. A node
does not parse its own broadcasts twice.

The link is cut by a small TCP proxy between the node and the broker
(closing both sides of every proxied connection), so the test needs no
broker restart."""

import asyncio
import socket
import threading

import pytest

from rabbitmq import (AmqpServer, amqp_server, publisher,  # noqa: F401
                      unique_exchange)
from support import (metric_sum, recv_json, run, stop_servers, subscribe,
                     wait_for, ws_connect)


class Proxy:
    """127.0.0.1:port -> the broker; cut() drops every connection."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.pairs = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.pairs.append((c, u))
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b),
                                 daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for c, u in pairs:
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self):
        self.closed = True
        self.lsock.close()
        self.cut()


def metric(srv, name):
    return metric_sum(srv.metrics(), name)


@pytest.fixture
def proxied(request, tmp_path, rabbitmq):
    """A node connected to the session broker through a Proxy."""
    started = getattr(request.node, "bagou_servers", None)
    if started is None:
        started = request.node.bagou_servers = []
    proxy = Proxy(rabbitmq.port)
    exchange = unique_exchange()
    srv = AmqpServer(str(tmp_path),
                     "amqp://guest:guest@127.0.0.1:%d/" % proxy.port,
                     config={"amqp": {"exchange": exchange}}, workers=2,
                     name="bagou%d" % len(started))
    started.append(srv)
    try:
        srv.start()
        srv.wait_amqp("connected", timeout=15.0)
        yield srv, proxy, exchange
    finally:
        # Stopped here (and checked: a clean exit, no sanitizer report):
        # no factory fixture owns this server.
        try:
            stop_servers([srv])
        finally:
            proxy.close()


def test_node_gets_only_its_channels(proxied, publisher):
    srv, proxy, exchange = proxied
    pub = publisher(exchange)

    async def round_(a, b, tag):
        """Publishes what A must get, B must get, and what nobody here
        subscribed to; checks the node consumed exactly the first."""
        before = metric(srv, "bagou_broadcasts_total")
        for i in range(20):
            pub.publish({"event": "theirs", "channel": "theirs",
                         "data": i})
        pub.publish({"event": "multi", "channel": ["nobody", "mine"],
                     "data": tag})
        pub.publish({"event": "one", "channel": "mine", "data": tag})
        pub.publish({"event": "all", "data": tag})
        got = [await recv_json(a) for _ in range(3)]
        assert [(m["event"], m["data"]) for m in got] == [
            ("multi", tag), ("one", tag), ("all", tag)], got
        assert (await recv_json(b))["event"] == "all"
        # "all" came last through the one queue: once it is counted (the
        # bus counts after handing it over), so is all that came before.
        wait_for(lambda: metric(srv, "bagou_broadcasts_total") - before
                 >= 3, timeout=5, what="the broadcasts counted")
        delta = metric(srv, "bagou_broadcasts_total") - before
        assert delta == 3, "the node consumed %d broadcasts, not 3: it " \
            "received a channel none of its clients holds" % delta

    async def scenario():
        a, _ = await ws_connect(srv)
        b, _ = await ws_connect(srv)
        await subscribe(a, "mine")
        await round_(a, b, "first")

        reconnects = metric(srv, "bagou_amqp_reconnects_total")
        proxy.cut()
        wait_for(lambda: metric(srv, "bagou_amqp_reconnects_total") >
                 reconnects and srv.amqp_state() == "connected",
                 timeout=10, what="the node reconnected")
        await round_(a, b, "again")

        # A channel new to the node, published right after the answer.
        c, _ = await ws_connect(srv)
        await subscribe(c, "later")
        pub.publish({"event": "late", "channel": "later", "data": 1})
        assert (await recv_json(c))["event"] == "late"

        # Our own POST comes back from RabbitMQ and is not parsed again.
        own = metric(srv, "bagou_amqp_own_broadcasts_total")
        srv.broadcast({"event": "posted", "channel": "mine", "data": 2})
        assert (await recv_json(a))["event"] == "posted"
        assert metric(srv, "bagou_amqp_own_broadcasts_total") == own + 1
        for ws in (a, b, c):
            await ws.close()

    run(scenario())


def test_bindings_all_gets_everything(amqp_server, publisher):
    """[amqp] bindings = all: '#', the node consumes every broadcast."""
    exchange = unique_exchange()
    srv = amqp_server(exchange=exchange,
                      config={"amqp": {"bindings": "all"}})
    pub = publisher(exchange)

    async def scenario():
        a, _ = await ws_connect(srv)
        await subscribe(a, "mine")
        before = metric(srv, "bagou_broadcasts_total")
        for i in range(5):
            pub.publish({"event": "theirs", "channel": "theirs",
                         "data": i})
        pub.publish({"event": "all"})
        assert (await recv_json(a))["event"] == "all"
        wait_for(lambda: metric(srv, "bagou_broadcasts_total") - before
                 >= 6, timeout=5, what="the broadcasts counted")
        assert metric(srv, "bagou_broadcasts_total") - before == 6
        await a.close()

    run(scenario())
