"""ORIGINAL.md §1: settings.BAGOU keys keep their meaning (and the older
ones still work); configure() and the environment without Django."""

import os
import subprocess
import sys

import pytest

from bagou import conf
from bagou.exceptions import ConfigurationError


def test_original_keys():
    s = conf.load({"WEBSOCKET_URL": "ws://localhost:9000/websocket",
                   "AMQP_BROKER_URL": "amqp://guest:guest@localhost:5672/",
                   "QUEUE_NAME": "bagou", "AUTH": True,
                   "DEFAULT_HANDLER_CLASS": "bagou.handler.Handler"})
    assert s.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert s.queue_name == "bagou"          # the legacy queue
    assert s.auth is True
    assert s.websocket_url == "ws://localhost:9000/websocket"
    assert s.script_url == "http://localhost:9000/bagou.js"


def test_older_keys():
    s = conf.load({"AMQP_BROKER_USER": "u", "AMQP_BROKER_PASS": "p@ss",
                   "AMQP_BROKER_ADDR": "mq", "AMQP_BROKER_PORT": 5673,
                   "AMQP_BROKER_PATH": "/", "WEBSOCKET_ADDR": "ws.example",
                   "WEBSOCKET_PORT": 443, "WEBSOCKET_PATH": "websocket"})
    assert s.amqp_url == "amqp://u:p%40ss@mq:5673/%2F"
    assert s.websocket_url == "ws://ws.example:443/websocket"


def test_exchange_wins_over_queue_name():
    s = conf.load({"QUEUE_NAME": "bagou", "EXCHANGE": "bagou"})
    assert s.queue_name is None and s.exchange == "bagou"


def test_http_only_when_no_broker():
    s = conf.load({"HTTP_URL": "http://127.0.0.1:9001/broadcast",
                   "API_KEY": "k"})
    assert s.amqp_url is None and s.api_key == "k"
    s = conf.load({"HTTP_URL": "http://127.0.0.1:9001/broadcast",
                   "AMQP_BROKER_URL": "amqp://h/"})
    assert s.amqp_url == "amqp://h/"
    assert conf.load({}).amqp_url == conf.DEFAULT_AMQP_URL


def test_http_base_url_means_its_broadcast_endpoint():
    # docs/publishing.md's BAGOU_HTTP_URL is the API listener's base URL.
    for url in ("http://127.0.0.1:9001", "http://127.0.0.1:9001/"):
        assert conf.load({"HTTP_URL": url}).http_url == \
            "http://127.0.0.1:9001/broadcast"
    assert conf.load({"HTTP_URL": "https://h/x/broadcast"}).http_url == \
        "https://h/x/broadcast"


def test_bad_values():
    for bad in ({"AMQP_BROKER_URL": "http://x"}, {"HTTP_URL": "ftp://x"},
                {"AUTH": "maybe"}, {"CONCURRENCY": 0},
                {"WEBSOCKET_URL": "http://x/"}):
        with pytest.raises(ConfigurationError):
            conf.load(bad)


def test_unknown_keys_are_ignored_not_fatal(caplog):
    conf.load({"SOMETHING_ELSE": 1})
    assert "SOMETHING_ELSE" in caplog.text


def test_configure_and_environment(monkeypatch):
    for var in conf.ENV_KEYS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BAGOU_HTTP_URL", "http://127.0.0.1:1/broadcast")
    monkeypatch.setenv("BAGOU_AUTH", "true")
    monkeypatch.setattr(conf, "_django_settings", lambda: None)
    conf.configure()
    try:
        s = conf.get()
        assert s.http_url == "http://127.0.0.1:1/broadcast"
        assert s.amqp_url is None and s.auth is True
        conf.configure(EXCHANGE="x")
        assert conf.get().exchange == "x" and conf.get().http_url is None
        with pytest.raises(ConfigurationError):
            conf.configure(NOPE=1)
    finally:
        conf.configure()


def test_django_settings_before_setup():
    """A process with DJANGO_SETTINGS_MODULE that broadcasts before
    anything touched Django's settings still reads settings.BAGOU."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="djproject.settings",
               PYTHONPATH=os.pathsep.join(
                   [here] + [p for p in [os.environ.get("PYTHONPATH")]
                             if p]))
    out = subprocess.run(
        [sys.executable, "-c",
         "from bagou import conf; print(conf.get().auth)"],
        env=env, capture_output=True, timeout=60, check=True)
    assert out.stdout.strip() == b"True", out
