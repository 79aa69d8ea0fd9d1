#!/usr/bin/python3
"""bench/amqp_ingest.py - Bagou's AMQP ingest benchmark (bench/run.sh row f,
bench/README.md): how many broadcasts per second bagou-server's AMQP
thread consumes, validates and hands to its workers.

  amqp_ingest.py --url amqp://guest:guest@127.0.0.1:5672/ --queue Q
                 --count N --gate-file G --release-file R
                 [--size 100] [--channel bench] [--done-file D]
                 [--timeout 120] [--poll 0.05]

1. Fill: declares the durable queue Q as bagou-server's legacy mode does
   (durable, not exclusive, not auto-delete), purges it, and publishes N
   valid broadcasts to it through the default exchange (no publisher
   confirms, transient), each
   {"event":"tick","channel":C,"data":{"t":T,"seq":S,"p":0,"ps":S,"pad":..}}
   (the fields bagou-bench's subscribers check; T is the fill time, so
   their latency means nothing here). Waits until Q holds N messages.
2. Gate: takes an exclusive consumer on Q (prefetch 1, never acked), so a
   bagou-server started with "[amqp] queue = Q" cannot consume it yet
   (its basic.consume is refused with ACCESS_REFUSED and it retries with
   its backoff, 100 ms doubling). Writes G.
3. Waits until R exists (run.sh writes the server's API port into it once
   the server is up and, if any, the subscribers are subscribed), then
   releases the gate: the one message it held goes back to the queue, and
   the server's next attempt consumes the whole backlog.
4. Polls GET /metrics every --poll seconds (in a thread) until
   bagou_broadcasts_total reaches N (or --timeout), and meanwhile the
   queue's ready messages (passive queue.declare, broker side).
   broadcasts_per_s is the slope of bagou_broadcasts_total over the
   samples strictly between 0 and N (so neither the server's reconnect
   delay after the release nor the unknown moments when the count left 0
   and reached N count); queue_per_s is the same for the queue's ready
   messages, which fall as the server acks what it handed to its workers
   (the prefetch, 1000, is in flight). A sample's time is when its answer
   arrived; a worker busy fanning out answers late (poll_max_ms), so with
   many subscribers queue_per_s is the reliable one. null: fewer than two
   samples inside, too fast for --poll (use a larger N). Writes D
   ("N 0 0", for bagou-bench --done-file) when done, also on failure.

Prints one JSON line on stdout; progress on stderr. Exit status: 0 ok,
1 usage, 2 broker or server error, 3 N not reached within --timeout.
"""

import argparse
import json
import os
import re
import sys
import threading
import time
import urllib.request

from amqp_pub import connect, make_body, write_done

EXIT_BROKER, EXIT_TIMEOUT = 2, 3
METRIC = re.compile(rb"^(bagou_[a-z_]+) ([0-9]+)$", re.M)


def log(msg):
    print("amqp_ingest.py: %s" % msg, file=sys.stderr, flush=True)


def metrics(port):
    """(monotonic ns once answered, ns the request took, {name: value})
    of GET /metrics. A busy worker answers late, and reads the counters
    just before it answers: the time after the answer is the closer one."""
    t0 = time.monotonic_ns()
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                timeout=5) as r:
        body = r.read()
    t = time.monotonic_ns()
    return t, t - t0, {k.decode(): int(v) for k, v in METRIC.findall(body)}


def fill(ch, queue, count, channel, size):
    ch.queue_declare(queue, durable=True)
    ch.queue_purge(queue)
    t0 = time.monotonic()
    for i in range(count):
        ch.basic_publish("", queue, make_body(channel, "tick", size,
                                              time.monotonic_ns(), i))
    deadline = time.monotonic() + 60
    while True:
        n = ch.queue_declare(queue, durable=True,
                             passive=True).method.message_count
        if n >= count:
            break
        if time.monotonic() >= deadline:
            raise RuntimeError("queue %s holds %d of %d messages after 60 s"
                               % (queue, n, count))
        ch.connection.sleep(0.05)
    return time.monotonic() - t0


def wait_release(conn, path, timeout):
    """The server's API port (GET /metrics) from path, once it exists;
    None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().strip()
            if text:
                return int(text)
        if time.monotonic() >= deadline:
            return None
        conn.process_data_events(time_limit=0.02)


class MetricsPoller(threading.Thread):
    """GET /metrics every poll seconds until bagou_broadcasts_total
    reaches count, stop is set, or 20 requests in a row failed. In its own
    thread, because a worker busy fanning out can take seconds to answer
    and the broker side must still be sampled meanwhile."""

    def __init__(self, port, count, poll):
        super().__init__(daemon=True)
        self.port, self.count, self.poll = port, count, poll
        self.samples = []       # (t ns, broadcasts, sent, rejected)
        self.slowest_ns = 0     # the slowest request, failed ones too
        self.error = None
        self.stop = threading.Event()

    def run(self):
        errors = 0
        while not self.stop.is_set():
            t0 = time.monotonic_ns()
            try:
                t, _took, m = metrics(self.port)
                self.samples.append((t, m.get("bagou_broadcasts_total", 0),
                                     m.get("bagou_messages_sent_total", 0),
                                     m.get("bagou_broadcasts_rejected_total",
                                           0)))
                errors = 0
            except OSError as e:
                errors += 1
                if errors >= 20:
                    self.error = "GET /metrics failed 20 times: %s" % e
                    return
            self.slowest_ns = max(self.slowest_ns, time.monotonic_ns() - t0)
            if self.samples and self.samples[-1][1] >= self.count:
                return
            self.stop.wait(self.poll)


def rate(samples, lo, hi):
    """Per second over the samples (t ns, value) whose value is strictly
    between lo and hi: the value moves one way, and outside that range it
    sits at its floor or ceiling, where the moment it got there is
    unknown. None with fewer than two such samples."""
    inner = [(t, v) for t, v in samples if lo < v < hi]
    if len(inner) < 2 or inner[-1][0] == inner[0][0]:
        return None
    return abs(inner[-1][1] - inner[0][1]) / ((inner[-1][0] - inner[0][0])
                                              / 1e9)


def measure(ch, queue, port, count, timeout, poll):
    """Samples GET /metrics (thread) and the queue's ready messages (here)
    until bagou_broadcasts_total >= count, or timeout.
    Returns (metrics samples, queue samples (t ns, ready), poller)."""
    poller = MetricsPoller(port, count, poll)
    poller.start()
    qs = []
    deadline = time.monotonic() + timeout
    while poller.is_alive() and time.monotonic() < deadline:
        ready = ch.queue_declare(queue, durable=True,
                                 passive=True).method.message_count
        qs.append((time.monotonic_ns(), ready))
        poller.join(poll)
    poller.stop.set()
    poller.join(15)
    return poller.samples, qs, poller


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--channel", default="bench")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--gate-file", required=True)
    ap.add_argument("--release-file", required=True)
    ap.add_argument("--done-file")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--poll", type=float, default=0.05)
    a = ap.parse_args()
    if a.count < 1 or a.timeout <= 0 or a.poll <= 0:
        ap.error("--count, --timeout and --poll must be positive")
    res = {"mode": "amqp-ingest", "count": a.count, "size": a.size}
    code = 0
    samples, qs, poller, t_release = [], [], None, 0
    try:
        conn = connect(a.url)
        ch = conn.channel()
        fill_s = fill(ch, a.queue, a.count, a.channel, a.size)
        res.update(fill_s=round(fill_s, 3),
                   fill_per_s=round(a.count / fill_s, 1))
        log("%d messages in queue %s after %.2f s" % (a.count, a.queue,
                                                       fill_s))
        gate = conn.channel()
        gate.basic_qos(prefetch_count=1)
        gate.basic_consume(a.queue, lambda *args: None, auto_ack=False,
                           exclusive=True)
        with open(a.gate_file, "w") as f:
            f.write("held\n")
        port = wait_release(conn, a.release_file, a.timeout)
        if port is None:
            raise RuntimeError("no %s within %g s" % (a.release_file,
                                                      a.timeout))
        gate.close()        # the held message goes back to the queue
        conn.process_data_events(time_limit=0)
        t_release = time.monotonic_ns()
        log("released the gate; polling http://127.0.0.1:%d/metrics"
            % port)
        samples, qs, poller = measure(ch, a.queue, port, a.count,
                                      a.timeout, a.poll)
        if poller.error:
            code = EXIT_BROKER
            res["error"] = poller.error
        elif not samples or samples[-1][1] < a.count:
            code = EXIT_TIMEOUT
            res["error"] = "bagou_broadcasts_total is %d of %d after %g s" \
                % (samples[-1][1] if samples else 0, a.count, a.timeout)
        res["left_in_queue"] = ch.queue_declare(
            a.queue, durable=True, passive=True).method.message_count
        conn.close()
    except Exception as e:  # pika, sockets, our RuntimeErrors
        code = code or EXIT_BROKER
        res["error"] = "%s: %s" % (type(e).__name__, e)
    write_done(a.done_file, a.count, 0, 0)
    if samples:
        bps = rate([(t, b) for t, b, _, _ in samples], 0, a.count)
        # the ready messages of the queue: N, then N-1 while gated
        qps = rate(qs, 0, a.count - 1)
        zero = [t for t, b, _, _ in samples if b == 0]
        full = [t for t, b, _, _ in samples if b >= a.count]
        inside = sum(1 for _, b, _, _ in samples if 0 < b < a.count)
        last = samples[-1]
        res.update(
            broadcasts_per_s=round(bps, 1) if bps else None,
            queue_per_s=round(qps, 1) if qps else None,
            samples=len(samples), samples_inside=inside,
            queue_samples=len(qs),
            poll_max_ms=round(poller.slowest_ns / 1e6, 1),
            rejected=last[3], messages_sent=last[2])
        if zero and full:
            res["ingest_max_s"] = round((full[0] - zero[-1]) / 1e9, 3)
            res["first_after_release_s"] = round(
                (zero[-1] - t_release) / 1e9, 3)
        if last[3]:
            code = code or EXIT_BROKER
            res["error"] = "%d broadcasts rejected" % last[3]
    res["exit"] = code
    if "error" in res:
        log(res["error"])
    print(json.dumps(res, separators=(",", ":")), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
