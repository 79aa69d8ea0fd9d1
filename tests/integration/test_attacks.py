"""Attacks (docs/STRESS.md, short forms): each runs against a real server
while a canary client (tests/stress/canary.py) keeps receiving a client
publish every 50 ms; the canary must get every broadcast, once, with p99
latency under CANARY_P99_MS, and the server must come back to its
baseline. The long forms are `make stress`.

Contract: PROTOCOL.md §2 (frames, limits), §8 (listeners: no HTTP/2),
and the issue's "handshakes and unfinished HTTP requests counted, with
deadlines". BAGOU_BIN selects the server under test.
"""

import json
import os
import select
import struct
import sys
import time

import pytest

from rawws import (OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, Closed, RawWS,
                   build_frame)
from support import HOST, SANITIZER, error_code, wait_for

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "stress"))

from attacks import (http_exchange, proc_stats, raise_fd_limit,  # noqa
                     reset_storm, settle, slow_posts,
                     slowloris, status_of)
from canary import Canary  # noqa: E402

CANARY_P99_MS = 500.0
API_KEY = "attack-key"
# Clients must publish (the canary does) and may send fast (floods).
CONFIG = {"channels": {"client_publish": "all"},
          "limits": {"rate": 0},
          "http": {"api_key": API_KEY}}
# A handshake or HTTP request unfinished after this many seconds must have
# been closed by the server (its deadline plus slack).
SLOW_BOUND = float(os.environ.get("BAGOU_SLOW_BOUND", "30"))
# When set, each test appends what it saw (one JSON line) to this file:
# the table of docs/STRESS.md.
REPORT = os.environ.get("BAGOU_ATTACK_REPORT")


def report(canary, **seen):
    """Records the canary's summary and what the attack saw, then checks
    the canary (every broadcast, p99 under CANARY_P99_MS)."""
    r = canary.stop()
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({
                "test": os.environ.get("PYTEST_CURRENT_TEST", "?").split(
                    " ")[0].split("::")[-1],
                "canary": {k: r.get(k) for k in ("sent", "n_missing",
                                                 "p50", "p99", "max")},
                "seen": seen}, default=str) + "\n")
    canary.check(CANARY_P99_MS)


def client(srv):
    ws = RawWS(HOST, srv.port, timeout=10)
    op, payload = ws.recv_message(timeout=10)
    assert op == OP_TEXT and json.loads(payload)["event"] == "connect"
    return ws


def still_serves(srv):
    """A fresh client still connects and gets its pong."""
    ws = client(srv)
    try:
        ws.send_text('{"event":"ping","callbackId":"p"}')
        op, payload = ws.recv_message(timeout=5)
        assert json.loads(payload)["callbackId"] == "p", payload
    finally:
        ws.close()
    assert srv.alive()


def send_until_answered(ws, chunks, pause=0.0):
    """Sends chunks in turn, stopping as soon as the server has sent
    something (its close frame, read before any reset can drop it) or
    the connection fails; waits up to pause seconds for an answer between
    chunks. Returns how many chunks went out."""
    n = 0
    for chunk in chunks:
        if select.select([ws.sock], [], [], pause)[0]:
            break
        try:
            ws.send_raw(chunk)
        except OSError:
            break
        n += 1
    select.select([ws.sock], [], [], 0.2)
    return n


# ---------------------------------------------------------------- churn

def test_reset_storm_1000_three_times(server):
    """1,000 upgraded connections reset (RST) at once, three times: the
    server's fds come back to baseline, RSS stays near it."""
    n = 1000
    raise_fd_limit(n + 500)
    srv = server(config=CONFIG)
    pid = srv.proc.pid
    with Canary(srv.port) as canary:
        res = reset_storm(srv.port, pid, n, rounds=3, settle_timeout=30)
    report(canary, storm=res)
    base = res["base"]
    for r in res["rounds"]:
        assert r["fds_peak"] >= base["fds"] + n, res   # they were open
        assert r["fds_after"] <= base["fds"] + 20, res
    # RSS after three rounds: no per-connection leak (1,000 leaked
    # connections of a few KiB each would show), allocator caches allowed.
    # RSS under a sanitizer (quarantine, shadow memory) says nothing about
    # the server's own: make test checks it against the plain build.
    if not SANITIZER:
        assert res["rounds"][-1]["rss_after_kb"] <= \
            res["rounds"][0]["rss_after_kb"] + 8 * 1024, res
    wait_for(lambda: srv.health()["connections"] == 0, timeout=10,
             what="connections back to 0")
    still_serves(srv)


# ---------------------------------------------------------------- slow

def test_slowloris_handshakes_time_out(server):
    """100 upgrade requests trickling one byte every 2 s are closed by the
    server within its handshake deadline; normal clients keep connecting
    meanwhile (one a second, each within 2 s)."""
    srv = server(config=CONFIG)
    base = proc_stats(srv.proc.pid)
    with Canary(srv.port) as canary:
        res = slowloris(srv.port, 100, interval=2.0, max_wait=SLOW_BOUND)
    report(canary, closed=res["closed"], close_s=res["close_s"][-1:],
           probes=res["probe_ok"], probe_max_s=res["probe_max_s"])
    assert res["closed"] == res["n"], res
    assert not res["probe_failed"] and res["probe_max_s"] < 2.0, res
    after = settle(srv.proc.pid, base, 10, 10)
    assert after["fds"] <= base["fds"] + 10, (base, after)
    still_serves(srv)


def test_slow_post_bodies_time_out(server):
    """100 POST /broadcast bodies trickling one byte every 2 s are timed
    out; normal clients keep connecting."""
    srv = server(config=CONFIG)
    base = proc_stats(srv.proc.pid)
    with Canary(srv.port) as canary:
        res = slow_posts(srv.port, 100, API_KEY, interval=2.0,
                         max_wait=SLOW_BOUND)
    report(canary, closed=res["closed"], close_s=res["close_s"][-1:],
           answers=res["answers"], probes=res["probe_ok"],
           probe_max_s=res["probe_max_s"])
    assert res["closed"] == res["n"], res
    assert not res["probe_failed"] and res["probe_max_s"] < 2.0, res
    after = settle(srv.proc.pid, base, 10, 10)
    assert after["fds"] <= base["fds"] + 10, (base, after)
    still_serves(srv)


# ---------------------------------------------------------------- HTTP

H2C_SETTINGS = "AAMAAABkAARAAAAAAAIAAAAA"


@pytest.mark.parametrize("path", ["/health", "/websocket"])
def test_h2c_upgrade_refused(server, path):
    """Upgrade: h2c never gets 101 or HTTP/2 (PROTOCOL.md §8: HTTP/1.1)."""
    srv = server(config=CONFIG)
    with Canary(srv.port) as canary:
        req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: Upgrade, "
               "HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: %s\r\n\r\n"
               % (path, HOST, srv.port, H2C_SETTINGS)).encode()
        answer, _ = http_exchange(srv.port, req, timeout=3)
        status = status_of(answer)
        seen = {"upgrade": answer[:40]}
        assert status != 101 and b"h2c" not in answer.split(
            b"\r\n\r\n")[0].lower(), answer[:300]
        assert answer == b"" or answer.startswith(b"HTTP/1.1 "), \
            answer[:300]
        # HTTP/2 with prior knowledge: no SETTINGS frame comes back.
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + \
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        answer, _ = http_exchange(srv.port, preface, timeout=3)
        seen["preface"] = answer[:40]
        assert not (len(answer) >= 9 and answer[3] == 0x04), answer[:60]
        assert answer == b"" or (answer.startswith(b"HTTP/1.") and
                                 400 <= (status_of(answer) or 0) < 500), \
            answer[:300]
    report(canary, **seen)
    still_serves(srv)


@pytest.mark.parametrize("kind", ["huge", "many"])
def test_header_flood(server, kind):
    """A 256 KiB header, or 10,000 headers, 50 times: each answered 431 or
    closed, never upgraded; no fd or memory growth."""
    srv = server(config=CONFIG)
    pid = srv.proc.pid
    head = "GET /websocket HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket" \
        "\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " \
        "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" \
        % (HOST, srv.port)
    if kind == "huge":
        req = head + "X-Big: " + "a" * (256 * 1024) + "\r\n\r\n"
    else:
        req = head + "".join("X-H%d: v\r\n" % i for i in range(10000)) \
            + "\r\n"
    base = proc_stats(pid)
    statuses = {}
    with Canary(srv.port) as canary:
        for i in range(50):
            answer, closed = http_exchange(srv.port, req.encode(),
                                           timeout=5)
            st = status_of(answer)
            statuses[st] = statuses.get(st, 0) + 1
            assert st == 431 or (st is None and closed), answer[:200]
            if i == 0:
                first = proc_stats(pid)
    after = settle(pid, base, 10, 10)
    report(canary, statuses=statuses, base=base, after=after)
    assert after["fds"] <= base["fds"] + 10, (base, after)
    assert after["rss_kb"] <= first["rss_kb"] + 4096, (base, first, after)
    still_serves(srv)


# ---------------------------------------------------------------- frames

@pytest.mark.parametrize("length", [2**63, 2**64 - 1, 2**62])
def test_huge_frame_length_closed(server, length):
    """A 64-bit frame length over max_message_size (2^63 breaks RFC 6455's
    most-significant-bit rule) is closed with 1009 or 1002 at once."""
    srv = server(config=CONFIG)
    with Canary(srv.port) as canary:
        ws = client(srv)
        try:
            # A zero mask keeps the payload valid UTF-8 (spaces), so
            # only the length is wrong; 70 KB passes max_message_size.
            send_until_answered(ws, [
                struct.pack("!BBQ", 0x81, 0x80 | 127, length) +
                b"\0\0\0\0"] + [b" " * 1000] * 70)
            code = ws.wait_close(timeout=5)
        finally:
            ws.close()
    report(canary, close_code=code)
    assert code in (1002, 1009), code
    still_serves(srv)


def test_fragment_flood_over_limit_closed_1009(server):
    """Continuation fragments adding up past max_message_size: 1009."""
    srv = server(config=CONFIG)
    with Canary(srv.port) as canary:
        ws = client(srv)
        try:
            ws.send_frame(OP_TEXT, b"[" * 1000, fin=False)
            send_until_answered(ws, (build_frame(OP_CONT, b" " * 1000,
                                                 fin=False)
                                     for _ in range(200)))  # 200 KB
            code = ws.wait_close(timeout=5)
        finally:
            ws.close()
    report(canary, close_code=code)
    assert code == 1009, code
    still_serves(srv)


def test_fragment_flood_empty_fragments(server):
    """50,000 empty continuation fragments, then the end of a ping: the
    message is answered, or the connection closed 1008/1009; the server
    and the canary are unaffected."""
    srv = server(config=CONFIG)
    with Canary(srv.port) as canary:
        ws = client(srv)
        try:
            ws.send_frame(OP_TEXT, b'{"event":"ping",', fin=False)
            empty = build_frame(OP_CONT, b"", fin=False)
            sent = send_until_answered(ws, [empty * 100] * 500,
                                       pause=0.002)
            try:
                if sent == 500:
                    ws.send_frame(OP_CONT, b'"callbackId":"f"}', fin=True)
                op, payload = ws.recv_message(timeout=10)
            except (OSError, Closed):
                op, payload = OP_CLOSE, b""
        finally:
            ws.close()
    report(canary, op=op, close_code=ws.close_code, reply=payload[:60])
    if op == OP_CLOSE:
        assert ws.close_code in (1008, 1009), ws.close_code
    else:
        assert json.loads(payload)["callbackId"] == "f", payload
    still_serves(srv)


DEEP = 100000


@pytest.mark.parametrize("where", ["message", "publish", "unbalanced"])
def test_deep_json(server, where):
    """100,000-deep JSON (in a 1 MiB message limit, so the parser sees
    it): bad_message, or 1009; no crash, no stack overflow."""
    cfg = dict(CONFIG, limits={"rate": 0, "max_message_size": "1M",
                               "max_queued_bytes": "4M"})
    srv = server(config=cfg)
    deep = "[" * DEEP + "]" * DEEP
    text = {
        "message": '{"event":"ping","callbackId":"d","data":%s}' % deep,
        "publish": '{"event":"publish","callbackId":"d","data":'
                   '{"channel":"deep","event":"e","data":%s}}' % deep,
        "unbalanced": '{"event":"ping","callbackId":"d","data":' +
                      "[" * (2 * DEEP),
    }[where]
    with Canary(srv.port) as canary:
        ws = client(srv)
        try:
            ws.send_text(text)
            op, payload = ws.recv_message(timeout=10)
            seen = {"close_code": ws.close_code, "reply": payload[:90]}
            if op == OP_CLOSE:
                assert ws.close_code == 1009, ws.close_code
            else:
                # An error event, or the failure callback when the
                # callbackId could be read.
                assert error_code(json.loads(payload)) == "bad_message"
                ws.send_text('{"event":"ping","callbackId":"after"}')
                op, payload = ws.recv_message(timeout=5)
                assert json.loads(payload)["callbackId"] == "after"
        finally:
            ws.close()
    report(canary, **seen)
    still_serves(srv)


def test_ping_flood_unread_pongs(server):
    """100,000 WebSocket pings (125-byte payloads) from a client that never
    reads: the server's memory stays bounded (pongs are not queued without
    limit), and the flood is answered or cut, not crashed on."""
    srv = server(config=CONFIG)
    pid = srv.proc.pid
    base = proc_stats(pid)
    peak = dict(base)
    with Canary(srv.port) as canary:
        ws = RawWS(HOST, srv.port, timeout=10, rcvbuf=4096)
        ping = build_frame(OP_PING, b"p" * 125)
        sent = 0
        try:
            ws.sock.settimeout(10)
            for _ in range(100):
                ws.send_raw(ping * 1000)
                sent += 1000
                if sent % 10000 == 0:
                    st = proc_stats(pid)
                    peak["rss_kb"] = max(peak["rss_kb"], st["rss_kb"])
        except OSError:
            pass                    # cut: allowed
        finally:
            ws.close()
    report(canary, pings_sent=sent, base=base, peak=peak)
    # 100,000 queued pongs would be 12.7 MB.
    if not SANITIZER:           # see test_reset_storm_1000_three_times
        assert peak["rss_kb"] <= base["rss_kb"] + 8 * 1024, \
            (base, peak, sent)
    still_serves(srv)


def test_1000_long_subscriptions_per_client(server):
    """20 clients each subscribe to 1,000 distinct 200-byte channel names
    (the limit): all accepted, the 1,001st refused with
    too_many_subscriptions, memory bounded (under 2 KiB a subscription),
    and all of it released when they leave."""
    srv = server(config=CONFIG)
    pid = srv.proc.pid
    base = proc_stats(pid)
    clients = []
    with Canary(srv.port) as canary:
        try:
            for c in range(20):
                ws = client(srv)
                clients.append(ws)
                for i in range(1001):
                    name = ("c%02d-%04d-" % (c, i)).ljust(200, "x")
                    ws.send_text(json.dumps({
                        "event": "subscribe", "callbackId": str(i),
                        "data": {"channel": name}}))
                for i in range(1001):
                    op, payload = ws.recv_message(timeout=10)
                    msg = json.loads(payload)
                    assert msg["callbackId"] == str(i), msg
                    if i < 1000:
                        assert msg["data"]["success"] is True, msg
                    else:
                        assert msg["data"]["error"]["code"] == \
                            "too_many_subscriptions", msg
            full = proc_stats(pid)
        finally:
            for ws in clients:
                ws.close()
    report(canary, base=base, full=full)
    grown = full["rss_kb"] - base["rss_kb"]
    if not SANITIZER:           # see test_reset_storm_1000_three_times
        assert grown <= 20 * 1000 * 2, (base, full)
    wait_for(lambda: srv.health()["connections"] == 0, timeout=10,
             what="clients gone")
    still_serves(srv)


@pytest.mark.skipif(SANITIZER != "", reason="RSS under a sanitizer says "
                    "nothing about the server's own memory; make test "
                    "runs this file against the plain build")
def test_reset_storm_memory_goes_back_to_baseline(server):
    """Issue 8: 3,000 connections reset at once; once they are gone the
    server's RSS is back within a quarter of what they took (at least
    3 MiB allowed) in a few seconds. Before, libevent's record of each new
    descriptor number, left between the freed connections in the
    workers' heaps, kept most of it resident (server/evmem.c), and the
    last closes of a burst waited up to 5 s for a trim."""
    n = 3000
    raise_fd_limit(n + 500)
    srv = server(config=CONFIG)
    pid = srv.proc.pid
    warm = reset_storm(srv.port, pid, 50, rounds=1, settle_timeout=30)
    assert warm["rounds"][0]["fds_after"] <= warm["base"]["fds"] + 20
    base = proc_stats(pid)["rss_kb"]
    res = reset_storm(srv.port, pid, n, rounds=1, settle_timeout=30)
    peak = res["rounds"][0]["rss_peak_kb"]
    assert peak - base > 4096, res          # the connections took memory
    allowed = max(3 * 1024, (peak - base) // 4)
    seen = [proc_stats(pid)["rss_kb"]]
    deadline = time.monotonic() + 4
    while seen[-1] - base > allowed and time.monotonic() < deadline:
        time.sleep(0.25)
        seen.append(proc_stats(pid)["rss_kb"])
    assert seen[-1] - base <= allowed, \
        "RSS not back near the baseline (base %d KiB, peak %d KiB, " \
        "allowed +%d KiB, seen %s)" % (base, peak, allowed, seen)
    print("reset storm of %d: RSS base %d KiB, peak %d, after %d"
          % (n, base, peak, seen[-1]))
    still_serves(srv)
