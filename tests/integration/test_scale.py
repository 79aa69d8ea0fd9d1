"""1,000 connections on 4 workers, 1,000 broadcasts: nothing lost,
duplicated or reordered.

The clients are raw sockets multiplexed with selectors in this thread: the
websockets library would spend minutes of Python on a million messages."""

import http.client
import json
import resource
import selectors
import threading
import time

from rawws import OP_TEXT, RawWS, SeqReceiver, pump
from support import HOST

N_CONN = 1000
N_MSG = 1000
WORKERS = 4
DELIVERY_TIMEOUT = 120


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def read_one_message(ws, timeout=10):
    op, payload = ws.recv_message(timeout=timeout)
    assert op == OP_TEXT, (op, payload)
    return json.loads(payload)


def Receiver(ws):
    """Expects the broadcasts of this test, in order."""
    return SeqReceiver(ws, lambda n: {"event": "tick", "channel": "scale", "data": {"seq": n}})


def test_1000_connections_1000_broadcasts(server):
    raise_fd_limit(N_CONN + 200)
    srv = server(workers=WORKERS)
    conns = []
    try:
        for _ in range(N_CONN):
            conns.append(RawWS(HOST, srv.port, timeout=10))
        for ws in conns:
            assert read_one_message(ws)["event"] == "connect"
        sub = json.dumps({"event": "subscribe", "data": {"channel": "scale"},
                          "callbackId": "s"})
        for ws in conns:
            ws.send_text(sub)
        for ws in conns:
            reply = read_one_message(ws)
            assert reply == {"event": "callback", "callbackId": "s",
                             "data": {"success": True, "channel": "scale"}}

        metrics = srv.metrics()
        per_worker = [metrics.get('bagou_open_connections{worker="%d"}' % i, 0)
                      for i in range(WORKERS)]
        assert all(n > 0 for n in per_worker), per_worker
        assert sum(per_worker) == N_CONN, per_worker
        assert srv.health()["connections"] == N_CONN

        sel = selectors.DefaultSelector()
        receivers = []
        for ws in conns:
            ws.sock.setblocking(False)
            r = Receiver(ws)
            receivers.append(r)
            sel.register(ws.sock, selectors.EVENT_READ, r)

        publish_error = []

        def publish():
            conn = http.client.HTTPConnection(HOST, srv.api_port, timeout=30)
            try:
                for seq in range(N_MSG):
                    conn.request("POST", "/broadcast", body=json.dumps(
                        {"event": "tick", "channel": "scale",
                         "data": {"seq": seq}}),
                        headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 202:
                        publish_error.append((seq, resp.status))
                        return
            except Exception as e:     # reported by the main thread
                publish_error.append(repr(e))
            finally:
                conn.close()

        publisher = threading.Thread(target=publish, daemon=True)
        t0 = time.monotonic()
        publisher.start()
        deadline = t0 + DELIVERY_TIMEOUT
        pump(sel, N_MSG, deadline, lambda: bool(publish_error))
        elapsed = time.monotonic() - t0
        publisher.join(timeout=10)
        sel.close()

        assert not publish_error, publish_error
        bad = [(i, r.next, r.errors[:3]) for i, r in enumerate(receivers)
               if r.errors or r.next != N_MSG]
        assert not bad, ("%d of %d connections wrong after %.1f s; first: %r"
                         % (len(bad), N_CONN, elapsed, bad[:5]))
    finally:
        for ws in conns:
            ws.close()
