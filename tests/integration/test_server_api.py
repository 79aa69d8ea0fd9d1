"""The server API (PROTOCOL.md §11, docs/PROTOCOL.md "Server API") and
the cluster control plane under it ("Cluster control plane"): three
nodes on one RabbitMQ, every call over HTTP (the API listener) and over
AMQP (the API queue), with their errors."""

import asyncio
import json
import re
import signal
import time
import urllib.parse
import uuid

import pytest

from rabbitmq import amqp_server, publisher, unique_exchange  # noqa: F401
from support import expect_only_sentinel, recv_json, request, run, \
    subscribe, wait_closed, wait_for, ws_connect

# Short cluster timings: a killed node leaves within TIMEOUT seconds.
HEARTBEAT = 1
TIMEOUT = 3
CLUSTER = {"cluster": {"heartbeat": HEARTBEAT, "timeout": TIMEOUT,
                       "query_timeout": 2}}


def config(extra=None):
    cfg = {k: dict(v) for k, v in CLUSTER.items()}
    for k, v in (extra or {}).items():
        cfg.setdefault(k, {}).update(v)
    return cfg


def cluster(amqp_server, n=3, extra=None):
    """n nodes on one exchange, each seeing all the others."""
    exchange = unique_exchange("bagou-api")
    nodes = [amqp_server(config=config(extra), exchange=exchange)
             for _ in range(n)]
    for srv in nodes:
        wait_for(lambda: len(info(srv)) == n, timeout=5,
                 what="%d nodes in /api/info" % n)
    return exchange, nodes


def api(srv, method, path, body=None, key=None):
    """(status, JSON body) of a call on srv's API listener."""
    headers = {"Authorization": "Bearer " + key} if key else None
    if method == "GET":
        status, _, data = srv.api_get(path, headers=headers)
    else:
        status, _, data = srv.post(path, body, headers=headers)
    return status, json.loads(data)


def info(srv):
    status, doc = api(srv, "GET", "/api/info")
    assert status == 200, doc
    return doc["nodes"]


def node_id(srv):
    """The node's id, from its start-up line."""
    for line in srv.log().splitlines():
        if ", node " in line:
            return line.split(", node ")[1].split(",")[0]
    raise AssertionError("no node id in the log")


# ------------------------------------------------------------ control

def test_nodes_see_each_other_and_a_killed_one_leaves(amqp_server):
    _, nodes = cluster(amqp_server)
    ids = sorted(node_id(s) for s in nodes)
    assert nodes[0].metrics()["bagou_cluster_nodes"] == 3
    for srv in nodes:
        listed = info(srv)
        assert sorted(n["node"] for n in listed) == ids
        for n in listed:
            assert n["version"] and n["uptime"] >= 0
            assert n["connections"] == 0 and n["subscriptions"] == 0
    victim = nodes[2]
    victim.expected_exit = (-signal.SIGKILL,)
    victim.signal(signal.SIGKILL)
    victim.wait_exit(5)
    # A query started now waits for it no longer than query_timeout,
    # and says it did not answer.
    t0 = time.monotonic()
    st, doc = api(nodes[0], "GET", "/api/channels")
    assert st == 200 and doc["missing"] == [node_id(victim)], doc
    st, doc = api(nodes[1], "POST", "/api/disconnect", {"user": "nobody"})
    assert st in (503, 404), doc
    if st == 503:
        assert doc["error"]["missing"] == [node_id(victim)]
    assert time.monotonic() - t0 <= 2 * 2 + 1
    assert nodes[0].metrics()["bagou_cluster_queries_total"] == 1
    for srv in nodes[:2]:
        wait_for(lambda: len(info(srv)) == 2, timeout=TIMEOUT + 2,
                 what="the killed node to leave /api/info")
        assert node_id(victim) not in [n["node"] for n in info(srv)]
    # Silent for more than TIMEOUT: gone at the next check (1 s).
    assert time.monotonic() - t0 <= TIMEOUT + 1.5
    # A node that stops (SIGTERM) says so: gone at once, not after
    # the timeout.
    nodes[1].stop()
    t0 = time.monotonic()
    wait_for(lambda: len(info(nodes[0])) == 1, timeout=TIMEOUT,
             what="the stopped node to leave /api/info")
    assert time.monotonic() - t0 < 1.0


def test_stop_while_queries_wait_ends_cleanly(amqp_server, amqp_api):
    """SIGTERM while cluster queries wait for a node that does not answer
    (SIGSTOPped, still live): the node ends cleanly and gives back what
    each waiting request held, asked over HTTP or over AMQP (under ASan
    a leak makes the exit status say so). The bus's "bye" ends them,
    with every node missing, before the control plane is freed (a query
    still open at the free: tests/unit/test_control.c)."""
    import select
    import socket
    exchange, (asker, frozen) = cluster(
        amqp_server, n=2, extra={"cluster": {"query_timeout": 30}})
    amqp = amqp_api(exchange)
    frozen.signal(signal.SIGSTOP)
    try:
        s = socket.create_connection(("127.0.0.1", asker.api_port),
                                     timeout=10)
        try:
            s.sendall(b"GET /api/channels HTTP/1.1\r\nHost: x\r\n\r\n")
            # Two over AMQP: the API queue has both nodes as consumers.
            for _ in range(2):
                amqp.ch.basic_publish("", amqp.queue, json.dumps(
                    {"command": "channels"}).encode(),
                    amqp.pika.BasicProperties(
                        reply_to="amq.rabbitmq.reply-to",
                        correlation_id=uuid.uuid4().hex))
            wait_for(lambda: asker.metrics()[
                "bagou_cluster_queries_total"] >= 2, timeout=2,
                what="the HTTP and an AMQP query under way")
            # Still waiting for the frozen node.
            assert select.select([s], [], [], 0)[0] == []
            asker.stop()
        finally:
            s.close()
        assert asker.ended_problems() == []
    finally:
        frozen.signal(signal.SIGCONT)


# ------------------------------------------------------------ helpers

SECRET = "server-api-test-secret"


def user_token(user):
    import jwt
    return jwt.encode({"sub": str(user), "exp": int(time.time()) + 3600},
                      SECRET, algorithm="HS256")


async def connect_user(srv, user):
    """A connection authenticated as user at connect (?token=)."""
    return await ws_connect(srv, path="/websocket?token=" + user_token(user))


class AmqpApi:
    """The AMQP form of the server API: a request on the default exchange
    to the queue "<exchange>.api", answered on RabbitMQ's direct reply-to
    pseudo-queue with the request's correlation_id."""

    def __init__(self, broker, exchange):
        import pika
        self.pika = pika
        params = pika.URLParameters(broker.url)
        params.socket_timeout = 10
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.queue = exchange + ".api"
        self.answers = {}
        self.ch.basic_consume("amq.rabbitmq.reply-to", self._on_answer,
                              auto_ack=True)

    def _on_answer(self, ch, method, props, body):
        self.answers[props.correlation_id] = json.loads(body)

    def call(self, request, timeout=8.0):
        """The answer (a dict with "status") to request (a dict, or raw
        bytes sent as they are)."""
        corr = uuid.uuid4().hex
        body = request if isinstance(request, bytes) else \
            json.dumps(request).encode()
        self.ch.basic_publish(
            "", self.queue, body, self.pika.BasicProperties(
                reply_to="amq.rabbitmq.reply-to", correlation_id=corr))
        deadline = time.monotonic() + timeout
        while corr not in self.answers:
            if time.monotonic() >= deadline:
                raise AssertionError("no answer to %r within %.0f s"
                                     % (request, timeout))
            self.conn.process_data_events(time_limit=0.05)
        return self.answers.pop(corr)

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


@pytest.fixture
def amqp_api(rabbitmq):
    made = []

    def make(exchange):
        a = AmqpApi(rabbitmq, exchange)
        made.append(a)
        return a
    yield make
    for a in made:
        a.close()


def http_call(srv, command, args, key=None):
    """(status, body) of command over HTTP: POST with a JSON body, or
    GET with query parameters for channels, info and history."""
    if command in ("channels", "info", "history"):
        path = "/api/" + command
        if args:
            path += "?" + urllib.parse.urlencode(args)
        return api(srv, "GET", path, key=key)
    return api(srv, "POST", "/api/" + command, args, key=key)


def amqp_call(amqp, command, args, key=None):
    req = dict(args, command=command)
    if key is not None:
        req["key"] = key
    ans = amqp.call(req)
    return ans.pop("status"), ans


# ------------------------------------------------------------ commands

@pytest.mark.parametrize("form", ["http", "amqp"])
def test_commands_cluster_wide(amqp_server, amqp_api, form):
    """disconnect by user reaches every node with its code and reason;
    server-side subscribe, then a broadcast is received; unsubscribe;
    channel counts summed over the nodes."""
    exchange, nodes = cluster(amqp_server, extra={"auth": {"secret":
                                                           SECRET}})
    if form == "http":
        def call(command, **args):
            return http_call(nodes[0], command, args)
    else:
        amqp = amqp_api(exchange)

        def call(command, **args):
            return amqp_call(amqp, command, args)

    async def scenario():
        banned = [await connect_user(srv, 42) for srv in nodes]
        others = [await connect_user(srv, 7) for srv in nodes]
        # Server-side subscribe of user 7 on every node.
        st, doc = await asyncio.to_thread(call, "subscribe", user="7",
                                          channel="news")
        assert (st, doc) == (200, {"subscribed": 3, "missing": []})
        for ws, _ in others:
            assert await recv_json(ws) == {"event": "subscribed",
                                           "data": {"channel": "news"}}
        await asyncio.to_thread(nodes[1].broadcast, {
            "event": "story", "channel": "news", "data": 1})
        for ws, _ in others:
            assert await recv_json(ws) == {"event": "story",
                                           "channel": "news", "data": 1}
        # By client id, on another node than the one asked.
        st, doc = await asyncio.to_thread(call, "subscribe",
                                          client=banned[2][1],
                                          channel="room-b")
        assert (st, doc) == (200, {"subscribed": 1, "missing": []})
        assert await recv_json(banned[2][0]) == {
            "event": "subscribed", "data": {"channel": "room-b"}}
        await subscribe(banned[0][0], "room-a")
        await subscribe(banned[1][0], "room-a")
        await subscribe(others[0][0], "room-a")
        st, doc = await asyncio.to_thread(call, "channels", prefix="room-")
        assert (st, doc) == (200, {"channels": {"room-a": 3, "room-b": 1},
                                   "missing": []})
        st, doc = await asyncio.to_thread(call, "channels")
        assert doc["channels"] == {"room-a": 3, "room-b": 1, "news": 3}
        # Unsubscribe: acknowledged; the next broadcast no longer comes.
        st, doc = await asyncio.to_thread(call, "unsubscribe", user=7,
                                          channel="news")
        assert (st, doc) == (200, {"unsubscribed": 3, "missing": []})
        for ws, _ in others:
            assert await recv_json(ws) == {"event": "unsubscribed",
                                           "data": {"channel": "news"}}
        await asyncio.to_thread(nodes[2].broadcast, {
            "event": "story", "channel": "news", "data": 2})
        await expect_only_sentinel(nodes[0], [others[1][0], others[2][0]])
        assert await recv_json(others[0][0]) == {"event": "sentinel",
                                                 "data": {}}
        # Disconnect user 42 everywhere, with its code and reason.
        st, doc = await asyncio.to_thread(call, "disconnect", user="42",
                                          code=4100, reason="banned")
        assert (st, doc) == (200, {"disconnected": 3, "missing": []})
        for ws, _ in banned:
            assert await wait_closed(ws) == 4100
            assert ws.close_reason == "banned"
        await expect_only_sentinel(nodes[0], [ws for ws, _ in others])
        # Now gone: nobody to disconnect.
        st, doc = await asyncio.to_thread(call, "disconnect", user="42")
        assert st == 404 and doc["error"]["code"] == "not_found"
        st, doc = await asyncio.to_thread(call, "channels", prefix="room-")
        assert doc["channels"] == {"room-a": 1}
        for ws, _ in others:
            await ws.close()

    run(scenario())
    st, doc = call("info")
    assert st == 200 and len(doc["nodes"]) == 3


# ------------------------------------------------------------ errors

KEY = "api-test-key"


@pytest.mark.parametrize("form", ["http", "amqp"])
def test_errors(amqp_server, amqp_api, form):
    """Each call's errors, the same over HTTP and AMQP: unknown client
    404, bad code 400, missing key 401, wrong key 403, bad JSON 400,
    bad arguments 400."""
    exchange = unique_exchange("bagou-api-err")
    srv = amqp_server(config=config({"http": {"api_key": KEY}}),
                      exchange=exchange)
    if form == "http":
        def call(command, key=KEY, **args):
            return http_call(srv, command, args, key=key)

        def raw(body):
            return api(srv, "POST", "/api/disconnect", body, key=KEY)
    else:
        amqp = amqp_api(exchange)

        def call(command, key=KEY, **args):
            return amqp_call(amqp, command, args, key=key)

        def raw(body):
            ans = amqp.call(body)
            return ans.pop("status"), ans

    def expect(result, status, code):
        st, doc = result
        assert st == status and doc["error"]["code"] == code, (st, doc)
        assert doc["error"]["message"]

    for command, args in [("disconnect", {"client": "nobody-0-1"}),
                          ("subscribe", {"user": "nobody", "channel": "c"}),
                          ("unsubscribe", {"client": "x-0-1",
                                           "channel": "c"})]:
        expect(call(command, **args), 404, "not_found")
        expect(call(command, key=None, **args), 401, "unauthorized")
        expect(call(command, key="wrong", **args), 403, "forbidden")
    for command in ("channels", "info"):
        expect(call(command, key=None), 401, "unauthorized")
        expect(call(command, key="wrong"), 403, "forbidden")
    for code in (3000, 5000, "4000", 4000.5):
        expect(call("disconnect", user="1", code=code), 400, "bad_message")
    expect(call("disconnect", user="1", reason="x" * 124), 400,
           "bad_message")
    expect(call("disconnect"), 400, "bad_message")
    expect(call("disconnect", user="1", client="a-0-1"), 400, "bad_message")
    expect(call("subscribe", user="1"), 400, "invalid_channel")
    expect(call("subscribe", user="1", channel="a b"), 400,
           "invalid_channel")
    expect(raw(b'{"user": '), 400, "bad_message")
    expect(raw(b'[1]'), 400, "bad_message")
    # The node is still fine.
    assert call("info")[0] == 200
    if form == "amqp":
        expect(call("nothing"), 404, "not_found")
        expect(raw(json.dumps({"key": KEY}).encode()), 400, "bad_message")
        # Without reply_to: run, not answered.
        run(no_reply_disconnect(srv, amqp, exchange))
        # Garbage on the control exchange: ignored, the node carries on.
        pub = amqp.ch
        pub.exchange_declare(exchange + ".control", "fanout", durable=True)
        for body in [b"garbage", b"[]", b'{"type": 1, "node": "x"}',
                     b'{"type": "api.disconnect", "node": "x"}',
                     b'{"type": "api.channels", "node": "x", "query": 1,'
                     b' "args": {"prefix": 7}}',
                     b'{"type": "answer", "node": "x", "to": 5}',
                     b'{"type": "heartbeat", "node": "x", "stats": 3}',
                     b'{"type": "bye", "node": "x"}',
                     b'{"type": "heartbeat", "node": "' + b"n" * 300 +
                     b'"}']:
            pub.basic_publish(exchange + ".control", "", body)
        assert call("info")[0] == 200
        assert call("channels")[0] == 200


async def no_reply_disconnect(srv, amqp, exchange):
    ws, cid = await ws_connect(srv)
    amqp.ch.basic_publish("", exchange + ".api", json.dumps(
        {"command": "disconnect", "client": cid, "key": KEY}).encode())
    assert await wait_closed(ws) == 4000


def test_broker_down_503(server):
    """A node whose RabbitMQ is unreachable answers every call 503: the
    cluster cannot be asked."""
    srv = server(config=config(), extra_args=(
        "--amqp-url", "amqp://guest:guest@127.0.0.1:9/"))
    for command, args in [("disconnect", {"user": "1"}),
                          ("subscribe", {"user": "1", "channel": "c"}),
                          ("unsubscribe", {"user": "1", "channel": "c"}),
                          ("channels", {}), ("info", {}),
                          ("history", {"channel": "chat"})]:
        st, doc = http_call(srv, command, args)
        assert st == 503 and doc["error"]["code"] == "unavailable", doc


def test_standalone_loopback(server):
    """Standalone ([amqp] url = none) the control plane loops back: the
    node lists itself and every command acts on its own clients."""
    srv = server(config=config({"auth": {"secret": SECRET}}), workers=3)

    async def scenario():
        conns = [await connect_user(srv, "u1") for _ in range(4)]
        st, doc = await asyncio.to_thread(
            http_call, srv, "subscribe", {"user": "u1", "channel": "s"})
        assert (st, doc) == (200, {"subscribed": 4, "missing": []})
        for ws, _ in conns:
            assert await recv_json(ws) == {"event": "subscribed",
                                           "data": {"channel": "s"}}
        st, doc = await asyncio.to_thread(http_call, srv, "channels", {})
        assert doc == {"channels": {"s": 4}, "missing": []}
        st, doc = await asyncio.to_thread(
            http_call, srv, "disconnect", {"client": conns[0][1]})
        assert (st, doc) == (200, {"disconnected": 1, "missing": []})
        assert await wait_closed(conns[0][0]) == 4000
        assert conns[0][0].close_reason == "disconnected by the server"
        await wait_for_info(srv, connections=3, subscriptions=3)
        for ws, _ in conns[1:]:
            await ws.close()

    run(scenario())
    nodes = info(srv)
    assert len(nodes) == 1 and nodes[0]["node"] == node_id(srv)
    assert nodes[0]["version"]


# ------------------------------------------------------------ history

def test_history_waiting_at_stop_is_answered_over_amqp(amqp_server,
                                                       amqp_api):
    """A history request over the API queue that waits for a position
    not reached yet is answered when the node stops, as it would be when
    its wait is over, not dropped: the asker is not left to time out
    (queries, likewise, end with what came)."""
    exchange = unique_exchange("bagou-api-hist-stop")
    node = amqp_server(config=config({
        "history": {"channels": "^chat", "size": "5",
                    "stream": exchange + ".history"}}), exchange=exchange)
    amqp = amqp_api(exchange)
    node.broadcast({"event": "m", "channel": "chat", "data": 1})
    wait_for(lambda: amqp_call(amqp, "history", {"channel": "chat"})[1]
             .get("publications", [])[-1:] != [], timeout=10,
             what="the node to read its broadcast back")
    st, d = amqp_call(amqp, "history", {"channel": "chat"})
    assert st == 200, d
    corr = uuid.uuid4().hex
    amqp.ch.basic_publish("", amqp.queue, json.dumps({
        "command": "history", "channel": "chat", "since_epoch": d["epoch"],
        "since_offset": d["offset"] + 1}).encode(),
        amqp.pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                  correlation_id=corr))
    amqp.conn.process_data_events(time_limit=0.5)
    assert corr not in amqp.answers      # it waits (up to 3 s)
    node.stop()
    deadline = time.monotonic() + 5
    while corr not in amqp.answers and time.monotonic() < deadline:
        amqp.conn.process_data_events(time_limit=0.05)
    ans = amqp.answers.pop(corr)
    # As when its 3 s are over: the latest, with a gap (the position
    # named was not reached here, so nothing says what follows it).
    assert ans["status"] == 200 and ans["gap"] is True, ans
    assert [p["data"] for p in ans["publications"]] == [1], ans
    assert ans["offset"] == d["offset"], ans
    assert node.ended_problems() == []


@pytest.mark.parametrize("form", ["http", "amqp"])
def test_history_command(amqp_server, amqp_api, form):
    """history over HTTP and over the API queue: the same answers and
    the same errors. Broadcasts go through one node and are read from
    another (the stream's positions are the cluster's)."""
    exchange = unique_exchange("bagou-api-hist")
    cfg = config({"http": {"api_key": KEY},
                  "history": {"channels": "^(chat|private-chat)",
                              "size": "5", "stream": exchange + ".history"}})
    a = amqp_server(config=cfg, exchange=exchange)
    b = amqp_server(config=cfg, exchange=exchange)
    if form == "http":
        def call(key=KEY, **args):
            return http_call(a, "history", args, key=key)
    else:
        amqp = amqp_api(exchange)

        def call(key=KEY, **args):
            return amqp_call(amqp, "history", args, key=key)

    def expect(result, status, code):
        st, doc = result
        assert st == status and doc["error"]["code"] == code, (st, doc)
        assert doc["error"]["message"]

    headers = {"Authorization": "Bearer " + KEY}
    for i in range(7):
        b.broadcast({"event": "m", "channel": "chat", "data": i},
                    headers=headers)
    b.broadcast({"event": "m", "channel": "private-chat", "data": "p"},
                headers=headers)
    wait_for(lambda: call(channel="private-chat")[1].get(
        "publications", [{}])[-1:] == [{"event": "m", "channel":
                                         "private-chat", "data": "p",
                                         "offset": ANY}],
             timeout=10, what="the node to read the broadcasts")
    st, d = call(channel="chat")
    assert st == 200 and d["success"] is True and "gap" not in d, d
    assert [p["data"] for p in d["publications"]] == [2, 3, 4, 5, 6]
    offs = [p["offset"] for p in d["publications"]]
    assert offs == sorted(offs) and d["offset"] > offs[-1]
    epoch = d["epoch"]
    st, d = call(channel="chat", limit=2)
    assert st == 200 and [p["data"] for p in d["publications"]] == [5, 6]
    st, d = call(channel="chat", limit=2, since_epoch=epoch,
                 since_offset=offs[1])
    assert st == 200 and "gap" not in d, d
    assert [p["data"] for p in d["publications"]] == [4, 5]
    # Older than memory keeps (size 5): read back from the stream.
    st, d = call(channel="chat", limit=2, since_epoch=epoch,
                 since_offset=0)
    assert st == 200 and "gap" not in d, d
    assert [p["data"] for p in d["publications"]] == [0, 1]
    st, d = call(channel="chat", limit=1, since_epoch="other",
                 since_offset=offs[1])
    assert st == 200 and d["gap"] is True, d
    assert [p["data"] for p in d["publications"]] == [6]
    st, d = call(channel="chat", limit=0)
    assert st == 200 and d["publications"] == [] and d["epoch"] == epoch
    for args, status, code in (
            ({"channel": "nohist"}, 404, "not_found"),
            ({"channel": "a b"}, 400, "invalid_channel"),
            ({}, 400, "invalid_channel"),
            ({"channel": "chat", "limit": -1}, 400, "bad_message"),
            ({"channel": "chat", "limit": "x"}, 400, "bad_message"),
            ({"channel": "chat", "limit": 1.5}, 400, "bad_message"),
            ({"channel": "chat", "since_epoch": "e"}, 400, "bad_message"),
            ({"channel": "chat", "since_offset": 1}, 400, "bad_message"),
            ({"channel": "chat", "since_epoch": "e",
              "since_offset": 2 ** 53}, 400, "bad_message"),
            ({"channel": "chat", "since_epoch": "e" * 65,
              "since_offset": 1}, 400, "bad_message"),
            ({"channel": "chat", "bogus": 1}, 400, "bad_message")):
        expect(call(**args), status, code)
    expect(call(key=None, channel="chat"), 401, "unauthorized")
    expect(call(key="wrong", channel="chat"), 403, "forbidden")
    if form == "amqp":
        for bad in ({"since_offset": "1e3", "since_epoch": "e"},
                    {"channel": 5}, {"limit": [1]}):
            expect(call(**dict({"channel": "chat"}, **bad)), 400,
                   "invalid_channel" if "channel" in bad else
                   "bad_message")
    assert call(channel="chat")[0] == 200


class _Any:
    def __eq__(self, other):
        return True


ANY = _Any()


async def wait_for_info(srv, **want):
    def check():
        n = info(srv)[0]
        return all(n[k] == v for k, v in want.items())
    await asyncio.to_thread(wait_for, check, 5, 0.05, "/api/info %r" % want)


def test_pipelined_requests_answered_in_order(server):
    """A command is answered asynchronously: requests pipelined behind
    it on one keep-alive connection wait for it and come in order."""
    import socket
    srv = server(config=config())
    s = socket.create_connection(("127.0.0.1", srv.api_port), timeout=5)
    reqs = (b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /api/disconnect HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 15\r\n\r\n{\"client\": \"n\"}"
            b"GET /api/channels?prefix=a%20b&x HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n\r\n")
    s.sendall(reqs)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d+) ", data)]
    assert statuses == [200, 200, 404, 200], data
    assert data.index(b'"nodes"') < data.index(b'"live"') < \
        data.index(b'"not_found"') < data.index(b'"channels"')
    status, _, body = srv.api_get("/api/channels?prefix=%zz")
    assert status == 400
