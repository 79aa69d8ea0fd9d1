"""Issue 11 items 4 and 5: the operations metrics of PROTOCOL.md §7
(build info, process, bytes, closes by code, forwarded events and their
replies, latency histograms), names that stay distinct under OpenMetrics,
the Grafana dashboard's metrics, and the logs ([log] format = json, the
debug lines of the connection lifecycle, [log] access)."""

import asyncio
import json
import os
import re

import pytest
import websockets

from prometheus_client.parser import text_string_to_metric_families

from rabbitmq import amqp_server, unique_exchange  # noqa: F401
from support import (REPO, metric_sum, recv_json, request, run, subscribe,
                     wait_closed, wait_for, ws_connect)
from test_forward import app  # noqa: F401  (the example application)

DASHBOARD = os.path.join(REPO, "etc", "grafana-bagou.json")

NEW_METRICS = [
    "bagou_build_info", "bagou_open_connections",
    "process_cpu_seconds_total", "process_resident_memory_bytes",
    "process_open_fds", "process_max_fds", "process_start_time_seconds",
    "bagou_received_bytes_total", "bagou_sent_bytes_total",
    "bagou_closes_total", "bagou_forwarded_events_total",
    "bagou_forward_replies_total", "bagou_amqp_publish_failures_total",
    "bagou_broadcast_latency_seconds_bucket",
    "bagou_broadcast_latency_seconds_count",
    "bagou_forward_round_trip_seconds_bucket",
]

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created", "_info")


def metrics_text(srv):
    status, headers, body = srv.api_get("/metrics")
    assert status == 200, (status, body)
    return body.decode()


def check_exposition(text):
    """The whole text through prometheus_client's parser, then the rules
    it does not enforce: HELP and TYPE once per family and before its
    samples, valid names, every sample belongs to the family announced
    before it, and family names stay distinct under OpenMetrics (where a
    counter "x_total" is the family "x", so a gauge "x" collides)."""
    families = list(text_string_to_metric_families(text))
    assert families, text
    helps, types, order = {}, {}, []
    current = None
    for line in text.splitlines():
        assert line == line.strip() and line, "stray whitespace: %r" % line
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert NAME_RE.match(name), line
            assert name not in helps, "HELP twice: " + name
            helps[name] = True
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name == current, "TYPE without its HELP: " + line
            assert name not in types, "TYPE twice: " + name
            assert kind in ("counter", "gauge", "histogram"), line
            types[name] = kind
            order.append(name)
        else:
            assert not line.startswith("#"), line
            sample = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", line).group(1)
            kind = types.get(current)
            assert kind is not None, "sample before its TYPE: " + line
            allowed = {current}
            if kind == "histogram":
                allowed = {current + s for s in ("_bucket", "_sum",
                                                 "_count")}
            assert sample in allowed, "%s outside its family %s" % (
                sample, current)
    om = {}
    for name in order:
        base = name
        if types[name] == "counter":
            assert name.endswith("_total"), "counter without _total: " + name
            base = name[:-len("_total")]
        else:
            assert not name.endswith(SUFFIXES) or name.endswith("_info") \
                and types[name] == "gauge", "reserved suffix: " + name
        assert base not in om, "OpenMetrics collision: %s and %s" % (
            name, om[base])
        om[base] = name
    # A family's sample names must not be another family's name either.
    names = set(order)
    for name in order:
        if types[name] == "histogram":
            for s in ("_bucket", "_sum", "_count"):
                assert name + s not in names, name + s
    return {f.name: f for f in families}


def histogram_ok(text, name):
    """Buckets cumulative (monotone in le), +Inf == _count; the count."""
    buckets = []
    count = None
    for line in text.splitlines():
        m = re.match(r'^%s_bucket\{le="([^"]+)"\} (\S+)$' % name, line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
        m = re.match(r"^%s_count (\S+)$" % name, line)
        if m:
            count = float(m.group(1))
    assert buckets and count is not None, name
    les = [b[0] for b in buckets]
    assert les == sorted(les) and les[-1] == float("inf"), les
    values = [b[1] for b in buckets]
    assert values == sorted(values), (name, buckets)
    assert values[-1] == count, (name, buckets, count)
    return count


def sample(text, name, **labels):
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v
                                      for k, v in labels.items()):
                return s.value
    raise AssertionError("no %s %r in /metrics" % (name, labels))


# ---------------------------------------------------------------- metrics

def test_exposition_is_strict_and_openmetrics_safe(server):
    srv = server(workers=2)
    text = metrics_text(srv)
    check_exposition(text)
    m = srv.metrics()
    for name in NEW_METRICS:
        if name == "bagou_amqp_publish_failures_total" or \
                name.startswith("bagou_forward"):
            continue  # on a node with AMQP (below)
        assert any(k == name or k.startswith(name + "{") for k in m), name
    assert 'bagou_open_connections{worker="1"}' in m
    assert not any(k.startswith("bagou_connections{") for k in m)
    info = [k for k in m if k.startswith("bagou_build_info{")]
    assert len(info) == 1 and m[info[0]] == 1, info
    assert re.search(r'version="\d+\.\d+\.\d+"', info[0]), info
    assert m["process_open_fds"] > 3
    assert m["process_max_fds"] >= m["process_open_fds"]
    assert m["process_resident_memory_bytes"] > 1 << 20
    import time
    assert abs(m["process_start_time_seconds"] - time.time()) < 600


def test_bytes_closes_and_latency_move(server):
    srv = server(workers=1, config={"limits": {"max_message_size": 1024}})
    before = metrics_text(srv)
    lat0 = histogram_ok(before, "bagou_broadcast_latency_seconds")

    async def scenario():
        ws, _ = await ws_connect(srv)
        await subscribe(ws, "obs")
        for i in range(5):
            await asyncio.to_thread(srv.broadcast, {
                "event": "e", "channel": "obs", "data": {"i": i}})
            assert (await recv_json(ws))["data"] == {"i": i}
        await ws.close(code=4001)
        ws, _ = await ws_connect(srv)
        await ws.close(code=1000)
        ws, _ = await ws_connect(srv)
        await ws.send(b"\x00binary")       # the server closes: 1003
        assert await wait_closed(ws) == 1003
        ws, _ = await ws_connect(srv)
        await ws.send("x" * 2000)          # the server closes: 1009
        assert await wait_closed(ws) == 1009

    run(scenario())

    def closes_counted():
        t = metrics_text(srv)
        return all(sample(t, "bagou_closes_total", code=c, by=b) >= 1
                   for c, b in (("4001", "client"), ("1000", "client"),
                                ("1003", "server"), ("1009", "server")))
    wait_for(closes_counted, what="closes counted by code")
    after = metrics_text(srv)
    check_exposition(after)
    for name in ("bagou_received_bytes_total", "bagou_sent_bytes_total"):
        assert sample(after, name) > sample(before, name), name
    # The subscribe request at least; the 2000-byte message partly.
    assert sample(after, "bagou_received_bytes_total") >= 40
    # Five broadcasts, each its own write: five observations at least.
    assert histogram_ok(after, "bagou_broadcast_latency_seconds") >= lat0 + 5
    assert sample(after, "bagou_broadcast_latency_seconds_sum") < 5 * 5
    for code in ("4001", "1000"):
        assert sample(after, "bagou_closes_total", code=code,
                      by="server") == 0, code


def test_forwarded_events_replies_and_round_trips(amqp_server, app):
    bx = unique_exchange("bagou-obs")
    ex = unique_exchange("bagou-obs-events")
    srv = amqp_server(config={"forward": {"exchange": ex}}, exchange=bx)
    app(ex, bx)
    before = metrics_text(srv)

    async def scenario():
        ws, _ = await ws_connect(srv)
        for i in range(3):
            cb = "obs-%d" % i
            reply = await request(ws, "echo", {"n": i}, callback_id=cb)
            assert reply.get("callbackId") == cb, reply
        await ws.close()

    run(scenario())
    after = metrics_text(srv)
    check_exposition(after)
    for name in ("bagou_forwarded_events_total",
                 "bagou_forward_replies_total"):
        assert sample(after, name) >= sample(before, name) + 3, name
    assert histogram_ok(after, "bagou_forward_round_trip_seconds") >= 3
    assert histogram_ok(before, "bagou_forward_round_trip_seconds") == 0
    for reason in ("invalid", "link", "broker"):
        sample(after, "bagou_amqp_publish_failures_total", reason=reason)


def test_grafana_dashboard_uses_existing_metrics(server):
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = []

    def walk(o):
        if isinstance(o, dict):
            if isinstance(o.get("expr"), str):
                exprs.append(o["expr"])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(dash)
    assert len(exprs) >= 8, exprs
    srv = server()
    names = {s.name for f in text_string_to_metric_families(
        metrics_text(srv)) for s in f.samples}
    # The AMQP families a standalone node omits none of; every name a
    # panel queries must be one /metrics has.
    used = set()
    for e in exprs:
        for tok in re.findall(r"\b((?:bagou|process)_[a-z0-9_]+)", e):
            used.add(tok)
    assert used, exprs
    missing = sorted(used - names)
    assert not missing, "dashboard metrics not in /metrics: %r" % missing


# ---------------------------------------------------------------- logs

def log_lines(srv):
    return [l for l in srv.log().splitlines() if l.strip()]


def test_json_log_lines_parse(server):
    srv = server(config={"log": {"format": "json", "access": "yes"}})
    srv.get("/health")
    wait_for(lambda: '"path":"/health"' in srv.log(),
             what="the access line of /health")
    lines = log_lines(srv)
    assert len(lines) >= 3, lines
    for line in lines:
        o = json.loads(line)
        assert set(o) >= {"ts", "level", "msg"}, o
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", o["ts"])
        assert o["level"] in ("debug", "info", "warn", "error"), o
    # The fixture's own readiness polls (/health/live) come first.
    access = [json.loads(l) for l in lines if '"access: ' in l]
    access = [a for a in access if a.get("path") == "/health"]
    assert access, lines
    a = access[0]
    assert a["msg"].startswith("access: public "), a
    assert (a["listener"], a["method"], a["path"], a["status"]) == \
        ("public", "GET", "/health", 200), a
    assert a["bytes"] > 0 and a["duration_ms"] >= 0 and a["peer"], a


def test_access_log_both_listeners(server):
    srv = server(config={"log": {"access": "yes"}})
    srv.get("/health")
    srv.get("/nope")
    srv.api_get("/metrics")
    srv.post("/broadcast", {"event": "x"})

    def lines():
        return [l for l in log_lines(srv) if " access: " in l]
    wait_for(lambda: len(lines()) >= 4, what="four access lines")
    text = "\n".join(lines())
    assert re.search(r"access: public \S+ GET /health 200 \d+ [\d.]+ ms",
                     text), text
    assert re.search(r"access: public \S+ GET /nope 404 \d+", text), text
    assert re.search(r"access: api \S+ GET /metrics 200 \d+", text), text
    assert re.search(r"access: api \S+ POST /broadcast 202 \d+", text), text


def test_no_access_log_by_default(server):
    srv = server()
    srv.get("/health")
    srv.api_get("/metrics")
    srv.broadcast({"event": "sentinel"})
    assert " access: " not in srv.log()


async def lifecycle(srv):
    ws, cid = await ws_connect(srv)
    await subscribe(ws, "dbg")
    reply = await request(ws, "unsubscribe", {"channel": "dbg"},
                          callback_id="u")
    assert reply["data"]["success"] is True, reply
    await ws.close(code=4001)
    return cid


def test_debug_lifecycle_lines(server):
    srv = server(extra_args=["--log-level", "debug"])
    cid = run(lifecycle(srv))
    want = ["client %s: open from 127.0.0.1" % cid,
            "client %s: subscribed to dbg" % cid,
            "client %s: unsubscribed from dbg" % cid,
            "client %s: closed 4001 by the client" % cid]
    wait_for(lambda: all(w in srv.log() for w in want),
             what="the lifecycle debug lines")


def test_debug_lifecycle_lines_only_at_debug(server):
    srv = server()
    cid = run(lifecycle(srv))
    # The close is counted once the server saw it: then no line came.
    wait_for(lambda: sample(metrics_text(srv), "bagou_closes_total",
                            code="4001", by="client") == 1,
             what="the close counted")
    assert "client %s:" % cid not in srv.log()
    assert " debug " not in srv.log()


def test_auth_debug_line(server):
    import jwt
    secret = "s3cret-for-observability-tests"
    srv = server(config={"auth": {"secret": secret}},
                 extra_args=["--log-level", "debug"])
    token = jwt.encode({"sub": "u-77"}, secret, algorithm="HS256")

    async def scenario():
        ws, cid = await ws_connect(srv)
        reply = await request(ws, "authenticate", {"token": token},
                              callback_id="a")
        assert reply["data"]["success"] is True, reply
        await ws.close()
        return cid
    cid = run(scenario())
    wait_for(lambda: "client %s: authenticated as u-77" % cid in srv.log(),
             what="the auth debug line")


def test_repeated_key_refusals_are_throttled(server):
    """The API listener's 401/403 warning (once its own once-a-second
    limiter) goes through bg_log_throttled: 5 lines per 10 s at most."""
    srv = server({"http": {"api_key": "the-right-key"}})
    for i in range(30):
        status, _, _ = srv.post("/broadcast", {"event": "x"}, headers={
            "Authorization": "Bearer wrong-%d" % i})
        assert status == 403
    # Every refusal was handled (counted) before the log is read.
    status, _, body = srv.api_get("/metrics", headers={
        "Authorization": "Bearer the-right-key"})
    assert status == 200
    assert sample(body.decode(), "bagou_http_auth_failures_total") == 30
    lines = [l for l in log_lines(srv) if "API: 403" in l]
    assert 1 <= len(lines) <= 5, lines
    # The window's end reports the rest (the 1 s tick, after 10 s).
    wait_for(lambda: re.search(r"API: refused keys \(401/403\): %d similar "
                               r"lines suppressed" % (30 - len(lines)),
                               srv.log()),
             timeout=15, interval=0.5, what="the suppressed count")
