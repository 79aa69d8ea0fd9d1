#!/usr/bin/env python3
"""A small Bagou application: the chat example of the original Bagou, as a
RabbitMQ consumer of the events that bagou-server forwards.

bagou-server, configured with

    [forward]
    exchange = bagou.events
    lifecycle = open,close,subscribe,unsubscribe
    [auth]
    secret =                  ; empty: "authenticate" is forwarded too

publishes every client event that has no compiled-in handler to the topic
exchange `bagou.events` (routing key = the event name) with the body

    {"event": E, "data": D, "callbackId": ID (when the client sent one),
     "cookie": "..." (authenticate only),
     "client": {"id": .., "node": .., "user": null | ID, "info": {..}?,
                "channels": [..], "store": {..}}}

and waits for the application to answer. This program answers by
publishing broadcasts (PROTOCOL.md §4) to the broadcast exchange
(`[amqp] exchange`, default `bagou`); a broadcast with "client" set reaches
that one connection, on whichever node holds it:

* "subscribe" to a room ("room-*", a lifecycle event): a join notice
  {"event":"join","channel":ROOM,"data":{"id":..,"name":..}} to the room;
* "unsubscribe" from a room, and "close": a leave notice to each room the
  client left;
* "chat" {"room":R,"text":T}: the relay
  {"event":"chat","channel":R,"data":{"name":..,"text":T,"from":id}} to the
  room, then the callback {"success":true};
* "authenticate": the Django-style login. The session key KEY is
  data.sessionId (what the original Bagou page sent), else the
  sessionid=KEY of the "cookie" field (the connection's Cookie header);
  KEY is looked up in the session table and the callback says success with
  "auth":{"user":..,"info":{"name":..},"channels":["private-<user>"]} (the
  server then treats the connection as that user), or failure with code
  auth_failed;
* "echo" D: the callback {"success":true,"echo":D}, nothing else (a
  probe of the whole path: bench/roundtrip.py measures it);
* anything else with a callbackId: failure with code unknown_event (the
  application owes every forwarded callback an answer).

Run:  python3 app.py --url amqp://guest:guest@localhost:5672/ \
          [--events-exchange bagou.events] [--broadcast-exchange bagou] \
          [--sessions sessions.json] [--queue NAME] [--log-level info]

The session file is a JSON object {"<sessionid>": {"user": "42",
"name": "Alice"}, ...}; without --sessions a two-entry demo table is used.
Logs go to stderr. SIGTERM or SIGINT stops it cleanly (exit status 0).
If RabbitMQ goes away it reconnects with backoff (0.2 s to 5 s).
"""

import argparse
import json
import logging
import random
import signal
import sys
import time
from http.cookies import CookieError, SimpleCookie

import pika
import pika.exceptions

log = logging.getLogger("bagou-app")

ROOM_PREFIX = "room-"
PRIVATE_PREFIX = "private-"
MAX_TEXT = 2000
LIFECYCLE = ("open", "close", "subscribe", "unsubscribe")

DEMO_SESSIONS = {
    "good": {"user": "42", "name": "Alice"},
    "bob-session": {"user": "7", "name": "Bob"},
}


# ---------------------------------------------------------------- helpers

def is_room(channel):
    return isinstance(channel, str) and channel.startswith(ROOM_PREFIX)


def display_name(client):
    """The name other people see: the store's "name", else the name the
    login gave (auth info), else the client id."""
    store = client.get("store") or {}
    name = store.get("name") if isinstance(store, dict) else None
    if isinstance(name, str) and name:
        return name
    info = client.get("info") or {}
    name = info.get("name") if isinstance(info, dict) else None
    if isinstance(name, str) and name:
        return name
    return client.get("id")


def session_id(cookie_header):
    """sessionid=... from a Cookie header, or None."""
    if not isinstance(cookie_header, str) or not cookie_header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        jar = None
    if jar is not None and "sessionid" in jar:
        return jar["sessionid"].value
    # SimpleCookie gives up on the whole header at the first cookie it
    # does not like; fall back to a plain split.
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == "sessionid":
            return value
    return None


def load_sessions(path):
    if path is None:
        return dict(DEMO_SESSIONS)
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    if not isinstance(table, dict):
        raise ValueError("%s: not a JSON object" % path)
    return table


# ---------------------------------------------------------------- the app

class ChatApp:
    """Turns one forwarded event into the broadcasts that answer it.

    handle() returns a list of (routing_key, broadcast) to publish, so the
    logic can be read (and tested) without a broker."""

    def __init__(self, sessions):
        self.sessions = sessions

    # ---- replies
    @staticmethod
    def callback(client_id, callback_id, data, auth=None):
        msg = {"event": "callback", "client": client_id,
               "callbackId": callback_id, "data": data}
        if auth is not None:
            msg["auth"] = auth
        return msg

    def fail(self, body, code, message):
        """A failure for the client: the callback when it sent a
        callbackId, else an error event (PROTOCOL.md §3)."""
        client_id = body["client"]["id"]
        cb = body.get("callbackId")
        if cb is not None:
            return [("", self.callback(client_id, cb, {
                "success": False,
                "error": {"code": code, "message": message}}))]
        return [("", {"event": "error", "client": client_id,
                      "data": {"code": code, "message": message,
                               "event": body.get("event")}})]

    def ok(self, body, extra=None, auth=None):
        cb = body.get("callbackId")
        if cb is None:
            if auth is None:
                return []
            # Authenticating without a callbackId still needs a message
            # to carry "auth" to the connection.
            return [("", {"event": "authenticated",
                          "client": body["client"]["id"],
                          "data": extra or {}, "auth": auth})]
        data = {"success": True}
        data.update(extra or {})
        return [("", self.callback(body["client"]["id"], cb, data, auth))]

    # ---- notices
    @staticmethod
    def notice(event, room, client):
        return (room, {"event": event, "channel": room,
                       "data": {"id": client["id"],
                                "name": display_name(client)}})

    # ---- dispatch
    def handle(self, body):
        if not isinstance(body, dict) or not isinstance(body.get("event"),
                                                        str) \
                or not isinstance(body.get("client"), dict) \
                or not isinstance(body["client"].get("id"), str):
            log.warning("ignoring a malformed forwarded event: %.200r", body)
            return []
        handler = getattr(self, "on_" + body["event"], None)
        if body.get("lifecycle") is True and body["event"] not in LIFECYCLE:
            # A server notice this app has no use for (store,
            # authenticate: PROTOCOL.md §5.1); never a request to answer.
            return []
        if body["event"] in LIFECYCLE and body.get("callbackId") is not None:
            # The server's lifecycle events never carry a callbackId: this
            # is a client event that borrowed the name ("open" and "close"
            # are not built-ins). One without a callbackId cannot be told
            # apart (see docs/handlers.md).
            handler = None
        if handler is None:
            if body.get("callbackId") is None:
                return []    # nothing owed
            return self.fail(body, "unknown_event",
                             "no handler for '%s'" % body["event"])
        return handler(body, body["client"],
                       body.get("data") if body.get("data") is not None
                       else {})

    # Lifecycle events (forwarded after they happened; no callbackId).
    def on_open(self, body, client, data):
        return []

    def on_subscribe(self, body, client, data):
        room = data.get("channel") if isinstance(data, dict) else None
        if not is_room(room):
            return []
        return [self.notice("join", room, client)]

    def on_unsubscribe(self, body, client, data):
        room = data.get("channel") if isinstance(data, dict) else None
        if not is_room(room):
            return []
        return [self.notice("leave", room, client)]

    def on_close(self, body, client, data):
        return [self.notice("leave", room, client)
                for room in client.get("channels") or [] if is_room(room)]

    # Client events.
    def on_chat(self, body, client, data):
        room = data.get("room") if isinstance(data, dict) else None
        text = data.get("text") if isinstance(data, dict) else None
        if not is_room(room):
            return self.fail(body, "invalid_channel",
                             "data.room must be a room-* channel")
        if room not in (client.get("channels") or []):
            return self.fail(body, "not_allowed",
                             "subscribe to %s before chatting there" % room)
        if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
            return self.fail(body, "bad_message",
                             "data.text must be 1-%d characters" % MAX_TEXT)
        relay = (room, {"event": "chat", "channel": room,
                        "data": {"name": display_name(client), "text": text,
                                 "from": client["id"]}})
        # The relay first: when the sender's callback arrives, the room
        # has been sent the message.
        return [relay] + self.ok(body)

    def on_echo(self, body, client, data):
        return self.ok(body, {"echo": body.get("data")})

    def on_authenticate(self, body, client, data):
        key = data.get("sessionId") if isinstance(data, dict) else None
        if not isinstance(key, str) or not key:
            key = session_id(body.get("cookie"))
        sess = self.sessions.get(key) if key is not None else None
        if not isinstance(sess, dict) or sess.get("user") in (None, ""):
            log.info("client %s: authentication failed (%s)", client["id"],
                     "no sessionid cookie" if key is None
                     else "unknown session")
            return self.fail(body, "auth_failed",
                             "no sessionid cookie" if key is None
                             else "unknown or expired session")
        user = str(sess["user"])
        info = {"name": sess.get("name") or user}
        auth = {"user": user, "info": info,
                "channels": [PRIVATE_PREFIX + user]}
        log.info("client %s: authenticated as user %s", client["id"], user)
        return self.ok(body, {"user": {"id": user, "info": info}}, auth)


# ---------------------------------------------------------------- AMQP

class Runner:
    """One pika BlockingConnection: a queue bound to the events exchange
    with "#", one consumer, replies published on the same channel."""

    def __init__(self, args, app):
        self.args = args
        self.app = app
        self.stopping = False
        self.conn = None
        self.ch = None

    def request_stop(self, signum, _frame):
        log.info("signal %d: stopping", signum)
        self.stopping = True

    def connect(self):
        params = pika.URLParameters(self.args.url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 30
        params.heartbeat = 30
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        ev, bc = self.args.events_exchange, self.args.broadcast_exchange
        self.ch.exchange_declare(ev, exchange_type="topic", durable=True)
        self.ch.exchange_declare(bc, exchange_type="topic", durable=True)
        if self.args.queue:
            # A shared durable queue: several app processes split the work.
            q = self.ch.queue_declare(self.args.queue, durable=True)
        else:
            q = self.ch.queue_declare("", exclusive=True, auto_delete=True)
        queue = q.method.queue
        self.ch.queue_bind(queue, ev, routing_key="#")
        self.ch.basic_qos(prefetch_count=self.args.prefetch)
        self.ch.basic_consume(queue, self.on_message, auto_ack=False)
        log.info("consuming %s (bound to %s with #), replying to %s",
                 queue, ev, bc)

    def on_message(self, ch, method, _props, raw):
        try:
            body = json.loads(raw)
        except ValueError:
            log.warning("dropping a forwarded event that is not JSON: "
                        "%.200r", raw)
            ch.basic_ack(method.delivery_tag)
            return
        try:
            replies = self.app.handle(body)
        except Exception:
            log.exception("handler failed on %.200r", body)
            replies = []
            if isinstance(body, dict) and isinstance(body.get("client"),
                                                     dict):
                try:
                    replies = self.app.fail(body, "internal",
                                            "the application failed")
                except Exception:
                    replies = []
        for key, msg in replies:
            ch.basic_publish(
                self.args.broadcast_exchange, key,
                json.dumps(msg, separators=(",", ":")).encode("utf-8"),
                pika.BasicProperties(content_type="application/json"))
        # Acked once answered: a crash before this redelivers the event.
        ch.basic_ack(method.delivery_tag)
        log.debug("%s from %s: %d replies", body.get("event"),
                  (body.get("client") or {}).get("id"), len(replies))

    def close(self):
        try:
            if self.conn is not None and self.conn.is_open:
                self.conn.close()
        except Exception:
            pass
        self.conn = self.ch = None

    def run(self):
        delay = 0.2
        while not self.stopping:
            try:
                self.connect()
                delay = 0.2
                while not self.stopping:
                    self.conn.process_data_events(time_limit=0.2)
            except (pika.exceptions.AMQPError, OSError) as e:
                if self.stopping:
                    break
                log.warning("RabbitMQ: %s; reconnecting in %.1f s",
                            e.__class__.__name__ + (": %s" % e if str(e)
                                                    else ""), delay)
                self.close()
                end = time.monotonic() + delay * random.uniform(0.8, 1.2)
                while not self.stopping and time.monotonic() < end:
                    time.sleep(0.05)
                delay = min(delay * 2, 5.0)
        self.close()
        log.info("stopped")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="amqp://guest:guest@localhost:5672/",
                   help="RabbitMQ URL (default %(default)s)")
    p.add_argument("--events-exchange", default="bagou.events",
                   help="the [forward] exchange (default %(default)s)")
    p.add_argument("--broadcast-exchange", default="bagou",
                   help="the [amqp] exchange (default %(default)s)")
    p.add_argument("--sessions", metavar="FILE",
                   help="JSON object {sessionid: {user, name}}; default: a "
                   "demo table with sessionid 'good' (user 42, Alice)")
    p.add_argument("--queue", default="",
                   help="a durable named queue shared by several app "
                   "processes (default: an exclusive server-named one)")
    p.add_argument("--prefetch", type=int, default=100)
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s bagou-app %(levelname)s %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL + 1)
    try:
        sessions = load_sessions(args.sessions)
    except (OSError, ValueError) as e:
        log.error("sessions: %s", e)
        return 2
    runner = Runner(args, ChatApp(sessions))
    signal.signal(signal.SIGTERM, runner.request_stop)
    signal.signal(signal.SIGINT, runner.request_stop)
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
