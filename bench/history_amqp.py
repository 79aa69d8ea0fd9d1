#!/usr/bin/python3
"""bench/history_amqp.py - history on vs off through RabbitMQ (issue 10).

Starts a private RabbitMQ (tests/integration/rabbitmq.py), then for each
round a bagou-server (--workers 2, a fresh exchange) with history off
(node queue bound with '#') and one with "[history] channels = ^bench"
(broadcasts consumed from a fresh stream); bagou-bench fanout --publish
external with --clients subscribers, and bench/amqp_pub.py publishing to
the exchange at --rate for --duration s. Prints, side by side:
deliveries/s, latency p50/p99 (publish -> client), losses, and the
server's CPU (user + system, from the publisher's start to the bench's
end) per delivery.

  bench/history_amqp.py [--clients 1000] [--rate 500] [--duration 10]
                        [--rounds 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from rabbitmq import RabbitMQ  # noqa: E402
from support import free_port  # noqa: E402

BIN = os.environ.get("BAGOU_BIN", os.path.join(ROOT, "build",
                                               "bagou-server"))
BENCH = os.environ.get("BAGOU_BENCH", os.path.join(ROOT, "build",
                                                   "bagou-bench"))


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health(api):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % api,
                                    timeout=1) as r:
            return json.loads(r.read())
    except Exception:
        return {}


def one(broker, mode, n, args, tmp):
    ex = "hb-%s-%d-%d" % (mode, os.getpid(), n)
    ini = os.path.join(tmp, "%s%d.ini" % (mode, n))
    with open(ini, "w") as f:
        f.write("[amqp]\nexchange = %s\n" % ex)
        if mode == "on":
            f.write("[history]\nchannels = ^bench\nstream = %s.history\n"
                    % ex)
    port, api = free_port(), free_port()
    log = open(os.path.join(tmp, "%s%d.log" % (mode, n)), "w")
    srv = subprocess.Popen([BIN, "--listen", "127.0.0.1:%d" % port,
                            "--api-listen", "127.0.0.1:%d" % api,
                            "--workers", "2", "--amqp-url", broker.url,
                            "--config", ini, "--log-level", "warn"],
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while health(api).get("amqp") != "connected":
            if time.monotonic() > deadline or srv.poll() is not None:
                raise SystemExit("%s: server not connected" % mode)
            time.sleep(0.1)
        ready = os.path.join(tmp, "%s%d.ready" % (mode, n))
        done = os.path.join(tmp, "%s%d.done" % (mode, n))
        bench = subprocess.Popen(
            [BENCH, "fanout", "--url", "ws://127.0.0.1:%d/websocket" % port,
             "--clients", str(args.clients), "--channel", "bench",
             "--publish", "external", "--ready-file", ready,
             "--done-file", done, "--duration", str(args.duration + 90),
             "--drain", "5"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            if time.monotonic() > deadline or bench.poll() is not None:
                raise SystemExit("%s: subscribers not ready" % mode)
            time.sleep(0.1)
        c0 = cpu_s(srv.pid)
        pub = subprocess.run(
            [sys.executable, os.path.join(ROOT, "bench", "amqp_pub.py"),
             "--url", broker.url, "--exchange", ex, "--channel", "bench",
             "--rate", str(args.rate), "--duration", str(args.duration),
             "--done-file", done], capture_output=True, text=True)
        if not os.path.exists(done):
            with open(done, "w") as f:
                f.write("0 0 0")
        out, _ = bench.communicate(timeout=args.duration + 200)
        c1 = cpu_s(srv.pid)
        res = json.loads([ln for ln in out.splitlines()
                          if ln.startswith("{")][-1])
        delivered = float(res.get("delivered_per_s", 0)) * args.duration
        res["cpu_us_per_delivery"] = (
            (c1 - c0) * 1e6 / delivered if delivered else None)
        res["publisher"] = pub.stdout.strip().splitlines()[-1:] or None
        return res
    finally:
        srv.terminate()
        try:
            srv.wait(15)
        except subprocess.TimeoutExpired:
            srv.kill()
        log.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    broker = RabbitMQ(base_dir=os.path.join(ROOT, "build", "rabbitmq"))
    broker.start()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bagou-hb-") as tmp:
            for n in range(args.rounds):
                for mode in ("off", "on"):
                    r = one(broker, mode, n, args, tmp)
                    row = "%-6s %-4s %12s %8s %8s %6s %6s %10s" % (
                        "r%d" % (n + 1), mode, r.get("delivered_per_s"),
                        r.get("p50_ms"), r.get("p99_ms"), r.get("lost"),
                        r.get("out_of_order"),
                        "%.3f" % r["cpu_us_per_delivery"]
                        if r["cpu_us_per_delivery"] else "-")
                    print(row, flush=True)
                    rows.append(row)
    finally:
        broker.stop()
    print("history through RabbitMQ: %d subscribers, %.0f broadcasts/s "
          "for %.0f s, 2 workers" % (args.clients, args.rate,
                                      args.duration))
    print("%-6s %-4s %12s %8s %8s %6s %6s %10s" % (
        "round", "hist", "delivered/s", "p50_ms", "p99_ms", "lost", "ooo",
        "cpu_us/dlv"))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
