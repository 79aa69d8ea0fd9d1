"""Issue 11 items 1 and 2: readiness (/health 503 while the broker is down
or the node drains, /health/live 200) and signals (SIGHUP re-reads the ini
and applies it live without dropping a connection, SIGUSR1 reopens the log
file, SIGTERM drains). PROTOCOL.md §1 and §8.
"""

import asyncio
import json
import os
import signal
import time
import urllib.parse

import jwt
import pytest
import websockets.exceptions

from rabbitmq import amqp_server  # noqa: F401 (fixture)
from support import (HOST, Server, error_code, http_request, recv_json,
                     render_ini, request, run, send_json, stop_servers,
                     subscribe, wait_closed, wait_for, ws_connect)


class ReloadServer(Server):
    """A Server whose ini alone decides (no --workers or --log-level on
    the command line, since command-line options override the file on
    every reload too)."""

    def argv(self):
        return [a for a in Server.argv(self)
                if a not in ("--workers", str(self.workers), "--log-level",
                             "info")]

    def rewrite(self, config):
        with open(self.config_path, "w") as f:
            f.write(render_ini(config))

    def reload(self, config, expect="applied", log=None):
        """Writes config, sends SIGHUP, waits for the reload's last line
        ("applied", "refused" or "nothing"); returns the log lines it
        added."""
        log = log or self.log_path
        before = read(log)
        self.rewrite(config)
        self.signal(signal.SIGHUP)
        marks = {"applied": "reload: %s applied" % self.config_path,
                 "refused": "reload refused",
                 "nothing": "nothing that applies live changed",
                 "warn": "needs a restart"}
        wait_for(lambda: marks[expect] in read(log)[len(before):],
                 timeout=5, what="reload: %s" % expect)
        return read(log)[len(before):]


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


@pytest.fixture
def reload_server(request, tmp_path):
    started = []
    request.node.bagou_servers = started

    def start(config, workers=2):
        cfg = {k: dict(v) for k, v in config.items()}
        cfg.setdefault("server", {}).setdefault("workers", workers)
        srv = ReloadServer(str(tmp_path), config=cfg, workers=workers,
                           name="bagou%d" % len(started))
        started.append(srv)
        srv.start()
        return srv

    start.started = started
    start.tmpdir = str(tmp_path)
    yield start
    stop_servers(started)


def health(port, method="GET", path="/health"):
    status, headers, body = http_request(port, method, path, timeout=2)
    return status, headers, body


# ------------------------------------------------------------ readiness

def test_health_503_while_the_broker_is_down(amqp_server,  # noqa: F811
                                             rabbitmq):
    srv = amqp_server()
    for port in (srv.port, srv.api_port):
        status, _, body = health(port)
        assert status == 200, body
        doc = json.loads(body)
        assert doc["status"] == "ok" and doc["amqp"] == "connected", doc
        assert "reason" not in doc, doc
        status, headers, body = health(port, "HEAD")
        assert status == 200 and body == b"", (status, body)

    rabbitmq.stop_app()
    try:
        def down():
            return health(srv.port)[0] == 503
        wait_for(down, timeout=10, what="/health 503 with the broker down")
        for port in (srv.port, srv.api_port):
            status, headers, body = health(port)
            assert status == 503, body
            doc = json.loads(body)
            assert doc["status"] == "unavailable", doc
            assert doc["amqp"] == "disconnected", doc
            assert "RabbitMQ" in doc["reason"], doc
            assert doc["workers"] == 2 and doc["connections"] == 0, doc
            assert headers["content-type"].startswith("application/json")
            status, _, body = health(port, "HEAD")
            assert status == 503 and body == b"", (status, body)
            # Liveness is not readiness: the process serves.
            status, _, body = health(port, path="/health/live")
            assert status == 200, body
            assert json.loads(body) == {"status": "live"}
            status, _, body = health(port, "HEAD", "/health/live")
            assert status == 200 and body == b""
    finally:
        rabbitmq.start_app()
    wait_for(lambda: health(srv.port)[0] == 200, timeout=20,
             what="/health 200 once the broker is back")
    doc = json.loads(health(srv.api_port)[2])
    assert doc["status"] == "ok" and doc["amqp"] == "connected", doc


def test_health_503_draining_after_sigterm(server):
    delay = 3
    srv = server({"server": {"drain_delay": delay}})

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "room")
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)

        def draining():
            return health(srv.port)[0] == 503
        await asyncio.to_thread(wait_for, draining, 2.0, 0.02,
                                "/health 503 after SIGTERM")
        for port in (srv.port, srv.api_port):
            status, _, body = health(port)
            doc = json.loads(body)
            assert status == 503 and doc["status"] == "draining", doc
            assert "SIGTERM" in doc["reason"], doc
            assert health(port, path="/health/live")[0] == 200
        # Everything else still serves while draining: the open client
        # gets a broadcast, a new one is accepted.
        await asyncio.to_thread(srv.broadcast, {"event": "still",
                                                "channel": "room"})
        assert await recv_json(ws) == {"event": "still", "channel": "room",
                                      "data": {}}
        late, _ = await ws_connect(srv)
        assert time.monotonic() - t0 < delay, "the drain ended too soon"
        code = await wait_closed(ws, timeout=delay + 5)
        assert code == 1001, code
        assert await wait_closed(late, timeout=5) == 1001
        return t0

    t0 = run(scenario())
    rc = srv.wait_exit(10)
    took = time.monotonic() - t0
    assert rc == 0, srv.log()
    assert delay - 0.5 <= took <= delay + 5.5, took
    assert "draining, /health answers 503 for 3 s" in srv.log()


def test_second_sigterm_ends_the_drain(server):
    srv = server({"server": {"drain_delay": 60}})
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    wait_for(lambda: health(srv.port)[0] == 503, timeout=2,
             what="/health 503 after SIGTERM")
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit(8) == 0, srv.log()
    assert time.monotonic() - t0 < 8


# ------------------------------------------------------------- SIGHUP

BASE = {"server": {"origins": ""},
        "limits": {"rate": 0},
        "http": {"api_key": "key-one"},
        "log": {"level": "info"}}


def auth(key):
    return {"Authorization": "Bearer " + key}


def post(srv, key, msg):
    return http_request(srv.api_port, "POST", "/broadcast", body=msg,
                        headers=auth(key))[0]


def test_sighup_applies_live_and_keeps_connections(reload_server):
    srv = reload_server(BASE)

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "room")
        new = {"server": {"origins": "https://good.example"},
               "limits": {"rate": 2, "burst": 2},
               "http": {"api_key": "key-two"},
               "log": {"level": "info"}}
        lines = await asyncio.to_thread(srv.reload, new)
        assert "[server] origins changed: '' -> 'https://good.example'" \
            in lines, lines
        assert "[limits] rate changed: 0 -> 2" in lines, lines
        # Secrets are never logged.
        assert "[http] api_key changed: (set) -> (set)" in lines, lines
        assert "key-two" not in lines, lines

        # The subscribed client kept its socket and its subscription.
        assert await asyncio.to_thread(post, srv, "key-one", {
            "event": "x", "channel": "room"}) == 403
        assert await asyncio.to_thread(post, srv, "key-two", {
            "event": "after", "channel": "room"}) == 202
        assert await recv_json(ws) == {"event": "after", "channel": "room",
                                      "data": {}}

        # Origins: new handshakes follow the new list.
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as exc:
            bad, _ = await ws_connect(srv, origin="https://evil.example")
            await bad.close()
        assert exc.value.status_code == 403
        good, _ = await ws_connect(srv, origin="https://good.example")

        # The rate limit applies (burst 2, then rate_limited).
        for i in range(4):
            await send_json(good, {"event": "ping", "callbackId": "p%d" % i})
        codes = []
        for i in range(4):
            reply = await recv_json(good)
            codes.append(None if reply["data"]["success"]
                         else error_code(reply))
        assert codes[:2] == [None, None], codes
        assert "rate_limited" in codes[2:], codes
        await good.close()

        # The old connection is still there.
        assert await asyncio.to_thread(post, srv, "key-two", {
            "event": "again", "channel": "room"}) == 202
        assert await recv_json(ws) == {"event": "again", "channel": "room",
                                      "data": {}}
        await ws.close()

    run(scenario())
    wait_for(lambda: srv.health()["connections"] == 0, timeout=5,
             what="the connections closed")


def test_sighup_log_level_and_restart_keys(reload_server):
    srv = reload_server(BASE)
    warn = {k: dict(v) for k, v in BASE.items()}
    warn["log"]["level"] = "warn"
    lines = srv.reload(warn, expect="applied")
    assert "[log] level changed: 1 -> 2" in lines, lines
    # Restart-only keys: logged as such (a warning, still printed at
    # warn), and the running value stays; at warn the info line that
    # ends a reload is no longer printed.
    restart = {k: dict(v) for k, v in warn.items()}
    restart["server"]["workers"] = 3
    restart["server"]["path"] = "/ws"
    restart["server"]["ping_interval"] = 7
    srv.reload(restart, expect="warn")
    # reload() returns at the first warning; the others follow it.
    for key in ("[server] workers changed (2 -> 3): needs a restart",
                "[server] path changed ('/websocket' -> '/ws'): needs a "
                "restart",
                "[server] ping_interval changed (30 -> 7): needs a "
                "restart"):
        wait_for(lambda: key in srv.log(), timeout=5, what=key)
    time.sleep(0.3)
    assert "nothing that applies live changed" not in srv.log()
    assert " info " not in srv.log().split("needs a restart")[-1]
    doc = json.loads(http_request(srv.port, "GET", "/health")[2])
    assert doc["workers"] == 2, doc

    async def scenario():
        # The running path stays /websocket.
        ws, _ = await ws_connect(srv)
        await ws.close()
    run(scenario())


def test_bad_ini_refused_old_config_stays(reload_server):
    srv = reload_server(BASE)
    bad = render_ini(BASE).replace("rate = 0", "rate = 0\nburst = lots")
    lines = srv.reload(bad, expect="refused")
    assert "%s:" % srv.config_path in lines, lines
    line_no = bad.splitlines().index("burst = lots") + 1
    assert "%s:%d: [limits] burst" % (srv.config_path, line_no) in lines, \
        lines
    assert "the running configuration stays" in lines
    # A rule across keys: refused too, naming the file.
    cross = {k: dict(v) for k, v in BASE.items()}
    cross["auth"] = {"previous_secret": "old"}
    cross["http"]["api_key"] = "key-two"
    lines = srv.reload(cross, expect="refused")
    assert "%s: [auth] previous_secret needs [auth] secret" \
        % srv.config_path in lines, lines
    # The old configuration is in force.
    assert post(srv, "key-one", {"event": "e", "channel": "c"}) == 202
    assert post(srv, "key-two", {"event": "e", "channel": "c"}) == 403
    assert srv.alive()


# ------------------------------------------------------ JWT rotation

def token(secret, sub="alice"):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, secret,
                      algorithm="HS256")


async def who(srv, tok):
    """The user a token at connect gives, or the error code."""
    ws, _ = await ws_connect(
        srv, path="/websocket?token=" + urllib.parse.quote(tok, safe=""))
    try:
        reply = await request(ws, "whoami", callback_id="w")
        if reply.get("event") == "error":
            return error_code(reply)
        return reply["data"].get("user") if reply["data"].get(
            "success") else error_code(reply)
    finally:
        await ws.close()


async def authenticate(ws, tok):
    reply = await request(ws, "authenticate", {"token": tok},
                          callback_id="a")
    return True if reply["data"].get("success") else error_code(reply)


def test_jwt_secret_rotation(reload_server):
    old, new = "old-secret-1", "new-secret-2"
    cfg = {"auth": {"secret": old}, "log": {"level": "info"}}
    srv = reload_server(cfg)

    async def scenario():
        kept, _ = await ws_connect(srv)
        assert await authenticate(kept, token(old)) is True
        assert await authenticate(kept, token(new)) == "auth_failed"

        lines = await asyncio.to_thread(srv.reload, {
            "auth": {"secret": new, "previous_secret": old},
            "log": {"level": "info"}})
        assert "[auth] previous_secret changed: (empty) -> (set)" in lines
        assert old not in lines and new not in lines, lines
        assert await authenticate(kept, token(old)) is True
        assert await authenticate(kept, token(new)) is True
        assert await authenticate(kept, token("other")) == "auth_failed"

        lines = await asyncio.to_thread(srv.reload, {
            "auth": {"secret": new}, "log": {"level": "info"}})
        assert await authenticate(kept, token(old)) == "auth_failed"
        assert await authenticate(kept, token(new)) is True
        await kept.close()

    run(scenario())


def test_jwt_rotation_at_connect(reload_server):
    old, new = "old-secret-1", "new-secret-2"
    srv = reload_server({"auth": {"secret": new, "previous_secret": old}})

    async def scenario():
        ws, _ = await ws_connect(
            srv, path="/websocket?token=" + token(old, "bob"))
        await ws.close()
        ws, _ = await ws_connect(
            srv, path="/websocket?token=" + token(new, "carol"))
        await ws.close()
    run(scenario())
    assert "auth_failed" not in srv.log()


# ------------------------------------------------------------ SIGUSR1

def test_sigusr1_reopens_the_log_file(reload_server, tmp_path):
    cfg = {"log": {"file": "server.log", "level": "info"}}
    srv = reload_server(cfg)
    path = str(tmp_path / "server.log")   # relative to the ini's folder
    # Logged by main once the threads run, maybe after /health answers.
    wait_for(lambda: "API listener on" in read(path), timeout=5,
             what="the start-up lines in the log file")
    assert "listening on" not in srv.log(), srv.log()
    os.rename(path, path + ".1")
    srv.signal(signal.SIGUSR1)
    wait_for(lambda: "SIGUSR1: log file %s reopened" % path in read(path),
             timeout=5, what="a new log file")
    # A later line goes to the new file only.
    lines = srv.reload(cfg, expect="nothing", log=path)
    assert "read again" in lines
    assert "read again" not in read(path + ".1")
    assert "reopened" not in read(path + ".1")
    # A new [log] file on SIGHUP moves the log there.
    moved = {"log": {"file": "other.log", "level": "info"}}
    other = str(tmp_path / "other.log")
    srv.reload(moved, expect="applied", log=other)
    assert "[log] file changed" in read(path)
    srv.reload(moved, expect="nothing", log=other)
    assert "nothing that applies" not in read(path).split(
        "[log] file changed")[-1]


# ------------------------------------------------- config reclamation

@pytest.mark.parametrize("api", [True, False])
def test_replaced_configs_are_freed(reload_server, api):
    """A replaced config is freed once every thread (workers, acceptor,
    API, bus) has passed a quiescent point, within a couple of seconds,
    while clients keep working; the log says so at debug level."""
    cfg = {"server": {"workers": 2}, "log": {"level": "debug"},
           "limits": {"rate": 0}}
    srv = reload_server(cfg) if api else None
    if not api:
        # No API listener: its slot must not hold the reclamation back.
        srv = ReloadServer(reload_server.tmpdir, config=cfg,
                           api_listen="", name="noapi")
        reload_server.started.append(srv)
        srv.start()

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "room")
        for gen in (1, 2, 3):
            cfg["limits"]["rate"] = 1000 + gen
            await asyncio.to_thread(srv.reload, cfg)
            if gen == 1:
                continue    # it replaced the start-up config: main's own
            mark = "the config replaced at generation %d is freed" % gen
            await asyncio.to_thread(wait_for, lambda: mark in srv.log(),
                                    5.0, 0.05, mark)
            assert (await request(ws, "ping", callback_id="p"))[
                "data"]["success"] is True
        await ws.close()
    run(scenario())


def test_sighup_rereads_the_api_key_file(reload_server, tmp_path):
    """[http] api_key_file (a credential file next to the ini) is read
    again on SIGHUP: a rotated key applies without a restart."""
    keyfile = tmp_path / "api-key"
    keyfile.write_text("key-one\n")
    cfg = {"http": {"api_key_file": "api-key"}}
    srv = reload_server(cfg)
    assert post(srv, "key-one", {"event": "e", "channel": "c"}) == 202
    keyfile.write_text("key-two\n")
    lines = srv.reload(cfg)
    assert "[http] api_key changed: (set) -> (set)" in lines, lines
    assert "key-two" not in lines
    assert post(srv, "key-two", {"event": "e", "channel": "c"}) == 202
    assert post(srv, "key-one", {"event": "e", "channel": "c"}) == 403
    # A credential file that went missing: refused, the key stays.
    keyfile.unlink()
    lines = srv.reload(cfg, expect="refused")
    assert "api_key_file" in lines, lines
    assert post(srv, "key-two", {"event": "e", "channel": "c"}) == 202
