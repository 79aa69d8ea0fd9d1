#!/usr/bin/python3
"""What one broadcast costs the server: heap allocations and CPU time.

    BAGOU_BIN=build/bagou-server /usr/bin/python3 bench/broadcast_cost.py \
        [--path http|amqp|both] [--count N] [--subs S] [--workers W]

http: a standalone server (--amqp-url none); one keep-alive connection to
the API listener POSTs N single-channel broadcasts, one at a time.
amqp: a private RabbitMQ (tests/integration/rabbitmq.py) and a server
connected to it; pika publishes N broadcasts to exchange "bagou" with
routing key "bench"; then the same N through the API listener of the
same node (it publishes to RabbitMQ and consumes its own messages back).

S WebSocket subscribers (1) on channel "bench" read everything, so the
worker's delivery path is included. The server runs with
LD_PRELOAD=build/malloc_count.so (bench/tools/malloc_count.c, built by
`make bench-cost`), which counts every malloc/calloc/realloc; the count
and the server's CPU time (utime + stime from /proc) are read before and
after, once bagou_broadcasts_total says the node handled all N. The
allocations the server makes while idle over the same time (timers) are
measured first and subtracted. Prints one JSON line per path.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import rawws  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Server:
    def __init__(self, binary, preload, workers, amqp_url="none"):
        self.port, self.api = free_port(), free_port()
        self.dir = tempfile.mkdtemp(prefix="bagou-cost-")
        self.count_file = os.path.join(self.dir, "allocs")
        ini = os.path.join(self.dir, "bagou.ini")
        with open(ini, "w") as f:
            f.write("[limits]\nrate = 0\n")
        env = dict(os.environ, MALLOC_COUNT_FILE=self.count_file)
        if preload:
            env["LD_PRELOAD"] = preload
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:%d" % self.port,
             "--api-listen", "127.0.0.1:%d" % self.api,
             "--workers", str(workers), "--amqp-url", amqp_url,
             "--config", ini, "--log-level", "warn"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if json.loads(self.get("/health")).get("amqp") in (
                        "connected", "disabled"):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not come up")

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.api, timeout=10)
        try:
            c.request("GET", path)
            return c.getresponse().read().decode()
        finally:
            c.close()

    def broadcasts(self):
        for line in self.get("/metrics").splitlines():
            if line.startswith("bagou_broadcasts_total "):
                return int(float(line.split()[1]))
        return 0

    def allocs(self):
        time.sleep(0.12)
        try:
            with open(self.count_file) as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def subscribers(srv, n):
    socks = []
    for _ in range(n):
        ws = rawws.RawWS("127.0.0.1", srv.port)
        ws.recv_message()  # connect
        ws.send_text(json.dumps({"event": "subscribe", "callbackId": "1",
                                 "data": {"channel": "bench"}}))
        ws.recv_message()
        socks.append(ws)
    stop = threading.Event()

    def reader():
        for ws in socks:
            ws.sock.setblocking(False)
        while not stop.is_set():
            for ws in socks:
                try:
                    ws.sock.recv(1 << 20)
                except BlockingIOError:
                    pass
                except OSError:
                    return
            time.sleep(0.001)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return socks, stop


def body(i):
    return json.dumps({"event": "tick", "channel": "bench",
                       "data": {"t": i, "seq": i, "p": 0, "ps": i,
                                "pad": "x" * 40}},
                      separators=(",", ":")).encode()


def post_all(srv, n):
    c = http.client.HTTPConnection("127.0.0.1", srv.api, timeout=10)
    for i in range(n):
        c.request("POST", "/broadcast", body=body(i),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 202:
            raise RuntimeError("POST answered %d" % r.status)
    c.close()


def amqp_all(url, n):
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    props = pika.BasicProperties(content_type="application/json")
    for i in range(n):
        ch.basic_publish("bagou", "bench", body(i), props)
    conn.close()


def measure(srv, n, send):
    """Allocations and CPU µs per broadcast while send(n) runs."""
    start = srv.broadcasts()
    a0, c0, t0 = srv.allocs(), cpu_s(srv.proc.pid), time.monotonic()
    send(n)
    deadline = time.monotonic() + 60
    while srv.broadcasts() < start + n and time.monotonic() < deadline:
        time.sleep(0.05)
    a1, c1, t1 = srv.allocs(), cpu_s(srv.proc.pid), time.monotonic()
    # Idle allocations over as long (timers), subtracted.
    i0 = srv.allocs()
    time.sleep(min(t1 - t0, 3.0))
    idle = (srv.allocs() - i0) * (t1 - t0) / min(t1 - t0, 3.0)
    return {"broadcasts": srv.broadcasts() - start,
            "allocs_per_broadcast": round((a1 - a0 - idle) / n, 2),
            "cpu_us_per_broadcast": round((c1 - c0) * 1e6 / n, 1),
            "seconds": round(t1 - t0, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="both")
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--subs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bin", default=os.environ.get(
        "BAGOU_BIN", os.path.join(ROOT, "build", "bagou-server")))
    ap.add_argument("--preload", default=os.path.join(
        ROOT, "build", "malloc_count.so"))
    a = ap.parse_args()
    preload = a.preload if os.path.exists(a.preload) else None
    if a.path in ("http", "both"):
        srv = Server(a.bin, preload, a.workers)
        try:
            socks, stop = subscribers(srv, a.subs)
            post_all(srv, 200)  # warm up: arenas, rings
            r = measure(srv, a.count, lambda n: post_all(srv, n))
            stop.set()
            print(json.dumps(dict(path="http", **r)))
        finally:
            srv.stop()
    if a.path in ("amqp", "both"):
        from rabbitmq import RabbitMQ
        broker = RabbitMQ()
        broker.start()
        try:
            srv = Server(a.bin, preload, a.workers, broker.url)
            try:
                socks, stop = subscribers(srv, a.subs)
                amqp_all(broker.url, 200)
                time.sleep(0.5)
                r = measure(srv, a.count,
                            lambda n: amqp_all(broker.url, n))
                print(json.dumps(dict(path="amqp", **r)))
                r = measure(srv, a.count, lambda n: post_all(srv, n))
                print(json.dumps(dict(path="amqp-own-post", **r)))
                stop.set()
            finally:
                srv.stop()
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
