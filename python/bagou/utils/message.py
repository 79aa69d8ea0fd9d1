"""The helpers of the earliest django-bagou releases."""

from __future__ import annotations

from typing import Any

from ..publish import message, send as _send


def broadcast(type: str, data: Any = None) -> None:
    """Sends {"event": type, "data": data} to every connected client."""
    _send(message(type, None, data))


def broadcast_to_channel(type: str, channel: str, data: Any = None) -> None:
    """Sends {"event": type, "data": data} to the clients subscribed to
    channel."""
    _send(message(type, channel, data))


def send(**kwargs: Any) -> None:
    """Publishes kwargs as one broadcast object, e.g.
    send(event="message", channel="news", data={...})."""
    _send(dict(kwargs))


__all__ = ["broadcast", "broadcast_to_channel", "send"]
