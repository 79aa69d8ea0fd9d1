"""The broadcast hot path (issue 12): workers without a subscriber among
a broadcast's targets are not woken; broadcasts built without a parse
tree still mean what they say."""

import json

from support import (expect_only_sentinel, recv_json, run, subscribe,
                     wait_for, ws_connect)


def worker_of(cid):
    """Client ids are NODE-WORKER-N."""
    return int(cid.split("-")[1])


def handed(srv):
    m = srv.metrics()
    return {int(k.split('"')[1]): v for k, v in m.items()
            if k.startswith("bagou_worker_broadcasts_total{")}


def test_idle_worker_not_woken(server):
    srv = server(workers=2)

    async def scenario():
        conns = []
        # The acceptor balances: a few connections land on both workers.
        for _ in range(4):
            conns.append(await ws_connect(srv))
        by_worker = {}
        for ws, cid in conns:
            by_worker.setdefault(worker_of(cid), ws)
        assert sorted(by_worker) == [0, 1], [c for _, c in conns]
        sub, other = by_worker[0], by_worker[1]
        await subscribe(sub, "only-w0")
        before = handed(srv)
        for i in range(20):
            srv.broadcast({"event": "e", "channel": "only-w0",
                           "data": {"i": i}})
        for i in range(20):
            got = await recv_json(sub)
            assert got["data"] == {"i": i}, got
        # To everyone: both workers; then the counts are final.
        await expect_only_sentinel(srv, [other])
        # The bus counts after it hands over: wait for the sentinel's.
        wait_for(lambda: handed(srv)[1] - before[1] >= 1 and
                 handed(srv)[0] - before[0] >= 21, timeout=5,
                 what="the hand-overs counted")
        after = handed(srv)
        assert after[0] - before[0] >= 21, (before, after)
        assert after[1] - before[1] == 1, (before, after)
        for ws, _ in conns:
            await ws.close()

    run(scenario())


def test_fast_and_tree_paths_agree(server):
    """Whitespace, escapes and duplicates: what a subscriber receives
    does not depend on which path built the broadcast."""
    srv = server(workers=1)

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "a")
        await subscribe(ws, "b")
        bodies = [
            # fast: pretty-printed, listed twice
            '{ "event" : "e1", "channel" : ["a", "a"],\n'
            '  "data" : { "s" : "x y\\n", "n" : [1, 2.5, null] } }',
            # jansson: an escaped name
            '{"event":"e2","channel":"\\u0062","data":{"k":"\\u00e9"}}',
            # jansson: a surrogate pair
            '{"event":"e3","channel":"a","data":"\\ud83d\\ude00"}',
        ]
        for body in bodies:
            status, _, out = srv.post("/broadcast", body.encode())
            assert status == 202, (status, out)
        want = [("e1", "a", {"s": "x y\n", "n": [1, 2.5, None]}),
                ("e2", "b", {"k": "\u00e9"}),
                ("e3", "a", "\U0001F600")]
        for ev, ch, data in want:
            got = await recv_json(ws)
            assert (got["event"], got["channel"], got["data"]) == \
                (ev, ch, data), got
        # Refusals keep jansson's words.
        for bad in ('{"event":"e","data":{"a":1,"a":2}}',
                    '{"event":"e","channel":"bad name"}',
                    '{"event":"e"} trailing'):
            status, _, out = srv.post("/broadcast", bad.encode())
            assert status == 400, (bad, status, out)
            assert json.loads(out)["error"]["code"] in (
                "bad_message", "invalid_channel"), out
        await ws.close()

    run(scenario())
