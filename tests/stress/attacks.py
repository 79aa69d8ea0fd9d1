"""Attacks on a running bagou-server, shared by the short forms in
tests/integration/test_attacks.py (make test) and the long forms in
stress.py (make stress). Each function drives raw sockets against
127.0.0.1:PORT, bounded in time, and returns what it saw; the callers
assert. See docs/STRESS.md.
"""

import json
import os
import selectors
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

from rawws import (OP_TEXT, Closed, HandshakeError,  # noqa: E402
                   RawWS, handshake_request, parse_frames)

HOST = "127.0.0.1"


# ---------------------------------------------------------------- server

def proc_stats(pid):
    """{"fds": open descriptors, "rss_kb": resident set} of a process."""
    fds = len(os.listdir("/proc/%d/fd" % pid))
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"fds": fds, "rss_kb": rss}


def raise_fd_limit(need):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def wait_until(cond, timeout, interval=0.1):
    """Polls cond() until true or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def settle(pid, base, fd_slack, timeout):
    """Waits until the server's fd count is within fd_slack of base;
    returns the last stats."""
    last = {}

    def ok():
        last.update(proc_stats(pid))
        return last["fds"] <= base["fds"] + fd_slack
    wait_until(ok, timeout, 0.2)
    return dict(last)


# ---------------------------------------------------------------- clients

def connect_client(port, path="/websocket", timeout=5.0):
    """A normal client: upgrade and read the connect event. Returns the
    seconds it took; raises on failure."""
    t0 = time.monotonic()
    ws = RawWS(HOST, port, path=path, timeout=timeout)
    try:
        op, payload = ws.recv_message(timeout=timeout)
        assert op == OP_TEXT and json.loads(payload)["event"] == "connect"
    finally:
        ws.close()
    return time.monotonic() - t0


def open_ws_many(port, n, path="/websocket", batch=500, timeout=60.0):
    """Opens n upgraded WebSocket connections (each has read its connect
    event); returns their sockets. Batches of `batch` at a time."""
    req = handshake_request(HOST, port, path)
    socks = []
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    try:
        for start in range(0, n, batch):
            want = {}
            for _ in range(min(batch, n - start)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect((HOST, port))
                except BlockingIOError:
                    pass
                want[s] = bytearray()
                sel.register(s, selectors.EVENT_WRITE)
            while want:
                if time.monotonic() > deadline:
                    raise TimeoutError("%d of %d connections not open"
                                       % (len(want), n - len(socks)))
                for key, ev in sel.select(timeout=0.5):
                    s = key.fileobj
                    if ev & selectors.EVENT_WRITE:
                        s.sendall(req)  # fits any empty send buffer
                        sel.modify(s, selectors.EVENT_READ)
                        continue
                    data = s.recv(65536)
                    if not data:
                        raise Closed("server closed a new connection")
                    buf = want[s]
                    buf += data
                    head, sep, rest = bytes(buf).partition(b"\r\n\r\n")
                    if not sep:
                        continue
                    if not head.startswith(b"HTTP/1.1 101"):
                        raise HandshakeError(head[:12], head)
                    frames, _ = parse_frames(rest)
                    if frames:
                        sel.unregister(s)
                        del want[s]
                        socks.append(s)
    except BaseException:
        for s in socks:
            s.close()
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        raise
    finally:
        sel.close()
    return socks


def reset_all(socks):
    """Closes each socket with a TCP RST (SO_LINGER on, 0 s)."""
    linger = struct.pack("ii", 1, 0)
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        s.close()


def reset_storm(port, pid, n, rounds, settle_timeout=60.0, fd_slack=20,
                rss_watch=0.0):
    """n connections opened then reset, rounds times. Returns
    {"base": stats before, "rounds": [{"open_s", "fds_peak",
    "rss_peak_kb", "fds_after", "rss_after_kb", "settle_s"}]}; each
    round waits (up to settle_timeout) for the server's fds to come back
    within fd_slack of the base. With rss_watch seconds, each round then
    samples RSS every 0.5 s that long ("rss_curve_kb", the last one also
    "rss_settled_kb"): the workers trim freed memory once the closes
    stop, a second or two after the fds are back."""
    base = proc_stats(pid)
    out = []
    for _ in range(rounds):
        t0 = time.monotonic()
        socks = open_ws_many(port, n)
        opened = time.monotonic() - t0
        peak = proc_stats(pid)
        reset_all(socks)
        t1 = time.monotonic()
        after = settle(pid, base, fd_slack, settle_timeout)
        out.append({"open_s": round(opened, 2), "fds_peak": peak["fds"],
                    "rss_peak_kb": peak["rss_kb"],
                    "fds_after": after["fds"],
                    "rss_after_kb": after["rss_kb"],
                    "settle_s": round(time.monotonic() - t1, 2)})
        if rss_watch > 0:
            curve = [after["rss_kb"]]
            for _ in range(int(rss_watch / 0.5)):
                time.sleep(0.5)
                curve.append(proc_stats(pid)["rss_kb"])
            out[-1]["rss_curve_kb"] = curve
            out[-1]["rss_settled_kb"] = curve[-1]
    return {"base": base, "rounds": out}


# ---------------------------------------------------------------- slow

def _slow_senders(port, n, head, trickle, interval, max_wait, probe_every):
    """n connections that send head at once, then trickle one byte each
    every interval seconds. Returns {"closed": n closed by the server,
    "close_s": sorted seconds to each close, "answers": first bytes of
    the server's answers (counts), "probe_ok", "probe_failed",
    "probe_max_s"}; a normal client connects every probe_every s."""
    sel = selectors.DefaultSelector()
    socks = {}
    t0 = time.monotonic()
    for _ in range(n):
        s = socket.create_connection((HOST, port), timeout=5)
        s.setblocking(False)
        if head:
            s.sendall(head)
        socks[s] = 0
        sel.register(s, selectors.EVENT_READ)
    closed = []
    answers = {}
    probes_ok, probes_bad, probe_max = 0, [], 0.0
    next_byte = time.monotonic() + interval
    next_probe = time.monotonic()
    try:
        while socks and time.monotonic() - t0 < max_wait:
            now = time.monotonic()
            if now >= next_probe:
                try:
                    dt = connect_client(port, timeout=5.0)
                    probes_ok += 1
                    probe_max = max(probe_max, dt)
                except Exception as e:   # reported to the caller
                    probes_bad.append(repr(e)[:100])
                next_probe = now + probe_every
            if now >= next_byte:
                for s, i in list(socks.items()):
                    if i < len(trickle):
                        try:
                            s.send(trickle[i:i + 1])
                            socks[s] = i + 1
                        except OSError:
                            pass
                next_byte = now + interval
            for key, _ in sel.select(timeout=0.2):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    first = data.split(b"\r\n", 1)[0][:40].decode(
                        "latin-1")
                    answers[first] = answers.get(first, 0) + 1
                    continue
                sel.unregister(s)
                s.close()
                del socks[s]
                closed.append(time.monotonic() - t0)
    finally:
        for s in socks:
            s.close()
        sel.close()
    return {"n": n, "closed": len(closed),
            "close_s": [round(x, 1) for x in sorted(closed)],
            "answers": answers, "probe_ok": probes_ok,
            "probe_failed": probes_bad, "probe_max_s": round(probe_max, 3)}


def slowloris(port, n, interval=2.0, max_wait=40.0, probe_every=1.0):
    """n upgrade requests whose head is sent one byte every interval s."""
    return _slow_senders(port, n, b"", handshake_request(HOST, port,
                                                         "/websocket"),
                         interval, max_wait, probe_every)


def slow_posts(port, n, api_key, interval=2.0, max_wait=40.0,
               probe_every=1.0, path="/broadcast"):
    """n POST /broadcast requests with a complete head announcing a
    1000-byte body that then comes one byte every interval s."""
    body = json.dumps({"event": "slow", "data": "x" * 1000})[:1000]
    head = ("POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s"
            "\r\nContent-Type: application/json\r\nContent-Length: %d"
            "\r\n\r\n" % (path, HOST, port, api_key, len(body))).encode()
    return _slow_senders(port, n, head, body.encode(), interval, max_wait,
                         probe_every)


# ---------------------------------------------------------------- one-shot

def http_exchange(port, data, timeout=5.0, read_max=1 << 20):
    """Sends raw bytes, reads until the server closes, timeout, or
    read_max. Returns (bytes read, True if the server closed)."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    got = bytearray()
    closed = False
    try:
        try:
            s.sendall(data)
        except OSError:
            pass            # closed mid-send: what it answered counts
        deadline = time.monotonic() + timeout
        while len(got) < read_max and time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                chunk = b""
            if not chunk:
                closed = True
                break
            got += chunk
    finally:
        s.close()
    return bytes(got), closed


def status_of(answer):
    """The status code of an HTTP/1.x answer, or None."""
    first = answer.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[0].startswith(b"HTTP/1.") and \
            first[1].isdigit():
        return int(first[1])
    return None
