#!/usr/bin/python3
"""bench/workers.py - what more workers than cores cost (issue 12, item 2).

Runs the many-channel load (bagou-bench fanout: WORKERS_CLIENTS
subscribers on WORKERS_CHANNELS channels, WORKERS_PUBLISHERS HTTP
publishers on the API listener, as fast as delivered) against
bagou-server --workers A and --workers B (default 2 and 16), in
interleaved rounds, each on a fresh standalone server on 127.0.0.1, and
prints per round and as medians: deliveries/s, and the server's CPU time
(user + system, from /proc) per delivery while the publishers ran.  The
last line gives B against A: the throughput lost and the CPU per
delivery added.  Exit status 0 when every run delivered everything.

Environment (defaults in brackets):
  WORKERS_A [2]  WORKERS_B [16]  ROUNDS [5]  DURATION [4] s
  WORKERS_CLIENTS [5000]  WORKERS_CHANNELS [500]  WORKERS_PUBLISHERS [16]
  BAGOU_BIN [build/bagou-server]  BAGOU_BENCH [build/bagou-bench]
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BAGOU_BIN", os.path.join(ROOT, "build/bagou-server"))
BENCH = os.environ.get("BAGOU_BENCH", os.path.join(ROOT, "build/bagou-bench"))
A = int(os.environ.get("WORKERS_A", "2"))
B = int(os.environ.get("WORKERS_B", "16"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = float(os.environ.get("DURATION", "4"))
CLIENTS = int(os.environ.get("WORKERS_CLIENTS", "5000"))
CHANNELS = int(os.environ.get("WORKERS_CHANNELS", "500"))
PUBLISHERS = int(os.environ.get("WORKERS_PUBLISHERS", "16"))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one_run(workers, tmp):
    port, api = free_port(), free_port()
    cfg = os.path.join(tmp, "bagou.ini")
    with open(cfg, "w") as f:
        f.write("[channels]\nclient_publish = all\n[limits]\nrate = 0\n")
    log = open(os.path.join(tmp, "server-%d.log" % workers), "w")
    srv = subprocess.Popen(
        [BIN, "--listen", "127.0.0.1:%d" % port, "--workers", str(workers),
         "--api-listen", "127.0.0.1:%d" % api, "--amqp-url", "none",
         "--config", cfg, "--log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/health" % port,
                                       timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("bagou-server did not answer /health")
        ready = os.path.join(tmp, "ready")
        if os.path.exists(ready):
            os.unlink(ready)
        bench = subprocess.Popen(
            [BENCH, "fanout", "--url", "ws://127.0.0.1:%d/websocket" % port,
             "--clients", str(CLIENTS), "--channels", str(CHANNELS),
             "--duration", str(DURATION), "--publishers", str(PUBLISHERS),
             "--http", "127.0.0.1:%d" % api, "--ready-file", ready,
             "--quiet"], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not os.path.exists(ready) and bench.poll() is None:
            if time.monotonic() > deadline:
                bench.kill()
                raise SystemExit("the bench never got ready")
            time.sleep(0.02)
        c0 = cpu_s(srv.pid)
        out, _ = bench.communicate(timeout=DURATION + 120)
        c1 = cpu_s(srv.pid)
        r = json.loads([ln for ln in out.splitlines()
                        if ln.startswith("{")][-1])
        ok = r.get("exit") == 0 and r.get("lost", 1) == 0
        return {"workers": workers, "ok": ok,
                "deliv_s": r["delivered_per_s"],
                "us_per_delivery": (c1 - c0) * 1e6 / max(r["deliveries"], 1)}
    finally:
        srv.terminate()
        srv.wait(timeout=15)
        log.close()


def main():
    runs = {A: [], B: []}
    good = True
    with tempfile.TemporaryDirectory(prefix="bagou-workers-") as tmp:
        for rnd in range(ROUNDS):
            order = (A, B) if rnd % 2 == 0 else (B, A)
            for w in order:
                r = one_run(w, tmp)
                good = good and r["ok"]
                runs[w].append(r)
                print("round %d --workers %-3d %9.0f deliveries/s  "
                      "%6.2f us CPU per delivery%s" % (
                          rnd + 1, w, r["deliv_s"], r["us_per_delivery"],
                          "" if r["ok"] else "  (LOST MESSAGES)"),
                      flush=True)
    med = {w: (statistics.median(x["deliv_s"] for x in runs[w]),
               statistics.median(x["us_per_delivery"] for x in runs[w]))
           for w in runs}
    ratios = [(b["deliv_s"] / a["deliv_s"],
               b["us_per_delivery"] / a["us_per_delivery"])
              for a, b in zip(runs[A], runs[B])]
    for w in (A, B):
        print("median --workers %-3d %9.0f deliveries/s  %6.2f us CPU per "
              "delivery" % (w, med[w][0], med[w][1]))
    print("--workers %d against --workers %d, median of the rounds' "
          "ratios: deliveries/s %+.1f %%, CPU per delivery %+.1f %%" % (
              B, A, (statistics.median(r[0] for r in ratios) - 1) * 100,
              (statistics.median(r[1] for r in ratios) - 1) * 100))
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
