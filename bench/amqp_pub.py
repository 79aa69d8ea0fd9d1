#!/usr/bin/python3
"""bench/amqp_pub.py - the RabbitMQ publisher of Bagou's AMQP latency
benchmark (bench/run.sh row g, bench/README.md).

Publishes broadcasts to the topic exchange (default "bagou") with the
channel name as routing key, at a fixed rate (open loop: message i is due
at start + i / rate; a late publisher catches up at once), for a fixed
duration. Each body is

  {"event":"tick","channel":C,"data":{"t":T,"seq":S,"p":0,"ps":S,"pad":"x.."}}

T is time.monotonic_ns() (CLOCK_MONOTONIC, the clock of bagou-bench) taken
just before basic_publish; S counts from 0. These are the fields that
bagou-bench's subscribers parse: run bagou-bench with --publish external,
and it reports latency (receive time - T), losses and order violations.

  amqp_pub.py --url amqp://guest:guest@127.0.0.1:5672/ [--rate 200]
              [--duration 10] [--size 100] [--channel bench]
              [--wait-file PATH [--wait-timeout 60]] [--done-file PATH]

--wait-file: connect first, then wait until PATH exists (bagou-bench's
--ready-file) before publishing. --done-file: written at the end,
atomically, as "COUNT START_NS END_NS" (bagou-bench --done-file), also
after an error, so the bench never waits for more than was published.
Publisher confirms are off (fire and forget, as a busy application
publishes); messages are transient. Prints one JSON line on stdout.
Exit status: 0 ok, 1 usage, 2 broker error, 3 --wait-file timeout.
"""

import argparse
import json
import os
import sys
import time

EXIT_USAGE, EXIT_BROKER, EXIT_WAIT = 1, 2, 3


def make_body(channel, event, size, t, seq):
    """One broadcast of about size bytes (like bagou-bench's POST body)."""
    head = ('{"event":"%s","channel":"%s","data":{"t":%d,"seq":%d,"p":0,'
            '"ps":%d,"pad":"' % (event, channel, t, seq, seq))
    pad = size - len(head) - 3
    return (head + "x" * (pad if pad > 0 else 0) + '"}}').encode()


def connect(url, timeout=10.0):
    import pika
    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.blocked_connection_timeout = timeout
    params.connection_attempts = 1
    params.stack_timeout = timeout
    return pika.BlockingConnection(params)


def write_done(path, count, start_ns, end_ns):
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d %d\n" % (count, start_ns, end_ns))
    os.rename(tmp, path)


def wait_for_file(conn, path, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        conn.process_data_events(time_limit=0.01)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--exchange", default="bagou")
    ap.add_argument("--channel", default="bench")
    ap.add_argument("--event", default="tick")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--wait-file")
    ap.add_argument("--wait-timeout", type=float, default=60.0)
    ap.add_argument("--done-file")
    a = ap.parse_args()
    if a.rate <= 0 or a.duration <= 0 or not 0 <= a.size <= 1 << 20:
        ap.error("--rate and --duration must be positive, --size 0..1MiB")
    total = int(round(a.rate * a.duration))
    result = {"mode": "amqp-pub", "rate_target": a.rate,
              "duration_target_s": a.duration, "size": a.size,
              "published": 0}
    code = 0
    n = 0
    start = end = 0
    late_max = 0
    try:
        conn = connect(a.url)
        ch = conn.channel()
        # As bagou-server declares it: harmless when it exists.
        ch.exchange_declare(a.exchange, exchange_type="topic", durable=True)
        import pika
        props = pika.BasicProperties(content_type="application/json")
        if a.wait_file and not wait_for_file(conn, a.wait_file,
                                             a.wait_timeout):
            result["error"] = "no %s within %g s" % (a.wait_file,
                                                    a.wait_timeout)
            code = EXIT_WAIT
        else:
            period = 1e9 / a.rate
            start = time.monotonic_ns()
            next_service = start + 10 ** 9
            while n < total:
                due = start + int(n * period)
                now = time.monotonic_ns()
                if now < due:
                    if now >= next_service:
                        # heartbeats, and a channel closed by the broker
                        conn.process_data_events(time_limit=0)
                        next_service = now + 10 ** 9
                    time.sleep((due - now) / 1e9)
                    continue
                t = time.monotonic_ns()
                ch.basic_publish(a.exchange, a.channel,
                                 make_body(a.channel, a.event, a.size, t, n),
                                 props)
                if t - due > late_max:
                    late_max = t - due
                n += 1
            end = time.monotonic_ns()
            conn.process_data_events(time_limit=0)
        conn.close()
    except Exception as e:  # pika's errors, socket errors
        result["error"] = "%s: %s" % (type(e).__name__, e)
        code = EXIT_BROKER
        end = end or time.monotonic_ns()
    write_done(a.done_file, n, start, end)
    span = (end - start) / 1e9 if start and end > start else 0.0
    result.update({"published": n, "duration_s": round(span, 3),
                   "per_s": round(n / span, 1) if span else 0.0,
                   "late_max_ms": round(late_max / 1e6, 3),
                   "start_ns": start, "end_ns": end, "exit": code})
    if "error" in result:
        print("amqp_pub.py: %s" % result["error"], file=sys.stderr)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
