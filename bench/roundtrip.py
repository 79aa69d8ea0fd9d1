#!/usr/bin/python3
"""bench/roundtrip.py - the forwarded-event round trip of Bagou:

    client emit -> bagou-server -> RabbitMQ ([forward] exchange)
      -> the application (examples/app/app.py) -> RabbitMQ (broadcast
      exchange, "client": the sender) -> bagou-server -> client callback

Starts everything itself, on 127.0.0.1 only: a private RabbitMQ (the test
harness's tests/integration/rabbitmq.py: free ports, its own epmd and
temporary directory), one bagou-server (--workers 2, [forward] exchange
set, [limits] rate/burst raised so the sender is not rate limited) and the
example application (a pika BlockingConnection consumer). Then it measures,
per emit, the time from sending {"event":E,"data":..,"callbackId":..}
until the matching callback arrives:

  ping                 the built-in ping with a callbackId: answered by the
                       server itself (the baseline without RabbitMQ)
  echo (forwarded)     the app's "echo": callback only
  chat (forwarded)     the app's "chat" in a room of the sender's own: the
                       relay to the room, then the callback (two
                       broadcasts per emit); measured to the callback

each sequentially on one connection (one emit in flight) and concurrently
(--clients connections, each with one emit in flight), --count emits per
case after --warmup unmeasured ones. Prints a table (p50/p90/p99/max in
milliseconds, round trips per second, and the CPU time the server, the
app, the broker and this client used meanwhile, in % of one CPU, from
/proc) on stdout, progress on
stderr, and with --json one JSON line per case.

  bench/roundtrip.py [--count 2000] [--clients 20] [--warmup 200]
                     [--workers 2] [--cases ping,echo,chat]
                     [--timeout 300] [--json]

Everything it starts is stopped at the end, also on failure, SIGINT or
SIGTERM: the app and the server with SIGTERM (then SIGKILL), the broker
with rabbitmqctl stop (then SIGKILL of its process group). Every wait is
bounded; the whole measurement by --timeout seconds. Needs
rabbitmq-server, python3-pika and python3-websockets (Debian packages),
and build/bagou-server (BAGOU_BIN to use another).

Exit status: 0 ok, 1 a case failed (errors or a timeout), 2 setup failed.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from rabbitmq import AmqpServer, RabbitMQ  # noqa: E402
from support import recv_json, send_json, ws_connect  # noqa: E402

APP = os.path.join(REPO, "examples", "app", "app.py")
BROADCASTS = "bagou-bench-rt"
EVENTS = "bagou-bench-rt.events"
RECV_TIMEOUT = 10.0


def log(msg):
    print("roundtrip.py: %s" % msg, file=sys.stderr, flush=True)


class Terminated(Exception):
    pass


def on_signal(signum, _frame):
    raise Terminated("signal %d" % signum)


# ---------------------------------------------------------------- setup

class App:
    def __init__(self, tmpdir, url):
        self.log_path = os.path.join(tmpdir, "app.log")
        self.url = url
        self.proc = None
        self._log = None

    def start(self, timeout=20.0):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, APP, "--url", self.url,
             "--events-exchange", EVENTS, "--broadcast-exchange", BROADCASTS,
             "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the app exited with %s:\n%s"
                                   % (self.proc.returncode, self.log()))
            if " consuming " in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError("the app did not start consuming within %.0f s:"
                           "\n%s" % (timeout, self.log()))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


# ---------------------------------------------------------------- measuring

def cpu_seconds(pid):
    """utime + stime of pid (its threads included), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf(
            "SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def group_cpu_seconds(pgid):
    """CPU seconds of every process in process group pgid (the broker:
    beam.smp and its helpers), or None."""
    total, found = 0.0, False
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.getpgid(int(name)) != pgid:
                continue
        except OSError:
            continue
        t = cpu_seconds(int(name))
        if t is not None:
            total += t
            found = True
    return total if found else None


def self_cpu_seconds():
    t = os.times()
    return t.user + t.system


def cpu_pct(before, after, elapsed):
    if before is None or after is None or elapsed <= 0:
        return None
    return 100.0 * (after - before) / elapsed


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1,
            max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


async def client_loop(srv, event, n, tag, room, lat, errors, ready=None,
                      go=None):
    """One connection doing n sequential emits of event; appends each
    round trip (seconds) to lat."""
    ws, _ = await ws_connect(srv)
    try:
        if room is not None:
            await send_json(ws, {"event": "subscribe",
                                 "data": {"channel": room},
                                 "callbackId": "sub"})
            msg = await recv_json(ws, RECV_TIMEOUT)
            assert msg.get("callbackId") == "sub", msg
        if ready is not None:
            ready()
            await go.wait()
        for i in range(n):
            cb = "%s-%d" % (tag, i)
            data = ({"room": room, "text": "t%d" % i} if event == "chat"
                    else {"i": i} if event == "echo" else None)
            msg = {"event": event, "callbackId": cb}
            if data is not None:
                msg["data"] = data
            t0 = time.perf_counter()
            await send_json(ws, msg)
            while True:
                reply = await recv_json(ws, RECV_TIMEOUT)
                if reply.get("event") == "callback" and \
                        reply.get("callbackId") == cb:
                    break
                # the chat relay (to the sender's own room) comes first
            lat.append(time.perf_counter() - t0)
            if not reply["data"].get("success"):
                errors.append(reply)
    finally:
        await ws.close()


async def run_case(srv, app, broker, event, clients, count, warmup):
    rooms = event == "chat"
    # warm-up: connections, the app's and the server's caches and paths
    await client_loop(srv, event, warmup, "w", "room-warm" if rooms else None,
                      [], [])
    lat, errors = [], []
    per = [count // clients + (1 if i < count % clients else 0)
           for i in range(clients)]
    go = asyncio.Event()
    n_ready = [0]

    def ready():
        n_ready[0] += 1
        if n_ready[0] == clients:
            go.set()

    tasks = [asyncio.create_task(client_loop(
        srv, event, per[i], "c%d" % i, "room-%d" % i if rooms else None,
        lat, errors, ready, go)) for i in range(clients)]
    # The clock starts when every client is connected (and subscribed).
    while not go.is_set():
        await asyncio.sleep(0.001)
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise t.exception()
    def cpu():
        return (cpu_seconds(srv.proc.pid), cpu_seconds(app.proc.pid),
                group_cpu_seconds(broker.proc.pid), self_cpu_seconds())

    cpu0 = cpu()
    t0 = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    cpu1 = cpu()
    lat.sort()
    ms = [x * 1000.0 for x in lat]
    return {
        "case": event, "forwarded": event != "ping", "clients": clients,
        "round_trips": len(lat), "errors": len(errors),
        "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99), "max_ms": ms[-1] if ms else None,
        "mean_ms": sum(ms) / len(ms) if ms else None,
        "per_s": len(lat) / elapsed if elapsed > 0 else None,
        "server_cpu_pct": cpu_pct(cpu0[0], cpu1[0], elapsed),
        "app_cpu_pct": cpu_pct(cpu0[1], cpu1[1], elapsed),
        "broker_cpu_pct": cpu_pct(cpu0[2], cpu1[2], elapsed),
        "client_cpu_pct": cpu_pct(cpu0[3], cpu1[3], elapsed),
        "first_error": errors[0] if errors else None,
    }


async def measure(srv, app, broker, args):
    results = []
    for event in args.cases:
        for clients in (1, args.clients):
            log("%s, %d client(s), %d emits" % (event, clients, args.count))
            results.append(await run_case(srv, app, broker, event,
                                          clients, args.count, args.warmup))
    return results


def print_table(results, args, info):
    print("Forwarded-event round trip: client emit -> bagou-server -> "
          "RabbitMQ -> app -> RabbitMQ -> bagou-server -> callback")
    print("127.0.0.1, %s; bagou-server --workers %d; %d emits per row "
          "(after %d warm-up), one in flight per client"
          % (info, args.workers, args.count, args.warmup))
    head = ("%-18s %7s %6s %6s %7s %7s %7s %7s %7s %5s %5s %5s %5s"
            % ("case", "clients", "trips", "errors", "p50 ms", "p90 ms",
               "p99 ms", "max ms", "trips/s", "srv%", "app%", "mq%",
               "cli%"))
    print(head)
    print("-" * len(head))
    for r in results:
        name = r["case"] + (" (forwarded)" if r["forwarded"] else "")
        print("%-18s %7d %6d %6d %7.2f %7.2f %7.2f %7.2f %7.0f %5.0f %5.0f "
              "%5.0f %5.0f"
              % (name, r["clients"], r["round_trips"], r["errors"],
                 r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"],
                 r["per_s"], r["server_cpu_pct"] or 0,
                 r["app_cpu_pct"] or 0, r["broker_cpu_pct"] or 0,
                 r["client_cpu_pct"] or 0))
    print("srv%, app%, mq%, cli%: CPU time used during the row by "
          "bagou-server, app.py, RabbitMQ and this client, in % of one CPU")


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Bagou forwarded-event round trip benchmark")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--cases", default="ping,echo,chat",
                   help="comma-separated subset of ping,echo,chat")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.count < args.clients or args.clients < 1 or args.warmup < 0:
        p.error("need --count >= --clients >= 1 and --warmup >= 0")
    args.cases = [c for c in args.cases.split(",") if c]
    if not args.cases or set(args.cases) - {"ping", "echo", "chat"}:
        p.error("--cases: a comma-separated subset of ping,echo,chat")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    tmpdir = tempfile.mkdtemp(prefix="bagou-roundtrip-")
    broker = srv = app = None
    status = 0
    try:
        try:
            log("starting RabbitMQ")
            broker = RabbitMQ().start()
            log("starting bagou-server")
            srv = AmqpServer(tmpdir, broker.url, workers=args.workers,
                             name="bagou", config={
                                 "amqp": {"exchange": BROADCASTS},
                                 "forward": {"exchange": EVENTS},
                                 "limits": {"rate": 1000000,
                                            "burst": 1000000}})
            srv.start()
            srv.wait_amqp("connected", timeout=20.0)
            log("starting the app")
            app = App(tmpdir, broker.url)
            app.start()
        except Exception as e:
            log("setup failed: %s" % e)
            if srv is not None:
                log("server log:\n%s" % srv.log())
            return 2
        try:
            results = asyncio.run(asyncio.wait_for(measure(srv, app, broker, args),
                                                   args.timeout))
        except (asyncio.TimeoutError, AssertionError, OSError) as e:
            log("measurement failed: %r" % (e,))
            log("server log:\n%s\napp log:\n%s" % (srv.log(), app.log()))
            return 1
        info = "%d CPU(s) shared by RabbitMQ, the server, the app and " \
               "this client" % os.cpu_count()
        print_table(results, args, info)
        if args.json:
            for r in results:
                print(json.dumps(r))
        if any(r["errors"] for r in results):
            log("errors: %r" % [r["first_error"] for r in results
                                if r["errors"]])
            status = 1
        if not srv.alive():
            log("bagou-server died:\n%s" % srv.log())
            status = 1
        return status
    except Terminated as e:
        log("stopped by %s" % e)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if app is not None:
            app.stop()
        if srv is not None:
            srv.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
