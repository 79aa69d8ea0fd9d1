"""bagou-bench, the load client of make bench and make bench-peers
(docs/BENCHMARKS.md): what make bench-peers added to it.

- --channels N: subscriber i on bench-(i mod N), broadcast s to
  bench-(s mod N); against a real bagou-server every subscriber gets every
  broadcast of its channel and nothing else (deliveries == expected).
- --proto socketio: the engine.io 4 / Socket.IO 4 handshake, ping/pong,
  the subscribe event with its ack, and ticks as 42["tick",DATA], against
  a scripted Socket.IO server (the real one, from npm, is not installed by
  make test); the publisher claims 2 broadcasts more than it sent, which
  the bench must report as lost (exit 3).
- p999_ms in the report.
"""

import asyncio
import json
import os
import subprocess
import time

import websockets
import websockets.exceptions

from support import HOST, REPO, free_port, run

BENCH = os.environ.get("BAGOU_BENCH",
                       os.path.join(REPO, "build", "bagou-bench"))


def bench_json(stdout):
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    assert lines, stdout
    return json.loads(lines[-1])


def test_channels_route_each_broadcast_to_its_channel(server):
    assert os.access(BENCH, os.X_OK), "no %s (make)" % BENCH
    srv = server(config={"limits": {"rate": "0"}}, workers=1)
    p = subprocess.run(
        [BENCH, "fanout", "--url", srv.ws_url(), "--http",
         "%s:%d" % (HOST, srv.api_port), "--clients", "20", "--channels",
         "4", "--publishers", "2", "--duration", "0.5", "--drain", "5",
         "--quiet"], capture_output=True, text=True, timeout=60)
    r = bench_json(p.stdout)
    assert p.returncode == 0, p.stderr
    assert r["channels"] == 4 and r["subscribed"] == 20
    assert r["accepted"] >= 4
    # 5 subscribers per channel: each broadcast reaches exactly 5.
    assert r["expected"] == 5 * r["accepted"]
    assert r["deliveries"] == r["expected"] and r["lost"] == 0
    assert r["out_of_order"] == 0
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]


def test_socketio_handshake_ack_ping_and_ticks(tmp_path):
    assert os.access(BENCH, os.X_OK), "no %s (make)" % BENCH
    clients, ticks = 3, 50
    ready, done = str(tmp_path / "ready"), str(tmp_path / "done")
    port = free_port()
    seen = []           # what each connection sent, in order
    go = asyncio.Event()

    async def handler(ws, path=None):
        got = []
        seen.append(got)
        await ws.send('0{"sid":"s%d","upgrades":[],"pingInterval":25000,'
                      '"pingTimeout":20000,"maxPayload":1000000}'
                      % len(seen))
        got.append(await ws.recv())             # "40"
        await ws.send("2")                      # engine.io ping
        got.append(await ws.recv())             # "3"
        await ws.send('40{"sid":"n%d"}' % len(seen))
        got.append(await ws.recv())             # 420["subscribe","bench"]
        await ws.send('430[{"success":true}]')
        await go.wait()
        await ws.send('42["other",{"t":1,"seq":0,"p":0,"ps":0}]')
        for i in range(ticks):
            await ws.send('42["tick",{"t":%d,"seq":%d,"p":0,"ps":%d,'
                          '"pad":"xx"}]' % (time.monotonic_ns(), i, i))
        try:
            await ws.wait_closed()
        except websockets.exceptions.ConnectionClosed:
            pass

    async def main():
        async with websockets.serve(handler, HOST, port, compression=None):
            proc = await asyncio.create_subprocess_exec(
                BENCH, "fanout", "--proto", "socketio", "--url",
                "ws://%s:%d/socket.io/?EIO=4&transport=websocket"
                % (HOST, port), "--clients", str(clients), "--publish",
                "external", "--ready-file", ready, "--done-file", done,
                "--duration", "20", "--drain", "1", "--quiet",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            for _ in range(200):
                if os.path.exists(ready) or proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
            assert os.path.exists(ready), "the bench never got ready"
            go.set()
            with open(done + ".tmp", "w") as f:
                f.write("%d\n" % (ticks + 2))     # 2 never sent
            os.rename(done + ".tmp", done)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            return proc.returncode, out.decode(), err.decode()

    rc, out, err = run(main(), timeout=60)
    r = bench_json(out)
    assert rc == 3, err         # losses
    assert r["proto"] == "socketio" and r["subscribed"] == clients
    assert r["deliveries"] == clients * ticks
    assert r["expected"] == clients * (ticks + 2)
    assert r["lost"] == clients * 2 and r["out_of_order"] == 0
    assert len(seen) == clients
    for got in seen:
        assert got == ["40", "3", '420["subscribe","bench"]']
