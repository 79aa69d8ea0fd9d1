#!/usr/bin/python3
"""bench/presence_cost.py - what presence costs on subscribe/unsubscribe.

Starts one standalone bagou-server (--workers 2, [limits] rate off, an
[auth] secret) on 127.0.0.1 and opens --clients authenticated
connections, each a different user. Every connection then pipelines
--pairs subscribe/unsubscribe pairs (each with a callbackId, as a real
client sends them), all connections at once, and waits for every
callback; the rate is pairs per second over all connections, best of
--runs. Cases:

  plain              a channel of its own per connection ("room-N")
  presence alone     a presence channel of its own per connection: the
                     join/leave round trip through the bus, the member
                     list of one, no events to others
  presence shared    one presence channel for everyone, with the other
                     clients subscribed to it the whole time: each pair
                     also builds a member list of --clients members and
                     sends a join and a leave to every other subscriber

Prints one line per case (pairs/s, and the server's CPU time per pair from
/proc), and with --json one JSON line per case. Runs in a few seconds.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests",
                                "integration"))

import jwt  # noqa: E402
import websockets  # noqa: E402

from support import Server  # noqa: E402

SECRET = "bench-presence"


def token(sub):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600,
                       "channels": ["presence-*"]}, SECRET,
                      algorithm="HS256")


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def connect(srv, user):
    ws = await websockets.connect(srv.ws_url("/websocket?token=" +
                                             token(user)),
                                  compression=None, max_size=2**24,
                                  max_queue=None)
    await ws.recv()  # connect event
    return ws


async def until_callbacks(ws, n):
    """Reads until n callbacks came (events in between are skipped)."""
    got = 0
    while got < n:
        msg = json.loads(await ws.recv())
        if msg.get("event") == "callback":
            assert msg["data"].get("success") is True, msg
            got += 1


async def one_client(ws, channel, pairs):
    for i in range(pairs):
        for ev in ("subscribe", "unsubscribe"):
            await ws.send(json.dumps({"event": ev, "callbackId": "%s%d"
                                      % (ev[0], i),
                                      "data": {"channel": channel}}))
    await until_callbacks(ws, 2 * pairs)


async def case(srv, conns, channel_of, pairs, runs):
    best = None
    for _ in range(runs):
        c0 = cpu_s(srv.proc.pid)
        t0 = time.monotonic()
        await asyncio.gather(*(one_client(ws, channel_of(i), pairs)
                               for i, ws in enumerate(conns)))
        dt = time.monotonic() - t0
        cpu = cpu_s(srv.proc.pid) - c0
        total = pairs * len(conns)
        r = (total / dt, cpu / total * 1e6)
        if best is None or r[0] > best[0]:
            best = r
    return best


async def main_async(opts, srv):
    conns = [await connect(srv, "user%d" % i) for i in range(opts.clients)]
    # The others of the shared case: subscribed the whole time.
    watchers = [await connect(srv, "watch%d" % i)
                for i in range(opts.clients)]
    for i, ws in enumerate(watchers):
        await ws.send(json.dumps({"event": "subscribe", "callbackId": "w",
                                  "data": {"channel": "presence-shared"}}))
        await until_callbacks(ws, 1)

    async def drain_watchers():
        try:
            await asyncio.gather(*(drain(ws) for ws in watchers))
        except asyncio.CancelledError:
            pass

    async def drain(ws):
        async for _ in ws:
            pass
    reader = asyncio.ensure_future(drain_watchers())
    results = []
    for name, channel_of in (
            ("plain", lambda i: "room-%d" % i),
            ("presence alone", lambda i: "presence-own-%d" % i),
            ("presence shared", lambda i: "presence-shared")):
        rate, cpu_us = await case(srv, conns, channel_of, opts.pairs,
                                  opts.runs)
        results.append({"case": name, "pairs_per_s": round(rate),
                        "server_cpu_us_per_pair": round(cpu_us, 1),
                        "clients": opts.clients, "pairs": opts.pairs})
        print("%-16s %8.0f pairs/s  %6.1f us server CPU per pair"
              % (name, rate, cpu_us), flush=True)
    reader.cancel()
    for ws in conns + watchers:
        await ws.close()
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    opts = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bagou-bench-presence-")
    srv = Server(tmp, config={"auth": {"secret": SECRET},
                              "limits": {"rate": 0}}, workers=2)
    srv.start()
    try:
        results = asyncio.run(main_async(opts, srv))
    finally:
        srv.stop()
    if opts.json:
        for r in results:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
