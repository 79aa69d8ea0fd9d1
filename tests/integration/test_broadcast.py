"""PROTOCOL §4: how POST /broadcast routes to connections."""

import asyncio
import http.client
import json

import pytest

from support import (HOST, expect_silence, recv_json, run, subscribe,
                     ws_connect)


async def post(srv, msg):
    await asyncio.to_thread(srv.broadcast, msg)


async def clients(srv, channel_sets):
    """One connection per entry, subscribed to those channels.
    Returns [(ws, id)]."""
    out = []
    for channels in channel_sets:
        ws, cid = await ws_connect(srv)
        for ch in channels:
            await subscribe(ws, ch)
        out.append((ws, cid))
    return out


async def close_all(conns):
    for ws, _ in conns:
        await ws.close()


def test_channel_string(server):
    srv = server()

    async def scenario():
        conns = await clients(srv, [["news"], ["news", "other"], ["other"],
                                    []])
        await post(srv, {"event": "message", "channel": "news",
                         "data": {"text": "Welcome!"}})
        want = {"event": "message", "channel": "news",
                "data": {"text": "Welcome!"}}
        assert await recv_json(conns[0][0]) == want
        assert await recv_json(conns[1][0]) == want
        await expect_silence(conns[2][0])
        await expect_silence(conns[3][0], 0.05)
        await close_all(conns)

    run(scenario())


def test_channel_list_delivered_once_first_listed(server):
    srv = server()

    async def scenario():
        conns = await clients(srv, [["b", "c"], ["a"], ["a", "b", "c"],
                                    ["zzz"], ["c"]])
        await post(srv, {"event": "multi", "channel": ["a", "c", "b"],
                         "data": 7})
        # Everybody is on "zzz" or not: a sentinel to everyone follows, so
        # a duplicate would show up before it.
        await post(srv, {"event": "sentinel"})
        expect = ["c", "a", "a", None, "c"]
        for (ws, _), ch in zip(conns, expect):
            msg = await recv_json(ws)
            if ch is None:
                assert msg == {"event": "sentinel", "data": {}}
                continue
            assert msg == {"event": "multi", "channel": ch, "data": 7}
            assert await recv_json(ws) == {"event": "sentinel", "data": {}}
        await close_all(conns)

    run(scenario())


@pytest.mark.parametrize("routing", [{}, {"channel": None},
                                     {"channel": []}],
                         ids=["absent", "null", "empty_list"])
def test_everyone(server, routing):
    srv = server()

    async def scenario():
        conns = await clients(srv, [[], ["news"], []])
        msg = dict({"event": "hello", "data": {"n": 1}}, **routing)
        await post(srv, msg)
        for ws, _ in conns:
            assert await recv_json(ws) == {"event": "hello",
                                           "data": {"n": 1}}
        for ws, _ in conns:
            await expect_silence(ws, 0.1)
        await close_all(conns)

    run(scenario())


def test_data_defaults_to_empty_object(server):
    srv = server()

    async def scenario():
        (ws, _), = await clients(srv, [["x"]])
        await post(srv, {"event": "e", "channel": "x"})
        assert await recv_json(ws) == {"event": "e", "channel": "x",
                                       "data": {}}
        await ws.close()

    run(scenario())


DATA_VALUES = [1, -2.5, "text", "h\u00e9llo \u2713 \U0001F600", [1, [2, {}]],
               True, False, {"deep": {"er": [None, 1e10, "\"quoted\\"]}}]


@pytest.mark.parametrize("data", DATA_VALUES,
                         ids=["int", "float", "str", "unicode", "list",
                              "true", "false", "nested"])
def test_data_any_json_value(server, data):
    srv = server()

    async def scenario():
        (ws, _), = await clients(srv, [["x"]])
        await post(srv, {"event": "e", "channel": "x", "data": data})
        assert await recv_json(ws) == {"event": "e", "channel": "x",
                                       "data": data}
        await ws.close()

    run(scenario())


def test_client_single_id(server):
    srv = server()

    async def scenario():
        conns = await clients(srv, [[], ["news"], ["news"]])
        target = conns[0][1]
        # channel does not route when client is set; the reply keeps it
        # as published (PROTOCOL.md §4, replies).
        await post(srv, {"event": "direct", "client": target,
                         "channel": "news", "data": {"x": 1}})
        assert await recv_json(conns[0][0]) == {"event": "direct",
                                                "channel": "news",
                                                "data": {"x": 1}}
        await expect_silence(conns[1][0])
        await expect_silence(conns[2][0], 0.05)
        await close_all(conns)

    run(scenario())


def test_client_list(server):
    srv = server(workers=2)

    async def scenario():
        conns = await clients(srv, [[], [], [], []])
        targets = [conns[1][1], conns[3][1], conns[1][1]]
        await post(srv, {"event": "some", "client": targets})
        await post(srv, {"event": "sentinel"})
        for i, (ws, _) in enumerate(conns):
            if i in (1, 3):
                # A reply gets no default "data".
                assert await recv_json(ws) == {"event": "some"}
            assert await recv_json(ws) == {"event": "sentinel", "data": {}}
        await close_all(conns)

    run(scenario())


def test_client_unknown_id(server):
    srv = server()

    async def scenario():
        conns = await clients(srv, [[]])
        status, _, _ = await asyncio.to_thread(
            srv.post, "/broadcast", {"event": "nobody",
                                     "client": "no-such-client"})
        assert status == 202
        await expect_silence(conns[0][0])
        await close_all(conns)

    run(scenario())


def test_exclude_on_channel(server):
    srv = server()

    async def scenario():
        conns = await clients(srv, [["room"], ["room"], ["room"]])
        await post(srv, {"event": "e", "channel": "room",
                         "exclude": conns[1][1]})
        assert (await recv_json(conns[0][0]))["event"] == "e"
        assert (await recv_json(conns[2][0]))["event"] == "e"
        await expect_silence(conns[1][0])
        await close_all(conns)

    run(scenario())


def test_exclude_on_everyone(server):
    srv = server()

    async def scenario():
        conns = await clients(srv, [[], []])
        await post(srv, {"event": "e", "exclude": conns[0][1]})
        assert await recv_json(conns[1][0]) == {"event": "e", "data": {}}
        await expect_silence(conns[0][0])
        await close_all(conns)

    run(scenario())


def test_callback_id_passed_through(server):
    srv = server()

    async def scenario():
        conns = await clients(srv, [[], ["c"]])
        await post(srv, {"event": "callback", "client": conns[0][1],
                         "callbackId": "app-42",
                         "data": {"success": True, "x": 1}})
        assert await recv_json(conns[0][0]) == {
            "event": "callback", "callbackId": "app-42",
            "data": {"success": True, "x": 1}}
        await post(srv, {"event": "m", "channel": "c", "callbackId": "k"})
        assert await recv_json(conns[1][0]) == {
            "event": "m", "channel": "c", "callbackId": "k", "data": {}}
        await close_all(conns)

    run(scenario())


def test_per_publisher_order(server):
    srv = server(workers=2)

    async def scenario():
        conns = await clients(srv, [["o"], ["o"], ["o"], ["o"]])

        def publish():
            conn = http.client.HTTPConnection(HOST, srv.port, timeout=10)
            try:
                for i in range(300):
                    conn.request("POST", "/broadcast", body=json.dumps(
                        {"event": "n", "channel": "o", "data": i}),
                        headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    assert resp.status == 202
            finally:
                conn.close()

        await asyncio.to_thread(publish)
        for ws, _ in conns:
            got = [(await recv_json(ws))["data"] for _ in range(300)]
            assert got == list(range(300))
            await expect_silence(ws, 0.1)
        await close_all(conns)

    run(scenario())


def test_broadcast_to_closed_connection_harmless(server):
    srv = server()

    async def scenario():
        conns = await clients(srv, [["c"], ["c"]])
        gone = conns[0][1]
        await conns[0][0].close()
        await post(srv, {"event": "e", "channel": "c"})
        await post(srv, {"event": "e2", "client": gone})
        assert (await recv_json(conns[1][0]))["event"] == "e"
        await expect_silence(conns[1][0])
        await conns[1][0].close()

    run(scenario())
    assert srv.health()["status"] == "ok"


def test_channel_list_duplicates_delivered_once(server):
    srv = server()

    async def scenario():
        conns = await clients(srv, [["a"]])
        await post(srv, {"event": "dup", "channel": ["a", "a", "a"]})
        await post(srv, {"event": "sentinel"})
        ws = conns[0][0]
        assert await recv_json(ws) == {"event": "dup", "channel": "a",
                                       "data": {}}
        assert (await recv_json(ws))["event"] == "sentinel"
        await close_all(conns)

    run(scenario())


def test_client_list_with_exclude(server):
    srv = server()

    async def scenario():
        conns = await clients(srv, [[], [], []])
        await post(srv, {"event": "e", "client": [conns[0][1], conns[1][1]],
                         "exclude": conns[0][1]})
        await post(srv, {"event": "sentinel"})
        assert (await recv_json(conns[0][0]))["event"] == "sentinel"
        assert (await recv_json(conns[1][0]))["event"] == "e"
        assert (await recv_json(conns[1][0]))["event"] == "sentinel"
        assert (await recv_json(conns[2][0]))["event"] == "sentinel"
        await close_all(conns)

    run(scenario())
