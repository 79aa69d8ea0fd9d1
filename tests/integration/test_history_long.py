"""History, the long run (make test-history-long; not in make test):
1,000 clients on one node, the node SIGKILLed while broadcasts flow
through another, 10 s of missed traffic, then every client reconnects
at once to the surviving node with its position and must get every
missed broadcast once and in order before any live one. Prints the
recovery time (kill -> reconnect wave -> last client recovered).

HISTORY_LONG_RUN=1 runs it; HISTORY_LONG_CLIENTS (1000),
HISTORY_LONG_RATE (broadcasts/s, 20) and HISTORY_LONG_MISSED (s, 10)
size it."""

import asyncio
import os
import time

import pytest
import websockets

from rabbitmq import amqp_server, unique_exchange  # noqa: F401
from support import recv_json, run, send_json, ws_connect
from test_history import amqp_cfg, post, until_callback, wait_caught_up

pytestmark = pytest.mark.skipif(not os.environ.get("HISTORY_LONG_RUN"),
                                reason="make test-history-long")

N = int(os.environ.get("HISTORY_LONG_CLIENTS", "1000"))
RATE = float(os.environ.get("HISTORY_LONG_RATE", "20"))
MISSED = float(os.environ.get("HISTORY_LONG_MISSED", "10"))


def test_thousand_clients_resume_after_node_kill(amqp_server):
    ex = unique_exchange("hist-long")
    cfg = amqp_cfg(ex, size="100000")
    cfg["limits"] = {"max_handshakes": "100000",
                     "max_per_address": "0"}
    a = amqp_server(cfg, workers=2)
    b = amqp_server(cfg, workers=2)

    async def scenario():
        await wait_caught_up(a)
        await wait_caught_up(b)
        stop = asyncio.Event()
        sent = []

        async def publisher():
            i = 0
            while not stop.is_set():
                await asyncio.to_thread(post, b, "chat", i)
                sent.append(i)
                i += 1
                await asyncio.sleep(1.0 / RATE)

        conns = []
        for k in range(N):
            ws, _ = await ws_connect(a, open_timeout=30)
            await send_json(ws, {"event": "subscribe", "data": {
                "channel": "chat"}, "callbackId": "s"})
            conns.append(ws)
        states = []
        for ws in conns:
            _, d = await until_callback(ws, "s")
            states.append({"epoch": d["epoch"], "pos": d["offset"],
                           "got": []})
        task = asyncio.create_task(publisher())

        async def live(ws, st):
            try:
                while True:
                    m = await recv_json(ws, timeout=60)
                    assert m["offset"] > st["pos"]
                    st["pos"] = m["offset"]
                    st["got"].append(m["data"])
            except (websockets.exceptions.ConnectionClosed,
                    ConnectionError):
                return
        readers = [asyncio.create_task(live(ws, st))
                   for ws, st in zip(conns, states)]
        await asyncio.sleep(2.0)
        a.signal(9)                       # the node dies
        a.expected_exit = (0, -9)
        t_kill = time.monotonic()
        await asyncio.gather(*readers)
        await asyncio.sleep(MISSED)       # traffic they miss
        t_wave = time.monotonic()
        done_times = []

        async def resume(k, st):
            ws, _ = await ws_connect(b, open_timeout=60)
            await send_json(ws, {"event": "subscribe", "data": {
                "channel": "chat", "recover": {"epoch": st["epoch"],
                                               "offset": st["pos"]}},
                "callbackId": "r"})
            before, d = await until_callback(ws, "r")
            assert d["recovered"] is True, d
            for m in before:
                assert m["offset"] > st["pos"]
                st["pos"] = m["offset"]
                st["got"].append(m["data"])
            done_times.append(time.monotonic())
            return ws
        resumed = await asyncio.gather(*[resume(k, st)
                                         for k, st in enumerate(states)])
        t_done = time.monotonic()
        stop.set()
        await task
        last = sent[-1]

        async def finish(ws, st):
            while not st["got"] or st["got"][-1] != last:
                m = await recv_json(ws, timeout=30)
                assert m["offset"] > st["pos"]
                st["pos"] = m["offset"]
                st["got"].append(m["data"])
            await ws.close()
        await asyncio.gather(*[finish(ws, st)
                               for ws, st in zip(resumed, states)])
        for st in states:
            first = st["got"][0] if st["got"] else 0
            assert st["got"] == list(range(first, last + 1)), st["got"][:20]
        print("\nhistory-long: %d clients, %.0f broadcasts/s, %.1f s "
              "missed (%d broadcasts each); reconnect wave to last "
              "recovered: %.2f s (median %.2f s); kill to last recovered: "
              "%.2f s" % (N, RATE, t_wave - t_kill, int((t_wave - t_kill)
                          * RATE), t_done - t_wave,
                          sorted(done_times)[len(done_times) // 2] - t_wave,
                          t_done - t_kill))

    run(scenario(), timeout=600)
