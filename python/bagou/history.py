"""history(): the last publications of a history channel, or those after
a position: bagou-server's history command of the server API
(docs/PROTOCOL.md, history and recovery, and "Server API"). It travels
as every call of bagou.api does: over RabbitMQ's API queue with a broker
in the settings (AMQP_BROKER_URL, the default), else over HTTP to the API
listener (GET /api/history at HTTP_URL). API_KEY is sent when set."""

from typing import Any, Dict, Mapping, Optional, Sequence, Union

from . import api
from .exceptions import ApiError

Position = Union[Mapping[str, Any], Sequence[Any]]


class HistoryError(ApiError):
    """history() failed: refused (401/403), a bad argument (400), a
    channel without history (404), or unavailable (503: the broker or the
    API listener unreachable, no node answering, the node stopping).
    `status` is the HTTP status and `code` the server's error code (an
    ApiError: `message` and `body` too)."""


def _position(since: Position) -> Dict[str, Any]:
    if isinstance(since, Mapping):
        epoch, offset = since.get("epoch"), since.get("offset")
    else:
        try:
            epoch, offset = since
        except (TypeError, ValueError):
            epoch = offset = None
    if not isinstance(epoch, str) or not isinstance(offset, int) or \
            isinstance(offset, bool) or offset < 0:
        raise ValueError("since must be {'epoch': str, 'offset': int >= 0} "
                         "or (epoch, offset), not %r" % (since,))
    return {"since_epoch": epoch, "since_offset": offset}


def history(channel: str, limit: Optional[int] = None,
            since: Optional[Position] = None, *,
            timeout: float = api.DEFAULT_TIMEOUT) -> Dict[str, Any]:
    """The channel's publications, oldest first, as the server's answer:
    {"success": True, "channel", "epoch", "offset" (the latest position),
    "publications": [{"event", "channel", "data", "offset"}, ...]} and
    "gap": True when since could not be followed (another epoch, or older
    than the server keeps: the latest ones come instead). limit defaults
    to 50 on the server, and is clamped to its [history] size. Raises
    HistoryError on an error answer."""
    if not isinstance(channel, str) or not channel:
        raise ValueError("channel must be a non-empty string")
    args: Dict[str, Any] = {"channel": channel}
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or \
                limit < 0:
            raise ValueError("limit must be an integer >= 0, not %r"
                             % (limit,))
        args["limit"] = limit
    if since is not None:
        args.update(_position(since))
    try:
        return api.call("history", timeout, **args)
    except ApiError as e:
        raise HistoryError(e.status, e.code, e.message, e.body) from None
