"""bagou-server talking to RabbitMQ over TLS (an amqps:// [amqp] url).

A private broker of this module's own (rabbitmq.RabbitMQ(tls=...), not the
session one) listens on 127.0.0.1 twice: plain AMQP (pika publishes there)
and TLS, with a server certificate for DNS:localhost signed by a throwaway
CA made here with openssl. bagou-server connects to
amqps://guest:guest@localhost:TLSPORT/ and verifies the broker against
[amqp] ca_file, peer and host name (rabbitmq-c matches the URL host against
the certificate's DNS names; it ignores IP addresses, hence "localhost").

* the right CA: /health says "connected", pika broadcasts (plain and TLS)
  reach WebSocket clients, POST /broadcast goes out and back through the
  TLS link;
* an unrelated CA, or a CA file that does not exist: never connected, the
  node keeps serving HTTP and WebSocket, says why in its log, no crash.
"""

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import time

import pytest

from rabbitmq import AmqpServer, BrokerError, Publisher, RabbitMQ, _pika
from support import (HOST, recv_json, run, stop_servers,
                     subscribe, ws_connect)

BROKER_START_TIMEOUT = 45.0    # to the first AMQP login
TLS_READY_TIMEOUT = 15.0       # then to the first TLS handshake
CONNECT_TIMEOUT = 15.0         # bagou-server: /health "connected"
WATCH = 5.0                    # how long a refused CA is watched
OPENSSL_TIMEOUT = 30.0


# ---------------------------------------------------------------- certs

CA_CNF = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = %s
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

LEAF_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = localhost
"""

LEAF_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl(d, *args):
    res = subprocess.run(["openssl"] + list(args), cwd=d,
                         stdin=subprocess.DEVNULL, capture_output=True,
                         timeout=OPENSSL_TIMEOUT)
    if res.returncode != 0:
        raise AssertionError("openssl %s -> exit %d\n%s%s"
                             % (" ".join(args), res.returncode,
                                res.stdout.decode(errors="replace"),
                                res.stderr.decode(errors="replace")))


def write(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def make_ca(d, name, cn):
    """name.key / name.pem: a self-signed CA."""
    cnf = write(d, name + ".cnf", CA_CNF % cn)
    openssl(d, "req", "-x509", "-config", cnf, "-newkey", "rsa:2048",
            "-nodes", "-sha256", "-days", "2", "-keyout", name + ".key",
            "-out", name + ".pem")
    return os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")


def make_certs(d):
    """A CA, a server certificate for DNS:localhost signed by it, and an
    unrelated CA (same subject name pattern, other key)."""
    os.makedirs(d, exist_ok=True)
    ca, ca_key = make_ca(d, "ca", "Bagou test CA")
    other_ca, _ = make_ca(d, "other-ca", "Bagou unrelated test CA")
    cnf = write(d, "server.cnf", LEAF_CNF)
    ext = write(d, "server.ext", LEAF_EXT)
    openssl(d, "req", "-new", "-config", cnf, "-newkey", "rsa:2048",
            "-nodes", "-sha256", "-keyout", "server.key", "-out",
            "server.csr")
    openssl(d, "x509", "-req", "-in", "server.csr", "-CA", ca, "-CAkey",
            ca_key, "-CAcreateserial", "-sha256", "-days", "2", "-extfile",
            ext, "-out", "server.pem")
    return {"ca": ca, "other_ca": other_ca,
            "cert": os.path.join(d, "server.pem"),
            "key": os.path.join(d, "server.key")}


# ---------------------------------------------------------------- broker

def tls_handshake(port, cafile, timeout=2.0):
    """True when a verified TLS handshake with 127.0.0.1:port (as
    "localhost") succeeds now."""
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            with ctx.wrap_socket(s, server_hostname="localhost"):
                return True
    except (OSError, ssl.SSLError):
        return False


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """(broker, certs): a private RabbitMQ with a TLS listener on
    127.0.0.1:broker.tls_port; always stopped at the end of the module."""
    certs = make_certs(str(tmp_path_factory.mktemp("amqps-certs")))
    broker = RabbitMQ(tls={"cacertfile": certs["ca"],
                           "certfile": certs["cert"],
                           "keyfile": certs["key"]})
    try:
        try:
            broker.start(timeout=BROKER_START_TIMEOUT)
        except BrokerError as e:
            pytest.fail("RabbitMQ with TLS did not start: %s" % e,
                        pytrace=False)
        deadline = time.monotonic() + TLS_READY_TIMEOUT
        while not tls_handshake(broker.tls_port, certs["ca"]):
            if time.monotonic() >= deadline or not broker.alive():
                pytest.fail("no TLS handshake on %s:%d within %.0f s\n%s"
                            % (HOST, broker.tls_port, TLS_READY_TIMEOUT,
                               broker.log()), pytrace=False)
            time.sleep(0.1)
        yield broker, certs
    finally:
        broker.stop()


def amqps_url(broker):
    return "amqps://guest:guest@localhost:%d/" % broker.tls_port


@pytest.fixture
def tls_server(request, tmp_path, tls_broker):
    """Factory: tls_server(ca_file) -> a started AmqpServer on the TLS
    broker's amqps:// URL (not waited for "connected"). Stopped at the end
    of the test; logs go into a failing test's report (conftest)."""
    broker, _ = tls_broker
    started = getattr(request.node, "bagou_servers", None)
    if started is None:
        started = []
        request.node.bagou_servers = started

    def start(ca_file, config=None):
        cfg = {k: dict(v) for k, v in (config or {}).items()}
        cfg.setdefault("amqp", {})["ca_file"] = ca_file
        srv = AmqpServer(str(tmp_path), amqps_url(broker), config=cfg,
                         workers=2, name="bagou%d" % len(started))
        started.append(srv)
        srv.start()
        return srv

    yield start
    stop_servers(started)


@pytest.fixture
def plain_publisher(tls_broker):
    """A pika publisher on the broker's plain listener, exchange "bagou"."""
    broker, _ = tls_broker
    pub = Publisher(broker, "bagou")
    yield pub
    pub.close()


def tls_publish(broker, cafile, msg, exchange="bagou"):
    """One broadcast published by pika over the broker's TLS listener,
    verifying it against cafile (as "localhost")."""
    pika = _pika()
    ctx = ssl.create_default_context(cafile=cafile)
    params = pika.ConnectionParameters(
        host="localhost", port=broker.tls_port,
        credentials=pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(ctx, "localhost"),
        socket_timeout=10, stack_timeout=10, connection_attempts=1,
        blocked_connection_timeout=10)
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.basic_publish(exchange=exchange,
                         routing_key=Publisher.routing_key(msg),
                         body=json.dumps(msg).encode())
    finally:
        conn.close()


# ---------------------------------------------------------------- tests

def test_amqps_with_the_right_ca(tls_server, tls_broker, plain_publisher):
    broker, certs = tls_broker
    srv = tls_server(certs["ca"])
    t0 = time.monotonic()
    srv.wait_amqp("connected", timeout=CONNECT_TIMEOUT)
    connected_after = time.monotonic() - t0
    pub = plain_publisher

    async def scenario():
        (sub, _), (other, _) = [await ws_connect(srv) for _ in range(2)]
        await subscribe(sub, "news")

        # pika, plain AMQP -> broker -> TLS link -> bagou -> WebSocket.
        pub.publish({"event": "message", "channel": "news",
                     "data": {"text": "over amqps"}})
        assert await recv_json(sub) == {
            "event": "message", "channel": "news",
            "data": {"text": "over amqps"}}
        # other is not subscribed: the broadcast to everyone that follows
        # is the next thing it gets.
        pub.publish({"event": "to-all", "data": [1, 2]})
        for ws in (sub, other):
            assert await recv_json(ws) == {"event": "to-all",
                                           "data": [1, 2]}

        # pika over TLS too (the broker's TLS listener, verified by Python).
        await asyncio.to_thread(tls_publish, broker, certs["ca"],
                                {"event": "tls-pub", "channel": "news",
                                 "data": {"k": "v"}})
        assert await recv_json(sub) == {"event": "tls-pub",
                                        "channel": "news",
                                        "data": {"k": "v"}}

        # POST /broadcast: published by bagou over the TLS link, consumed
        # back over it.
        tap = await asyncio.to_thread(pub.tap, "#")
        await asyncio.to_thread(srv.broadcast, {
            "event": "via-http", "channel": "news", "data": {"n": 1}})
        assert await recv_json(sub) == {"event": "via-http",
                                        "channel": "news", "data": {"n": 1}}
        # other is not subscribed: a broadcast to everyone comes next.
        await asyncio.to_thread(srv.broadcast, {"event": "sentinel"})
        for ws in (other, sub):
            assert await recv_json(ws) == {"event": "sentinel", "data": {}}
        key, body = await asyncio.to_thread(pub.get, tap)
        assert key == "news", (key, body)
        assert body["event"] == "via-http" and body["data"] == {"n": 1}, body
        await sub.close()
        await other.close()

    run(scenario(), timeout=30)
    assert srv.health().get("amqp") == "connected"
    assert srv.alive()
    assert connected_after < CONNECT_TIMEOUT


FAILED_CONNECT = re.compile(r"amqp: .*(cannot connect|cannot load CA file)",
                            re.IGNORECASE)


def refused_ca(srv, watch):
    """The node must stay "disconnected" for watch seconds yet keep
    serving; returns the log lines about failed connection attempts."""
    deadline = time.monotonic() + watch
    seen = set()
    while time.monotonic() < deadline:
        assert srv.alive(), "bagou-server exited (status %s)" \
            % srv.proc.poll()
        state = srv.health().get("amqp")   # 503 while down (readiness)
        seen.add(state)
        assert state == "disconnected", \
            '/health "amqp" is %r with a CA that must be refused' % state
        time.sleep(0.1)

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "news")
        await ws.close()

    run(scenario(), timeout=15)

    # POST /broadcast cannot go out: 503 unavailable, as in any outage.
    status, _, body = srv.post("/broadcast", {"event": "lost",
                                              "channel": "news"})
    assert status == 503, (status, body)
    assert json.loads(body)["error"]["code"] == "unavailable", body

    lines = [ln for ln in srv.log().splitlines() if FAILED_CONNECT.search(ln)]
    assert lines, "no failed AMQP connection in the log:\n%s" % srv.log()
    # Retried with backoff (100 ms doubling), not in a tight loop.
    assert len(lines) <= 50, "%d failed attempts in %.0f s:\n%s" % (
        len(lines), watch, "\n".join(lines[:20]))
    assert srv.alive()
    return lines


def test_amqps_with_an_unrelated_ca(tls_server, tls_broker):
    _, certs = tls_broker
    srv = tls_server(certs["other_ca"])
    lines = refused_ca(srv, WATCH)
    assert any("localhost:%d" % tls_broker[0].tls_port in ln
               for ln in lines), lines
    assert srv.stop() == 0, "exit status %s\n%s" % (srv.returncode,
                                                    srv.log())


def test_amqps_with_a_missing_ca_file(tls_server, tls_broker, tmp_path):
    missing = str(tmp_path / "no-such-ca.pem")
    srv = tls_server(missing)
    lines = refused_ca(srv, 2.0)
    assert any("cannot load CA file" in ln and missing in ln
               for ln in lines), lines
    assert srv.stop() == 0, "exit status %s\n%s" % (srv.returncode,
                                                    srv.log())


def test_tls_broker_starts_again_when_its_tls_port_was_taken(
        tmp_path, monkeypatch):
    """The broker takes AMQP logins even when its TLS listener could not
    bind a port taken meanwhile (CI once lost test_amqps this way: "no TLS
    handshake"); the fixture sees it in the log and starts the broker
    again on new ports."""
    certs = make_certs(str(tmp_path))
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((HOST, 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    picked = []
    real_pick = RabbitMQ._pick_tls_port

    def first_pick_collides(self):
        port = taken if not picked else real_pick(self)
        picked.append(port)
        return port

    monkeypatch.setattr(RabbitMQ, "_pick_tls_port", first_pick_collides)
    broker = RabbitMQ(tls={"cacertfile": certs["ca"],
                           "certfile": certs["cert"],
                           "keyfile": certs["key"]})
    try:
        broker.start(timeout=BROKER_START_TIMEOUT)
        assert len(picked) == 2 and broker.tls_port != taken, picked
        assert tls_handshake(broker.tls_port, certs["ca"])
    finally:
        broker.stop()
        holder.close()
