"""PROTOCOL §5: several bagou-server nodes sharing one RabbitMQ. Each node
has its own queue bound to the exchange, so every broadcast (from the
application, POST /broadcast on any node, or a client publish on any node)
reaches the clients of every node."""

import asyncio

from rabbitmq import amqp_server, publisher, unique_exchange  # noqa: F401
from support import expect_silence, recv_json, request, run, subscribe, \
    ws_connect

N_NODES = 3


def cluster(amqp_server, config=None):
    """Three nodes on three ports, one exchange; all connected."""
    exchange = unique_exchange("bagou-cluster")
    nodes = [amqp_server(config=config, exchange=exchange, workers=2)
             for _ in range(N_NODES)]
    assert len({n.port for n in nodes}) == N_NODES
    return exchange, nodes


async def connect_subscribed(srv, channels=()):
    ws, cid = await ws_connect(srv)
    for ch in channels:
        await subscribe(ws, ch)
    return ws, cid


def test_ids_unique_across_nodes(amqp_server):
    _, nodes = cluster(amqp_server)

    async def scenario():
        conns = []
        for srv in nodes:
            for _ in range(3):
                conns.append(await ws_connect(srv))
        ids = [cid for _, cid in conns]
        assert len(set(ids)) == len(ids), ids
        for ws, _ in conns:
            await ws.close()

    run(scenario())


def test_pika_broadcast_reaches_every_node(amqp_server, publisher):
    exchange, nodes = cluster(amqp_server)
    pub = publisher(exchange)

    async def scenario():
        subs = [await connect_subscribed(srv, ["news"]) for srv in nodes]
        others = [await connect_subscribed(srv, ["other"]) for srv in nodes]
        pub.publish({"event": "message", "channel": "news",
                     "data": {"text": "Welcome!"}})
        pub.publish({"event": "everyone", "data": 3})
        for i, (ws, _) in enumerate(subs):
            assert await recv_json(ws) == {
                "event": "message", "channel": "news",
                "data": {"text": "Welcome!"}}, "node %d" % i
            assert await recv_json(ws) == {"event": "everyone", "data": 3}
        for i, (ws, _) in enumerate(others):
            assert await recv_json(ws) == {"event": "everyone", "data": 3}, \
                "node %d" % i
        for ws, _ in subs + others:
            await expect_silence(ws, 0.1)
            await ws.close()

    run(scenario())


def test_post_broadcast_on_one_node_reaches_all(amqp_server):
    _, nodes = cluster(amqp_server)

    async def scenario():
        subs = [await connect_subscribed(srv, ["news"]) for srv in nodes]
        for i, srv in enumerate(nodes):
            await asyncio.to_thread(srv.broadcast, {
                "event": "from-node", "channel": "news", "data": i})
            for j, (ws, _) in enumerate(subs):
                assert await recv_json(ws) == {
                    "event": "from-node", "channel": "news", "data": i}, \
                    "POST on node %d, subscriber on node %d" % (i, j)
        for ws, _ in subs:
            await expect_silence(ws, 0.1)
            await ws.close()

    run(scenario())


def test_client_publish_on_a_reaches_c(amqp_server):
    _, nodes = cluster(amqp_server,
                       config={"channels": {"client_publish": "all"}})
    a_node, b_node, c_node = nodes

    async def scenario():
        a, aid = await connect_subscribed(a_node)
        b, _ = await connect_subscribed(b_node, ["room"])
        c, _ = await connect_subscribed(c_node, ["room"])
        c_off, _ = await connect_subscribed(c_node, ["elsewhere"])
        reply = await request(a, "publish", {"channel": "room",
                                             "event": "say",
                                             "data": {"t": "hi"}},
                              callback_id="p")
        assert reply == {"event": "callback", "callbackId": "p",
                         "data": {"success": True}}
        want = {"event": "say", "channel": "room", "data": {"t": "hi"},
                "from": aid}
        assert await recv_json(c) == want
        assert await recv_json(b) == want
        await expect_silence(c_off)
        await expect_silence(a, 0.05)
        for ws in (a, b, c, c_off):
            await ws.close()

    run(scenario())


def test_client_targeted_broadcast_across_nodes(amqp_server):
    _, nodes = cluster(amqp_server)
    a_node, b_node, c_node = nodes

    async def scenario():
        conns = {
            "a": await connect_subscribed(a_node, ["news"]),
            "b": await connect_subscribed(b_node, ["news"]),
            "c_target": await connect_subscribed(c_node, ["news"]),
            "c_other": await connect_subscribed(c_node, ["news"]),
        }
        target = conns["c_target"][1]
        await asyncio.to_thread(a_node.broadcast, {
            "event": "direct", "client": target, "channel": "news",
            "data": {"secret": 1}})
        # A sentinel to everyone, from node A too: anything misdelivered
        # would arrive before it.
        await asyncio.to_thread(a_node.broadcast, {"event": "sentinel"})
        assert await recv_json(conns["c_target"][0]) == {
            "event": "direct", "channel": "news", "data": {"secret": 1}}
        for name, (ws, _) in conns.items():
            assert await recv_json(ws) == {"event": "sentinel",
                                           "data": {}}, name
        for ws, _ in conns.values():
            await expect_silence(ws, 0.1)
            await ws.close()

    run(scenario())


def test_exclude_across_nodes(amqp_server, publisher):
    exchange, nodes = cluster(amqp_server)
    pub = publisher(exchange)

    async def scenario():
        conns = [await connect_subscribed(srv, ["room"]) for srv in nodes]
        pub.publish({"event": "e", "channel": "room",
                     "exclude": conns[2][1]})
        pub.publish({"event": "sentinel"})
        for i, (ws, _) in enumerate(conns):
            if i != 2:
                assert (await recv_json(ws))["event"] == "e", "node %d" % i
            assert (await recv_json(ws))["event"] == "sentinel"
            await ws.close()

    run(scenario())
