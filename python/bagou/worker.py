"""The handler runner: consumes the [forward] exchange of bagou-server
(PROTOCOL.md §5) and runs the handlers of bagou.events for each event.

    python -m bagou.worker myapp.events [more.modules ...]   # no Django
    python manage.py bagou                                   # Django

One queue bound to the exchange with "#" (exclusive and server-named, or
WORKER_QUEUE: a durable named queue several runners share). Events run
on CONCURRENCY threads; the events of one client always run on the same
thread, in the order the server forwarded them. Each event is acked once
its handlers ran (a runner that dies before redelivers it). Replies go
out through bagou.broadcast's connection. SIGTERM or SIGINT stops it:
no new event is taken, those under way finish (at most 10 s), exit 0.
It reconnects with backoff (0.2 s to 5 s) when RabbitMQ goes away."""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import queue
import random
import signal
import sys
import threading
import time
import zlib
from typing import Any, Callable, List, Optional, Sequence

import pika
import pika.exceptions

from . import conf, publish
from .dispatch import dispatch, valid

log = logging.getLogger("bagou.worker")

STOP_GRACE = 10.0
Hook = Optional[Callable[[], None]]


class Worker:
    def __init__(self, settings: Optional[conf.Settings] = None,
                 concurrency: Optional[int] = None,
                 before_event: Hook = None, after_event: Hook = None) -> None:
        self.s = settings or conf.get()
        if self.s.amqp_url is None:
            raise SystemExit("bagou worker: AMQP_BROKER_URL is needed to "
                             "consume forwarded events")
        self.n = concurrency or self.s.concurrency
        self.before_event = before_event
        self.after_event = after_event
        self.stopping = threading.Event()
        self.conn: Any = None
        self.ch: Any = None
        self.generation = 0
        self.shards: List["queue.Queue[Any]"] = [queue.Queue()
                                                 for _ in range(self.n)]
        self.pending = 0
        self.pending_lock = threading.Lock()
        self.threads = [threading.Thread(target=self._shard, args=(q,),
                                         name="bagou-handler-%d" % i,
                                         daemon=True)
                        for i, q in enumerate(self.shards)]

    # ---------------------------------------------------------- handlers
    def _shard(self, q: "queue.Queue[Any]") -> None:
        while True:
            item = q.get()
            if item is None:
                return
            gen, tag, body = item
            try:
                self._handle(body)
            finally:
                self._done(gen, tag)

    def _handle(self, body: Any) -> None:
        if self.before_event is not None:
            self.before_event()
        try:
            dispatch(body, publish.send, self.s)
        except Exception:
            # The replies could not be published (BroadcastError) or the
            # event was malformed: logged, the event is still acked.
            log.exception("event '%s' from client %s not handled",
                          body.get("event"), body["client"].get("id"))
        finally:
            if self.after_event is not None:
                self.after_event()

    def _done(self, gen: int, tag: int) -> None:
        with self.pending_lock:
            self.pending -= 1
        conn = self.conn
        if conn is None:
            return
        try:
            conn.add_callback_threadsafe(
                functools.partial(self._ack, gen, tag))
        except Exception:   # the connection is gone: redelivered anyway
            pass

    def _ack(self, gen: int, tag: int) -> None:
        if gen != self.generation or self.ch is None or not self.ch.is_open:
            return
        self.ch.basic_ack(tag)

    # ---------------------------------------------------------- AMQP
    def _on_message(self, ch: Any, method: Any, _props: Any,
                    raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not valid(body):
            log.warning("dropping a forwarded event that is not one: %.200r",
                        raw)
            ch.basic_ack(method.delivery_tag)
            return
        cid = body["client"]["id"].encode("utf-8", "replace")
        shard = self.shards[zlib.crc32(cid) % self.n]
        with self.pending_lock:
            self.pending += 1
        shard.put((self.generation, method.delivery_tag, body))

    def _connect(self) -> None:
        params = pika.URLParameters(self.s.amqp_url)
        params.connection_attempts = 1
        params.socket_timeout = self.s.connect_timeout
        params.heartbeat = 30
        params.blocked_connection_timeout = 60
        params.client_properties = {"connection_name": "bagou-worker"}
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.generation += 1
        ex = self.s.forward_exchange
        self.ch.exchange_declare(ex, exchange_type="topic", durable=True)
        if self.s.worker_queue:
            q = self.ch.queue_declare(self.s.worker_queue, durable=True)
        else:
            q = self.ch.queue_declare("", exclusive=True, auto_delete=True)
        name = q.method.queue
        self.ch.queue_bind(name, ex, routing_key="#")
        self.ch.basic_qos(prefetch_count=self.s.prefetch)
        self.consumer = self.ch.basic_consume(name, self._on_message,
                                              auto_ack=False)
        log.info("consuming %s (bound to %s with #) on %d thread(s)",
                 name, ex, self.n)

    def _close(self) -> None:
        conn, self.conn, self.ch = self.conn, None, None
        try:
            if conn is not None and conn.is_open:
                conn.close()
        except Exception:   # a broken link: nothing left to close
            pass

    def _drain(self) -> None:
        """Stops consuming, lets the events under way finish (and be
        acked), bounded by STOP_GRACE."""
        try:
            if self.ch is not None and self.ch.is_open:
                self.ch.basic_cancel(self.consumer)
            end = time.monotonic() + STOP_GRACE
            while self.pending > 0 and time.monotonic() < end:
                self.conn.process_data_events(time_limit=0.05)
            self.conn.process_data_events(time_limit=0)
        except (pika.exceptions.AMQPError, OSError):
            pass

    def request_stop(self, *_args: Any) -> None:
        self.stopping.set()

    def run(self) -> None:
        for t in self.threads:
            t.start()
        delay = 0.2
        try:
            while not self.stopping.is_set():
                try:
                    self._connect()
                    delay = 0.2
                    while not self.stopping.is_set():
                        self.conn.process_data_events(time_limit=0.2)
                    self._drain()
                except (pika.exceptions.AMQPError, OSError) as e:
                    if self.stopping.is_set():
                        break
                    log.warning("RabbitMQ: %s; reconnecting in %.1f s",
                                publish._describe(e), delay)
                    self._close()
                    self.stopping.wait(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, 5.0)
                finally:
                    self._close()
        finally:
            for q in self.shards:
                q.put(None)
            for t in self.threads:
                t.join(timeout=STOP_GRACE)
            publish.reset()
            log.info("stopped")


def install_signals(worker: Worker) -> None:
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bagou.worker",
        description="Runs the bagou.events handlers of MODULE(s) for the "
        "events bagou-server forwards through RabbitMQ. Settings come "
        "from the BAGOU_* environment variables (docs/django.md).")
    add_options(p)
    p.add_argument("modules", nargs="+", metavar="MODULE",
                   help="module(s) to import; their @on_... handlers run")
    return p.parse_args(argv)


def add_options(p: Any) -> None:
    """The options shared with `manage.py bagou`."""
    p.add_argument("--concurrency", type=int, default=None,
                   help="handler threads (default: CONCURRENCY, 4)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=getattr(logging, level.upper()),
        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL + 1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    for name in args.modules:
        importlib.import_module(name)
    worker = Worker(concurrency=args.concurrency)
    install_signals(worker)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
