"""PROTOCOL §10, presence channels, on three nodes sharing one RabbitMQ:
members seen alike from every node (events, the presence events, the
API), three tabs of one user make one join and one leave, a node killed
with SIGKILL has its members leave everywhere within [presence] timeout,
a node started later sees the current state; and the errors (not
authenticated, not allowed, channel_full, not a presence channel) on a
single standalone node.

The convergence and detection times measured here are printed (run with
-s to see them)."""

import asyncio
import json
import time

import jwt

from support import (error_code, http_get, http_post, metric_sum, run,
                     send_json, ws_connect)
from rabbitmq import (Publisher, amqp_server,  # noqa: F401 (fixture)
                      unique_exchange)

SECRET = "presence-secret"
TIMEOUT = 3          # [presence] timeout of the clusters below
ROOM = "presence-room"


def token(sub, channels=("presence-*",), info=None):
    claims = {"sub": sub, "exp": int(time.time()) + 3600,
              "channels": list(channels)}
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Client:
    """A WebSocket connection whose messages a reader task collects, so a
    test can wait for one that matches while others (events) arrive."""

    def __init__(self, ws, cid, who):
        self.ws, self.id, self.who = ws, cid, who
        self.msgs = []
        self.cond = asyncio.Condition()
        self.reader = asyncio.ensure_future(self._read())
        self.n = 0

    @classmethod
    async def open(cls, srv, user=None, **kw):
        path = "/websocket"
        if user is not None:
            path += "?token=" + token(user, **kw)
        ws, cid = await ws_connect(srv, path)
        return cls(ws, cid, user)

    async def _read(self):
        try:
            async for raw in self.ws:
                async with self.cond:
                    self.msgs.append(json.loads(raw))
                    self.cond.notify_all()
        except Exception:
            pass

    async def wait(self, pred, timeout=10.0, what="a message"):
        """The first collected message matching pred (removed)."""
        async def find():
            async with self.cond:
                while True:
                    for i, m in enumerate(self.msgs):
                        if pred(m):
                            return self.msgs.pop(i)
                    await self.cond.wait()
        try:
            return await asyncio.wait_for(find(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError("%s: no %s within %.1f s; got %r"
                                 % (self.who, what, timeout, self.msgs))

    async def call(self, event, data, timeout=10.0):
        self.n += 1
        cb = "c%d" % self.n
        await send_json(self.ws, {"event": event, "data": data,
                                  "callbackId": cb})
        msg = await self.wait(lambda m: m.get("callbackId") == cb,
                              timeout, "callback %s" % cb)
        return msg["data"]

    async def subscribe(self, channel=ROOM):
        return await self.call("subscribe", {"channel": channel})

    async def event(self, kind, user, timeout=10.0):
        """Waits for presence_join/leave (kind) of user."""
        return await self.wait(
            lambda m: m.get("event") == "presence_" + kind
            and m["data"]["user"] == user, timeout,
            "presence_%s of %s" % (kind, user))

    def events(self, kind, user):
        return [m for m in self.msgs if m.get("event") == "presence_" + kind
                and m["data"]["user"] == user]

    async def close(self):
        await self.ws.close()
        self.reader.cancel()


def users(members):
    return [m["user"] for m in members]


def api_members(srv, channel=ROOM):
    status, _, body = http_get(srv.api_port, "/api/presence?channel="
                               + channel)
    assert status == 200, body
    return json.loads(body)["members"]


def api_stats(srv, channel=ROOM):
    status, _, body = http_get(srv.api_port, "/api/presence_stats?channel="
                               + channel)
    assert status == 200, body
    return json.loads(body)


async def alike(nodes, want, timeout=10.0):
    """Waits until every node's /api/presence lists exactly want (user
    ids); returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        got = [users(await asyncio.to_thread(api_members, n))
               for n in nodes]
        if all(g == sorted(want) for g in got):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError("members not alike: want %r, got %r"
                                 % (sorted(want), got))
        await asyncio.sleep(0.02)


def cluster(amqp_server, n=3, **presence):
    exchange = unique_exchange("bagou-presence")
    cfg = {"auth": {"secret": SECRET},
           "presence": dict({"timeout": TIMEOUT}, **presence)}
    return [amqp_server(config=cfg, exchange=exchange) for _ in range(n)]


def test_members_alike_tabs_join_once(amqp_server):
    a, b, c = nodes = cluster(amqp_server)

    async def scenario():
        obs = []
        for i, n in enumerate(nodes):
            o = await Client.open(n, "obs%d" % i, info={"node": i})
            reply = await o.subscribe()
            assert reply["success"] is True and reply["channel"] == ROOM
            assert "obs%d" % i in users(reply["members"])
            obs.append(o)
        await alike(nodes, ["obs0", "obs1", "obs2"])
        for o in obs:      # the joins so far are not the test's
            o.msgs.clear()

        # Three tabs of alice, one per node.
        tabs = []
        t0 = time.monotonic()
        for n in nodes:
            t = await Client.open(n, "alice", info={"name": "Alice"})
            reply = await t.subscribe()
            assert reply["success"] is True
            assert users(reply["members"]) == ["alice", "obs0", "obs1",
                                                "obs2"]
            assert reply["count"] == 4
            assert reply["members"][0] == {"user": "alice",
                                           "info": {"name": "Alice"}}
            tabs.append(t)
            if len(tabs) == 1:
                for o in obs:
                    await o.event("join", "alice")
                join_s = time.monotonic() - t0
        # A sentinel user joins after the other tabs: every observer
        # sees it, and still exactly one join of alice before it.
        s = await Client.open(b, "zed")
        await s.subscribe()
        for o in obs:
            await o.event("join", "zed")
            assert o.events("join", "alice") == []
        want = ["alice", "obs0", "obs1", "obs2", "zed"]
        await alike(nodes, want)
        for n, o in zip(nodes, obs):
            got = await o.call("presence", {"channel": ROOM})
            assert got["success"] is True and users(got["members"]) == want
            got = await o.call("presence_stats", {"channel": ROOM})
            assert got == {"success": True, "clients": 7, "users": 5}
            assert await asyncio.to_thread(api_stats, n) == {
                "clients": 7, "users": 5}
        members = [await asyncio.to_thread(api_members, n) for n in nodes]
        assert members[0] == members[1] == members[2]

        # Two tabs close: alice is still here; the third: she leaves.
        await tabs[0].close()
        await tabs[1].call("unsubscribe", {"channel": ROOM})
        await s.call("unsubscribe", {"channel": ROOM})
        for o in obs:
            await o.event("leave", "zed")
            assert o.events("leave", "alice") == []
        assert (await asyncio.to_thread(api_stats, c))["clients"] == 4
        t0 = time.monotonic()
        await tabs[2].close()
        for o in obs:
            await o.event("leave", "alice")
        leave_s = time.monotonic() - t0
        await alike(nodes, ["obs0", "obs1", "obs2"])
        print("\npresence: join seen on 3 nodes in %.1f ms, leave in "
              "%.1f ms" % (join_s * 1000, leave_s * 1000))
        for x in obs + [tabs[1], s]:
            await x.close()
    run(scenario(), timeout=60)


def test_killed_node_leaves_restarted_node_sees(amqp_server):
    a, b, c = cluster(amqp_server)

    async def scenario():
        oa = await Client.open(a, "ann")
        ob = await Client.open(b, "bob")
        oc = await Client.open(c, "cid")
        for o in (oa, ob, oc):
            await o.subscribe()
        c2 = await Client.open(c, "cat")
        await c2.subscribe()
        await alike([a, b, c], ["ann", "bob", "cat", "cid"])
        # SIGKILL: no goodbye; the others notice the silence.
        c.expected_exit = None
        t0 = time.monotonic()
        c.proc.kill()
        for o in (oa, ob):
            await o.event("leave", "cat", timeout=TIMEOUT + 5)
            await o.event("leave", "cid", timeout=TIMEOUT + 5)
        dead_s = time.monotonic() - t0
        assert dead_s < TIMEOUT + 2.5, dead_s
        await alike([a, b], ["ann", "bob"])
        # A node started now learns the current state.
        t0 = time.monotonic()
        d = await asyncio.to_thread(cluster_node, amqp_server, a)
        await alike([d], ["ann", "bob"])
        sync_s = time.monotonic() - t0
        od = await Client.open(d, "dan")
        reply = await od.subscribe()
        assert users(reply["members"]) == ["ann", "bob", "dan"]
        for o in (oa, ob):
            await o.event("join", "dan")
        await alike([a, b, d], ["ann", "bob", "dan"])
        # A node stopped normally says goodbye: its members leave at
        # once, not after the timeout.
        t0 = time.monotonic()
        await asyncio.to_thread(d.stop)
        for o in (oa, ob):
            await o.event("leave", "dan", timeout=TIMEOUT)
        bye_s = time.monotonic() - t0
        assert bye_s < TIMEOUT - 1, bye_s
        print("\npresence: SIGKILLed node's members left in %.2f s "
              "(timeout %d s); a new node had the state %.2f s after "
              "it was started (connected to RabbitMQ included); a "
              "stopped node's members left in %.2f s"
              % (dead_s, TIMEOUT, sync_s, bye_s))
        for x in (oa, ob, od, oc, c2):
            await x.close()
    run(scenario(), timeout=60)


def cluster_node(amqp_server, like):
    """One more node on the cluster of like (same exchange and ini)."""
    with open(like.config_path) as f:
        text = f.read()
    exchange = [ln.split("=", 1)[1].strip() for ln in text.splitlines()
                if ln.startswith("exchange")][0]
    return amqp_server(config={"auth": {"secret": SECRET},
                               "presence": {"timeout": TIMEOUT}},
                       exchange=exchange)


def test_errors(server):
    srv = server(config={"auth": {"secret": SECRET},
                         "channels": {"client_publish": "all"},
                         "presence": {"max_members": 3}})

    async def scenario():
        anon = await Client.open(srv)
        got = await anon.subscribe()
        assert got["success"] is False
        assert got["error"]["code"] == "forbidden"
        got = await anon.call("presence", {"channel": ROOM})
        assert got["error"]["code"] == "forbidden"
        other = await Client.open(srv, "eve", channels=["presence-other"])
        got = await other.subscribe()
        assert got["error"]["code"] == "forbidden"
        got = await other.call("presence_stats", {"channel": ROOM})
        assert got["error"]["code"] == "forbidden"
        got = await other.call("presence", {"channel": "news"})
        assert got["error"]["code"] == "bad_message"
        # Publishing to a presence channel needs what subscribing needs.
        for who in (anon, other):
            got = await who.call("publish", {"channel": ROOM, "event": "x",
                                             "data": {}})
            assert got["error"]["code"] == "not_allowed", got
        # A server-side subscribe: an anonymous connection cannot be a
        # member; an authenticated one joins (and is the 3rd member).
        status, _, body = http_post(srv.api_port, "/api/subscribe",
                                    {"client": anon.id, "channel": ROOM})
        assert status == 200, body
        msg = await anon.wait(lambda m: m.get("event") == "error")
        assert error_code(msg) == "forbidden"
        srv_side = await Client.open(srv, "zoe")
        status, _, body = http_post(srv.api_port, "/api/subscribe",
                                    {"client": srv_side.id,
                                     "channel": ROOM})
        assert status == 200, body
        await srv_side.wait(lambda m: m.get("event") == "subscribed")

        u1 = await Client.open(srv, "u1")
        u2 = await Client.open(srv, "u2")
        u3 = await Client.open(srv, "u3")
        u1b = await Client.open(srv, "u1")
        assert (await u1.subscribe())["count"] == 2
        assert (await u2.subscribe())["count"] == 3
        got = await u3.subscribe()
        assert got["error"]["code"] == "channel_full", got
        # Refused: not subscribed (the joins of others do not reach it),
        # and the error without a callbackId is an error event.
        await send_json(u3.ws, {"event": "subscribe",
                                "data": {"channel": ROOM}})
        msg = await u3.wait(lambda m: m.get("event") == "error")
        assert error_code(msg) == "channel_full"
        # Another tab of a member is never refused; resubscribing is
        # idempotent and answers the members again.
        got = await u1b.subscribe()
        assert got["success"] is True and got["count"] == 3
        got = await u1b.subscribe()
        assert users(got["members"]) == ["u1", "u2", "zoe"]
        assert api_stats(srv) == {"clients": 4, "users": 3}
        await u2.close()
        await u1.event("leave", "u2")
        assert (await u3.subscribe())["count"] == 3
        await u1.event("join", "u3")
        await srv_side.event("join", "u3")
        # Authenticated again as another user: the membership follows;
        # with a token that does not allow the channel, it is left.
        got = await u3.call("authenticate", {"token": token("u9")})
        assert got["success"] is True
        await u1.event("leave", "u3")
        await u1.event("join", "u9")
        got = await u3.call("authenticate", {"token": token(
            "u9", channels=["presence-other"])})
        assert got["success"] is True
        await u1.event("leave", "u9")
        assert [m for m in u3.msgs if m.get("event") == "presence_join"] \
            == [], "a subscriber is not told of its own join"

        # The API: bad channel, not a presence channel, unknown channel.
        for path, code in (("/api/presence", 400),
                           ("/api/presence?channel=", 400),
                           ("/api/presence?channel=a%20b", 400),
                           ("/api/presence?channel=news", 400),
                           ("/api/presence_stats?channel=news", 400)):
            status, _, body = http_get(srv.api_port, path)
            assert status == code, (path, status, body)
            assert "error" in json.loads(body)
        assert api_members(srv, "presence-empty") == []
        assert api_stats(srv, "presence-%65mpty") == {"clients": 0,
                                                      "users": 0}
        m = srv.metrics()
        assert metric_sum(m, "bagou_presence_joins_total") == 5
        assert metric_sum(m, "bagou_presence_leaves_total") == 3
        assert metric_sum(m, "bagou_presence_entries") == 2
        assert metric_sum(m, "bagou_presence_bytes") > 0
        for x in (anon, other, u1, u3, u1b, srv_side):
            await x.close()
    run(scenario(), timeout=30)


def test_control_garbage_and_a_ghost_node(amqp_server, rabbitmq):
    """The control exchange is the broker's to protect: what comes on it
    is not trusted to be well formed. Malformed presence messages change
    nothing; a node that sent one state and then nothing is a node that
    died: its member joins, then leaves within the timeout."""
    exchange = unique_exchange("bagou-presence")
    srv = amqp_server(config={"auth": {"secret": SECRET},
                              "presence": {"timeout": TIMEOUT}},
                      exchange=exchange)
    pub = Publisher(rabbitmq, exchange="")

    async def scenario():
        obs = await Client.open(srv, "obs")
        await obs.subscribe()
        ctl = exchange + ".control"
        for body in (
                {"type": "presence.delta", "node": "feed", "seq": "x",
                 "ops": [[1, 2, 3, 4], "x", None,
                         [ROOM, "evil", None, -1],
                         [ROOM, "evil", None, 2 ** 40]]},
                {"type": "presence.delta", "node": "feed", "ops": {}},
                {"type": "presence.state", "node": "feed", "part": "a",
                 "entries": 7},
                {"type": "presence.hb", "node": "feed", "seq": []},
                {"type": "presence.ask", "node": "feed", "to": 3},
                {"type": "presence.state", "node": "ghostnode",
                 "seq": 0, "part": 0, "last": True,
                 "entries": [[ROOM, "ghost", '{"x":1}', 2]]}):
            await asyncio.to_thread(pub.publish, body, "", ctl)
        got = await obs.event("join", "ghost")
        assert got["data"] == {"user": "ghost", "info": {"x": 1}}
        assert users(await asyncio.to_thread(api_members, srv)) == [
            "ghost", "obs"]
        assert await asyncio.to_thread(api_stats, srv) == {
            "clients": 3, "users": 2}
        t0 = time.monotonic()
        await obs.event("leave", "ghost", timeout=TIMEOUT + 3)
        assert time.monotonic() - t0 < TIMEOUT + 1.5
        assert obs.events("join", "evil") == []
        assert users(await asyncio.to_thread(api_members, srv)) == ["obs"]
        await obs.close()
    try:
        run(scenario(), timeout=30)
    finally:
        pub.close()
