#!/usr/bin/python3
"""bench/peers/run.py - Bagou beside its peers, in one run (make bench-peers).

Runs bagou-server and each peer server of bench/peers/ (uWebSockets.js,
node ws, Socket.IO, Tornado+Pika) through the same scenarios with the same
load client (build/bagou-bench), in interleaved rounds: round r runs every
scenario for every peer, the peers in an order rotated by r, each run on a
fresh server; the table holds the median of the rounds.  Every server gets
one worker process or thread for its connections (bagou-server --workers
1; node and Python are single-threaded).  docs/BENCHMARKS.md says what is
measured and how to read it.

Environment (defaults in brackets):
  PEERS [bagou,uws,ws,socketio,tornado]
  SCENARIOS [fanout,latency,idle,channels,flood]
  ROUNDS [3]         QUICK=1: 1 round, small loads (a check, not numbers)
  FANOUT_CLIENTS [1000]  FANOUT_DURATION [3]  PUBLISHERS [4]
  LATENCY_CLIENTS [100]  LATENCY_RATE [200]   LATENCY_DURATION [5]
  IDLE_CLIENTS [10000]   IDLE_HOLD [2]
  CHANNELS_CLIENTS [5000] CHANNELS_N [500] CHANNELS_DURATION [3]
  CHANNELS_PUBLISHERS [16]
  FLOOD_CLIENTS [1000]   FLOOD_RATE [1000]    FLOOD_DURATION [3]
  BAGOU_BIN [build/bagou-server]  BAGOU_BENCH [build/bagou-bench]
  PEERS_MODULES [build/peers/node_modules]  NODE [node]
  RABBITMQ_BIN [/usr/lib/rabbitmq/bin]  OUT [build/bench-peers]

Writes OUT/results.json (every run), OUT/table.md (the medians) and the
logs of every server and bench run under OUT/logs/.  `run.py --table
OUT/results.json` prints the table of an earlier run again.  Exit status 0 when
every Bagou run produced a result, 1 otherwise; a peer that fails a scenario
(Tornado+Pika losing most of the flood, say) is a result, marked (!) in the
table, not a failure of the benchmark.
"""

import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PY = "/usr/bin/python3"


def env(name, default):
    return os.environ.get(name, default)


def envnum(name, default):
    return type(default)(os.environ.get(name, default))


QUICK = env("QUICK", "0") == "1"
OUT = os.path.abspath(env("OUT", os.path.join(ROOT, "build/bench-peers")))
LOGS = os.path.join(OUT, "logs")
BAGOU_BIN = os.path.abspath(env("BAGOU_BIN",
                                os.path.join(ROOT, "build/bagou-server")))
BENCH = os.path.abspath(env("BAGOU_BENCH",
                            os.path.join(ROOT, "build/bagou-bench")))
MODULES = os.path.abspath(env("PEERS_MODULES", os.path.join(
    ROOT, "build/peers/node_modules")))
NODE = env("NODE", "node")
RABBITMQ_BIN = env("RABBITMQ_BIN", "/usr/lib/rabbitmq/bin")
ROUNDS = 1 if QUICK else envnum("ROUNDS", 3)

S = {  # scenario sizes
    "fanout_clients": envnum("FANOUT_CLIENTS", 100 if QUICK else 1000),
    "fanout_duration": envnum("FANOUT_DURATION", 1.0 if QUICK else 3.0),
    "publishers": envnum("PUBLISHERS", 4),
    "latency_clients": envnum("LATENCY_CLIENTS", 100),
    "latency_rate": envnum("LATENCY_RATE", 200.0),
    "latency_duration": envnum("LATENCY_DURATION", 1.0 if QUICK else 5.0),
    "idle_clients": envnum("IDLE_CLIENTS", 1000 if QUICK else 10000),
    "idle_hold": envnum("IDLE_HOLD", 1.0 if QUICK else 2.0),
    "channels_clients": envnum("CHANNELS_CLIENTS", 500 if QUICK else 5000),
    "channels_n": envnum("CHANNELS_N", 50 if QUICK else 500),
    "channels_duration": envnum("CHANNELS_DURATION", 1.0 if QUICK else 3.0),
    "channels_publishers": envnum("CHANNELS_PUBLISHERS", 16),
    "flood_clients": envnum("FLOOD_CLIENTS", 100 if QUICK else 1000),
    "flood_rate": envnum("FLOOD_RATE", 200.0 if QUICK else 1000.0),
    "flood_duration": envnum("FLOOD_DURATION", 1.0 if QUICK else 3.0),
}

PEER_NAMES = {"bagou": "Bagou", "uws": "uWS.js", "ws": "node ws",
              "socketio": "Socket.IO", "tornado": "Tornado+Pika"}
AMQP_PEERS = ("bagou", "tornado")
TICK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print("bench-peers: " + msg, flush=True)


def free_port():
    """A free port below the ephemeral range (clients never take it)."""
    for _ in range(200):
        p = random.randint(20000, 31999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue
    raise SystemExit("bench-peers: no free port")


def http_get(port, path, timeout=2.0):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                timeout=timeout) as r:
        return r.read().decode()


def proc_cpu(pid):
    """(user, system) cpu seconds of a live process."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def proc_stat(pid):
    """(cpu seconds user+system, rss bytes) of a live process."""
    cpu = sum(proc_cpu(pid))
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return cpu, int(line.split()[1]) * 1024
    return cpu, 0


class Server:
    """One peer server on fresh ports, stopped by stop()."""

    def __init__(self, peer, tag, amqp_url=None):
        self.peer, self.tag = peer, tag
        self.port = free_port()
        self.api = self.port
        self.ws_url = "ws://127.0.0.1:%d/websocket" % self.port
        self.proto = "bagou"
        envp = dict(os.environ, NODE_PATH=MODULES)
        if peer == "bagou":
            self.api = free_port()
            while self.api == self.port:
                self.api = free_port()
            cmd = [BAGOU_BIN, "--listen", "127.0.0.1:%d" % self.port,
                   "--api-listen", "127.0.0.1:%d" % self.api,
                   "--workers", "1", "--amqp-url", amqp_url or "none",
                   "--config", CONFIG, "--log-level", "warn"]
        elif peer == "tornado":
            cmd = [PY, os.path.join(ROOT, "bench/peers/tornado_pika.py"),
                   str(self.port)]
            if amqp_url:
                cmd += ["--amqp-url", amqp_url]
        else:
            cmd = [NODE, os.path.join(ROOT, "bench/peers/%s.js" % peer),
                   str(self.port)]
            if peer == "socketio":
                self.proto = "socketio"
                self.ws_url = ("ws://127.0.0.1:%d/socket.io/?EIO=4&"
                               "transport=websocket" % self.port)
        self.logf = open(os.path.join(LOGS, "server-%s.log" % tag), "w")
        self.p = subprocess.Popen(cmd, stdout=self.logf,
                                  stderr=subprocess.STDOUT, env=envp,
                                  stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.health()
                break
            except OSError:
                pass
            if self.p.poll() is not None:
                raise RuntimeError("%s exited at start (see %s)"
                                   % (peer, self.logf.name))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("%s: no /health after 20 s" % peer)
            time.sleep(0.1)

    def health(self):
        return json.loads(http_get(self.port, "/health"))

    def wait_amqp(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.health().get("amqp") == "connected":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError("%s: not consuming from RabbitMQ after %d s"
                           % (self.peer, timeout))

    def stat(self):
        return proc_stat(self.p.pid)

    def cpu(self):
        return proc_cpu(self.p.pid)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()


def bench(tag, args, ready=None, on_ready=None, timeout=300):
    """Runs bagou-bench; calls on_ready() once `ready` exists.  Returns
    (its JSON line or None, exit status)."""
    out = open(os.path.join(LOGS, tag + ".out"), "w")
    err = open(os.path.join(LOGS, tag + ".err"), "w")
    if ready and os.path.exists(ready):
        os.unlink(ready)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen([BENCH] + args + ["--quiet"], stdout=out,
                         stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    seen = False
    at_ready = None
    while p.poll() is None:
        if ready and not seen and os.path.exists(ready):
            seen = True
            try:
                at_ready = sum(proc_cpu(p.pid))
            except OSError:
                pass
            if on_ready:
                on_ready()
        if time.monotonic() > deadline:
            p.send_signal(signal.SIGINT)
            p.wait(10)
        time.sleep(0.01)
    out.close()
    err.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = None
    with open(out.name) as f:
        for line in f:
            if line.startswith("{"):
                res = json.loads(line)
    if res is not None and at_ready is not None:
        # The client's CPU over the measured part: all it used (the
        # only child reaped meanwhile) less what it had used at ready.
        res["client_cpu_s"] = (after.ru_utime + after.ru_stime -
                               before.ru_utime - before.ru_stime -
                               at_ready)
    return res, p.returncode


def run_fanout(srv, tag, clients, duration, rate=0.0, channels=1,
               publishers=4):
    ready = os.path.join(LOGS, tag + ".ready")
    cpu = {}
    args = ["fanout", "--url", srv.ws_url, "--proto", srv.proto,
            "--http", "127.0.0.1:%d" % srv.api, "--clients", str(clients),
            "--duration", str(duration), "--rate", str(rate),
            "--publishers", str(publishers), "--channels", str(channels),
            "--drain", "3", "--ready-file", ready]
    if channels > 1 and rate == 0:
        args += ["--window", "256"]
    res, rc = bench(tag, args, ready,
                    lambda: cpu.__setitem__("t0", srv.cpu()))
    if res is None:
        return {"exit": rc}
    cpu1 = srv.cpu()
    r = {"exit": rc, "deliv_s": res["delivered_per_s"],
         "bcast_s": res["broadcasts_per_s"], "lost": res["lost"],
         "expected": res["expected"],
         "ooo": res["out_of_order"], "p50": res["p50_ms"],
         "p99": res["p99_ms"], "p999": res["p999_ms"],
         "max": res["max_ms"], "subscribed": res["subscribed"],
         "deliveries": res["deliveries"]}
    if "t0" in cpu and res["deliveries"]:
        n = res["deliveries"]
        r["cpu_s"] = sum(cpu1) - sum(cpu["t0"])
        r["cpu_us_per_delivery"] = r["cpu_s"] * 1e6 / n
        # The split: the server's kernel time, and the load client's
        # CPU (it shares the two cores: deliveries/s follow the sum).
        r["sys_us_per_delivery"] = (cpu1[1] - cpu["t0"][1]) * 1e6 / n
        r["user_us_per_delivery"] = (cpu1[0] - cpu["t0"][0]) * 1e6 / n
        if "client_cpu_s" in res:
            r["client_us_per_delivery"] = res["client_cpu_s"] * 1e6 / n
    return r


def run_idle(srv, tag, clients, hold):
    ready = os.path.join(LOGS, tag + ".ready")
    time.sleep(0.5)
    before = srv.stat()[1]
    got = {}

    def sample():
        time.sleep(1.0)
        got["rss"] = srv.stat()[1]
        try:
            got["conns"] = srv.health().get("connections")
        except (OSError, ValueError):
            pass

    res, rc = bench(tag, ["idle", "--url", srv.ws_url, "--proto", srv.proto,
                          "--clients", str(clients), "--hold",
                          str(hold + 1.5), "--ready-file", ready],
                    ready, sample)
    if res is None or "rss" not in got or not res["connected"]:
        return {"exit": rc}
    return {"exit": rc, "connected": res["connected"],
            "server_conns": got.get("conns"), "rss_before": before,
            "rss_after": got["rss"],
            "bytes_per_conn": (got["rss"] - before) / res["connected"]}


def run_flood(srv, tag, broker, clients, rate, duration):
    ready = os.path.join(LOGS, tag + ".ready")
    done = os.path.join(LOGS, tag + ".done")
    for f in (ready, done):
        if os.path.exists(f):
            os.unlink(f)
    srv.wait_amqp()
    pub = subprocess.Popen(
        [PY, os.path.join(ROOT, "bench/amqp_pub.py"), "--url", broker.url,
         "--rate", str(rate), "--duration", str(duration),
         "--wait-file", ready, "--wait-timeout", "120", "--done-file", done],
        stdout=open(os.path.join(LOGS, tag + ".pub.out"), "w"),
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    cpu = {}
    res, rc = bench(tag, ["fanout", "--url", srv.ws_url, "--clients",
                          str(clients), "--publish", "external",
                          "--ready-file", ready, "--done-file", done,
                          "--duration", str(duration + 60), "--drain", "5"],
                    ready, lambda: cpu.__setitem__("t0", srv.stat()[0]))
    try:
        pub.wait(30)
    except subprocess.TimeoutExpired:
        pub.kill()
        pub.wait()
    if res is None:
        return {"exit": rc}
    cpu1 = srv.stat()[0]
    r = {"exit": rc, "deliv_s": res["delivered_per_s"],
         "published": res["accepted"], "pub_s": res["broadcasts_per_s"],
         "lost": res["lost"], "expected": res["expected"],
         "deliveries": res["deliveries"], "p50": res["p50_ms"],
         "p99": res["p99_ms"], "subscribed": res["subscribed"]}
    if "t0" in cpu and res["deliveries"] and res["subscribed"]:
        r["cpu_s"] = cpu1 - cpu["t0"]
        # per broadcast that reached every subscriber's worth of frames
        r["cpu_us_per_bcast"] = (r["cpu_s"] * 1e6 * res["subscribed"] /
                                 res["deliveries"])
    return r


class Broker:
    """A private RabbitMQ on loopback, as bench/run.sh starts one."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bagou-bench-peers-rabbitmq.")
        d = self.dir
        port, dist, epmd = free_port(), free_port(), free_port()
        while len({port, dist, epmd}) < 3:
            dist, epmd = free_port(), free_port()
        for sub in ("mnesia", "log", "plugins-expand"):
            os.makedirs(os.path.join(d, sub))
        for name, text in (("enabled_plugins", "[].\n"),
                           ("advanced.config", "[].\n"),
                           ("rabbitmq-env.conf", "# empty\n")):
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        with open(os.path.join(d, "rabbitmq.conf"), "w") as f:
            f.write("listeners.tcp.1 = 127.0.0.1:%d\n"
                    "loopback_users.guest = true\nlog.console = false\n"
                    "log.file = rabbit.log\nlog.file.level = warning\n"
                    "disk_free_limit.absolute = 1MB\n"
                    "vm_memory_high_watermark.relative = 0.8\n" % port)
        self.node = "bagou-bench-peers-%d@localhost" % port
        loop = "-kernel inet_dist_use_interface {127,0,0,1}"
        self.env = dict(
            os.environ, HOME=d, LC_ALL="C.UTF-8", LANG="C.UTF-8",
            ERL_EPMD_ADDRESS="127.0.0.1", ERL_EPMD_PORT=str(epmd),
            RABBITMQ_CONF_ENV_FILE=d + "/rabbitmq-env.conf",
            RABBITMQ_CONFIG_FILE=d + "/rabbitmq.conf",
            RABBITMQ_ADVANCED_CONFIG_FILE=d + "/advanced.config",
            RABBITMQ_ENABLED_PLUGINS_FILE=d + "/enabled_plugins",
            RABBITMQ_MNESIA_BASE=d + "/mnesia", RABBITMQ_LOG_BASE=d + "/log",
            RABBITMQ_PLUGINS_EXPAND_DIR=d + "/plugins-expand",
            RABBITMQ_PID_FILE=d + "/rabbitmq.pid",
            RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(port), RABBITMQ_DIST_PORT=str(dist),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=loop,
            RABBITMQ_CTL_ERL_ARGS=loop)
        self.url = "amqp://guest:guest@127.0.0.1:%d/" % port
        log("starting RabbitMQ %s on 127.0.0.1:%d" % (self.node, port))
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(epmd), "-address", "127.0.0.1"],
            env=self.env, start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.p = subprocess.Popen(
            [os.path.join(RABBITMQ_BIN, "rabbitmq-server")], cwd=d,
            env=self.env, start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=open(d + "/startup.log", "w"), stderr=subprocess.STDOUT)
        import pika
        deadline = time.monotonic() + 90
        while True:
            if self.p.poll() is not None:
                self.stop()
                raise RuntimeError("rabbitmq-server exited at start")
            prm = pika.URLParameters(self.url)
            prm.connection_attempts = 1
            prm.socket_timeout = prm.stack_timeout = 2
            try:
                pika.BlockingConnection(prm).close()
                break
            except Exception:  # pika's many connection errors
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("no AMQP login within 90 s")
                time.sleep(0.3)
        log("RabbitMQ ready at " + self.url)

    def stop(self):
        if self.p.poll() is None:
            subprocess.run([os.path.join(RABBITMQ_BIN, "rabbitmqctl"), "-n",
                            self.node, "-q", "stop"], env=self.env,
                           timeout=60, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                pass
        for p in (self.p, self.epmd):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def one_run(peer, scen, rnd, broker):
    tag = "%s-%s-r%d" % (scen, peer, rnd)
    if scen == "flood" and (peer not in AMQP_PEERS or broker is None):
        return None
    srv = Server(peer, tag, broker.url if scen == "flood" else None)
    try:
        if scen == "fanout":
            return run_fanout(srv, tag, S["fanout_clients"],
                              S["fanout_duration"],
                              publishers=S["publishers"])
        if scen == "latency":
            return run_fanout(srv, tag, S["latency_clients"],
                              S["latency_duration"], S["latency_rate"],
                              publishers=S["publishers"])
        if scen == "idle":
            return run_idle(srv, tag, S["idle_clients"], S["idle_hold"])
        if scen == "channels":
            return run_fanout(srv, tag, S["channels_clients"],
                              S["channels_duration"],
                              channels=S["channels_n"],
                              publishers=S["channels_publishers"])
        return run_flood(srv, tag, broker, S["flood_clients"],
                         S["flood_rate"], S["flood_duration"])
    finally:
        srv.stop()


def med(runs, key):
    vals = [r[key] for r in runs if r and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt_rate(v):
    if v is None:
        return "failed"
    if v >= 1e6:
        return "%.2f M" % (v / 1e6)
    if v >= 1e3:
        return "%.0f k" % (v / 1e3) if v >= 1e4 else "%.1f k" % (v / 1e3)
    return "%.0f" % v


def ok(r):
    return r and r.get("exit") == 0


def cell(scen, runs):
    """The table cell of one peer and scenario (medians)."""
    if runs is None:
        return "n/a"
    # A run whose setup failed (exit 2: connections refused or timed
    # out) measured nothing; losses (exit 3) are measurements.
    good = [r for r in runs if r and len(r) > 1 and r["exit"] in (0, 3)]
    if not good:
        return "failed"
    flag = "" if all(ok(r) for r in runs) else " (!)"
    if scen in ("fanout", "channels"):
        c = fmt_rate(med(good, "deliv_s"))
        cpu = med(good, "cpu_us_per_delivery")
        if cpu is not None:
            c += " (%.1f µs)" % cpu
        return c + flag
    if scen == "latency":
        c = "%.2f / %.2f / %.2f ms" % (
            med(good, "p50"), med(good, "p99"), med(good, "p999"))
        rate = med(good, "bcast_s")
        if rate < 0.95 * S["latency_rate"]:
            c += " (kept up with %.0f/s only)" % rate
        return c + flag
    if scen == "idle":
        return "{:,.0f} B{}".format(med(good, "bytes_per_conn"), flag)
    c = fmt_rate(med(good, "deliv_s"))
    cpu = med(good, "cpu_us_per_bcast")
    if cpu is not None:
        c += " ({:,.0f} µs)".format(cpu)
    lost = med(good, "lost")
    exp = med(good, "expected")
    if lost and exp:
        c += ", %.0f %% undelivered" % (100.0 * lost / exp)
    return c + flag


ROW_NAMES = {
    "fanout": lambda: "fan-out: {:,} subscribers, one channel, {} HTTP "
    "publishers (deliveries/s; server CPU per delivery)".format(
        S["fanout_clients"], S["publishers"]),
    "latency": lambda: "latency p50 / p99 / p999: %d subscribers, %g "
    "broadcasts/s" % (S["latency_clients"], S["latency_rate"]),
    "idle": lambda: "memory per idle subscribed connection (%s)" % (
        "{:,}".format(S["idle_clients"])),
    "channels": lambda: "many channels: %s subscribers on %d channels, %d "
    "HTTP publishers (deliveries/s; server CPU per delivery)" % (
        "{:,}".format(S["channels_clients"]), S["channels_n"],
        S["channels_publishers"]),
    "flood": lambda: "RabbitMQ flood: {:,} subscribers, {:,g} broadcasts/s "
    "for {:g} s through RabbitMQ (deliveries/s; server CPU per broadcast)"
    .format(S["flood_clients"], S["flood_rate"], S["flood_duration"]),
}


def table(peers, scens, results):
    lines = ["| scenario | " + " | ".join(PEER_NAMES[p] for p in peers)
             + " |", "|---" * (len(peers) + 1) + "|"]
    for s in scens:
        cells = []
        for p in peers:
            runs = results.get(s, {}).get(p)
            cells.append(cell(s, runs))
        lines.append("| %s | %s |" % (ROW_NAMES[s](), " | ".join(cells)))
    return "\n".join(lines) + "\n"


KEYS = {"fanout": ("deliv_s", fmt_rate), "channels": ("deliv_s", fmt_rate),
        "flood": ("deliv_s", fmt_rate),
        "latency": ("p99", lambda v: "%.1f ms" % v),
        "idle": ("bytes_per_conn", lambda v: "{:,.0f} B".format(v))}


def rounds_table(peers, scens, results):
    """Every round's headline figure, in the order the rounds ran."""
    lines = ["| scenario (every round) | " + " | ".join(
        PEER_NAMES[p] for p in peers) + " |", "|---" * (len(peers) + 1)
        + "|"]
    for sc in scens:
        key, fmt = KEYS[sc]
        cells = []
        for p in peers:
            runs = results.get(sc, {}).get(p)
            if runs is None:
                cells.append("n/a")
                continue
            cells.append(", ".join(
                fmt(r[key]) if r and r.get(key) is not None else "failed"
                for r in runs))
        lines.append("| %s: %s | %s |" % (sc, key, " | ".join(cells)))
    return "\n".join(lines) + "\n"


def split_table(peers, scens, results):
    """Where the CPU of a delivery goes (medians): the server's user and
    kernel time, and the load client's. Fan-out and many channels."""
    rows = [sc for sc in scens if sc in ("fanout", "channels")]
    if not rows:
        return ""
    lines = ["| CPU per delivery: server user + kernel; load client | "
             + " | ".join(PEER_NAMES[p] for p in peers) + " |",
             "|---" * (len(peers) + 1) + "|"]
    for sc in rows:
        cells = []
        for p in peers:
            good = [r for r in results.get(sc, {}).get(p) or []
                    if r and r.get("exit") in (0, 3)
                    and r.get("sys_us_per_delivery") is not None
                    and r.get("client_us_per_delivery") is not None]
            if not good:
                cells.append("n/a")
                continue
            for r in good:         # results.json of before user_us
                r.setdefault("user_us_per_delivery",
                             r["cpu_us_per_delivery"] -
                             r["sys_us_per_delivery"])
            cells.append("%.1f + %.1f; %.1f µs" % (
                med(good, "user_us_per_delivery"),
                med(good, "sys_us_per_delivery"),
                med(good, "client_us_per_delivery")))
        lines.append("| %s | %s |" % (sc, " | ".join(cells)))
    return "\n".join(lines) + "\n"


def rerender(path):
    """--table RESULTS.json: the table of an earlier run, again."""
    with open(path) as f:
        saved = json.load(f)
    S.update(saved["meta"]["sizes"])
    args = (saved["meta"]["peers"], saved["meta"]["scenarios"],
            saved["results"])
    split = split_table(*args)
    sys.stdout.write(table(*args) + "\n" + rounds_table(*args)
                     + ("\n" + split if split else ""))
    return 0


def main():
    global CONFIG
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        return rerender(sys.argv[2])
    peers = env("PEERS", "bagou,uws,ws,socketio,tornado").split(",")
    scens = env("SCENARIOS", "fanout,latency,idle,channels,flood").split(",")
    for p in peers:
        if p not in PEER_NAMES:
            raise SystemExit("bench-peers: unknown peer %r" % p)
    for s in scens:
        if s not in ROW_NAMES:
            raise SystemExit("bench-peers: unknown scenario %r" % s)
    for path in (BAGOU_BIN, BENCH):
        if not os.access(path, os.X_OK):
            raise SystemExit("bench-peers: %s missing (make)" % path)
    if any(p in ("uws", "ws", "socketio") for p in peers) and \
            not os.path.isdir(MODULES):
        raise SystemExit("bench-peers: %s missing (make bench-peers "
                         "installs it)" % MODULES)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    os.makedirs(LOGS, exist_ok=True)
    fd, CONFIG = tempfile.mkstemp(prefix="bagou-bench-peers.", suffix=".ini")
    with os.fdopen(fd, "w") as f:
        f.write("; written by bench/peers/run.py\n[limits]\nrate = 0\n")
    broker = None
    if "flood" in scens and any(p in AMQP_PEERS for p in peers):
        if not os.access(os.path.join(RABBITMQ_BIN, "rabbitmq-server"),
                         os.X_OK):
            log("rabbitmq-server not installed: the flood row is skipped")
        else:
            broker = Broker()
    results = {}
    failed = bagou_failed = 0
    t0 = time.monotonic()
    try:
        for rnd in range(ROUNDS):
            for scen in scens:
                k = (rnd + scens.index(scen)) % len(peers)
                for peer in peers[k:] + peers[:k]:
                    try:
                        r = one_run(peer, scen, rnd, broker)
                    except RuntimeError as e:
                        log("%s %s round %d: %s" % (scen, peer, rnd + 1, e))
                        r = {"exit": -1, "error": str(e)}
                    if r is None:
                        results.setdefault(scen, {})[peer] = None
                        continue
                    if not ok(r):
                        failed += 1
                        bagou_failed += peer == "bagou"
                    results.setdefault(scen, {}).setdefault(
                        peer, []).append(r)
                    log("round %d %-8s %-8s %s" % (
                        rnd + 1, scen, peer, json.dumps(r)))
    finally:
        if broker:
            broker.stop()
        os.unlink(CONFIG)
    load = os.getloadavg()
    meta = {"rounds": ROUNDS, "quick": QUICK, "sizes": S, "peers": peers,
            "scenarios": scens, "seconds": round(time.monotonic() - t0),
            "loadavg_end": load, "date": time.strftime(
                "%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count()}
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    split = split_table(peers, scens, results)
    t = table(peers, scens, results) + "\n" + rounds_table(
        peers, scens, results) + ("\n" + split if split else "")
    with open(os.path.join(OUT, "table.md"), "w") as f:
        f.write(t)
    print()
    print(t)
    log("%d rounds in %d s; load average at the end %.1f %.1f %.1f; "
        "results in %s" % ((ROUNDS, meta["seconds"]) + load + (OUT,)))
    if failed:
        log("%d run(s) did not exit 0 (marked (!)); logs in %s"
            % (failed, LOGS))
    return 1 if bagou_failed else 0


CONFIG = None

if __name__ == "__main__":
    sys.exit(main())
