"""The canary: a client that keeps receiving broadcasts while an attack
runs, and reports whether it got every one, and how late.

Two raw WebSocket connections to the server under test: a subscriber on
channel "canary" and a publisher that sends a client publish (PROTOCOL.md
§3, needs [channels] client_publish = all) every INTERVAL seconds, each
carrying its sequence number. Latency is the time from the publish being
written to the broadcast being read, on one monotonic clock.

It runs as its own process, so an attack running in the test's process
(and its Python) cannot slow the canary's measurements down:

    python3 canary.py PORT [PATH]

prints "ready" once subscribed, publishes until its stdin closes, waits
up to 3 s for the last broadcasts, and prints one JSON summary line:
{"sent", "received", "missing", "duplicates", "errors", "p50", "p99",
"max"} (latencies in milliseconds). Canary() below wraps it.
"""

import json
import os
import selectors
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

from rawws import (OP_CLOSE, OP_PING, OP_PONG, OP_TEXT,  # noqa: E402
                   RawWS, build_frame, parse_frames)

INTERVAL = 0.05
CHANNEL = "canary"
DRAIN = 3.0


class Link:
    """One non-blocking raw connection read through the selector."""

    def __init__(self, ws, on_text):
        self.ws = ws
        self.on_text = on_text
        self.closed = None

    def readable(self, errors):
        try:
            data = self.ws.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as e:
            data = b""
            errors.append("recv: %r" % e)
        if not data:
            self.closed = self.closed or "connection ended"
            return
        self.ws.buf += data
        frames, used = parse_frames(self.ws.buf)
        del self.ws.buf[:used]
        for fin, op, payload in frames:
            if op == OP_PING:
                self.send(build_frame(OP_PONG, payload))
            elif op == OP_CLOSE:
                self.closed = "closed by the server: %r" % payload[:40]
            elif op == OP_TEXT and fin:
                self.on_text(json.loads(payload))
            elif op != OP_PONG:
                errors.append("unexpected frame op=%d fin=%s" % (op, fin))

    def send(self, data):
        self.ws.sock.setblocking(True)
        try:
            self.ws.sock.sendall(data)
        finally:
            self.ws.sock.setblocking(False)


def open_client(port, path):
    ws = RawWS("127.0.0.1", port, path=path, timeout=10)
    op, payload = ws.recv_message(timeout=10)
    assert op == OP_TEXT and json.loads(payload)["event"] == "connect"
    return ws


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


def main(argv):
    port = int(argv[1])
    path = argv[2] if len(argv) > 2 else "/websocket"
    sub = open_client(port, path)
    sub.send_text(json.dumps({"event": "subscribe", "callbackId": "s",
                              "data": {"channel": CHANNEL}}))
    op, payload = sub.recv_message(timeout=10)
    assert json.loads(payload)["data"]["success"] is True, payload
    pub = open_client(port, path)

    sent = {}          # seq -> monotonic time written
    got = {}           # seq -> latency (s)
    dups = 0
    errors = []

    def on_broadcast(msg):
        nonlocal dups
        if msg.get("event") != "tick":
            errors.append("subscriber got %r" % (msg,))
            return
        seq = msg["data"]["seq"]
        if seq in got:
            dups += 1
        elif seq in sent:
            got[seq] = time.monotonic() - sent[seq]

    def on_publisher(msg):
        errors.append("publisher got %r" % (msg,))

    sel = selectors.DefaultSelector()
    links = [Link(sub, on_broadcast), Link(pub, on_publisher)]
    for link in links:
        link.ws.sock.setblocking(False)
        sel.register(link.ws.sock, selectors.EVENT_READ, link)
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    print("ready", flush=True)

    seq = 0
    next_pub = time.monotonic()
    stop_at = None
    while True:
        now = time.monotonic()
        if stop_at is None and now >= next_pub:
            frame = build_frame(OP_TEXT, json.dumps(
                {"event": "publish", "data": {
                    "channel": CHANNEL, "event": "tick",
                    "data": {"seq": seq}}}))
            sent[seq] = time.monotonic()
            try:
                links[1].send(frame)
            except OSError as e:
                errors.append("publish %d: %r" % (seq, e))
                stop_at = now
            seq += 1
            next_pub += INTERVAL
            if next_pub < now:      # we were starved: do not burst
                next_pub = now + INTERVAL
        if stop_at is not None and (len(got) == len(sent) or
                                    now - stop_at > DRAIN):
            break
        wait = max(0.0, min(next_pub - now, 0.05))
        for key, _ in sel.select(timeout=wait):
            if key.data is None:
                if not sys.stdin.readline():
                    sel.unregister(sys.stdin)
                    stop_at = time.monotonic()
                continue
            key.data.readable(errors)
        for link in links:
            if link.closed:
                errors.append(link.closed)
                sel.unregister(link.ws.sock)
                stop_at = stop_at or time.monotonic()
                link.closed = None
                link.ws.sock = socket.socket()   # inert placeholder
    lat = [v * 1000.0 for v in got.values()]
    missing = sorted(set(sent) - set(got))
    print(json.dumps({
        "sent": len(sent), "received": len(got),
        "missing": missing[:20], "n_missing": len(missing),
        "duplicates": dups, "errors": errors[:10],
        "p50": percentile(lat, 50), "p99": percentile(lat, 99),
        "max": max(lat) if lat else None}), flush=True)
    return 0


class Canary:
    """The canary process around an attack:

        with Canary(srv.port) as c:
            attack()
        c.check(p99_ms=500)
    """

    def __init__(self, port, path="/websocket", min_run=1.0):
        self.port = port
        self.min_run = min_run      # seconds of publishing at least
        self.path = path
        self.proc = None
        self.result = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(self.port),
             self.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("canary did not start: %r" % line)
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def stop(self, timeout=20):
        if self.result is not None or self.proc is None:
            return self.result
        time.sleep(max(0.0, self.started + self.min_run - time.monotonic()))
        try:
            # communicate() closes stdin: the canary's signal to stop.
            out, _ = self.proc.communicate(timeout=timeout)
            self.result = json.loads(out.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
            self.proc.kill()
            self.proc.wait()
            self.result = {"errors": ["canary failed: %r" % e],
                           "sent": 0, "received": 0, "n_missing": -1}
        return self.result

    def check(self, p99_ms=500.0, min_sent=5):
        """Asserts every broadcast arrived, once, with p99 latency under
        p99_ms; returns the summary."""
        r = self.stop()
        assert not r["errors"], "canary: %r" % (r,)
        assert r["sent"] >= min_sent, "canary published too little: %r" % r
        assert r["n_missing"] == 0, "canary missed broadcasts: %r" % (r,)
        assert r["duplicates"] == 0, "canary got duplicates: %r" % (r,)
        assert r["p99"] < p99_ms, "canary p99 %.0f ms: %r" % (r["p99"], r)
        return r


if __name__ == "__main__":
    sys.exit(main(sys.argv))
