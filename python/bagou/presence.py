"""Who is in a presence channel (docs/PROTOCOL.md, "Presence channels"):
the server API's presence and presence_stats commands, from Python.

They go where every server API call goes (bagou.api.call): over the API
queue of RabbitMQ with a broker in the settings, else to the API
listener (HTTP_URL: GET /api/presence?channel=C). Any node answers for
the whole cluster. An error status raises ApiError."""

from typing import Any, Dict, List

from .api import DEFAULT_TIMEOUT, call


def presence(channel: str, *,
             timeout: float = DEFAULT_TIMEOUT) -> List[Dict[str, Any]]:
    """The members of a presence channel across the cluster, one per
    user, sorted by user id: [{"user": ID, "info": {...}}, ...]."""
    members: List[Dict[str, Any]] = call("presence", timeout,
                                         channel=channel)["members"]
    return members


def presence_stats(channel: str, *,
                   timeout: float = DEFAULT_TIMEOUT) -> Dict[str, int]:
    """{"clients": N, "users": M}: the members' connections and the
    members of a presence channel, across the cluster."""
    doc = call("presence_stats", timeout, channel=channel)
    return {"clients": int(doc["clients"]), "users": int(doc["users"])}


__all__ = ["presence", "presence_stats"]
