"""bagou.history() and `bagou-api history` (docs/PROTOCOL.md, history
and recovery; "Server API"): the history command over HTTP (GET
/api/history) and over RabbitMQ (the API queue), against a real
bagou-server."""

import json
import os
import subprocess
import sys

import pytest

import bagou
from bagou import ApiError, HistoryError, history
from support import wait_for

CFG = {"amqp": {"url": "none"},
       "history": {"channels": "^chat", "size": "10"},
       "http": {"api_key": "k3y"}}


@pytest.fixture
def srv(server):
    s = server(CFG)
    bagou.configure(HTTP_URL="http://127.0.0.1:%d" % s.api_port,
                    API_KEY="k3y", CONFIRM_TIMEOUT=5)
    yield s
    bagou.configure()


def test_history_limit_since(srv):
    for i in range(12):
        bagou.broadcast("m", "chat", i)
    h = history("chat")
    assert h["success"] is True and h["channel"] == "chat"
    assert [p["data"] for p in h["publications"]] == list(range(2, 12))
    assert "gap" not in h
    last2 = history("chat", limit=2)["publications"]
    assert [p["data"] for p in last2] == [10, 11]
    after = history("chat", since={"epoch": h["epoch"],
                                   "offset": last2[0]["offset"]})
    assert [p["data"] for p in after["publications"]] == [11]
    gap = history("chat", limit=1, since=(h["epoch"], 0))
    assert gap["gap"] is True and [p["data"] for p in
                                   gap["publications"]] == [11]
    other = history("chat", limit=1, since=("other-epoch", 5))
    assert other["gap"] is True


def test_history_errors(srv):
    with pytest.raises(HistoryError) as e:
        history("nohistory")
    assert e.value.status == 404 and e.value.code == "not_found"
    with pytest.raises(HistoryError) as e:
        history("bad channel")
    assert e.value.status == 400 and e.value.code == "invalid_channel"
    for bad in (dict(limit=-1), dict(limit="3"), dict(since=5),
                dict(since={"epoch": 1, "offset": 2}),
                dict(since=("e", -1))):
        with pytest.raises(ValueError):
            history("chat", **bad)
    bagou.configure(HTTP_URL="http://127.0.0.1:%d" % srv.api_port,
                    API_KEY="wrong")
    with pytest.raises(HistoryError) as e:
        history("chat")
    assert e.value.status == 403
    # A broker nobody listens on: the API queue cannot be reached.
    bagou.configure(AMQP_BROKER_URL="amqp://guest:guest@127.0.0.1:9/",
                    CONNECT_TIMEOUT=2)
    with pytest.raises(HistoryError) as e:
        history("chat")
    assert e.value.status == 503 and e.value.code == "unavailable"
    assert isinstance(e.value, ApiError)


@pytest.fixture
def amqp_node(amqp_server, exchanges, rabbitmq):
    """A node on RabbitMQ keeping history (its own stream), and bagou
    configured for the broker only: history() takes the API queue."""
    ex = exchanges[0]
    node = amqp_server(config={"history": {"channels": "^chat",
                                           "size": "10",
                                           "stream": ex + ".history"},
                               "http": {"api_key": "k3y"}}, exchange=ex)
    bagou.configure(AMQP_BROKER_URL=rabbitmq.url, EXCHANGE=ex,
                    API_KEY="k3y")
    yield node
    bagou.configure()


def test_history_over_amqp(amqp_node):
    for i in range(12):
        bagou.broadcast("m", "chat", i)
    wait_for(lambda: [p["data"] for p in history(
        "chat", limit=1)["publications"]] == [11], timeout=10,
        what="the node to have the last broadcast")
    h = history("chat")
    assert [p["data"] for p in h["publications"]] == list(range(2, 12))
    assert h["success"] is True and "gap" not in h
    after = history("chat", limit=2, since=(h["epoch"],
                                           h["publications"][0]["offset"]))
    assert [p["data"] for p in after["publications"]] == [3, 4]
    # Older than memory: read back from the stream.
    old = history("chat", limit=2, since={"epoch": h["epoch"],
                                          "offset": 0})
    assert [p["data"] for p in old["publications"]] == [0, 1]
    assert "gap" not in old
    assert history("chat", limit=1, since=("other", 1))["gap"] is True
    for channel, status, code in (("nohistory", 404, "not_found"),
                                  ("bad channel", 400, "invalid_channel")):
        with pytest.raises(HistoryError) as e:
            history(channel)
        assert (e.value.status, e.value.code) == (status, code)
    bagou.configure(**dict(bagou.conf.get().raw, API_KEY="wrong"))
    with pytest.raises(HistoryError) as e:
        history("chat")
    assert e.value.status == 403


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "bagou.api"] + list(args),
                          capture_output=True, text=True, timeout=30,
                          env=env)


def test_cli_history(amqp_node, rabbitmq, exchanges):
    env = dict(os.environ, BAGOU_AMQP_URL=rabbitmq.url,
               BAGOU_EXCHANGE=exchanges[0], BAGOU_API_KEY="k3y")
    for i in range(3):
        bagou.broadcast("m", "chat", i)
    wait_for(lambda: [p["data"] for p in history(
        "chat", limit=1)["publications"]] == [2], timeout=10,
        what="the node to have the last broadcast")
    r = cli("history", "--channel", "chat", "--limit", "2", env=env)
    assert r.returncode == 0, r.stderr
    h = json.loads(r.stdout)
    assert [p["data"] for p in h["publications"]] == [1, 2]
    # Over HTTP, the API listener, after a position.
    r = cli("--http-url", "http://127.0.0.1:%d" % amqp_node.api_port,
            "history", "--channel", "chat", "--since-epoch", h["epoch"],
            "--since-offset", str(h["publications"][0]["offset"]), env=env)
    assert r.returncode == 0, r.stderr
    assert [p["data"] for p in json.loads(r.stdout)["publications"]] == [2]
    r = cli("history", "--channel", "nohistory", env=env)
    assert r.returncode == 1 and "404 not_found" in r.stderr
    r = cli("history", "--channel", "chat", "--since-epoch", "e", env=env)
    assert r.returncode == 2 and "go together" in r.stderr
