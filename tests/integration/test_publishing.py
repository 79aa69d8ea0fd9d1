"""Publishing from outside (docs/publishing.md): bagou-broadcast, and every
code snippet of the doc run as it is written, against a real RabbitMQ (the
session `rabbitmq` fixture) and real bagou-server nodes.

Three layers:
* bagou-broadcast alone: argument checks (exit 2) need no broker; exit 3
  uses a closed or silent port; exits 0, 4 and 5 use the session broker,
  read back with pika (routing key, body, properties).
* each snippet of tests/integration/publishing_snippets/ runs as a
  subprocess (BAGOU_AMQP_URL, BAGOU_CHANNEL, ... in its environment) while
  a WebSocket client subscribed on a bagou-server node checks that exactly
  the expected message arrives.
* the doc shows each snippet verbatim, and only snippets.

Channel, queue and exchange names are unique per test, so tests sharing
the broker never see each other's messages.
"""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from support import (HOST, REPO, expect_only_sentinel, free_port,
                     recv_json, run, server_binary, subscribe, wait_for,
                     ws_connect)

HERE = os.path.dirname(os.path.abspath(__file__))
SNIPPETS = os.path.join(HERE, "publishing_snippets")
DOC = os.path.join(REPO, "docs", "publishing.md")

RUN_TIMEOUT = 60.0       # one snippet or bagou-broadcast run
AMQP_TIMEOUT = 15.0      # a node reporting "amqp": "connected"
WELCOME = {"text": "Welcome!"}


# ---------------------------------------------------------------- helpers

def cli_binary():
    path = os.environ.get("BAGOU_BROADCAST") or os.path.join(
        os.path.dirname(server_binary()), "bagou-broadcast")
    if not os.access(path, os.X_OK):
        pytest.fail("no bagou-broadcast at %s (make build/bagou-broadcast, "
                    "or set BAGOU_BROADCAST)" % path)
    return path


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def clean_env(**extra):
    """The test's environment without any BAGOU_* variable of the
    caller, bagou-broadcast's directory first on PATH, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAGOU_")}
    env["PATH"] = os.path.dirname(cli_binary()) + os.pathsep + \
        env.get("PATH", "/usr/bin:/bin")
    env["PYTHONPATH"] = SNIPPETS
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cli(*args, env=None, stdin=None, timeout=RUN_TIMEOUT):
    """Runs bagou-broadcast; returns the CompletedProcess (text)."""
    return subprocess.run([cli_binary()] + [str(a) for a in args],
                          input=stdin, capture_output=True, text=True,
                          env=env if env is not None else clean_env(),
                          timeout=timeout)


def show(p):
    return "exit %s\nstdout: %r\nstderr: %r" % (p.returncode, p.stdout,
                                                p.stderr)


def snippet_argv(name):
    path = os.path.join(SNIPPETS, name)
    if name.endswith(".py"):
        return [sys.executable, path]
    return ["/bin/sh", path]


def run_snippet(name, timeout=RUN_TIMEOUT, **env):
    """Runs one snippet file as a user would; fails on a non-zero exit."""
    p = subprocess.run(snippet_argv(name), cwd=SNIPPETS,
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, env=clean_env(**env), timeout=timeout)
    assert p.returncode == 0, "%s: %s" % (name, show(p))
    return p


def snippet_files():
    return sorted(f for f in os.listdir(SNIPPETS)
                  if f.endswith((".py", ".sh")))


# ---------------------------------------------------------------- pika side

class Tap:
    """A pika connection to the session broker that reads back what
    bagou-broadcast published: a private queue bound to an exchange."""

    def __init__(self, url):
        import pika
        self.pika = pika
        params = pika.URLParameters(url)
        params.socket_timeout = 10
        params.blocked_connection_timeout = 30
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.exchanges = []
        self.queues = []

    def exchange(self, name="bagou"):
        """Declares name as bagou-server does: topic, durable."""
        self.ch.exchange_declare(name, exchange_type="topic", durable=True)
        if name != "bagou":
            self.exchanges.append(name)
        return name

    def bind(self, exchange, key):
        q = self.ch.queue_declare("", exclusive=True).method.queue
        self.ch.queue_bind(q, exchange, routing_key=key)
        return q

    def get(self, queue, timeout=10.0):
        """(method, properties, JSON body) of the next message."""
        deadline = time.monotonic() + timeout
        while True:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is not None:
                return method, props, json.loads(body)
            if time.monotonic() >= deadline:
                raise AssertionError("nothing in %s within %.0f s"
                                     % (queue, timeout))
            self.conn.sleep(0.02)

    def empty(self, queue, quiet=0.2):
        self.conn.sleep(quiet)
        method, _, body = self.ch.basic_get(queue, auto_ack=True)
        assert method is None, "unexpected message %r" % (body,)

    def delete_queue(self, name):
        self.queues.append(name)

    def close(self):
        try:
            for name in self.exchanges:
                self.ch.exchange_delete(name)
            for name in self.queues:
                self.ch.queue_delete(name)
            self.conn.close()
        except Exception:
            pass


@pytest.fixture
def tap(rabbitmq):
    t = Tap(rabbitmq.url)
    yield t
    t.close()


def url_with(rabbitmq, user="guest", password="guest", vhost=""):
    return "amqp://%s:%s@%s:%d/%s" % (user, password, HOST, rabbitmq.port,
                                      vhost)


# ---------------------------------------------------------------- nodes

@pytest.fixture
def node(server, rabbitmq):
    """Factory: node(config=None) -> a bagou-server on the session broker
    that /health reports "amqp": "connected"."""
    def start(config=None, workers=2):
        srv = server(config=config, workers=workers,
                     extra_args=("--amqp-url", rabbitmq.url))
        seen = []

        def connected():
            state = srv.health().get("amqp")
            if not seen or seen[-1] != state:
                seen.append(state)
            return state == "connected"
        try:
            wait_for(connected, timeout=AMQP_TIMEOUT,
                     what='/health "amqp": "connected"')
        except AssertionError as e:
            raise AssertionError("%s (states seen: %r)" % (e, seen))
        return srv
    return start


async def subscribed(srv, *channels):
    """A WebSocket client subscribed to channels: (ws, client id)."""
    ws, cid = await ws_connect(srv)
    for ch in channels:
        await subscribe(ws, ch)
    return ws, cid


async def in_thread(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


def delivered_once(srv, channel, publish, want=None, timeout=90.0):
    """Subscribes one client to channel on srv, calls publish() (blocking,
    in a thread) and checks the client gets exactly want, once."""
    if want is None:
        want = {"event": "message", "channel": channel, "data": WELCOME}

    async def scenario():
        ws, _ = await subscribed(srv, channel)
        bystander, _ = await subscribed(srv, unique("other"))
        await in_thread(publish)
        assert await recv_json(ws) == want
        # Exactly once, and not to the bystander: a broadcast to everyone
        # published after it is the next thing both get.
        await expect_only_sentinel(srv, [ws, bystander])
        await ws.close()
        await bystander.close()

    run(scenario(), timeout=timeout)


# ================================================================ the doc

def test_doc_shows_every_snippet_verbatim():
    with open(DOC, encoding="utf-8") as f:
        doc = f.read()
    names = snippet_files()
    assert len(names) >= 7, names
    for name in names:
        with open(os.path.join(SNIPPETS, name), encoding="utf-8") as f:
            text = f.read()
        assert text in doc, "docs/publishing.md lacks %s verbatim" % name


def test_doc_code_blocks_are_all_snippets():
    """Every shell or Python block of the doc is a tested snippet."""
    with open(DOC, encoding="utf-8") as f:
        doc = f.read()
    texts = []
    for name in snippet_files():
        with open(os.path.join(SNIPPETS, name), encoding="utf-8") as f:
            texts.append(f.read())
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", doc, re.S | re.M)
    assert blocks
    for lang, body in blocks:
        if lang in ("sh", "shell", "bash", "python", "py", "console"):
            assert body in texts, "untested %s block:\n%s" % (lang, body)


def test_doc_and_help_list_the_same_exit_codes():
    with open(DOC, encoding="utf-8") as f:
        doc = f.read()
    p = cli("--help")
    assert p.returncode == 0, show(p)
    for code in range(6):
        assert re.search(r"^  %d  \S" % code, p.stdout, re.M), code
        assert re.search(r"^\| %d \|" % code, doc, re.M), code


# ================================================================ exit 2

def test_help_and_version():
    p = cli("--help")
    assert p.returncode == 0 and p.stderr == "", show(p)
    for flag in ("--url", "--exchange", "--event", "--channel", "--client",
                 "--exclude", "--data", "--callback-id", "--timeout",
                 "--quiet", "--version", "BAGOU_AMQP_URL"):
        assert flag in p.stdout, flag
    p = cli("--version")
    assert p.returncode == 0, show(p)
    assert re.fullmatch(r"bagou-broadcast \d+\.\d+\.\d+ \(protocol 1\)\n",
                        p.stdout), p.stdout


@pytest.mark.parametrize("args,message", [
    ([], "--event is required"),
    (["--channel", "news"], "--event is required"),
    (["--event"], "--event needs a value"),
    (["--event", ""], "--event must not be empty"),
    (["--event", "e", "--data", '{"a":'],
     "--data: invalid JSON at line 1 column 5: "),
    (["--event", "e", "--data", "{'a': 1}"], "--data: invalid JSON at line"),
    (["--event", "e", "--data", '{"a": 1, "a": 2}'],
     "--data: invalid JSON at line 1 column"),
    (["--event", "e", "--data", "1 2"], "--data: invalid JSON"),
    (["--event", "e", "--data", "@/nonexistent/data.json"],
     "--data: cannot open '/nonexistent/data.json'"),
    (["--event", "e", "--channel", "a b"], "invalid channel name 'a b'"),
    (["--event", "e", "--channel", "ok", "--channel", "a*"],
     "invalid channel name 'a*'"),
    (["--event", "e", "--channel", "a#"], "invalid channel name 'a#'"),
    (["--event", "e", "--channel", ""], "invalid channel name ''"),
    (["--event", "e", "--channel", "x" * 201], "invalid channel name"),
    (["--event", "e", "--channel", "caf\u00e9"],
     "invalid channel name 'caf\\xc3\\xa9'"),
    (["--event", "e", "--client", "a b"], "invalid client id 'a b' in "
     "--client"),
    (["--event", "e", "--client", "x" * 65], "invalid client id"),
    (["--event", "e", "--exclude", 'a"b'], "invalid client id 'a\"b' in "
     "--exclude"),
    (["--event", "e", "--callback-id", "c" * 65],
     "--callback-id: longer than 64 bytes"),
    (["--event", "e", "--timeout", "0"], "--timeout: expected seconds"),
    (["--event", "e", "--timeout", "soon"], "--timeout: expected seconds"),
    (["--event", "e", "--url", "http://localhost/"],
     "--url: not an amqp:// or amqps:// URL"),
    (["--event", "e", "--exchange", ""], "--exchange: 1 to 255 bytes"),
    (["--event", "e", "--bogus"], "unknown option '--bogus'"),
    (["--event", "e", "stray"], "unexpected argument 'stray'"),
])
def test_exit_2_usage_and_invalid_broadcast(args, message):
    """Refused before any connection: the URL points at a closed port,
    where a connection attempt would exit 3 instead."""
    closed = "amqp://guest:guest@%s:%d/" % (HOST, free_port())
    p = cli(*args, env=clean_env(BAGOU_AMQP_URL=closed))
    assert p.returncode == 2, show(p)
    assert p.stderr.startswith("bagou-broadcast: "), show(p)
    assert message in p.stderr, show(p)
    assert p.stdout == "", show(p)


def test_exit_2_names_the_json_error_position():
    p = cli("--event", "e", "--data", '{"text": "hi",}',
            env=clean_env(BAGOU_AMQP_URL="amqp://%s:1/" % HOST))
    assert p.returncode == 2, show(p)
    assert re.fullmatch(r"bagou-broadcast: --data: invalid JSON at line 1 "
                        r"column \d+: .+\n", p.stderr), show(p)


def test_url_password_never_printed():
    p = cli("--event", "e", "--url", "amqp://user:s3cret@host:99999/")
    assert p.returncode == 2, show(p)
    assert "s3cret" not in p.stderr and "user:***@host" in p.stderr, show(p)


# ================================================================ exit 3

def test_exit_3_connection_refused():
    port = free_port()
    started = time.monotonic()
    p = cli("--url", "amqp://guest:guest@%s:%d/" % (HOST, port),
            "--event", "message", "--channel", "news")
    assert p.returncode == 3, show(p)
    assert p.stderr == "bagou-broadcast: cannot connect to %s:%d: " \
        "Connection refused\n" % (HOST, port), show(p)
    assert time.monotonic() - started < 5
    assert "guest" not in p.stderr


def test_exit_3_from_environment_url():
    """BAGOU_AMQP_URL is the default --url."""
    port = free_port()
    p = cli("--event", "message",
            env=clean_env(BAGOU_AMQP_URL="amqp://%s:%d/" % (HOST, port)))
    assert p.returncode == 3, show(p)
    assert ":%d: Connection refused" % port in p.stderr, show(p)


def test_exit_3_unknown_host():
    p = cli("--url", "amqp://no-such-host.invalid/", "--event", "e",
            "--timeout", "5")
    assert p.returncode == 3, show(p)
    assert "cannot connect to no-such-host.invalid:5672" in p.stderr, \
        show(p)


def test_exit_3_silent_peer_is_bounded_by_timeout():
    """A port that accepts TCP but never speaks AMQP: --timeout bounds the
    handshake."""
    with socket.socket() as lsock:
        lsock.bind((HOST, 0))
        lsock.listen(8)
        port = lsock.getsockname()[1]
        started = time.monotonic()
        p = cli("--url", "amqp://%s:%d/" % (HOST, port), "--event", "e",
                "--timeout", "1.5")
        took = time.monotonic() - started
    assert p.returncode == 3, show(p)
    assert "no AMQP handshake within 1.5 s" in p.stderr, show(p)
    assert 1.0 < took < 5.0, took


# ================================================================ exit 4

def test_exit_4_wrong_password(rabbitmq):
    p = cli("--url", url_with(rabbitmq, password="wrong"), "--event", "e",
            "--channel", "news")
    assert p.returncode == 4, show(p)
    assert p.stderr.startswith(
        "bagou-broadcast: login refused by %s:%d for user 'guest' on vhost "
        "'/': ACCESS_REFUSED" % (HOST, rabbitmq.port)), show(p)
    assert "wrong" not in p.stderr


def test_exit_4_unknown_user(rabbitmq):
    p = cli("--url", url_with(rabbitmq, user="nobody", password="x"),
            "--event", "e")
    assert p.returncode == 4, show(p)
    assert "ACCESS_REFUSED" in p.stderr, show(p)


def test_exit_4_unknown_vhost(rabbitmq):
    p = cli("--url", url_with(rabbitmq, vhost="no-such-vhost"), "--event",
            "e")
    assert p.returncode == 4, show(p)
    assert "vhost 'no-such-vhost'" in p.stderr and "NOT_ALLOWED" in \
        p.stderr, show(p)


# ================================================================ exit 5

def test_exit_5_missing_exchange(rabbitmq):
    missing = unique("bagou-missing")
    p = cli("--url", rabbitmq.url, "--exchange", missing, "--event",
            "message", "--channel", "news")
    assert p.returncode == 5, show(p)
    assert p.stderr == ("bagou-broadcast: exchange '%s' does not exist (is "
                        "bagou-server running against this broker?)\n"
                        % missing), show(p)
    assert p.stdout == ""


def test_exit_5_when_the_broker_does_not_confirm(rabbitmq, tap):
    """A memory alarm blocks publishers: no confirm within --timeout."""
    tap.exchange()
    try:
        rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")

        def blocked():
            p = cli("--url", rabbitmq.url, "--event", "e", "--timeout", "2",
                    "--quiet")
            return p if p.returncode == 5 else None
        p = wait_for(blocked, timeout=30, interval=0.2,
                     what="the memory alarm to block publishers")
        assert p.stderr.startswith(
            "bagou-broadcast: the broker did not confirm the publish within "
            "2 s"), show(p)
        assert "low on memory" in p.stderr, show(p)
    finally:
        rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.8")
    wait_for(lambda: cli("--url", rabbitmq.url, "--event", "e", "--quiet",
                         "--timeout", "2").returncode == 0,
             timeout=30, interval=0.2, what="the alarm to clear")


# ================================================================ exit 0

def test_exit_0_one_channel_routing_key_and_body(rabbitmq, tap):
    ex = tap.exchange(unique("bagou-t"))
    channel = unique("news")
    q = tap.bind(ex, channel)
    p = cli("--url", rabbitmq.url, "--exchange", ex, "--event", "message",
            "--channel", channel, "--data", '{"text": "Welcome!"}')
    assert p.returncode == 0, show(p)
    assert p.stderr == "", show(p)
    want = {"event": "message", "channel": channel, "data": WELCOME}
    size = len(json.dumps(want, separators=(",", ":")))
    assert p.stdout == ("published 'message' to exchange '%s' with routing "
                        "key '%s' (%d bytes, confirmed)\n"
                        % (ex, channel, size)), show(p)
    method, props, body = tap.get(q)
    assert method.exchange == ex and method.routing_key == channel
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert body == want
    tap.empty(q)


def test_exit_0_several_channels_use_empty_routing_key(rabbitmq, tap):
    ex = tap.exchange(unique("bagou-t"))
    q = tap.bind(ex, "#")
    p = cli("--url", rabbitmq.url, "--exchange", ex, "--event", "message",
            "--channel", "a", "--channel", "b", "--channel", "a", "--quiet")
    assert p.returncode == 0 and p.stdout == "" and p.stderr == "", show(p)
    method, _, body = tap.get(q)
    assert method.routing_key == ""
    assert body == {"event": "message", "channel": ["a", "b"], "data": {}}
    tap.empty(q)


def test_exit_0_every_field(rabbitmq, tap):
    ex = tap.exchange(unique("bagou-t"))
    q = tap.bind(ex, "#")
    p = cli("--url", rabbitmq.url, "--exchange", ex, "--event", "callback",
            "--client", "n1-0-1", "--client", "n1-0-2", "--exclude",
            "n1-0-3", "--callback-id", "c-17", "--quiet",
            "--data", "[1, null, \"\u00e9\"]")
    assert p.returncode == 0, show(p)
    method, _, body = tap.get(q)
    assert method.routing_key == ""
    assert body == {"event": "callback", "data": [1, None, "\u00e9"],
                    "client": ["n1-0-1", "n1-0-2"], "exclude": "n1-0-3",
                    "callbackId": "c-17"}


def test_exit_0_no_channel_means_everyone(rabbitmq, tap):
    ex = tap.exchange(unique("bagou-t"))
    q = tap.bind(ex, "#")
    p = cli("--url", rabbitmq.url, "--exchange", ex, "--event", "ping",
            "--data", "42", "--quiet")
    assert p.returncode == 0, show(p)
    method, _, body = tap.get(q)
    assert method.routing_key == "" and body == {"event": "ping",
                                                 "data": 42}


def test_exit_0_data_from_file_and_stdin(rabbitmq, tap, tmp_path):
    ex = tap.exchange(unique("bagou-t"))
    q = tap.bind(ex, "#")
    path = tmp_path / "data.json"
    path.write_text('{"rows": [1, 2, 3]}\n')
    p = cli("--url", rabbitmq.url, "--exchange", ex, "--event", "e",
            "--data", "@%s" % path, "--quiet")
    assert p.returncode == 0, show(p)
    assert tap.get(q)[2]["data"] == {"rows": [1, 2, 3]}
    p = cli("--url", rabbitmq.url, "--exchange", ex, "--event", "e",
            "--data", "@-", "--quiet", stdin='"from stdin"')
    assert p.returncode == 0, show(p)
    assert tap.get(q)[2]["data"] == "from stdin"


def test_exit_0_warns_when_no_queue_is_bound(rabbitmq, tap):
    """Confirmed, but no node listens: a warning, unless --quiet."""
    ex = tap.exchange(unique("bagou-t"))
    p = cli("--url", rabbitmq.url, "--exchange", ex, "--event", "e",
            "--channel", "news")
    assert p.returncode == 0, show(p)
    assert p.stderr == ("bagou-broadcast: warning: no queue is bound to "
                        "exchange '%s' for routing key 'news': no "
                        "bagou-server node received this broadcast (none "
                        "is connected, or none has a subscriber for this "
                        "channel)\n" % ex), show(p)
    p = cli("--url", rabbitmq.url, "--exchange", ex, "--event", "e",
            "--quiet")
    assert p.returncode == 0 and p.stdout == "" and p.stderr == "", show(p)


def test_empty_vhost_path_means_default_vhost(rabbitmq, tap):
    """amqp://host:port/ and amqp://host:port both mean vhost "/", as in
    pika and kombu (rabbitmq-c alone reads the first as vhost "")."""
    ex = tap.exchange(unique("bagou-t"))
    tap.bind(ex, "#")
    for url in (url_with(rabbitmq), url_with(rabbitmq).rstrip("/"),
                url_with(rabbitmq, vhost="%2F")):
        p = cli("--url", url, "--exchange", ex, "--event", "e", "--quiet")
        assert p.returncode == 0, url + "\n" + show(p)


# ================================================================ snippets

@pytest.mark.parametrize("snippet", [
    "bagou_broadcast.sh", "pika_publish.py", "bagou_kombu.py",
    "celery_tasks.py"])
def test_snippet_reaches_a_subscribed_client(snippet, node, rabbitmq):
    if snippet == "celery_tasks.py":
        pytest.importorskip("celery", reason="python3-celery not installed")
    srv = node()
    channel = unique("news")
    delivered_once(srv, channel, lambda: run_snippet(
        snippet, BAGOU_AMQP_URL=rabbitmq.url, BAGOU_CHANNEL=channel))


def test_cli_snippet_prints_the_confirmation(node, rabbitmq):
    srv = node()
    channel = unique("news")

    async def scenario():
        # A subscriber: the node binds the channel (PROTOCOL §5.2), so
        # the broadcast is routed and no warning is printed.
        ws, _ = await subscribed(srv, channel)
        p = await in_thread(run_snippet, "bagou_broadcast.sh",
                            BAGOU_AMQP_URL=rabbitmq.url,
                            BAGOU_CHANNEL=channel)
        assert p.stdout.startswith("published 'message' to exchange "
                                   "'bagou' with routing key '%s'"
                                   % channel), show(p)
        assert p.stderr == "", show(p)
        await ws.close()

    run(scenario())


def test_legacy_helper_with_amqp_queue(node, rabbitmq, tap):
    """The original broadcast(): default exchange, routing key = the queue
    bagou-server consumes with [amqp] queue = NAME."""
    queue = unique("bagou-legacy")
    tap.delete_queue(queue)
    srv = node(config={"amqp": {"queue": queue}})
    channel = unique("news")
    delivered_once(srv, channel, lambda: run_snippet(
        "legacy_broadcast.py", BAGOU_AMQP_URL=rabbitmq.url,
        BAGOU_QUEUE=queue, BAGOU_CHANNEL=channel))


def test_legacy_helper_callback_id_passes_through(node, rabbitmq, tap):
    queue = unique("bagou-legacy")
    tap.delete_queue(queue)
    srv = node(config={"amqp": {"queue": queue}})
    channel = unique("news")
    code = ("import legacy_broadcast as b; "
            "b.broadcast([%r, 'other'], 'saved', {'id': 7}, 'cb-9')"
            % channel)

    def publish():
        p = subprocess.run([sys.executable, "-c", code], cwd=SNIPPETS,
                           capture_output=True, text=True, timeout=RUN_TIMEOUT,
                           env=clean_env(BAGOU_AMQP_URL=rabbitmq.url,
                                         BAGOU_QUEUE=queue))
        assert p.returncode == 0, show(p)
    delivered_once(srv, channel, publish,
                   want={"event": "saved", "channel": channel,
                         "data": {"id": 7}, "callbackId": "cb-9"})


def test_post_snippet_through_amqp(node):
    srv = node()
    channel = unique("news")
    delivered_once(srv, channel, lambda: run_snippet(
        "post_broadcast.sh",
        BAGOU_HTTP_URL="http://%s:%d" % (HOST, srv.api_port),
        BAGOU_CHANNEL=channel))


def test_post_snippet_standalone(server):
    srv = server()
    channel = unique("news")
    out = []
    delivered_once(srv, channel, lambda: out.append(run_snippet(
        "post_broadcast.sh",
        BAGOU_HTTP_URL="http://%s:%d" % (HOST, srv.api_port),
        BAGOU_CHANNEL=channel)))
    assert json.loads(out[0].stdout) == {"status": "accepted"}


def test_targets_snippet(node, rabbitmq):
    """Several channels, one client, everybody but one client."""
    srv = node()
    channel = unique("news")

    async def scenario():
        a, a_id = await subscribed(srv, channel, "alerts")
        b, _ = await subscribed(srv, "alerts")
        c, _ = await subscribed(srv)
        await in_thread(run_snippet, "bagou_broadcast_targets.sh",
                        BAGOU_AMQP_URL=rabbitmq.url, BAGOU_CHANNEL=channel,
                        BAGOU_CLIENT=a_id)
        maintenance = {"text": "Maintenance at 22:00"}
        joined = {"event": "message", "data": {"text": "Someone joined"}}
        assert await recv_json(a) == {"event": "message", "channel": channel,
                                      "data": maintenance}
        assert await recv_json(a) == {"event": "callback",
                                      "callbackId": "c-17",
                                      "data": {"success": True}}
        assert await recv_json(b) == {"event": "message", "channel": "alerts",
                                      "data": maintenance}
        assert await recv_json(b) == joined
        assert await recv_json(c) == joined
        await expect_only_sentinel(srv, [a, b, c])
        for ws in (a, b, c):
            await ws.close()

    run(scenario(), timeout=90)


def test_cli_reaches_every_node(node, rabbitmq):
    """One publish, two nodes on the broker: each delivers to its own
    client, once (PROTOCOL §5)."""
    n1, n2 = node(), node()
    channel = unique("news")

    async def scenario():
        w1, _ = await subscribed(n1, channel)
        w2, _ = await subscribed(n2, channel)
        p = await in_thread(cli, "--url", rabbitmq.url, "--event", "message",
                            "--channel", channel, "--data",
                            '{"text": "Welcome!"}')
        assert p.returncode == 0, show(p)
        assert p.stderr == "", show(p)   # bound: no "no queue" warning
        want = {"event": "message", "channel": channel, "data": WELCOME}
        assert await recv_json(w1) == want
        assert await recv_json(w2) == want
        await expect_only_sentinel(n1, [w1, w2])
        await w1.close()
        await w2.close()

    run(scenario(), timeout=90)


def test_celery_worker_runs_the_task(node, rabbitmq, tap, tmp_path):
    """The Celery snippet as deployed: a worker consumes welcome.delay()
    from the broker and broadcasts through kombu."""
    pytest.importorskip("celery", reason="python3-celery not installed")
    srv = node()
    channel = unique("news")
    queue = unique("bagou-celery")
    tap.delete_queue(queue)
    env = clean_env(BAGOU_AMQP_URL=rabbitmq.url)
    log = open(tmp_path / "celery.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
         "--pool", "solo", "--queues", queue, "--loglevel", "info",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=SNIPPETS, env=env, stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    code = ("from celery_tasks import welcome; "
            "welcome.apply_async(args=(%r, 'Welcome!'), queue=%r)"
            % (channel, queue))

    def publish():
        p = subprocess.run([sys.executable, "-c", code], cwd=SNIPPETS,
                           capture_output=True, text=True, env=env,
                           timeout=RUN_TIMEOUT)
        assert p.returncode == 0, show(p)
    try:
        delivered_once(srv, channel, publish, timeout=120)
    except AssertionError as e:
        log.flush()
        with open(tmp_path / "celery.log", errors="replace") as f:
            raise AssertionError("%s\ncelery worker log:\n%s"
                                 % (e, f.read()[-5000:]))
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)
        log.close()
