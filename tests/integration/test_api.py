"""PROTOCOL §8: the API listener ([http] api_listen) and what the public
port still serves. Raw sockets wherever it matters which connection a
request travels on: http.client silently reconnects."""

import asyncio
import json
import socket
import subprocess
import threading
import time

import pytest

from support import (HOST, expect_only_sentinel, http_request, metric_sum,
                     recv_json, run, server_binary, subscribe, wait_for,
                     ws_connect)

KEY = "api-s3cret"
BEARER = {"Authorization": "Bearer " + KEY}


async def keyed_sentinel(srv, ws):
    """The refused broadcasts did not arrive: one to everyone, accepted
    after them, is the next thing ws gets."""
    status, _, body = await asyncio.to_thread(
        srv.post, "/broadcast", {"event": "sentinel"}, headers=BEARER)
    assert status == 202, body
    assert await recv_json(ws) == {"event": "sentinel", "data": {}}


class RawHTTP:
    """One TCP connection; requests written as given, answers read back
    one at a time (Content-Length framing, no body for HEAD)."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed; have %r" % self.buf[:200])
        self.buf += data

    def read_response(self, head_request=False):
        """(status, {lower-case header: value}, body bytes)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            return status, headers, b""
        n = 0 if head_request else int(headers.get("content-length", 0))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed_by_server(self, timeout=3.0):
        """True once the server has closed (EOF), within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def request_bytes(method, path, body=None, headers=None):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: test"]
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    if body is not None:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def api_connections_total(srv, **kw):
    return metric_sum(srv.metrics(**kw), "bagou_api_connections_total")


# ---------------------------------------------------------------- keep-alive

def test_many_posts_over_one_connection_in_order(server):
    srv = server()
    n = 200

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "ka")
        before = await asyncio.to_thread(api_connections_total, srv)

        def post_all():
            c = RawHTTP(srv.api_port)
            try:
                for i in range(n):
                    c.send(request_bytes("POST", "/broadcast", {
                        "event": "e", "channel": "ka", "data": i}))
                    status, headers, body = c.read_response()
                    assert status == 202, (i, body)
                    assert headers.get("connection") != "close"
                    assert json.loads(body) == {"status": "accepted"}
            finally:
                c.close()

        await asyncio.to_thread(post_all)
        for i in range(n):
            msg = await recv_json(ws)
            assert msg == {"event": "e", "channel": "ka", "data": i}, msg
        after = await asyncio.to_thread(api_connections_total, srv)
        # The raw connection and the second /metrics request: one each.
        assert after - before == 2, (before, after)
        await ws.close()

    run(scenario())


def test_pipelined_requests_answered_in_order(server):
    srv = server()
    kinds = ["live", "post", "health", "bad", "head", "post", "post",
             "live", "bad", "health"] * 10
    reqs = b""
    for i, kind in enumerate(kinds):
        if kind == "live":
            reqs += request_bytes("GET", "/health/live")
        elif kind == "health":
            reqs += request_bytes("GET", "/health")
        elif kind == "head":
            reqs += request_bytes("HEAD", "/health")
        elif kind == "post":
            reqs += request_bytes("POST", "/broadcast", {
                "event": "p", "channel": "pipe", "data": i})
        else:
            reqs += request_bytes("POST", "/broadcast", "{not json %d" % i)

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "pipe")

        def pipeline():
            c = RawHTTP(srv.api_port)
            try:
                c.send(reqs)  # all 100 at once
                out = []
                for kind in kinds:
                    out.append(c.read_response(head_request=kind == "head"))
                return out
            finally:
                c.close()

        answers = await asyncio.to_thread(pipeline)
        for kind, (status, headers, body) in zip(kinds, answers):
            if kind == "live":
                assert (status, json.loads(body)) == (200,
                                                      {"status": "live"})
            elif kind == "health":
                assert status == 200 and json.loads(body)["status"] == "ok"
            elif kind == "head":
                assert status == 200 and body == b""
                assert int(headers["content-length"]) > 0
            elif kind == "post":
                assert status == 202, body
            else:
                assert status == 400, body
                assert json.loads(body)["error"]["code"] == "bad_message"
        for i, kind in enumerate(kinds):
            if kind == "post":
                assert await recv_json(ws) == {"event": "p",
                                               "channel": "pipe", "data": i}
        # Nothing else was published (the bad bodies were not).
        await expect_only_sentinel(srv, [ws])
        await ws.close()

    run(scenario())


def test_connection_close_is_honoured(server):
    srv = server()
    c = RawHTTP(srv.api_port)
    try:
        c.send(request_bytes("GET", "/health/live",
                             headers={"Connection": "close"}))
        status, headers, _ = c.read_response()
        assert status == 200 and headers["connection"] == "close"
        assert c.closed_by_server()
    finally:
        c.close()


def test_expect_100_continue(server):
    srv = server()
    body = json.dumps({"event": "e"}).encode()
    c = RawHTTP(srv.api_port)
    try:
        c.send(("POST /broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: %d"
                "\r\nExpect: 100-continue\r\n\r\n" % len(body)).encode())
        assert c.read_response()[0] == 100
        c.send(body)
        assert c.read_response()[0] == 202
    finally:
        c.close()


# ---------------------------------------------------------------- batches

def test_batch_published_in_order(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "b")
        batch = [{"event": "e", "channel": "b", "data": i} for i in range(5)]
        status, _, body = await asyncio.to_thread(srv.post, "/broadcast",
                                                  batch)
        assert status == 202, body
        assert json.loads(body) == {"status": "accepted", "count": 5}
        for i in range(5):
            assert (await recv_json(ws))["data"] == i
        # One bad item: none of the batch goes out.
        bad = [{"event": "no", "channel": "b"}, {"event": "no",
                                                  "channel": "b c"}]
        status, _, body = await asyncio.to_thread(srv.post, "/broadcast",
                                                  bad)
        assert status == 400, body
        err = json.loads(body)["error"]
        assert err["code"] == "invalid_channel" and "item 1" in \
            err["message"], err
        status, _, body = await asyncio.to_thread(srv.post, "/broadcast", [])
        assert status == 400, body
        await asyncio.to_thread(srv.broadcast, {"event": "sentinel",
                                                "channel": "b"})
        assert (await recv_json(ws))["event"] == "sentinel"
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- errors

def test_methods_and_paths(server):
    srv = server()
    status, headers, body = srv.api_get("/broadcast")
    assert status == 405 and headers["allow"] == "POST"
    assert json.loads(body)["error"]["code"] == "bad_message"
    for path in ("/metrics", "/health", "/health/live"):
        status, headers, _ = srv.post(path, {"event": "e"})
        assert status == 405 and headers["allow"] == "GET, HEAD", path
    for path in ("/nope", "/websocket", "/bagou.js", "/broadcast/x"):
        assert srv.api_get(path)[0] == 404, path
    assert srv.api_get("/health?probe=1")[0] == 200


def test_length_required_and_chunked(server):
    srv = server()
    for extra in (b"", b"Transfer-Encoding: chunked\r\n"):
        c = RawHTTP(srv.api_port)
        try:
            c.send(b"POST /broadcast HTTP/1.1\r\nHost: t\r\n" + extra +
                   b"\r\n")
            status, _, body = c.read_response()
            assert status == 411, body
            assert json.loads(body)["error"]["code"] == "bad_message"
            assert c.closed_by_server()
        finally:
            c.close()


@pytest.mark.parametrize("junk", [
    b"GET /health HTTP/2.0\r\n\r\n",
    b"GET health HTTP/1.1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nBad Header: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
    b"POST /broadcast HTTP/1.1\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}",
    b"POST /broadcast HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET /health HTTP/1.1\nHost: a\r\n\r\n",
], ids=["version", "target", "space_in_name", "obs_fold",
        "two_lengths", "negative_length", "bare_lf"])
def test_malformed_heads_400_and_closed(server, junk):
    srv = server()
    c = RawHTTP(srv.api_port)
    try:
        c.send(junk)
        status, headers, body = c.read_response()
        assert status == 400, body
        assert headers["connection"] == "close"
        assert c.closed_by_server()
    finally:
        c.close()
    assert srv.api_get("/health")[0] == 200


def test_head_too_large_431(server):
    srv = server()
    c = RawHTTP(srv.api_port)
    try:
        c.send(b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 20000 +
               b"\r\n\r\n")
        assert c.read_response()[0] == 431
    finally:
        c.close()


def test_body_too_large_413(server):
    srv = server({"limits": {"max_message_size": 1024}})
    c = RawHTTP(srv.api_port)
    try:
        # Refused from the head: the 2000 bytes are never sent.
        c.send(b"POST /broadcast HTTP/1.1\r\nHost: t\r\n"
               b"Content-Length: 2000\r\n\r\n")
        c.sock.settimeout(2)
        status, _, body = c.read_response()
        assert status == 413, body
    finally:
        c.close()


# ---------------------------------------------------------------- deadlines

def trickle(port, head, body, interval, limit):
    """Sends head, then body one byte every interval seconds, until an
    answer arrives; returns (answer status, seconds after the head)."""
    c = RawHTTP(port, timeout=interval)
    try:
        c.send(head)
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < limit:
            try:
                data = c.sock.recv(65536)
                if data:
                    c.buf += data
                    break
            except socket.timeout:
                pass
            if i < len(body):
                try:
                    c.send(body[i:i + 1])
                except OSError:
                    break
                i += 1
        took = time.monotonic() - start
        c.sock.settimeout(5)
        status, _, resp = c.read_response()
        if status == 408:
            assert json.loads(resp)["error"]["code"] == "timeout"
            assert c.closed_by_server()
        return status, took
    finally:
        c.close()


def test_slow_body_408_on_api(server):
    srv = server({"http": {"body_timeout": 1}})
    body = json.dumps({"event": "slow", "data": "x" * 100}).encode()
    head = ("POST /broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: %d"
            "\r\n\r\n" % len(body)).encode()
    status, took = trickle(srv.api_port, head, body, 0.2, 8)
    assert status == 408
    assert 0.7 < took < 3.0, took
    assert srv.api_get("/health")[0] == 200


def test_slow_head_408_on_api(server):
    srv = server({"http": {"body_timeout": 1}})
    status, took = trickle(srv.api_port, b"G", b"ET /health HTTP/1.1\r\n"
                           b"X-Slow: " + b"z" * 100, 0.2, 8)
    assert status == 408
    assert 0.7 < took < 3.0, took


def test_slow_body_408_on_public_port(server):
    srv = server({"http": {"body_timeout": 1, "api_key": KEY}})
    body = json.dumps({"event": "slow", "data": "x" * 100}).encode()
    head = ("POST /broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
            "%s\r\nContent-Length: %d\r\n\r\n" % (KEY, len(body))).encode()
    status, took = trickle(srv.port, head, body, 0.2, 8)
    assert status == 408
    assert 0.7 < took < 3.0, took
    assert srv.health()["status"] == "ok"


def test_idle_keep_alive_connection_kept_between_requests(server):
    srv = server({"http": {"body_timeout": 1}})
    c = RawHTTP(srv.api_port)
    try:
        c.send(request_bytes("GET", "/health/live"))
        assert c.read_response()[0] == 200
        # Idle for longer than body_timeout: no request is under way.
        time.sleep(1.5)
        c.send(request_bytes("GET", "/health/live"))
        assert c.read_response()[0] == 200
    finally:
        c.close()


# ---------------------------------------------------------------- auth

@pytest.mark.parametrize("port_name", ["api_port", "port"])
def test_auth_decided_from_the_head(server, port_name):
    """A head with a wrong or missing key and a body announced but never
    sent is answered at once (body_timeout is 10 s)."""
    srv = server({"http": {"api_key": KEY}})
    port = getattr(srv, port_name)
    for auth, want in (("", 401), ("Authorization: Bearer wrong\r\n", 403),
                       ("Authorization: Basic Zm9vOmJhcg==\r\n", 401)):
        c = RawHTTP(port, timeout=2.0)
        try:
            start = time.monotonic()
            c.send(("POST /broadcast HTTP/1.1\r\nHost: t\r\n%s"
                    "Content-Length: 1000\r\n\r\n" % auth).encode())
            status, _, body = c.read_response()
            assert status == want, (auth, body)
            assert time.monotonic() - start < 1.0
            assert json.loads(body)["error"]["code"] in ("unauthorized",
                                                         "forbidden")
        finally:
            c.close()
    m = srv.metrics(headers=BEARER)
    assert metric_sum(m, "bagou_http_auth_failures_total") == 3
    assert "API: 401 for /broadcast" in srv.log() or port_name == "port"


def test_api_key_required_on_api_listener(server):
    srv = server({"http": {"api_key": KEY}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        for hdrs, want in (({}, 401), ({"Authorization": "Bearer x"}, 403),
                           ({"Authorization": "bearer " + KEY}, 202)):
            status, headers, _ = await asyncio.to_thread(
                srv.post, "/broadcast", {"event": "k", "data": want},
                headers=hdrs)
            assert status == want, hdrs
            if want == 401:
                assert headers["www-authenticate"] == "Bearer"
        assert await recv_json(ws) == {"event": "k", "data": 202}
        await keyed_sentinel(srv, ws)
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- public port

def test_public_post_needs_api_key_configured(server):
    srv = server()
    status, _, body = srv.public_post("/broadcast", {"event": "e"})
    assert status == 404, body
    assert "api_listen" in json.loads(body)["error"]["message"]


def test_public_post_with_key(server):
    srv = server({"http": {"api_key": KEY}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        for hdrs, want in (({}, 401), ({"Authorization": "Bearer no"}, 403),
                           (BEARER, 202)):
            status, _, body = await asyncio.to_thread(
                srv.public_post, "/broadcast", {"event": "pub",
                                                "data": want}, headers=hdrs)
            assert status == want, body
        assert await recv_json(ws) == {"event": "pub", "data": 202}
        await keyed_sentinel(srv, ws)
        await ws.close()

    run(scenario())


def test_public_port_has_no_metrics(server):
    srv = server({"http": {"api_key": KEY}})
    assert srv.get("/metrics")[0] == 404
    assert srv.get("/metrics", headers=BEARER)[0] == 404
    assert srv.api_get("/metrics", headers=BEARER)[0] == 200


def test_answers_a_slow_reader_whole_and_in_order(server):
    """An answer goes to the socket at once when nothing waits before it,
    and the rest is queued: a client that sends many requests and reads
    nothing for a while (its socket buffers fill, the node stops reading
    it) still gets every answer whole, in order."""
    srv = server()
    n = 3000
    reqs = b"".join(request_bytes("GET", "/metrics") if i % 2 else
                    request_bytes("POST", "/broadcast", {
                        "event": "slow", "channel": "slow", "data": i})
                    for i in range(n))
    c = RawHTTP(srv.api_port, timeout=20.0)
    try:
        sender = threading.Thread(target=c.send, args=(reqs,))
        sender.start()
        time.sleep(1.0)           # nothing read: the answers pile up
        sizes = set()
        for i in range(n):
            status, headers, body = c.read_response()
            if i % 2:
                assert status == 200 and b"bagou_" in body, (i, status)
                assert int(headers["content-length"]) == len(body)
                sizes.add(len(body))
            else:
                assert status == 202, (i, status, body)
        sender.join(timeout=20)
        assert not sender.is_alive()
        assert min(sizes) > 1000, sizes  # big enough to fill the buffers
    finally:
        c.close()
    assert srv.api_get("/health/live")[0] == 200


@pytest.mark.parametrize("port_name", ["api_port", "port"])
def test_health_get_and_head(server, port_name):
    srv = server()
    port = getattr(srv, port_name)
    status, _, body = http_request(port, "GET", "/health/live")
    assert (status, json.loads(body)) == (200, {"status": "live"})
    c = RawHTTP(port)
    try:
        for path in ("/health", "/health/live"):
            c.send(request_bytes("HEAD", path))
            status, headers, _ = c.read_response(head_request=True)
            assert status == 200, path
            assert int(headers["content-length"]) > 0
        # Had a HEAD answer carried a body, this would not parse.
        c.send(request_bytes("GET", "/health/live"))
        status, _, body = c.read_response()
        assert (status, json.loads(body)) == (200, {"status": "live"})
    finally:
        c.close()


# ---------------------------------------------------------------- config

def test_api_listen_empty_disables(server):
    srv = server({"http": {"api_listen": ""}}, api_listen=False)
    assert srv.api_port is None
    # Logged by main once the threads run, maybe after /health answers.
    wait_for(lambda: "no API listener" in srv.log(), what="the log line")
    assert srv.get("/health")[0] == 200
    assert srv.public_post("/broadcast", {"event": "e"})[0] == 404
    srv2 = server(api_listen="")
    wait_for(lambda: "no API listener" in srv2.log(), what="the log line")


def run_bin(*args):
    return subprocess.run([server_binary()] + list(args),
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=10)


@pytest.mark.parametrize("value", ["nowhere", "127.0.0.1:0",
                                   "127.0.0.1:99999", "::1:9001"])
def test_bad_api_listen_is_a_config_error(tmp_path, value):
    path = tmp_path / "bagou.ini"
    path.write_text("[server]\nworkers = 1\n\n[http]\napi_listen = %s\n"
                    % value)
    p = run_bin("--config", str(path), "--check-config")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "%s:5: [http] api_listen:" % path in p.stderr, p.stderr
    empty = tmp_path / "empty.ini"
    empty.write_text("")
    p = run_bin("--config", str(empty), "--api-listen", value,
                "--check-config")
    assert p.returncode == 2 and "--api-listen:" in p.stderr, p.stderr


def test_body_timeout_range(tmp_path):
    path = tmp_path / "bagou.ini"
    path.write_text("[http]\nbody_timeout = 0\n")
    p = run_bin("--config", str(path), "--check-config")
    assert p.returncode == 2 and "%s:2:" % path in p.stderr, p.stderr


def test_api_port_in_use_fails_fast(server):
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(Exception) as e:
            server(api_listen="%s:%d" % (HOST, port))
        assert "(API)" in str(e.value)


@pytest.mark.parametrize("port_name", ["api_port", "port"])
def test_get_with_a_body_cannot_hold_the_connection(server, port_name):
    """A GET announcing a body is answered and its connection closed at
    once: a body trickled behind it cannot keep the connection."""
    srv = server()
    c = RawHTTP(getattr(srv, port_name), timeout=3.0)
    try:
        c.send(b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1000"
               b"\r\n\r\nx")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 3.0:
            try:
                data = c.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            c.buf += data
            try:
                c.send(b"x")
            except OSError:
                closed = True
                break
        assert closed, "connection still open: %r" % c.buf[:200]
    finally:
        c.close()


def test_http10_keep_alive_only_when_asked(server):
    srv = server()
    c = RawHTTP(srv.api_port)
    try:
        for i in range(3):
            c.send(b"GET /health/live HTTP/1.0\r\n"
                   b"Connection: keep-alive\r\n\r\n")
            status, headers, _ = c.read_response()
            assert status == 200 and headers["connection"] == "keep-alive"
        c.send(b"GET /health/live HTTP/1.0\r\n\r\n")
        status, headers, _ = c.read_response()
        assert status == 200 and headers["connection"] == "close"
        assert c.closed_by_server()
    finally:
        c.close()
