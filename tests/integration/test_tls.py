"""TLS on the public listener: [server] tls_cert, tls_key, tls_ca.

A throwaway PKI is made here with the openssl command: a root CA, an
intermediate CA signed by it, and two server certificates for
IP:127.0.0.1 signed by the intermediate (an EC one, serial 0xB1, and an
RSA one, serial 0xB2). The server is given the leaf in tls_cert and the
intermediate in tls_ca; clients trust only the root, so a verified
handshake also proves that tls_ca is sent as the chain. The ini names the
files relative to its own folder while the server runs elsewhere.

* wss:// and https:// (/health, /bagou.js, POST /broadcast) work with a
  verifying client; a subscribed client receives a broadcast, and large
  back-to-back broadcasts arrive intact;
* TLS 1.0 and 1.1 are refused by the server, 1.2 and 1.3 work; TLS 1.2
  without ECDHE+AEAD is refused; renegotiation is refused; sessions
  resume whichever worker a connection lands on;
* a plain ws:// or HTTP client on the TLS port fails cleanly and a canary
  connection keeps working;
* SIGHUP reloads the certificate: new connections see the new serial
  (EC to RSA), an established one stays up and keeps receiving; a broken
  new key leaves the old certificate in use; SIGHUP without TLS only logs;
* bad files are start-up errors (exit 2) naming the file.
"""

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import warnings

import pytest
import websockets
import websockets.exceptions

from support import (HOST, Server, ServerError, expect_silence, free_port,
                     http_request, recv_json, run, server_binary, subscribe,
                     wait_closed, wait_for)

OPENSSL_TIMEOUT = 30.0
SERIAL_EC = "B1"
SERIAL_RSA = "B2"


# ---------------------------------------------------------------- certs

CA_EXT = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

LEAF_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
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


def new_key(d, name, kind="ec"):
    if kind == "ec":
        openssl(d, "genpkey", "-algorithm", "EC", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-out", name)
    else:
        openssl(d, "genpkey", "-algorithm", "RSA", "-pkeyopt",
                "rsa_keygen_bits:2048", "-out", name)


def sign(d, name, cn, issuer, issuer_key, serial, ext):
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write(ext)
    openssl(d, "req", "-new", "-key", name + ".key", "-subj", "/CN=" + cn,
            "-out", name + ".csr")
    openssl(d, "x509", "-req", "-in", name + ".csr", "-CA", issuer,
            "-CAkey", issuer_key, "-set_serial", "0x" + serial, "-days", "2",
            "-sha256", "-extfile", name + ".ext", "-out", name + ".pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    new_key(d, "root.key")
    openssl(d, "req", "-x509", "-key", "root.key", "-subj",
            "/CN=Bagou test root", "-days", "2", "-sha256", "-addext",
            "basicConstraints=critical,CA:TRUE", "-addext",
            "keyUsage=critical,keyCertSign,cRLSign", "-out", "root.pem")
    new_key(d, "inter.key")
    sign(d, "inter", "Bagou test intermediate", "root.pem", "root.key",
         "1A", CA_EXT)
    new_key(d, "ec.key")
    sign(d, "ec", "bagou ec", "inter.pem", "inter.key", SERIAL_EC, LEAF_EXT)
    new_key(d, "rsa.key", "rsa")
    sign(d, "rsa", "bagou rsa", "inter.pem", "inter.key", SERIAL_RSA,
         LEAF_EXT)
    return {k: os.path.join(d, k) for k in
            ("root.pem", "inter.pem", "ec.pem", "ec.key", "rsa.pem",
             "rsa.key")}


def install(pki, tmp_path, leaf="ec"):
    """Copies a leaf and the intermediate to tmp_path/certs/ (what the ini
    names, relative to its folder)."""
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    replace(str(certs / "server.pem"), pki[leaf + ".pem"])
    replace(str(certs / "server.key"), pki[leaf + ".key"])
    shutil.copyfile(pki["inter.pem"], str(certs / "chain.pem"))
    return certs


def replace(dst, src):
    """Atomic swap of dst with a copy of src, as a renewal tool does."""
    shutil.copyfile(src, dst + ".new")
    os.replace(dst + ".new", dst)


API_KEY = "tls-test-key"
# With an api_key, POST /broadcast on the public listener needs the bearer
# (and stays there once an API listener exists: PROTOCOL.md section 8).
TLS_INI = {"server": {"tls_cert": "certs/server.pem",
                      "tls_key": "certs/server.key",
                      "tls_ca": "certs/chain.pem"},
           "http": {"api_key": API_KEY}}


def client_ctx(pki, lo=None, hi=None, ciphers=None):
    """A verifying client context that trusts only the test root."""
    ctx = ssl.create_default_context(cafile=pki["root.pem"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if lo is not None:
            ctx.minimum_version = lo
        if hi is not None:
            ctx.maximum_version = hi
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


# ---------------------------------------------------------------- server

class TlsServer(Server):
    """support.Server, reached over https:// and wss://."""

    def __init__(self, tmpdir, ctx, **kw):
        super().__init__(tmpdir, **kw)
        self.ctx = ctx

    def ws_url(self, path="/websocket"):
        return "wss://%s:%d%s" % (HOST, self.port, path)

    def request(self, method, path, body=None, timeout=5.0, **kw):
        conn = http.client.HTTPSConnection(HOST, self.port, timeout=timeout,
                                           context=self.ctx)
        try:
            return http_request(self.port, method, path, body=body,
                                conn=conn, **kw)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def _wait_healthy(self):
        deadline = time.monotonic() + 10.0
        last = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerError("bagou-server exited with %d at start:\n%s"
                                  % (rc, self.log()))
            try:
                status, _, _ = self.get("/health", timeout=1.0)
                if status == 200:
                    return
                last = "HTTP %d" % status
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            time.sleep(0.05)
        raise ServerError("/health over https not 200 within 10 s "
                          "(last: %s):\n%s" % (last, self.log()))


@pytest.fixture
def tls_server(request, tmp_path, pki):
    """Factory: tls_server(config=TLS_INI, ...) → a started TlsServer
    whose clients trust the test root. Always stopped."""
    started = []
    request.node.bagou_servers = started

    def start(config=None, ctx=None, workers=2):
        srv = TlsServer(str(tmp_path), ctx or client_ctx(pki),
                        config=config or TLS_INI, workers=workers,
                        name="bagou%d" % len(started))
        started.append(srv)
        srv.start()
        return srv

    yield start
    for srv in started:
        srv.stop()


async def wss_connect(srv, ctx=None, **kw):
    """Opens wss://, reads the connect event; returns (ws, id)."""
    ws = await websockets.connect(srv.ws_url(), ssl=ctx or srv.ctx,
                                  open_timeout=5, close_timeout=2,
                                  compression=None, **kw)
    msg = await recv_json(ws)
    assert msg.get("event") == "connect", msg
    return ws, msg["data"]["id"]


def peer(ws):
    """(TLS version, serial of the certificate the server sent)."""
    obj = ws.transport.get_extra_info("ssl_object")
    return obj.version(), obj.getpeercert()["serialNumber"]


async def broadcast(srv, channel, data):
    status, _, body = await asyncio.to_thread(
        srv.post, "/broadcast",
        {"event": "news", "channel": channel, "data": data},
        headers={"Authorization": "Bearer " + API_KEY})
    assert status == 202, (status, body)


# ---------------------------------------------------------------- tests

def test_wss_and_https(tls_server, tmp_path, pki):
    install(pki, tmp_path)
    srv = tls_server()
    assert "TLS" in srv.log()

    status, headers, body = srv.get("/bagou.js")
    assert status == 200
    assert "javascript" in headers["content-type"]
    assert b"BagouWebSocket" in body
    assert json.loads(srv.get("/health")[2])["status"] == "ok"

    async def go():
        ws, _ = await wss_connect(srv)
        assert peer(ws)[1] == SERIAL_EC
        await subscribe(ws, "news")
        await broadcast(srv, "news", {"n": 1})
        assert await recv_json(ws) == {"event": "news", "channel": "news",
                                       "data": {"n": 1}}
        # SIGTERM: the close handshake runs over TLS too.
        srv.signal(signal.SIGTERM)
        assert await wait_closed(ws) == 1001
    run(go())
    assert srv.wait_exit(5) == 0


def test_large_messages_over_tls(tls_server, tmp_path, pki):
    """Frames larger than a TLS record, back to back: partial SSL writes
    are resumed in order, nothing is lost or mixed."""
    install(pki, tmp_path)
    srv = tls_server({**TLS_INI, "limits": {"max_message_size": "256k",
                                            "max_queued_bytes": "4m"}})

    async def go():
        ws, _ = await wss_connect(srv, max_size=2**20)
        await subscribe(ws, "big")
        sent = ["%d:" % i + chr(ord("a") + i) * (40000 + 7919 * i)
                for i in range(20)]
        for text in sent:
            await broadcast(srv, "big", text)
        for text in sent:
            assert (await recv_json(ws))["data"] == text
        await ws.close()
    run(go())


def test_versions_and_ciphers(tls_server, tmp_path, pki):
    install(pki, tmp_path)
    srv = tls_server()
    V = ssl.TLSVersion

    def handshake(ctx):
        with socket.create_connection((HOST, srv.port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname=HOST) as t:
                return t.version(), t.cipher()[0]

    # The client offers the old versions (security level 0 lets OpenSSL
    # 3 speak them); the refusal is the server's alert.
    for old in (V.TLSv1, V.TLSv1_1):
        ctx = client_ctx(pki, V.TLSv1, old, "DEFAULT:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError) as e:
            handshake(ctx)
        assert "PROTOCOL_VERSION" in str(e.value), e.value
    # TLS 1.2 without forward secrecy or without AEAD: no shared cipher.
    for weak in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384",
                 "AES128-GCM-SHA256"):
        ctx = client_ctx(pki, V.TLSv1_2, V.TLSv1_2, weak)
        with pytest.raises(ssl.SSLError) as e:
            handshake(ctx)
        assert "HANDSHAKE_FAILURE" in str(e.value), (weak, e.value)
    version, cipher = handshake(client_ctx(pki, V.TLSv1_2, V.TLSv1_2))
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and \
        ("GCM" in cipher or "CHACHA20" in cipher), cipher

    async def go():
        for v, name in ((V.TLSv1_2, "TLSv1.2"), (V.TLSv1_3, "TLSv1.3")):
            ws, _ = await wss_connect(srv, client_ctx(pki, v, v))
            assert peer(ws) == (name, SERIAL_EC)
            await subscribe(ws, "v")
            await broadcast(srv, "v", name)
            assert (await recv_json(ws))["data"] == name
            await ws.close()
    run(go())
    assert srv.alive()
    # Refused handshakes are the client's business: no warning each.
    assert " warn " not in srv.log() and " error " not in srv.log(), \
        srv.log()


def test_sessions_resume_on_any_worker(tls_server, tmp_path, pki):
    """Session tickets are valid on every worker: successive connections
    go to different workers (two, both idle) and each resumes."""
    install(pki, tmp_path)
    srv = tls_server(workers=2)
    V = ssl.TLSVersion

    def get_health(ctx, session=None):
        with socket.create_connection((HOST, srv.port), timeout=5) as s:
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
                # TLS 1.3 tickets come after the handshake: read first.
                return t.session, t.session_reused

    for v in (V.TLSv1_2, V.TLSv1_3):
        ctx = client_ctx(pki, v, v)
        session, reused = get_health(ctx)
        assert not reused
        for i in range(4):
            session, reused = get_health(ctx, session)
            assert reused, (v, i)


def test_renegotiation_refused(tls_server, tmp_path, pki):
    install(pki, tmp_path)
    srv = tls_server()
    # s_client renegotiates on a line "R"; the server must refuse.
    p = subprocess.Popen(
        ["openssl", "s_client", "-connect", "%s:%d" % (HOST, srv.port),
         "-tls1_2", "-CAfile", pki["root.pem"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(b"R\n", timeout=OPENSSL_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = out.decode(errors="replace")
    assert "RENEGOTIATING" in out, out
    assert "no renegotiation" in out, out
    assert json.loads(srv.get("/health")[2])["status"] == "ok"


def test_plain_clients_on_tls_port(tls_server, tmp_path, pki):
    install(pki, tmp_path)
    srv = tls_server(workers=1)

    async def go():
        canary, _ = await wss_connect(srv)
        await subscribe(canary, "c")
        # A plain WebSocket handshake gets no WebSocket.
        with pytest.raises((websockets.exceptions.InvalidHandshake,
                            websockets.exceptions.ConnectionClosed,
                            OSError, EOFError, asyncio.TimeoutError)):
            ws = await websockets.connect(
                "ws://%s:%d/websocket" % (HOST, srv.port), open_timeout=5)
            await ws.close()
        # Plain HTTP: the connection is closed (or reset) without an
        # HTTP answer.
        r, w = await asyncio.open_connection(HOST, srv.port)
        w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = await asyncio.wait_for(r.read(), 10)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"HTTP/"), data
        w.close()
        # A client that never speaks blocks nobody (same single worker).
        idle = socket.create_connection((HOST, srv.port), timeout=5)
        try:
            await broadcast(srv, "c", "still here")
            assert (await recv_json(canary))["data"] == "still here"
            other, _ = await wss_connect(srv)
            await other.close()
        finally:
            idle.close()
        await canary.close()
    run(go())
    assert srv.alive()
    assert " warn " not in srv.log() and " error " not in srv.log(), \
        srv.log()


def test_reload_certificate(tls_server, tmp_path, pki):
    certs = install(pki, tmp_path, "ec")
    srv = tls_server()

    def reloads():
        return srv.log().count("reload: tls certificate reloaded")

    async def go():
        old, _ = await wss_connect(srv)
        assert peer(old)[1] == SERIAL_EC
        await subscribe(old, "r")

        # The renewal: an RSA certificate replaces the EC one.
        replace(str(certs / "server.key"), pki["rsa.key"])
        replace(str(certs / "server.pem"), pki["rsa.pem"])
        srv.signal(signal.SIGHUP)
        await asyncio.to_thread(wait_for, lambda: reloads() == 1,
                                what="the reload log line")
        assert "serial B2" in srv.log()

        new, _ = await wss_connect(srv)
        assert peer(new)[1] == SERIAL_RSA
        await subscribe(new, "r")
        assert peer(old)[1] == SERIAL_EC  # untouched, still open
        await broadcast(srv, "r", "after reload")
        assert (await recv_json(old))["data"] == "after reload"
        assert (await recv_json(new))["data"] == "after reload"

        # A key that does not match: refused, the RSA set stays.
        replace(str(certs / "server.key"), pki["ec.key"])
        srv.signal(signal.SIGHUP)
        await asyncio.to_thread(
            wait_for, lambda: "tls certificate not reloaded" in srv.log(),
            what="the refused reload")
        assert "does not match" in srv.log()
        third, _ = await wss_connect(srv)
        assert peer(third)[1] == SERIAL_RSA
        await broadcast(srv, "r", "still")
        assert (await recv_json(old))["data"] == "still"
        assert (await recv_json(new))["data"] == "still"
        await expect_silence(third)
        for ws in (old, new, third):
            await ws.close()
    run(go())
    assert srv.alive() and reloads() == 1


def test_sighup_without_tls(server):
    srv = server()
    srv.signal(signal.SIGHUP)
    wait_for(lambda: "reload: nothing to reload" in srv.log(),
             what="the SIGHUP log line")
    assert srv.alive()
    assert srv.health()["status"] == "ok"


def test_chain_comes_from_tls_ca(tls_server, tmp_path, pki):
    """Without tls_ca the intermediate is missing: a client that trusts
    only the root cannot verify (tls_ca is what completes the chain)."""
    install(pki, tmp_path)
    no_chain = {"server": {"tls_cert": "certs/server.pem",
                           "tls_key": "certs/server.key"},
                "http": {"api_key": API_KEY}}
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    srv = tls_server(no_chain, ctx=ctx)
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            client_ctx(pki).wrap_socket(s, server_hostname=HOST)


def run_server(ini, *args):
    return subprocess.run(
        [server_binary(), "--config", ini, "--amqp-url", "none",
         "--listen", "%s:%d" % (HOST, free_port())] + list(args),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("keys,message", [
    ({"tls_cert": "certs/missing.pem", "tls_key": "certs/server.key"},
     "tls_cert '{d}/certs/missing.pem': cannot open: No such file"),
    ({"tls_cert": "certs/server.pem", "tls_key": "certs/missing.key"},
     "tls_key '{d}/certs/missing.key': cannot open: No such file"),
    ({"tls_cert": "certs/server.pem", "tls_key": "certs/rsa.key"},
     "tls_key '{d}/certs/rsa.key' does not match the certificate in "
     "[server] tls_cert '{d}/certs/server.pem'"),
    ({"tls_cert": "certs/server.key", "tls_key": "certs/server.key"},
     "tls_cert '{d}/certs/server.key': no PEM certificate in it"),
    ({"tls_cert": "certs/server.pem", "tls_key": "certs/server.pem"},
     "tls_key '{d}/certs/server.pem': no PEM private key in it"),
    ({"tls_cert": "certs/server.pem", "tls_key": "certs/enc.key"},
     "tls_key '{d}/certs/enc.key': cannot read the private key"),
    ({"tls_cert": "certs/server.pem", "tls_key": "certs/server.key",
      "tls_ca": "certs/missing.pem"},
     "tls_ca '{d}/certs/missing.pem': cannot open"),
    ({"tls_cert": "certs/server.pem"},
     "tls_cert and [server] tls_key go together"),
    ({"tls_key": "certs/server.key"},
     "tls_cert and [server] tls_key go together"),
], ids=["cert_missing", "key_missing", "key_mismatch", "cert_not_pem",
        "key_not_pem", "key_encrypted", "ca_missing", "cert_alone",
        "key_alone"])
def test_bad_files_are_config_errors(tmp_path, pki, keys, message):
    certs = install(pki, tmp_path)
    shutil.copyfile(pki["rsa.key"], str(certs / "rsa.key"))
    openssl(str(certs), "pkey", "-in", "server.key", "-aes256", "-passout",
            "pass:secret", "-out", "enc.key")
    ini = tmp_path / "bagou.ini"
    ini.write_text("[server]\n" + "".join("%s = %s\n" % kv
                                          for kv in keys.items()))
    want = message.format(d=str(tmp_path))
    for args in ((), ("--check-config",)):
        p = run_server(str(ini), *args)
        assert p.returncode == 2, (args, p.returncode, p.stdout, p.stderr)
        assert want in p.stderr, (args, p.stderr)
