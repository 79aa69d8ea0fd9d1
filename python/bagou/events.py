"""The handler decorators of django-bagou, with its signatures:

    from bagou.events import on_message, on_subscribe

    @on_message(channel=r"^room-")
    def chat(client, channel, message): ...

    @on_subscribe
    def joined(client, channel, message): ...

| decorator         | handler signature                          |
|-------------------|--------------------------------------------|
| on_open           | (client)                                   |
| on_close          | (client)                                   |
| on_message        | (client, channel, message)                 |
| on_subscribe      | (client, channel, message)                 |
| on_unsubscribe    | (client, channel, message)                 |
| on_store          | (client, message)                          |
| on_authenticate   | (client, message, session_id)              |

`message` is the whole client message ({"event", "data", "callbackId"}).
A channel filter is a regular expression applied with re.match: to the
channel being (un)subscribed for on_subscribe/on_unsubscribe, to each of
the client's channels for the others (the handler runs when one
matches). A handler without a filter always runs. All matching handlers
run, in registration order. on_open and on_close take no filter."""

from __future__ import annotations

import re
from typing import Any, Callable, List, Optional, Pattern, Sequence, Tuple

from .exceptions import EventError

Handler = Callable[..., Any]


class Event:
    """One event's handlers; used as a decorator, bare or with
    channel=PATTERN."""

    def __init__(self, name: str, supports_channels: bool = True) -> None:
        self.name = name
        self.supports_channels = supports_channels
        self.handlers: List[Tuple[Handler, Optional[Pattern[str]]]] = []

    def __call__(self, handler: Optional[Handler] = None,
                 channel: Optional[str] = None) -> Any:
        pattern = self._pattern(channel, handler)
        if handler is None:
            def bind(fn: Handler) -> Handler:
                self(fn, channel=channel)
                return fn
            return bind
        if not callable(handler):
            raise EventError("@%s decorates a function, not %r"
                             % (self.name, handler))
        self.handlers.append((handler, pattern))
        return handler

    def _pattern(self, channel: Optional[str],
                 handler: Optional[Handler]) -> Optional[Pattern[str]]:
        if channel is None:
            return None
        if not self.supports_channels:
            raise EventError("%s takes no channel filter (a client has no "
                             "channel when it opens, and %s runs for every "
                             "client); handler %s not registered"
                             % (self.name, self.name,
                                getattr(handler, "__name__", handler)))
        try:
            return re.compile(channel)
        except re.error as e:
            raise EventError("@%s(channel=%r): bad regular expression: %s"
                             % (self.name, channel, e)) from None

    def matching(self, channels: Sequence[str],
                 target: Optional[str] = None
                 ) -> List[Tuple[Handler, Optional[str]]]:
        """(handler, the channel that matched or None) of every handler
        that runs, in registration order. target: the channel being
        (un)subscribed; the others match against channels."""
        out: List[Tuple[Handler, Optional[str]]] = []
        for handler, pattern in self.handlers:
            if pattern is None:
                out.append((handler, target))
            elif target is not None:
                if pattern.match(target):
                    out.append((handler, target))
            else:
                for c in channels:
                    if pattern.match(c):
                        out.append((handler, c))
                        break
        return out

    def disconnect(self, handler: Handler) -> None:
        """Removes every registration of handler."""
        self.handlers = [(h, p) for h, p in self.handlers if h is not handler]

    def __repr__(self) -> str:
        return "<bagou event %s: %d handler(s)>" % (self.name,
                                                    len(self.handlers))


on_open = Event("on_open", supports_channels=False)
on_close = Event("on_close", supports_channels=False)
on_message = Event("on_message")
on_subscribe = Event("on_subscribe")
on_unsubscribe = Event("on_unsubscribe")
on_store = Event("on_store")
on_authenticate = Event("on_authenticate")

ALL = (on_open, on_close, on_message, on_subscribe, on_unsubscribe,
       on_store, on_authenticate)


def clear() -> None:
    """Forgets every registered handler (for tests)."""
    for e in ALL:
        e.handlers = []


__all__ = ["Event", "EventError", "on_authenticate", "on_close",
           "on_message", "on_open", "on_store", "on_subscribe",
           "on_unsubscribe"]
