"""django-bagou's helpers, with their original signatures:

    from bagou.utils import broadcast
    broadcast(event="message", channels="bagou", data={"text": "hi"})
    broadcast("bagou", "message", {"text": "hi"})   # (channels, event, ...)
"""

from __future__ import annotations

from typing import Any, Optional

from .. import publish as _publish
from ..publish import Names


def broadcast(channels: Names = None, event: Optional[str] = None,
              data: Any = None, callback: Optional[str] = None, *,
              clients: Names = None, exclude: Optional[str] = None) -> None:
    """django-bagou's broadcast(channels, event, data={}, callback=None):
    sends event with data to the clients subscribed to channels (a name
    or a list; None: every client), on every node. callback is passed to
    the clients as the callbackId. Raises BroadcastError when the broker
    does not take it."""
    if event is None:
        raise TypeError("broadcast() needs an event")
    _publish.send(_publish.message(event, channels, data, clients=clients,
                                   exclude=exclude, callback_id=callback))


__all__ = ["broadcast"]
