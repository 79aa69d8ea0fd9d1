"""The long forms of the attacks (make stress; docs/STRESS.md). Each
starts its own bagou-server (BAGOU_BIN, --workers 2, 127.0.0.1, a free
port), runs one attack under the canary, prints a JSON report and exits 1
if an assertion failed.

    stress.py reset [--conns 15000] [--rounds 3]
    stress.py slow  [--conns 2000] [--interval 3] [--bound 60]
    stress.py soak  [--seconds 600] [--csv build/stress/soak.csv]
"""

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

from attacks import (connect_client, proc_stats, raise_fd_limit,  # noqa
                     reset_all, reset_storm, settle, slow_posts, slowloris)
from canary import Canary  # noqa: E402
from rawws import OP_TEXT, RawWS  # noqa: E402
from support import Server  # noqa: E402

API_KEY = "stress-key"
CONFIG = {"channels": {"client_publish": "all"},
          "limits": {"rate": 0},
          "http": {"api_key": API_KEY}}
CANARY_P99_MS = 500.0


class Failed(Exception):
    pass


def check(cond, what, report):
    if not cond:
        report.setdefault("failed", []).append(what)


def start_server(tmp):
    srv = Server(tmp, config=CONFIG, workers=2)
    srv.start()
    return srv


def canary_verdict(canary, report):
    r = canary.stop()
    report["canary"] = {k: r.get(k) for k in
                        ("sent", "received", "n_missing", "duplicates",
                         "p50", "p99", "max", "errors")}
    check(not r.get("errors"), "canary errors", report)
    check(r.get("n_missing") == 0, "canary missed broadcasts", report)
    check(r.get("p99") is not None and r["p99"] < CANARY_P99_MS,
          "canary p99 >= %.0f ms" % CANARY_P99_MS, report)


def do_reset(srv, args, report):
    raise_fd_limit(args.conns + 1000)
    pid = srv.proc.pid
    with Canary(srv.port) as canary:
        res = reset_storm(srv.port, pid, args.conns, args.rounds,
                          settle_timeout=120, rss_watch=3.0)
    canary_verdict(canary, report)
    report["reset"] = res
    base = res["base"]
    for i, r in enumerate(res["rounds"]):
        check(r["fds_after"] <= base["fds"] + 20,
              "round %d: fds %d, base %d" % (i, r["fds_after"],
                                             base["fds"]), report)
    # RSS 3 s after the fds are back (the workers have trimmed by then).
    first = res["rounds"][0]["rss_settled_kb"]
    last = res["rounds"][-1]["rss_settled_kb"]
    check(last <= first + 16 * 1024,
          "RSS grew %d KiB from round 1 to %d" % (last - first,
                                                   len(res["rounds"])),
          report)
    check(last <= base["rss_kb"] + 8 * 1024,
          "RSS %d KiB 3 s after round %d, base %d" % (
              last, len(res["rounds"]), base["rss_kb"]), report)


def do_slow(srv, args, report):
    raise_fd_limit(args.conns + 1000)
    pid = srv.proc.pid
    for name, fn in (("slowloris", slowloris), ("slow_post", slow_posts)):
        base = proc_stats(pid)
        kw = dict(interval=args.interval, max_wait=args.bound)
        with Canary(srv.port) as canary:
            if fn is slow_posts:
                res = fn(srv.port, args.conns, API_KEY, **kw)
            else:
                res = fn(srv.port, args.conns, **kw)
        sub = {}
        canary_verdict(canary, sub)
        after = settle(pid, base, 10, 30)
        res["close_s"] = {"first": res["close_s"][:1],
                          "median": res["close_s"][len(res["close_s"]) //
                                                   2:][:1],
                          "last": res["close_s"][-1:]}
        res.update(sub)
        res["fds_before"], res["fds_after"] = base["fds"], after["fds"]
        report[name] = res
        for what in sub.get("failed", []):
            check(False, "%s: %s" % (name, what), report)
        check(res["closed"] == res["n"], "%s: %d of %d closed within "
              "%.0f s" % (name, res["closed"], res["n"], args.bound),
              report)
        check(not res["probe_failed"], "%s: normal clients failed to "
              "connect" % name, report)


def churn_worker(port, stop, counts, errors):
    """connect, subscribe to the canary's channel, receive one tick,
    disconnect (alternately a close frame and a reset), until stop."""
    n = 0
    while not stop.is_set():
        try:
            ws = RawWS("127.0.0.1", port, timeout=10)
            ws.recv_message(timeout=10)             # connect
            ws.send_text('{"event":"subscribe","callbackId":"s",'
                         '"data":{"channel":"canary"}}')
            while True:
                op, payload = ws.recv_message(timeout=10)
                if op == OP_TEXT and b'"tick"' in payload:
                    break
            if n % 2:
                ws.send_close()
                ws.close()
            else:
                reset_all([ws.sock])
            n += 1
            counts[0] += 1
        except Exception as e:      # counted; the soak goes on
            if len(errors) < 20:
                errors.append(repr(e)[:200])
            counts[1] += 1


def do_soak(srv, args, report):
    pid = srv.proc.pid
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    stop = threading.Event()
    counts = [0, 0]                 # cycles, errors
    errors = []
    rows = []
    with Canary(srv.port) as canary:
        base = proc_stats(pid)
        threads = [threading.Thread(target=churn_worker, daemon=True,
                                    args=(srv.port, stop, counts, errors))
                   for _ in range(args.clients)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        with open(args.csv, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["seconds", "fds", "rss_kb", "cycles", "errors"])
            while time.monotonic() - t0 < args.seconds:
                time.sleep(1.0)
                st = proc_stats(pid)
                row = [round(time.monotonic() - t0, 1), st["fds"],
                       st["rss_kb"], counts[0], counts[1]]
                rows.append(row)
                out.writerow(row)
                f.flush()
        stop.set()
        for t in threads:
            t.join(timeout=15)
    canary_verdict(canary, report)
    after = settle(pid, base, 10, 30)
    rss = [r[2] for r in rows]
    fds = [r[1] for r in rows]
    warm = rss[len(rss) // 10] if rss else 0     # after the first 10%
    report["soak"] = {
        "seconds": args.seconds, "clients": args.clients,
        "cycles": counts[0], "cycles_per_s": round(counts[0] /
                                                   max(1, args.seconds), 1),
        "errors": counts[1], "first_errors": errors[:5],
        "rss_kb": {"base": base["rss_kb"], "at_10pct": warm,
                   "max": max(rss or [0]), "end": rss[-1] if rss else 0,
                   "after": after["rss_kb"]},
        "fds": {"base": base["fds"], "max": max(fds or [0]),
                "after": after["fds"]},
        "csv": os.path.abspath(args.csv)}
    check(after["fds"] <= base["fds"] + 10, "fds not back to base", report)
    check(not rss or rss[-1] <= warm + 16 * 1024,
          "RSS grew over 16 MiB after warm-up", report)
    check(counts[1] <= counts[0] // 100, "over 1% of cycles failed",
          report)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="attack", required=True)
    p = sub.add_parser("reset")
    p.add_argument("--conns", type=int, default=15000)
    p.add_argument("--rounds", type=int, default=3)
    p = sub.add_parser("slow")
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--interval", type=float, default=3.0)
    p.add_argument("--bound", type=float, default=60.0)
    p = sub.add_parser("soak")
    p.add_argument("--seconds", type=int, default=600)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--csv", default="build/stress/soak.csv")
    args = ap.parse_args(argv[1:])
    tmp = tempfile.mkdtemp(prefix="bagou-stress-")
    report = {"attack": args.attack}
    srv = start_server(tmp)
    try:
        {"reset": do_reset, "slow": do_slow, "soak": do_soak}[args.attack](
            srv, args, report)
        check(srv.alive(), "server died", report)
        connect_client(srv.port)
    finally:
        rc = srv.stop()
        report["server_exit"] = rc
        if report.get("failed"):
            report["server_log_tail"] = srv.log()[-2000:]
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 1 if report.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
