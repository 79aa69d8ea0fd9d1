"""Promises of README.md and docs/PROTOCOL.md that no other test pinned
(docs/PROMISES.md lists which test pins which promise): Ctrl-C (SIGINT)
stops the server like SIGTERM, --workers defaults to the number of online
cores, the configuration file defaults to etc/bagou.ini, flags override
the file, Origins compare case-insensitively, POST /broadcast without
Content-Length is 411, every answer to a POST ends its connection, the
node's and the legacy queue's properties in RabbitMQ, the client id
format, ALPN, no client certificate request and per-start ticket keys on
TLS, and how numbers in a broadcast's data are re-serialized."""

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time

from rabbitmq import amqp_server, unique_exchange  # noqa: F401
from test_tls import client_ctx, install, pki, tls_server  # noqa: F401
from support import (HOST, free_port, http_get, run, server_binary,
                     wait_closed, wait_for, ws_connect)


def api_listen_args():
    """--api-listen on a free port when the binary has an API listener
    (h-api), so a server started by hand never takes its default port."""
    r = subprocess.run([server_binary(), "--help"], capture_output=True,
                       text=True, timeout=10)
    if "--api-listen" in r.stdout + r.stderr:
        return ["--api-listen", "%s:%d" % (HOST, free_port())]
    return []


def test_sigint_closes_clients_1001_and_exits_0(server):
    srv = server(workers=2)

    async def scenario():
        conns = [await ws_connect(srv) for _ in range(3)]
        t0 = time.monotonic()
        srv.signal(signal.SIGINT)
        codes = [await wait_closed(ws, timeout=5) for ws, _ in conns]
        assert codes == [1001] * 3
        rc = await asyncio.to_thread(srv.wait_exit,
                                     5 - (time.monotonic() - t0))
        assert rc == 0, "exit status %r (None: still running after 5 s)" % rc

    run(scenario())


def test_workers_default_to_online_cores(tmp_path):
    ini = tmp_path / "bagou.ini"
    ini.write_text("")
    port = free_port()
    log = open(tmp_path / "bagou.log", "wb")
    proc = subprocess.Popen(
        [server_binary(), "--config", str(ini), "--listen",
         "%s:%d" % (HOST, port), "--amqp-url", "none"] + api_listen_args(),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        def health():
            try:
                status, _, body = http_get(port, "/health", timeout=1.0)
            except OSError:
                return None
            return json.loads(body) if status == 200 else None
        state = wait_for(health, timeout=10, what="/health")
        assert state["workers"] == os.cpu_count(), state
        wait_for(lambda: "listening on" in
                 (tmp_path / "bagou.log").read_text(),
                 what="the start-up line")
        text = (tmp_path / "bagou.log").read_text()
        assert "(%d workers" % os.cpu_count() in text, text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            rc = None
        log.close()
    assert rc == 0, rc


def test_config_defaults_to_etc_bagou_ini(tmp_path):
    """README "Running it": without --config the server reads
    etc/bagou.ini (from its working directory) when present; without one
    it runs on the defaults."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "bagou.ini").write_text(
        "[server]\nno_such_key = 1\n")
    r = subprocess.run([server_binary(), "--check-config"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "etc/bagou.ini:2:" in r.stdout + r.stderr, (r.stdout, r.stderr)
    (tmp_path / "etc" / "bagou.ini").unlink()
    r = subprocess.run([server_binary(), "--check-config"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


def test_flags_override_the_file(tmp_path):
    """README "Running it": command-line flags override the file: the ini
    says listen on one port and 3 workers, the flags another port and 1
    worker; the flags win."""
    file_port, flag_port = free_port(), free_port()
    ini = tmp_path / "bagou.ini"
    ini.write_text("[server]\nlisten = %s:%d\nworkers = 3\n"
                   % (HOST, file_port))
    log = open(tmp_path / "bagou.log", "wb")
    proc = subprocess.Popen(
        [server_binary(), "--config", str(ini), "--listen",
         "%s:%d" % (HOST, flag_port), "--workers", "1",
         "--amqp-url", "none"] + api_listen_args(),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        def health():
            try:
                status, _, body = http_get(flag_port, "/health", timeout=1.0)
            except OSError:
                return None
            return json.loads(body) if status == 200 else None
        state = wait_for(health, timeout=10, what="/health on the flag's "
                         "port")
        assert state["workers"] == 1, state
        try:
            socket.create_connection((HOST, file_port), timeout=1).close()
        except OSError:
            pass
        else:
            raise AssertionError("the ini's port %d is served too"
                                 % file_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            rc = None
        log.close()
    assert rc == 0, rc


def test_origins_compared_case_insensitively(server):
    """PROTOCOL.md §8 Origins: compared whole and case-insensitively."""
    srv = server({"server": {"origins": "https://a.example"}})

    async def scenario():
        ws, _ = await ws_connect(srv, origin="HTTPS://A.Example")
        await ws.close()

    run(scenario())


def raw_http(port, request, timeout=5.0):
    """Sends request bytes; returns (head, body, closed): closed is True
    when the server ended the connection after its answer."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        closed = False
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                closed = True
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return head.decode("latin-1"), body, closed


# With a key, POST /broadcast is served on the public port before and
# after the API listener (h-api) moves key-less publishing off it.
KEYED = {"http": {"api_key": "promises-key"}}
BEARER = b"Authorization: Bearer promises-key\r\n"


def test_post_without_content_length_411(server):
    """PROTOCOL.md §8 HTTP: POST /broadcast without Content-Length: 411,
    a JSON error, and the connection ends."""
    srv = server(KEYED)
    head, body, closed = raw_http(
        srv.port, b"POST /broadcast HTTP/1.1\r\nHost: x\r\n" + BEARER +
        b'\r\n{"event":"x"}')
    assert head.startswith("HTTP/1.1 411"), head
    assert "error" in json.loads(body), body
    assert closed


def test_every_post_answer_ends_its_connection(server):
    """PROTOCOL.md §8 HTTP: every answer to a POST carries
    Connection: close and ends its connection (accepted or refused); a
    request pipelined behind it is not answered."""
    srv = server(KEYED)
    for body in (b'{"event":"x"}', b'{"nope": 1}'):
        req = (b"POST /broadcast HTTP/1.1\r\nHost: x\r\n" + BEARER +
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        head, rest, closed = raw_http(
            srv.port, req + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status = head.split("\r\n")[0]
        assert status.split()[1] in ("202", "400"), head
        assert "connection: close" in head.lower(), head
        assert closed, head
        assert b"HTTP/1.1" not in rest, rest


def queues(rabbitmq):
    """{name: (durable, auto_delete, exclusive)} of the broker's queues."""
    out = rabbitmq.rabbitmqctl("list_queues", "-q", "--no-table-headers",
                               "name", "durable", "auto_delete", "exclusive")
    got = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 4:
            got[f[0]] = tuple(v == "true" for v in f[1:])
    return got


def test_node_and_legacy_queue_properties(amqp_server, rabbitmq):
    """PROTOCOL.md §5 and §8 AMQP: each node declares its own exclusive
    queue with a server-chosen name; the legacy [amqp] queue is durable,
    not exclusive, not auto-delete. (Whether the node's queue is also
    auto-delete is left out here: h-link changes it.)"""
    legacy = unique_exchange("bagou-legacy-q")
    before = set(queues(rabbitmq))
    amqp_server(config={"amqp": {"queue": legacy}},
                exchange=unique_exchange("bagou-q"))
    after = queues(rabbitmq)
    new = {n: p for n, p in after.items() if n not in before}
    assert new.get(legacy) == (True, False, False), new
    mine = [p for n, p in new.items() if n.startswith("amq.gen-")]
    assert len(mine) == 1, new
    durable, _, exclusive = mine[0]
    assert exclusive and not durable, new


def test_client_id_format(server):
    """PROTOCOL.md §8 Client ids: NODE-WORKER-N, 16 hex digits of node id
    (the same for every connection of a process), the worker number, a
    counter."""
    srv = server(workers=2)

    async def scenario():
        conns = [await ws_connect(srv) for _ in range(4)]
        parts = []
        for ws, cid in conns:
            m = re.fullmatch(r"([0-9a-f]{16})-([0-9]+)-([0-9]+)", cid)
            assert m, cid
            parts.append((m.group(1), int(m.group(2))))
            await ws.close()
        assert len({node for node, _ in parts}) == 1, parts
        assert all(0 <= w < 2 for _, w in parts), parts

    run(scenario())


def test_tls_alpn_http11_only_no_client_certificate(tls_server, tmp_path,
                                                    pki):
    """PROTOCOL.md TLS: ALPN offers http/1.1 only (a client offering h2
    gets http/1.1), and no client certificate is requested (no
    CertificateRequest in the handshake, TLS 1.2 and 1.3)."""
    install(pki, tmp_path)
    srv = tls_server()
    ctx = client_ctx(pki)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((HOST, srv.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
    for version in ("-tls1_2", "-tls1_3"):
        r = subprocess.run(
            ["openssl", "s_client", "-connect", "%s:%d" % (HOST, srv.port),
             version, "-msg", "-CAfile", pki["root.pem"]],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=10)
        out = r.stdout + r.stderr
        assert "ServerHello" in out, out[-2000:]
        assert "Verify return code: 0" in out, out[-2000:]
        assert "CertificateRequest" not in out, out[-2000:]


def test_broadcast_numbers_reserialized(server):
    """PROTOCOL.md §8 Broadcasts: data is re-serialized compactly; numbers
    must fit a 64-bit integer or a double (9223372036854775808 and 1e400
    are rejected with 400 bad_message), and 1e9 is delivered as
    1000000000.0. A rejected broadcast reaches nobody: the next message
    is the accepted one."""
    srv = server()

    async def scenario():
        ws, _ = await ws_connect(srv)
        for raw in ('{"event":"n","data":9223372036854775808}',
                    '{"event":"n","data":[1e400]}'):
            status, _, body = await asyncio.to_thread(
                srv.post, "/broadcast", raw)
            assert status == 400, (raw, status, body)
            assert json.loads(body)["error"]["code"] == "bad_message", body
        status, _, body = await asyncio.to_thread(
            srv.post, "/broadcast",
            '{"event":"n", "data": {"a": [1e9, 9223372036854775807, -0.5]}}')
        assert status == 202, body
        text = await asyncio.wait_for(ws.recv(), 5)
        assert text == ('{"event":"n","data":{"a":[1000000000.0,'
                        '9223372036854775807,-0.5]}}'), text
        await ws.close()

    run(scenario())


def tls_health(port, ctx, session=None):
    """GET /health over TLS; returns (session, reused). The answer is read
    whole first: TLS 1.3 tickets come after the handshake."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=HOST,
                             session=session) as t:
            t.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
            data = b""
            while True:
                chunk = t.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data
            return t.session, t.session_reused


def test_tls_ticket_keys_random_at_each_start(tls_server, tmp_path, pki):
    """PROTOCOL.md TLS: the ticket keys are random at each start, so a
    session from one server process does not resume on another started
    with the same files (as after a restart); it still resumes on the
    process that issued it."""
    install(pki, tmp_path)
    first = tls_server(workers=1)
    second = tls_server(workers=1)
    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_ctx(pki, v, v)
        session, reused = tls_health(first.port, ctx)
        assert not reused
        _, reused = tls_health(second.port, ctx, session)
        assert not reused, v
        _, reused = tls_health(first.port, ctx, session)
        assert reused, v
