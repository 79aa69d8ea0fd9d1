"""Settings, read lazily from one of three places (the first that has
them): bagou.configure(...), Django's settings.BAGOU (when Django is
installed and configured), the BAGOU_* environment variables. Keys keep
the meaning they had in django-bagou; the new ones are documented in
docs/django.md. The result is cached until configure() is called again
or Django's setting_changed signal names BAGOU."""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .exceptions import ConfigurationError

log = logging.getLogger("bagou")

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"
DEFAULT_WEBSOCKET_URL = "ws://localhost:9000/websocket"

# Environment variable -> settings key, for processes without Django.
ENV_KEYS = {
    "BAGOU_AMQP_URL": "AMQP_BROKER_URL",
    "BAGOU_EXCHANGE": "EXCHANGE",
    "BAGOU_QUEUE_NAME": "QUEUE_NAME",
    "BAGOU_HTTP_URL": "HTTP_URL",
    "BAGOU_API_KEY": "API_KEY",
    "BAGOU_FORWARD_EXCHANGE": "FORWARD_EXCHANGE",
    "BAGOU_WORKER_QUEUE": "WORKER_QUEUE",
    "BAGOU_CONCURRENCY": "CONCURRENCY",
    "BAGOU_PREFETCH": "PREFETCH",
    "BAGOU_CONFIRM_TIMEOUT": "CONFIRM_TIMEOUT",
    "BAGOU_CONNECT_TIMEOUT": "CONNECT_TIMEOUT",
    "BAGOU_AUTH": "AUTH",
    "BAGOU_AUTH_SECRET": "AUTH_SECRET",
    "BAGOU_WEBSOCKET_URL": "WEBSOCKET_URL",
    "BAGOU_SCRIPT_URL": "SCRIPT_URL",
}

KNOWN_KEYS = frozenset(ENV_KEYS.values()) | {
    "AUTH_CHANNELS", "DEFAULT_HANDLER_CLASS",
    "AMQP_BROKER_USER", "AMQP_BROKER_PASS", "AMQP_BROKER_ADDR",
    "AMQP_BROKER_PORT", "AMQP_BROKER_PATH",
    "WEBSOCKET_ADDR", "WEBSOCKET_PORT", "WEBSOCKET_PATH",
}


@dataclass(frozen=True)
class Settings:
    """What the rest of the package reads. Built by load()."""

    amqp_url: Optional[str]          # None: publish over HTTP
    exchange: str
    queue_name: Optional[str]        # set: the legacy single queue
    http_url: Optional[str]
    api_key: str
    forward_exchange: str
    worker_queue: str
    concurrency: int
    prefetch: int
    confirm_timeout: float
    connect_timeout: float
    auth: bool
    auth_secret: str
    auth_channels: Any
    websocket_url: str
    script_url: str
    raw: Mapping[str, Any] = field(default_factory=dict)


_lock = threading.Lock()
_explicit: Optional[Dict[str, Any]] = None
_cached: Optional[Settings] = None


def configure(**options: Any) -> None:
    """Sets bagou's settings in a process without Django (or overrides
    Django's), with the keys of settings.BAGOU, e.g.
    configure(AMQP_BROKER_URL="amqp://...", EXCHANGE="bagou").
    configure() with no argument goes back to Django/the environment."""
    global _explicit, _cached
    unknown = set(options) - KNOWN_KEYS
    if unknown:
        raise ConfigurationError("unknown bagou setting(s): %s (known: %s)"
                                 % (", ".join(sorted(unknown)),
                                    ", ".join(sorted(KNOWN_KEYS))))
    with _lock:
        _explicit = dict(options) if options else None
        _cached = None
    _reset_publisher()


def reset() -> None:
    """Forgets the cached settings (Django's setting_changed calls it)."""
    global _cached
    with _lock:
        _cached = None
    _reset_publisher()


def _reset_publisher() -> None:
    from . import publish     # late: publish imports this module
    publish.reset()


def get() -> Settings:
    """The current settings (cached)."""
    global _cached
    s = _cached
    if s is not None:
        return s
    with _lock:
        if _cached is None:
            _cached = load(_source())
        return _cached


def _django_settings() -> Optional[Mapping[str, Any]]:
    try:
        from django.conf import settings as dj
    except ImportError:
        return None
    # DJANGO_SETTINGS_MODULE set: the settings load on first access (a
    # process that broadcasts before django.setup() gets them too).
    if not dj.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return None
    value = getattr(dj, "BAGOU", None)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError("settings.BAGOU must be a dict, not %s"
                                 % type(value).__name__)
    return value


def _source() -> Mapping[str, Any]:
    if _explicit is not None:
        return _explicit
    dj = _django_settings()
    if dj is not None:
        return dj
    return {key: os.environ[var] for var, key in ENV_KEYS.items()
            if os.environ.get(var, "") != ""}


def _bool(key: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(v, str) and v.lower() in ("0", "false", "no", "off", ""):
        return False
    if isinstance(v, int):
        return bool(v)
    raise ConfigurationError("BAGOU[%r] must be a boolean, not %r" % (key, v))


def _number(key: str, v: Any, kind: Callable[[Any], Any],
            low: float) -> Any:
    try:
        n = kind(v)
    except (TypeError, ValueError):
        raise ConfigurationError("BAGOU[%r] must be a number, not %r"
                                 % (key, v)) from None
    if n < low:
        raise ConfigurationError("BAGOU[%r] must be at least %s, not %r"
                                 % (key, low, v))
    return n


def _legacy_amqp_url(src: Mapping[str, Any]) -> Optional[str]:
    """AMQP_BROKER_USER/PASS/ADDR/PORT/PATH of the first releases."""
    keys = ("AMQP_BROKER_USER", "AMQP_BROKER_PASS", "AMQP_BROKER_ADDR",
            "AMQP_BROKER_PORT", "AMQP_BROKER_PATH")
    if not any(src.get(k) not in (None, "") for k in keys):
        return None
    user = str(src.get("AMQP_BROKER_USER") or "guest")
    password = str(src.get("AMQP_BROKER_PASS") or "guest")
    host = str(src.get("AMQP_BROKER_ADDR") or "localhost")
    port = int(src.get("AMQP_BROKER_PORT") or 5672)
    vhost = str(src.get("AMQP_BROKER_PATH") or "/")
    q = urllib.parse.quote
    return "amqp://%s:%s@%s:%d/%s" % (q(user, safe=""), q(password, safe=""),
                                      host, port, q(vhost, safe=""))


def _legacy_websocket_url(src: Mapping[str, Any]) -> Optional[str]:
    """WEBSOCKET_ADDR/PORT/PATH of the first releases."""
    keys = ("WEBSOCKET_ADDR", "WEBSOCKET_PORT", "WEBSOCKET_PATH")
    if not any(src.get(k) not in (None, "") for k in keys):
        return None
    host = str(src.get("WEBSOCKET_ADDR") or "localhost")
    port = int(src.get("WEBSOCKET_PORT") or 9000)
    path = str(src.get("WEBSOCKET_PATH") or "/websocket")
    if not path.startswith("/"):
        path = "/" + path
    return "ws://%s:%d%s" % (host, port, path)


def script_url_for(websocket_url: str) -> str:
    """Where the server serves the client script: /bagou.js on the same
    host and port as the WebSocket (ws -> http, wss -> https)."""
    u = urllib.parse.urlsplit(websocket_url)
    scheme = {"ws": "http", "wss": "https"}.get(u.scheme)
    if scheme is None or not u.netloc:
        raise ConfigurationError("WEBSOCKET_URL %r is not a ws:// or wss:// "
                                 "URL" % websocket_url)
    return urllib.parse.urlunsplit((scheme, u.netloc, "/bagou.js", "", ""))


def load(src: Mapping[str, Any]) -> Settings:
    """Settings from one mapping with the keys of settings.BAGOU."""
    unknown = [k for k in src if k not in KNOWN_KEYS]
    if unknown:
        # Not an error: a settings file written for another release may
        # carry keys this one does not know.
        log.warning("ignoring unknown key(s) in BAGOU: %s",
                    ", ".join(sorted(map(str, unknown))))
    amqp_url = src.get("AMQP_BROKER_URL") or _legacy_amqp_url(src)
    http_url = src.get("HTTP_URL") or None
    if amqp_url is None and http_url is None:
        amqp_url = DEFAULT_AMQP_URL
    if amqp_url is not None and not str(amqp_url).startswith(
            ("amqp://", "amqps://")):
        raise ConfigurationError("AMQP_BROKER_URL must be an amqp:// or "
                                 "amqps:// URL, not %r" % amqp_url)
    if http_url is not None and not str(http_url).startswith(
            ("http://", "https://")):
        raise ConfigurationError("HTTP_URL must be an http:// or https:// "
                                 "URL, not %r" % http_url)
    if http_url is not None:
        # The API listener's base URL (as docs/publishing.md's
        # BAGOU_HTTP_URL has it) means its POST /broadcast endpoint.
        http_url = str(http_url)
        scheme, _, rest = http_url.partition("://")
        if "/" not in rest or rest.endswith("/") and rest.count("/") == 1:
            http_url = http_url.rstrip("/") + "/broadcast"
    websocket_url = str(src.get("WEBSOCKET_URL")
                        or _legacy_websocket_url(src)
                        or DEFAULT_WEBSOCKET_URL)
    # QUEUE_NAME alone (as every django-bagou settings file has it) means
    # the legacy queue; an explicit EXCHANGE wins over it.
    queue_name = src.get("QUEUE_NAME") or None
    if src.get("EXCHANGE"):
        queue_name = None
    return Settings(
        amqp_url=str(amqp_url) if amqp_url is not None else None,
        exchange=str(src.get("EXCHANGE") or "bagou"),
        queue_name=str(queue_name) if queue_name else None,
        http_url=str(http_url) if http_url else None,
        api_key=str(src.get("API_KEY") or ""),
        forward_exchange=str(src.get("FORWARD_EXCHANGE") or "bagou.events"),
        worker_queue=str(src.get("WORKER_QUEUE") or ""),
        concurrency=_number("CONCURRENCY", src.get("CONCURRENCY", 4), int, 1),
        prefetch=_number("PREFETCH", src.get("PREFETCH", 100), int, 1),
        confirm_timeout=_number("CONFIRM_TIMEOUT",
                                src.get("CONFIRM_TIMEOUT", 10), float, 0.01),
        connect_timeout=_number("CONNECT_TIMEOUT",
                                src.get("CONNECT_TIMEOUT", 5), float, 0.01),
        auth=_bool("AUTH", src.get("AUTH", False)),
        auth_secret=str(src.get("AUTH_SECRET") or ""),
        auth_channels=src.get("AUTH_CHANNELS"),
        websocket_url=websocket_url,
        script_url=str(src.get("SCRIPT_URL")
                       or script_url_for(websocket_url)),
        raw=dict(src),
    )


def describe_target(s: Settings) -> Tuple[str, str]:
    """(kind, where) for messages: ("amqp", "exchange 'bagou'") etc."""
    if s.amqp_url is None:
        return "http", s.http_url or ""
    if s.queue_name:
        return "amqp", "queue '%s'" % s.queue_name
    return "amqp", "exchange '%s'" % s.exchange


__all__: List[str] = ["Settings", "configure", "get", "load", "reset",
                      "script_url_for"]
