"""One forwarded event (PROTOCOL.md §5) -> the handlers of bagou.events.

Routing key / "event" of the body:

| event                 | handlers                               |
|-----------------------|----------------------------------------|
| open, close           | on_open, on_close (lifecycle)          |
| subscribe, unsubscribe| on_subscribe, on_unsubscribe (lifecycle)|
| store                 | on_store (lifecycle)                   |
| authenticate          | session check (AUTH), on_authenticate  |
| authenticate, notice  | on_authenticate (lifecycle: a token    |
|                       | login; a session login ran them above) |
| anything else         | on_message                             |

Every message with a callbackId is answered exactly once: by a handler
(client.jsonify(event="callback", callbackId=...)), else, after the
handlers ran, with the automatic {"event":"callback","callbackId":..}
of django-bagou, or with an error when a handler raised."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import auth, conf, events
from .client import Client

log = logging.getLogger("bagou")

LIFECYCLE = ("open", "close", "subscribe", "unsubscribe", "store",
             "authenticate")

Publish = Callable[[Dict[str, Any]], None]


def valid(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("event"), str) \
        and isinstance(body.get("client"), dict) \
        and isinstance(body["client"].get("id"), str)


class Dispatch:
    """Runs the handlers for one forwarded event."""

    def __init__(self, body: Dict[str, Any], publish: Publish,
                 settings: Optional[conf.Settings] = None) -> None:
        self.body = body
        self.settings = settings or conf.get()
        self.event: str = body["event"]
        cb = body.get("callbackId")
        self.callback_id: Optional[str] = cb if isinstance(cb, str) else None
        self.client = Client(body["client"], publish)
        self.message: Dict[str, Any] = {"event": self.event,
                                        "data": body.get("data"),
                                        "callbackId": self.callback_id}
        self.failed = 0

    def _call(self, handler: Callable[..., Any], *args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            self.failed += 1
            log.exception("handler %s.%s failed on '%s' from client %s",
                          getattr(handler, "__module__", "?"),
                          getattr(handler, "__qualname__", handler),
                          self.event, self.client.id)

    def run(self) -> None:
        ev, c = self.event, self.client
        # The server marks what it forwards after the fact ("lifecycle":
        # true); servers before that mark forwarded only these four, and
        # clients cannot send them as events of their own.
        lifecycle = self.body.get("lifecycle") is True or (
            ev in ("open", "close", "subscribe", "unsubscribe") and
            self.callback_id is None)
        data = self.body.get("data")
        target = data.get("channel") if isinstance(data, dict) else None
        if lifecycle and ev == "open":
            for h, _ in events.on_open.matching(c.channels):
                self._call(h, c)
        elif lifecycle and ev == "close":
            for h, _ in events.on_close.matching(c.channels):
                self._call(h, c)
        elif lifecycle and ev in ("subscribe", "unsubscribe") and \
                isinstance(target, str):
            event = events.on_subscribe if ev == "subscribe" \
                else events.on_unsubscribe
            for h, ch in event.matching(c.channels, target=target):
                self._call(h, c, ch, self.message)
        elif lifecycle and ev == "store":
            for h, _ in events.on_store.matching(c.channels):
                self._call(h, c, self.message)
        elif lifecycle and ev == "authenticate":
            self._authenticated()
        elif ev == "authenticate":
            self._authenticate()
        else:
            self._on_message()
        self._answer(lifecycle)

    def _on_message(self) -> None:
        c = self.client
        data = self.body.get("data")
        named = data.get("channel") if isinstance(data, dict) else None
        for h, ch in events.on_message.matching(c.channels):
            self._call(h, c, ch if ch is not None else
                       (named if isinstance(named, str) else None),
                       self.message)

    def _authenticate(self) -> None:
        """A client's authenticate request: the session login (AUTH),
        then the on_authenticate handlers, as django-bagou did."""
        c, s = self.client, self.settings
        session_id = auth.session_id_from(self.body.get("data"),
                                          self.body.get("cookie"))
        if s.auth and auth.django_ready():
            self._session_login(session_id)
        for h, _ in events.on_authenticate.matching(c.channels):
            self._call(h, c, self.message, session_id)

    def _authenticated(self) -> None:
        """The server's notice that the connection became a user's
        ([forward] lifecycle = authenticate): a token login, or the
        session login this runner answered, whose handlers ran then."""
        c = self.client
        if _logins.take(c.id, c.user_id):
            return
        for h, _ in events.on_authenticate.matching(c.channels):
            self._call(h, c, self.message, None)

    def _session_login(self, session_id: Optional[str]) -> None:
        c, cb = self.client, self.callback_id
        user = None
        try:
            user = auth.session_user(session_id)
        except Exception:
            # A session backend that fails (database down) is the
            # application's failure, not an unknown session.
            self.failed += 1
            log.exception("session lookup failed for client %s", c.id)
            return
        data: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        if user is not None:
            c.set_user(user)
            data = {"user": auth.serialize_user(user)}
            extra["auth"] = auth.auth_reply(user,
                                            self.settings.auth_channels)
            log.info("client %s: authenticated as user %s", c.id, user.pk)
        else:
            log.info("client %s: %s", c.id,
                     "no session id" if session_id is None
                     else "unknown or expired session")
        if user is not None:
            _logins.put(c.id, c.user_id)
        if cb is not None:
            c.jsonify(event="callback", callbackId=cb, data=data, **extra)
        elif extra:
            # No callback to carry "auth": a message of its own does.
            c.jsonify(event="authenticated", data=data, **extra)

    def _answer(self, lifecycle: bool) -> None:
        cb, c = self.callback_id, self.client
        if cb is not None and cb not in c.answered:
            if self.failed:
                c.jsonify(event="callback", callbackId=cb, data={
                    "success": False,
                    "error": {"code": "internal",
                              "message": "the application failed to "
                                         "handle '%s'" % self.event}})
            else:
                c.jsonify(event="callback", callbackId=cb)
        elif cb is None and self.failed and not lifecycle:
            c.jsonify(event="error", data={
                "code": "internal",
                "message": "the application failed to handle '%s'"
                           % self.event,
                "event": self.event})


class _Logins:
    """The session logins this process answered recently, so that the
    server's authenticate notice that follows each does not run the
    on_authenticate handlers a second time."""

    TTL = 60.0
    MAX = 10000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: "OrderedDict[Tuple[str, Optional[str]], float]" = \
            OrderedDict()

    def put(self, client_id: str, user_id: Optional[str]) -> None:
        now = time.monotonic()
        with self._lock:
            self._seen[(client_id, user_id)] = now
            while self._seen and (len(self._seen) > self.MAX or
                                  next(iter(self._seen.values())) <
                                  now - self.TTL):
                self._seen.popitem(last=False)

    def take(self, client_id: str, user_id: Optional[str]) -> bool:
        with self._lock:
            return self._seen.pop((client_id, user_id), None) is not None


_logins = _Logins()


def dispatch(body: Dict[str, Any], publish: Publish,
             settings: Optional[conf.Settings] = None) -> Dispatch:
    d = Dispatch(body, publish, settings)
    d.run()
    return d


__all__: List[str] = ["Dispatch", "LIFECYCLE", "dispatch", "valid"]
