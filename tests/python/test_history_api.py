"""bagou.history() (docs/PROTOCOL.md, history and recovery): GET
/api/history through the package, against a real bagou-server."""

import pytest

import bagou
from bagou import HistoryError, history
from bagou.exceptions import ConfigurationError

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
    bagou.configure(AMQP_BROKER_URL="amqp://127.0.0.1/")
    with pytest.raises(ConfigurationError):
        history("chat")
