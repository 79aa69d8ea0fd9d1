"""Helpers shared by the integration tests: the server process, HTTP,
WebSocket clients and bounded waits.

Everything talks to 127.0.0.1 only, and every wait has a bound, so a hung
server fails a test instead of hanging the suite.
"""

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time

import websockets
import websockets.exceptions

HOST = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_BIN = os.path.join(REPO, "build", "bagou-server")

START_TIMEOUT = float(os.environ.get("BAGOU_START_TIMEOUT", "10"))
                         # seconds for /health/live to answer 200
STOP_TIMEOUT = 5.0       # seconds between SIGTERM and SIGKILL
RECV_TIMEOUT = 10.0      # default wait for one expected message
SILENCE = 0.3            # how long "nothing arrives" is watched


# What a sanitizer prints when it finds something (ASan, LSan, UBSan,
# TSan): any of these in a server's log fails the test that owned it.
SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "runtime error:", "WARNING: ThreadSanitizer",
                     "ERROR: ThreadSanitizer", "SUMMARY: UndefinedBehavior")


def stop_servers(servers):
    """Fixture teardown: stops every server, then fails (AssertionError)
    if one of them crashed, exited badly or logged a sanitizer report."""
    problems = []
    for srv in servers:
        problems.extend(srv.ended_problems())
    if problems:
        raise AssertionError("bagou-server did not end cleanly:\n"
                             + "\n".join(problems))


# The sanitizers the server under test was built with ("" for none; the
# Makefile sets it): memory figures mean nothing under them.
SANITIZER = os.environ.get("BAGOU_SANITIZER", "")


def server_binary():
    return os.environ.get("BAGOU_BIN") or DEFAULT_BIN


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def render_ini(config):
    """config: a dict {section: {key: value}} or the ini text itself."""
    if config is None:
        return ""
    if isinstance(config, str):
        return config
    out = []
    for section, keys in config.items():
        out.append("[%s]" % section)
        for key, value in keys.items():
            out.append("%s = %s" % (key, value))
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- HTTP

def http_request(port, method, path, body=None, headers=None, timeout=5.0,
                 conn=None):
    """One HTTP request; returns (status, headers, body bytes).

    headers come back as a dict with lower-case names. body may be a dict
    or list (sent as JSON), str or bytes. conn reuses a keep-alive
    http.client connection."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    hdrs = dict(headers or {})
    if body is not None and not any(k.lower() == "content-type"
                                    for k in hdrs):
        hdrs["Content-Type"] = "application/json"
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return (resp.status,
                {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        if own:
            conn.close()


def http_get(port, path, **kw):
    return http_request(port, "GET", path, **kw)


def http_post(port, path, body=None, **kw):
    return http_request(port, "POST", path, body=body, **kw)


def parse_metrics(text):
    """Prometheus text → {'name{labels}': float} (labels as written)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)",
                     line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def metric_sum(metrics, name):
    """Sum of every series of metric name (any labels)."""
    total = 0.0
    found = False
    for key, value in metrics.items():
        if key == name or key.startswith(name + "{"):
            total += value
            found = True
    assert found, "metric %s missing" % name
    return total


# ---------------------------------------------------------------- server

class ServerError(Exception):
    pass


class Server:
    """One bagou-server process on a free port, its ini and its log.

    The API listener (POST /broadcast, /metrics) gets a free port of its
    own (api_port), unless api_listen gives --api-listen a value ("" turns
    it off) or is False (the ini decides; the default port 9001 is then
    shared with every other test: only for servers that never start)."""

    def __init__(self, tmpdir, config=None, workers=2, extra_args=(),
                 name="bagou", api_listen=None):
        self.tmpdir = tmpdir
        self.workers = workers
        self.extra_args = list(extra_args)
        self.config_path = os.path.join(tmpdir, name + ".ini")
        self.log_path = os.path.join(tmpdir, name + ".log")
        with open(self.config_path, "w") as f:
            f.write(render_ini(config))
        self.port = None
        self.api_listen = api_listen
        self.api_port = None
        self.proc = None
        self.returncode = None
        self._log = None
        # How the process may end when the fixture stops it: a test that
        # makes the server exit on purpose (a start-up error, SIGKILL)
        # sets this to the statuses it expects; None accepts any.
        self.expected_exit = (0,)

    # The path of the WebSocket endpoint, from the config if set.
    def ws_url(self, path="/websocket"):
        return "ws://%s:%d%s" % (HOST, self.port, path)

    def argv(self):
        api = []
        if self.api_listen is None:
            api = ["--api-listen", "%s:%d" % (HOST, self.api_port)]
        elif self.api_listen is not False:
            api = ["--api-listen", self.api_listen]
        return [server_binary(), "--config", self.config_path,
                "--listen", "%s:%d" % (HOST, self.port),
                "--workers", str(self.workers),
                "--amqp-url", "none", "--log-level", "info"] + api + \
            self.extra_args

    def start(self, port=None):
        """Starts the server on a free port, or on port (a restart that
        pages already point at)."""
        binary = server_binary()
        if not os.access(binary, os.X_OK):
            raise ServerError("no server binary at %s (set BAGOU_BIN)"
                              % binary)
        for attempt in range(3):
            self.port = port or free_port()
            if self.api_listen is None:
                self.api_port = free_port()
                while self.api_port == self.port:
                    self.api_port = free_port()
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=subprocess.STDOUT)
            try:
                self._wait_healthy()
                return self
            except ServerError:
                rc = self.proc.poll()
                self.stop()
                # The test sees this failure as the exception it gets;
                # the fixture's exit check has nothing to add.
                self.expected_exit = None
                # Another process took the port between free_port() and
                # the bind: try another port, nothing else.
                if rc is not None and "in use" in self.log().lower() \
                        and attempt < 2 and port is None:
                    continue
                raise
        raise ServerError("unreachable")

    def _wait_healthy(self):
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerError("bagou-server exited with %d at start:\n%s"
                                  % (rc, self.log()))
            try:
                # Liveness: /health is 503 while a configured broker is
                # not connected yet, which some tests want.
                status, _, _ = http_get(self.port, "/health/live",
                                        timeout=1.0)
                if status == 200:
                    return
                last = "HTTP %d" % status
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            time.sleep(0.05)
        raise ServerError("/health/live not 200 within %.0f s (last: %s):\n%s"
                          % (START_TIMEOUT, last, self.log()))

    def signal(self, sig):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Returns the exit status, or None if still running after timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then SIGKILL after timeout. Returns the exit status
        (negative: killed by that signal). Safe to call twice."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.returncode = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.returncode

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def ended_problems(self):
        """Stops the server (if still running) and lists what is wrong
        with how it ended: an exit status other than expected_exit, and
        any sanitizer report in its log."""
        problems = []
        rc = self.stop()
        if self.proc is None:
            return problems
        if self.expected_exit is not None and rc not in self.expected_exit:
            how = ("killed by signal %d" % -rc if rc is not None and rc < 0
                   else "exit status %s" % rc)
            problems.append("%s: %s, expected %s after SIGTERM"
                            % (self.log_path, how,
                               " or ".join(map(str, self.expected_exit))))
        text = self.log()
        for pattern in SANITIZER_REPORTS:
            i = text.find(pattern)
            if i >= 0:
                problems.append("%s: sanitizer report: %s"
                                % (self.log_path,
                                   text[max(0, i - 200):i + 1500]))
                break
        if problems:
            problems.append("log tail of %s:\n%s"
                            % (self.log_path, text[-4000:]))
        return problems

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # ------------------------------------------------------------ HTTP
    # get: the public port; post, api_get, metrics: the API listener.
    def get(self, path, **kw):
        return http_get(self.port, path, **kw)

    def api_get(self, path, **kw):
        assert self.api_port, "this server has no API listener"
        return http_get(self.api_port, path, **kw)

    def post(self, path, body=None, **kw):
        assert self.api_port, "this server has no API listener"
        return http_post(self.api_port, path, body=body, **kw)

    def public_post(self, path, body=None, **kw):
        return http_post(self.port, path, body=body, **kw)

    def broadcast(self, msg, **kw):
        """POST /broadcast on the API listener that must be accepted."""
        status, _, body = self.post("/broadcast", msg, **kw)
        assert status == 202, "POST /broadcast %r -> %d %r" % (msg, status,
                                                              body)
        return body

    def health(self):
        """The JSON of /health: 200 when ready, 503 (with "reason") while
        the broker is down or the node drains; the body either way."""
        status, _, body = self.get("/health")
        assert status in (200, 503), (status, body)
        doc = json.loads(body)
        assert (status == 200) == (doc["status"] == "ok"), (status, doc)
        return doc

    def metrics(self, **kw):
        status, _, body = self.api_get("/metrics", **kw)
        assert status == 200, (status, body)
        return parse_metrics(body.decode())


# ---------------------------------------------------------------- waits

def wait_for(cond, timeout=5.0, interval=0.05, what="condition"):
    """Polls cond() until it returns a true value; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


async def async_wait_for(cond, timeout=5.0, interval=0.05, what="condition"):
    """wait_for for async tests; cond is a plain (blocking) callable."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(cond)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s"
                                 % (timeout, what))
        await asyncio.sleep(interval)


def run(coro, timeout=60.0):
    """Runs a coroutine from a sync test, bounded."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


# ---------------------------------------------------------------- WebSocket

async def ws_connect(server, path="/websocket", **kw):
    """Opens a WebSocket, reads the connect event; returns (ws, id)."""
    opts = dict(open_timeout=5, close_timeout=2, compression=None,
                max_size=4 * 2**20, max_queue=None)
    opts.update(kw)
    ws = await websockets.connect(server.ws_url(path), **opts)
    msg = await recv_json(ws)
    assert msg.get("event") == "connect", msg
    return ws, msg["data"]["id"]


async def recv_json(ws, timeout=RECV_TIMEOUT):
    """The next message as JSON; fails on timeout or a non-text frame."""
    try:
        raw = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError("no message within %.1f s" % timeout)
    assert isinstance(raw, str), "expected a text frame, got %r" % (raw,)
    return json.loads(raw)


async def expect_silence(ws, timeout=SILENCE):
    """Asserts that nothing arrives for timeout seconds."""
    try:
        raw = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        return
    raise AssertionError("unexpected message: %r" % (raw,))


SENTINEL = {"event": "sentinel", "data": {}}


async def expect_only_sentinel(srv, wss):
    """Nothing else reached these connections: a broadcast to everyone
    (POST /broadcast), published after what they must not get, is the
    next thing each of them receives. A closed connection fails too.
    Every other connection of srv gets the sentinel as well."""
    await asyncio.to_thread(srv.broadcast, {"event": "sentinel"})
    for ws in wss:
        assert await recv_json(ws) == SENTINEL


async def expect_nothing_pending(ws):
    """Nothing was sent to ws that it has not read: a ping sent now is
    answered next (the server answers one connection's messages in order,
    so a late reply or error to an earlier message would come first)."""
    await send_json(ws, {"event": "ping", "callbackId": "nothing-pending"})
    assert await recv_json(ws) == {
        "event": "callback", "callbackId": "nothing-pending",
        "data": {"success": True}}


async def send_json(ws, obj):
    await ws.send(json.dumps(obj))


async def request(ws, event, data=None, callback_id=None, **extra):
    """Sends {event, data, callbackId} and returns the next message."""
    msg = {"event": event}
    if data is not None:
        msg["data"] = data
    if callback_id is not None:
        msg["callbackId"] = callback_id
    msg.update(extra)
    await send_json(ws, msg)
    return await recv_json(ws)


async def subscribe(ws, channel):
    """Subscribes and checks the success callback."""
    reply = await request(ws, "subscribe", {"channel": channel},
                          callback_id="sub-" + channel[:40])
    assert reply == {"event": "callback", "callbackId": "sub-" + channel[:40],
                     "data": {"success": True, "channel": channel}}, reply
    return reply


async def wait_closed(ws, timeout=RECV_TIMEOUT):
    """Waits for the server to close ws; returns the close code."""
    async def drain():
        try:
            while True:
                await ws.recv()
        except websockets.exceptions.ConnectionClosed:
            pass
        await ws.wait_closed()
    try:
        await asyncio.wait_for(drain(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError("connection not closed within %.1f s" % timeout)
    return ws.close_code


def error_code(msg):
    """The error code of a failure, as an error event or a callback."""
    if msg.get("event") == "error":
        return msg["data"]["code"]
    if msg.get("event") == "callback":
        data = msg["data"]
        assert data.get("success") is False, msg
        return data["error"]["code"]
    raise AssertionError("not a failure: %r" % (msg,))
