"""The browser client as served on the public port (PROTOCOL.md §1,
docs/client.md "Loading it"): /bagou.js minified with its source map,
strong ETags and 304s, no-cache on the unversioned URLs, an immutable
/bagou.<version>.js, gzip when the request accepts it, HEAD alike."""

import gzip
import http.client
import json
import os
import re
import shutil
import socket
import subprocess

import pytest

from support import HOST, http_request

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
JS = os.path.join(ROOT, "js")
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"


def read(*parts):
    with open(os.path.join(ROOT, *parts), "rb") as f:
        return f.read()


def version():
    m = re.search(rb'#define BG_VERSION "([^"]+)"', read("common", "bg.h"))
    return m.group(1).decode()


def get(srv, path, method="GET", **headers):
    return http_request(srv.port, method, path, headers=headers)


def raw_get(srv, path):
    """A GET with no Accept-Encoding at all (http.client sends
    "identity" by itself); returns (head text, body bytes)."""
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   "\r\n" % path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1").lower(), body


def test_bagou_js_is_the_minified_build_and_defines_the_client(server):
    srv = server()
    status, headers, body = get(srv, "/bagou.js")
    assert status == 200
    assert headers["content-type"] == "application/javascript; charset=utf-8"
    assert body == read("js", "dist", "bagou.min.js")
    source = read("js", "bagou.js")
    assert len(body) < 0.6 * len(source), (len(body), len(source))
    assert body.endswith(b"\n//# sourceMappingURL=bagou.js.map\n")
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node to run the served file")
    # Loaded as a browser's <script> would: a global BagouWebSocket.
    script = ("const vm = require('vm'); const w = {}; w.self = w;"
              "vm.createContext(w); vm.runInContext("
              "require('fs').readFileSync(0, 'utf8'), w);"
              "if (typeof w.BagouWebSocket !== 'function') process.exit(3);"
              "console.log(Object.keys(w.BagouWebSocket.DEFAULTS).length);")
    out = subprocess.run([node, "-e", script], input=body,
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    assert int(out.stdout) > 0


def test_source_map_and_readable_source(server):
    srv = server()
    status, headers, body = get(srv, "/bagou.js.map")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert headers["cache-control"] == REVALIDATE
    m = json.loads(body)
    assert m["file"] == "bagou.js" and m["sources"] == ["bagou.src.js"]
    assert m["sourcesContent"][0].encode() == read("js", "bagou.js")
    status, headers, body = get(srv, "/bagou.src.js")
    assert status == 200
    assert headers["content-type"].startswith("application/javascript")
    assert body == read("js", "bagou.js")


def test_etag_strong_stable_and_revalidation_gets_304(server):
    srv = server()
    status, headers, body = get(srv, "/bagou.js")
    etag = headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag), etag
    assert headers["cache-control"] == REVALIDATE
    assert headers["vary"] == "Accept-Encoding"
    assert get(srv, "/bagou.js")[1]["etag"] == etag
    # Another process serves the same bytes under the same ETag.
    assert get(server(), "/bagou.js")[1]["etag"] == etag
    assert get(srv, "/bagou.src.js")[1]["etag"] != etag

    for inm in (etag, 'W/' + etag, '"other", ' + etag, "*"):
        status, h, b = get(srv, "/bagou.js", **{"If-None-Match": inm})
        assert status == 304, inm
        assert b == b""
        assert h["etag"] == etag and h["cache-control"] == REVALIDATE
        assert "content-encoding" not in h
    status, _, b = get(srv, "/bagou.js", **{"If-None-Match": '"other"'})
    assert status == 200 and b == body


def test_304_keeps_the_connection_usable(server):
    srv = server()
    conn = http.client.HTTPConnection(HOST, srv.port, timeout=5)
    try:
        _, h, body = http_request(srv.port, "GET", "/bagou.js", conn=conn)
        status, _, b = http_request(srv.port, "GET", "/bagou.js", conn=conn,
                                    headers={"If-None-Match": h["etag"]})
        assert (status, b) == (304, b"")
        status, _, b = http_request(srv.port, "GET", "/bagou.js", conn=conn)
        assert (status, b) == (200, body)
    finally:
        conn.close()


def test_versioned_url_is_immutable_and_unknown_versions_404(server):
    srv = server()
    _, plain, body = get(srv, "/bagou.js")
    status, headers, b = get(srv, "/bagou.%s.js" % version())
    assert status == 200
    assert b == body and headers["etag"] == plain["etag"]
    assert headers["cache-control"] == IMMUTABLE
    status, _, _ = get(srv, "/bagou.%s.js" % version(),
                       **{"If-None-Match": plain["etag"]})
    assert status == 304
    for path in ("/bagou.0.0.0.js", "/bagou.%s.1.js" % version(),
                 "/bagou..js", "/bagou.%s.js.map" % version(),
                 "/bagou.js/", "/bagou.min.js"):
        assert get(srv, path)[0] == 404, path


@pytest.mark.parametrize("path", ["/bagou.js", "/bagou.js.map",
                                  "/bagou.src.js"])
def test_gzip_when_accepted(server, path):
    srv = server()
    _, plain, body = get(srv, path)
    for ae in ("gzip", "br, gzip;q=0.5", "deflate, x-gzip", "*", "GZIP"):
        status, h, b = get(srv, path, **{"Accept-Encoding": ae})
        assert status == 200, ae
        assert h["content-encoding"] == "gzip", ae
        assert h["vary"] == "Accept-Encoding"
        assert int(h["content-length"]) == len(b) < len(body) // 2
        assert gzip.decompress(b) == body, ae
        assert h["etag"] == plain["etag"][:-1] + '-gz"'
    # Revalidating the gzip copy: 304 with its own ETag.
    status, h304, b = get(srv, path, **{"Accept-Encoding": "gzip",
                                        "If-None-Match": h["etag"]})
    assert (status, b, h304["etag"]) == (304, b"", h["etag"])


@pytest.mark.parametrize("ae", ["identity", "gzip;q=0", "br",
                                "*;q=0", "gzip;q=0, *", "gzipx", ""])
def test_no_gzip_when_not_accepted(server, ae):
    srv = server()
    status, h, b = get(srv, "/bagou.js", **{"Accept-Encoding": ae})
    assert status == 200
    assert "content-encoding" not in h, ae
    assert b == read("js", "dist", "bagou.min.js")


def test_no_accept_encoding_header_gets_identity(server):
    srv = server()
    head, body = raw_get(srv, "/bagou.js")
    assert head.startswith("http/1.1 200")
    assert "content-encoding" not in head
    assert body == read("js", "dist", "bagou.min.js")


def test_head(server):
    srv = server()
    _, g, body = get(srv, "/bagou.js")
    status, h, b = get(srv, "/bagou.js", method="HEAD")
    assert (status, b) == (200, b"")
    for k in ("content-type", "content-length", "etag", "cache-control",
              "vary"):
        assert h[k] == g[k], k
    status, h, b = get(srv, "/bagou.%s.js" % version(), method="HEAD",
                       **{"Accept-Encoding": "gzip"})
    assert (status, b) == (200, b"")
    assert h["content-encoding"] == "gzip"
    assert h["cache-control"] == IMMUTABLE
    assert int(h["content-length"]) < len(body) // 2
    status, _, b = get(srv, "/bagou.js", method="HEAD",
                       **{"If-None-Match": g["etag"]})
    assert (status, b) == (304, b"")
