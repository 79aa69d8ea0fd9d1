#!/usr/bin/python3
"""bench/peers/tornado_pika.py - the original Bagou's architecture as a
peer of `make bench-peers` (bench/peers/README.md has the protocol).

  tornado_pika.py PORT [--amqp-url URL] [--exchange bagou]

The original Bagou (shared/seed/intro.rst) was a Tornado WebSocket server
with a Pika client on RabbitMQ in the same asynchronous loop: broadcasts
published to RabbitMQ were consumed by Pika and written to the connected
websockets by Tornado.  This is that design, reduced to the protocol the
bench speaks: one Tornado process (one thread, its IOLoop), a
WebSocketHandler per connection, a dict from channel to the set of its
handlers, POST /broadcast on the same port, and, with --amqp-url, a Pika
TornadoConnection that consumes the topic exchange (an exclusive
server-named queue bound with "#", as Bagou's own nodes do) and fans
every message out the same way.  Debian's python3-tornado and
python3-pika.
"""

import argparse
import itertools
import json
import signal
import sys

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
import tornado.websocket

CHANNELS = {}           # channel -> set of SubscriberSocket
CONNECTIONS = set()
IDS = itertools.count()
AMQP = {"state": "none"}    # "connected" once the consumer consumes


def broadcast(msg):
    """Fans one broadcast object out; ValueError if it is not one."""
    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
        raise ValueError("not a broadcast")
    chans = msg.get("channel")
    if not isinstance(chans, list):
        chans = [chans]
    for ch in chans:
        members = CHANNELS.get(str(ch))
        if not members:
            continue
        out = json.dumps({"event": msg["event"], "channel": ch,
                          "data": msg.get("data", {})},
                         separators=(",", ":"))
        for ws in list(members):
            try:
                ws.write_message(out)
            except tornado.websocket.WebSocketClosedError:
                pass


class SubscriberSocket(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True

    def open(self):
        self.channels = set()
        CONNECTIONS.add(self)
        self.send({"event": "connect",
                   "data": {"id": "tornado-%d" % next(IDS), "protocol": 1}})

    def send(self, obj):
        self.write_message(json.dumps(obj, separators=(",", ":")))

    def on_message(self, message):
        try:
            msg = json.loads(message)
        except ValueError:
            self.send({"event": "error", "data": {"code": "bad_json"}})
            return
        data = msg.get("data") if isinstance(msg, dict) else None
        if (msg.get("event") == "subscribe" and isinstance(data, dict)
                and isinstance(data.get("channel"), str)):
            ch = data["channel"]
            CHANNELS.setdefault(ch, set()).add(self)
            self.channels.add(ch)
            self.send({"event": "callback",
                       "callbackId": msg.get("callbackId"),
                       "data": {"success": True}})
            return
        self.send({"event": "error", "data": {"code": "unknown_event"}})

    def on_close(self):
        CONNECTIONS.discard(self)
        for ch in getattr(self, "channels", ()):
            members = CHANNELS.get(ch)
            if members is not None:
                members.discard(self)
                if not members:
                    del CHANNELS[ch]


class BroadcastHandler(tornado.web.RequestHandler):
    def post(self):
        try:
            broadcast(json.loads(self.request.body))
        except ValueError:
            self.set_status(400)
            self.finish({"success": False})
            return
        self.set_status(202)
        self.finish({"success": True})


class HealthHandler(tornado.web.RequestHandler):
    def get(self):
        self.finish({"connections": len(CONNECTIONS),
                     "amqp": AMQP["state"]})


class Consumer:
    """Pika on the Tornado IOLoop: the original Bagou's broadcast path."""

    def __init__(self, url, exchange):
        import pika
        from pika.adapters.tornado_connection import TornadoConnection
        self.pika = pika
        self.exchange = exchange
        self.conn = TornadoConnection(
            pika.URLParameters(url), on_open_callback=self.on_open,
            on_open_error_callback=self.on_error,
            on_close_callback=self.on_closed)

    def on_error(self, conn, err):
        sys.exit("tornado_pika.py: AMQP connection failed: %s" % err)

    def on_closed(self, conn, reason):
        AMQP["state"] = "disconnected"
        print("tornado_pika.py: AMQP connection closed: %s" % reason,
              file=sys.stderr)

    def on_open(self, conn):
        conn.channel(on_open_callback=self.on_channel)

    def on_channel(self, ch):
        self.ch = ch
        ch.exchange_declare(self.exchange, "topic", durable=True,
                            callback=self.on_exchange)

    def on_exchange(self, frame):
        self.ch.queue_declare("", exclusive=True, callback=self.on_queue)

    def on_queue(self, frame):
        self.queue = frame.method.queue
        self.ch.queue_bind(self.queue, self.exchange, routing_key="#",
                           callback=self.on_bound)

    def on_bound(self, frame):
        self.ch.basic_consume(self.queue, self.on_message, auto_ack=True)
        print("tornado_pika.py: consuming %s from exchange %s"
              % (self.queue, self.exchange), file=sys.stderr)
        AMQP["state"] = "connected"

    def on_message(self, ch, method, props, body):
        try:
            broadcast(json.loads(body))
        except ValueError:
            print("tornado_pika.py: bad broadcast dropped", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--amqp-url")
    ap.add_argument("--exchange", default="bagou")
    args = ap.parse_args()
    app = tornado.web.Application([
        (r"/websocket", SubscriberSocket),
        (r"/broadcast", BroadcastHandler),
        (r"/health", HealthHandler),
    ], websocket_ping_interval=None)
    server = tornado.httpserver.HTTPServer(app, idle_connection_timeout=60)
    server.add_sockets(tornado.netutil.bind_sockets(
        args.port, "127.0.0.1", backlog=1024))
    loop = tornado.ioloop.IOLoop.current()
    signal.signal(signal.SIGTERM,
                  lambda *a: loop.add_callback_from_signal(loop.stop))
    if args.amqp_url:
        Consumer(args.amqp_url, args.exchange)
    print("tornado_pika.py: listening on 127.0.0.1:%d" % args.port,
          file=sys.stderr)
    loop.start()


if __name__ == "__main__":
    main()
