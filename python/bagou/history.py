"""history(): the last publications of a history channel, or those after
a position, from bagou-server's GET /api/history (docs/PROTOCOL.md,
history and recovery). Needs HTTP_URL (the API listener, e.g.
http://127.0.0.1:9001) in the settings; API_KEY is sent when set."""

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from . import conf
from .exceptions import BagouError, ConfigurationError

Position = Union[Mapping[str, Any], Sequence[Any]]


class HistoryError(BagouError):
    """GET /api/history failed: unreachable, refused (401/403), a bad
    argument (400), a channel without history (404), or unavailable
    (503). `status` is the HTTP status (None when unreachable) and `code`
    the server's error code when it gave one."""

    def __init__(self, message: str, status: Optional[int] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.code = code


def _endpoint(s: conf.Settings) -> str:
    if not s.http_url:
        raise ConfigurationError("history() needs HTTP_URL: the URL of "
                                 "bagou-server's API listener, e.g. "
                                 "http://127.0.0.1:9001")
    base = s.http_url
    if base.endswith("/broadcast"):
        base = base[:-len("/broadcast")]
    return base.rstrip("/") + "/api/history"


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
            since: Optional[Position] = None) -> Dict[str, Any]:
    """The channel's publications, oldest first, as the server's answer:
    {"success": True, "channel", "epoch", "offset" (the latest position),
    "publications": [{"event", "channel", "data", "offset"}, ...]} and
    "gap": True when since could not be followed (another epoch, or older
    than the server keeps: the latest ones come instead). limit defaults
    to 50 on the server, and is clamped to its [history] size."""
    if not isinstance(channel, str) or not channel:
        raise ValueError("channel must be a non-empty string")
    query: Dict[str, Any] = {"channel": channel}
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or \
                limit < 0:
            raise ValueError("limit must be an integer >= 0, not %r"
                             % (limit,))
        query["limit"] = limit
    if since is not None:
        query.update(_position(since))
    s = conf.get()
    url = _endpoint(s) + "?" + urllib.parse.urlencode(query)
    headers = {"Accept": "application/json"}
    if s.api_key:
        headers["Authorization"] = "Bearer " + s.api_key
    req = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=s.confirm_timeout) as r:
            answer: Dict[str, Any] = json.loads(r.read().decode("utf-8"))
            return answer
    except urllib.error.HTTPError as e:
        code = message = None
        try:
            err = json.loads(e.read().decode("utf-8"))["error"]
            code, message = err.get("code"), err.get("message")
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        raise HistoryError("GET %s: %d %s%s" % (
            url, e.code, e.reason, ": %s" % message if message else ""),
            status=e.code, code=code) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise HistoryError("cannot reach %s: %s" % (url, reason)) from None
