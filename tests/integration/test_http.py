"""PROTOCOL §1: the HTTP endpoints, and POST /broadcast's validation on
the API listener (§8; test_api.py has the listeners themselves)."""

import asyncio
import http.client
import json
import errno
import socket
import time

import pytest
import websockets
import websockets.exceptions

from support import (HOST, http_request, metric_sum,
                     parse_metrics, recv_json, run, subscribe, wait_for,
                     ws_connect)

REQUIRED_METRICS = [
    "bagou_open_connections",
    "bagou_connections_total",
    "bagou_messages_received_total",
    "bagou_messages_sent_total",
    "bagou_broadcasts_total",
    "bagou_broadcasts_rejected_total",
    "bagou_slow_consumer_closes_total",
    "bagou_amqp_connected",
    "bagou_amqp_reconnects_total",
    "bagou_subscriptions",
]


def json_body(body):
    return json.loads(body.decode("utf-8"))


# ---------------------------------------------------------------- health

def test_health(server):
    srv = server(workers=3)
    status, headers, body = srv.get("/health")
    assert status == 200
    assert "json" in headers.get("content-type", "")
    assert json_body(body) == {"status": "ok", "amqp": "disabled",
                               "connections": 0, "workers": 3}


def test_health_counts_connections(server):
    srv = server()

    async def scenario():
        a, _ = await ws_connect(srv)
        b, _ = await ws_connect(srv)
        h = await asyncio.to_thread(srv.health)
        assert h["connections"] == 2, h
        await a.close()
        await b.close()

    run(scenario())
    wait_for(lambda: srv.health()["connections"] == 0,
             what="/health connections back to 0")


# ---------------------------------------------------------------- metrics

def test_metrics_names(server):
    srv = server(workers=2)
    status, headers, body = srv.api_get("/metrics")
    assert status == 200
    assert headers.get("content-type", "").startswith("text/plain")
    text = body.decode()
    m = parse_metrics(text)
    for name in REQUIRED_METRICS:
        assert any(k == name or k.startswith(name + "{") for k in m), \
            "metric %s missing from:\n%s" % (name, text)
    assert 'bagou_open_connections{worker="0"}' in m
    assert 'bagou_open_connections{worker="1"}' in m
    assert m["bagou_amqp_connected"] == 0


def test_metrics_counters_move(server):
    srv = server()
    before = srv.metrics()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "m")
        m = await asyncio.to_thread(srv.metrics)
        assert metric_sum(m, "bagou_open_connections") == 1
        assert metric_sum(m, "bagou_subscriptions") == 1
        await asyncio.to_thread(srv.broadcast,
                                {"event": "e", "channel": "m"})
        assert (await recv_json(ws))["event"] == "e"
        await ws.close()

    run(scenario())
    after = srv.metrics()
    for name in ("bagou_connections_total", "bagou_messages_received_total",
                 "bagou_messages_sent_total", "bagou_broadcasts_total"):
        assert metric_sum(after, name) >= metric_sum(before, name) + 1, name


# ---------------------------------------------------------------- bagou.js

def test_bagou_js(server):
    srv = server()
    status, headers, body = srv.get("/bagou.js")
    assert status == 200
    assert headers.get("content-type", "").startswith(
        "application/javascript")
    assert b"BagouWebSocket" in body


# ---------------------------------------------------------------- routing

@pytest.mark.parametrize("path", ["/nope", "/index.html", "/bagou.jsx",
                                  "/healthz"])
def test_unknown_path_404(server, path):
    srv = server()
    status, _, _ = srv.get(path)
    assert status == 404


def test_plain_get_on_websocket_426(server):
    srv = server()
    status, _, _ = srv.get("/websocket")
    assert status == 426


@pytest.mark.parametrize("path", ["/other", "/health", "/websocket/x",
                                  "/websockets"])
def test_upgrade_on_other_path_404(server, path):
    srv = server()

    async def scenario():
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            await ws_connect(srv, path)
        assert e.value.status_code == 404

    run(scenario())
    assert srv.health()["connections"] == 0


def test_upgrade_with_query_string(server):
    """?token=... is allowed on the endpoint: the query is not the path."""
    srv = server()

    async def scenario():
        ws, cid = await ws_connect(srv, "/websocket?x=1&y=two")
        assert cid
        assert await recv_json_after_ping(ws) == {"event": "pong"}
        await ws.close()

    run(scenario())


async def recv_json_after_ping(ws):
    await ws.send('{"event": "ping"}')
    return await recv_json(ws)


@pytest.mark.parametrize("method,path,code", [
    ("POST", "/nope", 404),
    ("POST", "/health/x", 404),
    ("DELETE", "/nope", 405),
    ("PUT", "/bagou.js", 405),
])
def test_public_port_other_method_405_unknown_path_404(server, method, path,
                                                      code):
    """PROTOCOL.md §8: a method other than GET/HEAD/POST answers 405 on
    the public port; an unknown path 404."""
    srv = server()
    status, _, _ = http_request(srv.port, method, path, body=b"{}")
    assert status == code


def test_get_broadcast_refused(server):
    srv = server()
    status, _, _ = srv.get("/broadcast")
    assert status in (404, 405)


JUNK = [
    ("connect_close", b"", False),
    ("partial_request", b"GET /hea", False),
    ("not_http", b"NOT HTTP AT ALL\r\n\r\n", True),
    ("tls_hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 10,
     True),
    ("long_url", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     True),
    ("half_closed_get", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", True),
]


@pytest.mark.parametrize("junk,read", [(j, r) for _, j, r in JUNK],
                         ids=[i for i, _, _ in JUNK])
def test_bad_tcp_client_survived(server, junk, read):
    """Whatever a TCP client sends, or not, before it goes away, the
    server keeps serving."""
    srv = server()
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        try:
            if junk:
                s.sendall(junk)
            if read:
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
        except (ConnectionResetError, BrokenPipeError, socket.timeout):
            pass
        except OSError as e:
            # The server may close first (e.g. on an oversized header):
            # shutdown() then says ENOTCONN. Only the server's fate counts.
            if e.errno != errno.ENOTCONN:
                raise
    time.sleep(0.2)
    assert srv.alive(), "bagou-server died (exit status %s)" % \
        srv.proc.returncode
    assert srv.health()["status"] == "ok"


# ---------------------------------------------------------------- broadcast

def test_broadcast_accepted(server):
    srv = server()
    status, headers, body = srv.post("/broadcast",
                                     {"event": "e", "channel": "c"})
    assert status == 202
    assert json_body(body) == {"status": "accepted"}


BAD_BROADCASTS = [
    ("invalid_json", b"{", ["bad_message"]),
    ("garbage", b"hello", ["bad_message"]),
    ("list", b"[1, 2]", ["bad_message"]),
    ("string", b'"event"', ["bad_message"]),
    ("number", b"42", ["bad_message"]),
    ("empty_body", b"", ["bad_message"]),
    ("invalid_utf8", b'{"event": "e", "data": "\xff\xfe"}', ["bad_message"]),
    ("missing_event", b'{"channel": "c"}', ["bad_message"]),
    ("event_not_string", b'{"event": 1}', ["bad_message"]),
    ("event_null", b'{"event": null}', ["bad_message"]),
    ("channel_space", b'{"event": "e", "channel": "a b"}',
     ["invalid_channel"]),
    ("channel_star", b'{"event": "e", "channel": "a*"}', ["invalid_channel"]),
    ("channel_empty", b'{"event": "e", "channel": ""}', ["invalid_channel"]),
    ("channel_too_long", json.dumps({"event": "e",
                                     "channel": "x" * 201}).encode(),
     ["invalid_channel"]),
    ("channel_list_one_bad", b'{"event": "e", "channel": ["ok", "b#d"]}',
     ["invalid_channel"]),
    ("channel_non_ascii", json.dumps({"event": "e", "channel": "caf\u00e9"},
                                     ensure_ascii=False).encode(),
     ["invalid_channel"]),
    ("channel_list_number", b'{"event": "e", "channel": ["a", 5]}',
     ["invalid_channel", "bad_message"]),
    ("channel_number", b'{"event": "e", "channel": 5}',
     ["invalid_channel", "bad_message"]),
    ("client_number", b'{"event": "e", "client": 5}', ["bad_message"]),
    ("client_list_number", b'{"event": "e", "client": ["a", 5]}',
     ["bad_message"]),
    ("client_too_long", json.dumps({"event": "e",
                                    "client": "c" * 200}).encode(),
     ["bad_message"]),
    ("exclude_number", b'{"event": "e", "exclude": 5}', ["bad_message"]),
]


@pytest.mark.parametrize("body,codes", [(b, c) for _, b, c in BAD_BROADCASTS],
                         ids=[i for i, _, _ in BAD_BROADCASTS])
def test_broadcast_bad_body_400(server, body, codes):
    srv = server()
    status, headers, resp = srv.post("/broadcast", body)
    assert status == 400, resp
    err = json_body(resp)
    assert set(err) == {"error"}, err
    assert err["error"]["code"] in codes, err
    assert isinstance(err["error"]["message"], str) and err["error"]["message"]


def test_rejected_broadcast_reaches_nobody(server):
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "ok")
        for _, body, _ in BAD_BROADCASTS:
            status, _, _ = await asyncio.to_thread(srv.post, "/broadcast",
                                                   body)
            assert status == 400, body
        # The list with one bad name names "ok": it must not leak.
        await asyncio.to_thread(srv.broadcast, {"event": "sentinel",
                                                "channel": "ok"})
        msg = await recv_json(ws)
        assert msg == {"event": "sentinel", "channel": "ok", "data": {}}
        await ws.close()

    run(scenario())
    assert srv.alive()


def test_broadcast_body_in_pieces(server):
    """A body that arrives in several TCP segments is put together."""
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        body = json.dumps({"event": "pieces", "data": "z" * 3000}).encode()
        head = ("POST /broadcast HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % len(body)).encode()

        def send_slowly():
            with socket.create_connection((HOST, srv.api_port),
                                          timeout=5) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(head)
                for i in range(0, len(body), 1000):
                    time.sleep(0.05)
                    s.sendall(body[i:i + 1000])
                resp = b""
                while b"\r\n\r\n" not in resp:
                    data = s.recv(4096)
                    if not data:
                        break
                    resp += data
                return resp

        resp = await asyncio.to_thread(send_slowly)
        assert resp.startswith(b"HTTP/1.1 202"), resp
        assert await recv_json(ws) == {"event": "pieces", "data": "z" * 3000}
        await ws.close()

    run(scenario())


def test_broadcast_deeply_nested_survived(server):
    srv = server()
    body = '{"event": "e", "data": ' + "[" * 20000 + "]" * 20000 + "}"
    status, _, _ = srv.post("/broadcast", body)
    assert status in (202, 400)
    assert srv.alive()
    assert srv.health()["status"] == "ok"


def test_broadcast_too_large_413(server):
    srv = server({"limits": {"max_message_size": 1024}})
    big = json.dumps({"event": "e", "data": "x" * 2000})
    status, _, _ = srv.post("/broadcast", big)
    assert status == 413
    # Just under the limit is fine.
    pad = 1024 - len(json.dumps({"event": "e", "data": ""}))
    ok = json.dumps({"event": "e", "data": "y" * pad})
    assert len(ok) == 1024
    status, _, body = srv.post("/broadcast", ok)
    assert status == 202, body


def test_broadcast_over_default_limit_413(server):
    srv = server()
    big = json.dumps({"event": "e", "data": "x" * 70000})
    status, _, _ = srv.post("/broadcast", big)
    assert status == 413
    assert srv.health()["status"] == "ok"


# ---------------------------------------------------------------- api key

KEY = "s3cret-key"


def test_api_key_missing_401(server):
    srv = server({"http": {"api_key": KEY}})
    status, _, _ = srv.post("/broadcast", {"event": "e"})
    assert status == 401


def test_api_key_gates_metrics_not_health(server):
    srv = server({"http": {"api_key": KEY}})
    assert srv.get("/health")[0] == 200
    assert srv.get("/bagou.js")[0] == 200
    assert srv.api_get("/health")[0] == 200
    assert srv.api_get("/health/live")[0] == 200
    assert srv.api_get("/metrics")[0] == 401
    assert srv.api_get("/metrics", headers={
        "Authorization": "Bearer nope"})[0] == 403
    assert srv.api_get("/metrics", headers={
        "Authorization": "Bearer " + KEY})[0] == 200


def test_api_key_wrong_403(server):
    srv = server({"http": {"api_key": KEY}})
    status, _, _ = srv.post("/broadcast", {"event": "e"},
                            headers={"Authorization": "Bearer wrong"})
    assert status == 403


def test_api_key_right_202_and_delivered(server):
    srv = server({"http": {"api_key": KEY}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        status, _, body = await asyncio.to_thread(
            srv.post, "/broadcast", {"event": "hi", "data": {"n": 1}},
            headers={"Authorization": "Bearer " + KEY})
        assert status == 202, body
        assert json_body(body) == {"status": "accepted"}
        assert await recv_json(ws) == {"event": "hi", "data": {"n": 1}}
        # Refused ones are not delivered.
        for hdrs in ({}, {"Authorization": "Bearer nope"}):
            status, _, _ = await asyncio.to_thread(
                srv.post, "/broadcast", {"event": "no"}, headers=hdrs)
            assert status in (401, 403)
        # A broadcast accepted after them is the next thing ws gets.
        status, _, body = await asyncio.to_thread(
            srv.post, "/broadcast", {"event": "sentinel"},
            headers={"Authorization": "Bearer " + KEY})
        assert status == 202, body
        assert await recv_json(ws) == {"event": "sentinel", "data": {}}
        await ws.close()

    run(scenario())


# ---------------------------------------------------------------- static

def test_static_dir_served_under_static(server, tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<h1>chat</h1>")
    (root / "app.js").write_text("var x = 1;")
    (tmp_path / "secret.txt").write_text("no")
    srv = server({"http": {"static_dir": str(root)}})
    status, headers, body = srv.get("/static/index.html")
    assert status == 200 and body == b"<h1>chat</h1>"
    assert headers["content-type"].startswith("text/html")
    status, headers, body = srv.get("/static/app.js")
    assert status == 200 and body == b"var x = 1;"
    assert "javascript" in headers["content-type"]
    status, _, body = srv.get("/static/")
    assert status == 200 and body == b"<h1>chat</h1>"
    assert srv.get("/static/missing.html")[0] == 404
    # Nothing outside the directory, however the path is spelled.
    for path in ("/static/../secret.txt", "/static/%2e%2e/secret.txt",
                 "/static/..%2fsecret.txt"):
        status, _, body = srv.get(path)
        assert status == 404 and b"no" != body, path
    # The API endpoints are unaffected.
    assert srv.get("/health")[0] == 200


def test_static_dir_off_by_default(server):
    srv = server()
    assert srv.get("/static/index.html")[0] == 404
