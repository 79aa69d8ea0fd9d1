"""`make test-presence-long`: 10,000 members in one presence channel on
three nodes sharing one RabbitMQ (not part of `make test`: the joins
alone make 50 million presence_join frames, n(n-1)/2, about 3.5 GB on
loopback).

Each member is its own user on its own raw WebSocket connection (a
third of them on each node), subscribed without a callbackId (so no
member list is built for it); one thread reads and discards what every
connection receives, so none is cut as a slow consumer. Then:
- every node answers users = 10000 and the same member list (timed: the
  convergence of 10,000 joins);
- the 10,001st user gets channel_full, a member's second tab does not;
- one node is SIGKILLed: the other two drop its members within
  [presence] timeout (timed); a node started then gets the state of
  the two others (timed);
- memory: the member table's own bytes per member (bagou_presence_bytes)
  and the whole RSS growth per member connection, per node.

Run: BAGOU_BIN=build/bagou-server /usr/bin/python3 -m pytest -s -q \
     -p no:cacheprovider tests/integration/presence_long.py
Environment: PRESENCE_MEMBERS (default 10000)."""

import json
import os
import resource
import selectors
import socket
import threading
import time

import jwt

from rabbitmq import amqp_server, unique_exchange  # noqa: F401 (fixture)
from rawws import OP_TEXT, build_frame, handshake_request
from support import HOST, http_get, metric_sum, run, ws_connect, recv_json

SECRET = "presence-long"
ROOM = "presence-big"
TIMEOUT = 10          # above the bus's longest stall under this load
MEMBERS = int(os.environ.get("PRESENCE_MEMBERS", "10000"))


def token(sub):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600,
                       "channels": ["presence-*"], "info": {"n": sub}},
                      SECRET, algorithm="HS256")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def stats(srv):
    status, _, body = http_get(srv.api_port, "/api/presence_stats?channel="
                               + ROOM, timeout=30)
    assert status == 200, body
    return json.loads(body)


def members_body(srv):
    status, _, body = http_get(srv.api_port, "/api/presence?channel="
                               + ROOM, timeout=30)
    assert status == 200, body
    return body


def wait_users(nodes, want, timeout):
    t0 = time.monotonic()
    while True:
        got = [stats(n)["users"] for n in nodes]
        if all(g == want for g in got):
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, (want, got)
        time.sleep(0.1)


class Drain(threading.Thread):
    """Reads and discards everything the sockets receive."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sel = selectors.DefaultSelector()
        self.stop = False
        self.bytes = 0
        self.closed = 0

    def add(self, sock):
        """Before start() only: a selector is not for two threads."""
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ)

    def run(self):
        buf = bytearray(1 << 18)
        while not self.stop:
            for key, _ in self.sel.select(timeout=0.05):
                try:
                    n = key.fileobj.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    n = 0
                if n == 0:
                    self.sel.unregister(key.fileobj)
                    self.closed += 1
                self.bytes += n


def open_member(port, user):
    s = socket.create_connection((HOST, port), timeout=10)
    s.sendall(handshake_request(HOST, port, "/websocket?token=" + token(user)))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return s


def test_ten_thousand_members(amqp_server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < MEMBERS + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (min(hard, MEMBERS + 4000), hard))
    exchange = unique_exchange("bagou-presence-long")
    cfg = {"auth": {"secret": SECRET},
           "presence": {"timeout": TIMEOUT},
           # The drain thread answers no ping: lws would hang up on
           # members that never pong within ping_interval * 2 + 10 s.
           "server": {"max_connections": MEMBERS + 1000,
                      "ping_interval": 0}}
    nodes = [amqp_server(config=cfg, exchange=exchange) for _ in range(3)]
    rss0 = [rss_kb(n.proc.pid) for n in nodes]
    drain = Drain()
    socks = []
    sub = build_frame(OP_TEXT, json.dumps(
        {"event": "subscribe", "data": {"channel": ROOM}}))
    try:
        t0 = time.monotonic()
        for i in range(MEMBERS):
            s = open_member(nodes[i % 3].port, "u%05d" % i)
            socks.append(s)
            drain.add(s)
        drain.start()
        connect_s = time.monotonic() - t0
        t0 = time.monotonic()
        for s in socks:
            s.send(sub)  # a few bytes into an empty send buffer
        join_s = wait_users(nodes, MEMBERS, timeout=300)
        join_s = time.monotonic() - t0
        bodies = [members_body(n) for n in nodes]
        assert bodies[0] == bodies[1] == bodies[2], "not alike"
        members = json.loads(bodies[0])["members"]
        assert len(members) == MEMBERS
        assert members[0] == {"user": "u00000", "info": {"n": "u00000"}}
        for n in nodes:
            assert stats(n) == {"clients": MEMBERS, "users": MEMBERS}
        rss1 = [rss_kb(n.proc.pid) for n in nodes]
        table = [metric_sum(n.metrics(), "bagou_presence_bytes")
                 for n in nodes]

        async def limits():
            ws, _ = await ws_connect(nodes[0], "/websocket?token="
                                     + token("one-too-many"))
            await ws.send(json.dumps({"event": "subscribe", "callbackId": "x",
                                      "data": {"channel": ROOM}}))
            got = await recv_json(ws, timeout=30)
            assert got["data"]["error"]["code"] == "channel_full", got
            tab, _ = await ws_connect(nodes[1], "/websocket?token="
                                      + token("u00001"))
            await tab.send(json.dumps({"event": "presence_stats",
                                       "callbackId": "s",
                                       "data": {"channel": ROOM}}))
            while True:
                got = await recv_json(tab, timeout=30)
                if got.get("callbackId") == "s":
                    break
            assert got["data"] == {"success": True, "clients": MEMBERS,
                                   "users": MEMBERS}
            await ws.close()
            await tab.close()
        run(limits(), timeout=120)

        # SIGKILL the third node: its third of the members leaves.
        dead = nodes[2]
        dead.expected_exit = None
        t0 = time.monotonic()
        dead.proc.kill()
        gone = len(range(2, MEMBERS, 3))
        wait_users(nodes[:2], MEMBERS - gone, timeout=TIMEOUT + 60)
        kill_s = time.monotonic() - t0
        assert members_body(nodes[0]) == members_body(nodes[1])
        # A node started now gets the whole state from the two others.
        t0 = time.monotonic()
        late = amqp_server(config=cfg, exchange=exchange)
        wait_users([late], MEMBERS - gone, timeout=60)
        late_s = time.monotonic() - t0
        assert members_body(late) == members_body(nodes[0])
        nodes.append(late)
        per_node = MEMBERS / 3
        print("\npresence-long: %d members: connected in %.1f s; every "
              "node had all of them %.1f s after the first subscribe; "
              "%d members of a SIGKILLed node gone everywhere in %.1f s "
              "(timeout %d s); a node started then had the %d others "
              "%.1f s after its start; %.1f MB of events read"
              % (MEMBERS, connect_s, join_s, gone, kill_s, TIMEOUT,
                 MEMBERS - gone, late_s, drain.bytes / 1e6))
        for i, n in enumerate(nodes[:3]):
            print("  node %d: member table %.0f bytes per member (%d "
                  "entries known); RSS +%.1f KB per member connection"
                  % (i, table[i] / MEMBERS, MEMBERS,
                     (rss1[i] - rss0[i]) / per_node))
    finally:
        for n in nodes:
            n.expected_exit = None
            if n.proc is not None and n.proc.poll() is None:
                n.proc.kill()
        drain.stop = True
        if drain.is_alive():
            drain.join(timeout=5)
        for s in socks:
            s.close()
