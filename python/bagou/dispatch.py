"""One forwarded event (PROTOCOL.md §5) -> the handlers of bagou.events.

Routing key / "event" of the body:

| event                 | handlers                               |
|-----------------------|----------------------------------------|
| open, close           | on_open, on_close (lifecycle)          |
| subscribe, unsubscribe| on_subscribe, on_unsubscribe (lifecycle)|
| store                 | on_store (lifecycle)                   |
| authenticate          | session check (AUTH), on_authenticate  |
| anything else         | on_message                             |

Every message with a callbackId is answered exactly once: by a handler
(client.jsonify(event="callback", callbackId=...)), else, after the
handlers ran, with the automatic {"event":"callback","callbackId":..}
of django-bagou, or with an error when a handler raised."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional

from . import auth, conf, events
from .client import Client

log = logging.getLogger("bagou")

LIFECYCLE = ("open", "close", "subscribe", "unsubscribe", "store")

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
        lifecycle = ev in LIFECYCLE and self.callback_id is None
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
        c, s = self.client, self.settings
        session_id = auth.session_id_from(self.body.get("data"),
                                          self.body.get("cookie"))
        # Forwarded after a token authentication ([forward] lifecycle):
        # the connection is a user's already, nothing to check.
        already = self.callback_id is None and session_id is None and \
            c.user_id is not None
        if s.auth and not already:
            self._session_login(session_id)
        for h, _ in events.on_authenticate.matching(c.channels):
            self._call(h, c, self.message, session_id)

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


def dispatch(body: Dict[str, Any], publish: Publish,
             settings: Optional[conf.Settings] = None) -> Dispatch:
    d = Dispatch(body, publish, settings)
    d.run()
    return d


__all__: List[str] = ["Dispatch", "LIFECYCLE", "dispatch", "valid"]
