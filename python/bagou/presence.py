"""Who is in a presence channel (docs/PROTOCOL.md, "Presence"): the
API listener's GET /api/presence and /api/presence_stats, from Python.

The API listener is HTTP_URL's (its base URL, as for broadcasts over
HTTP; settings.BAGOU["HTTP_URL"] or BAGOU_HTTP_URL), else
http://127.0.0.1:9001, the default [http] api_listen. API_KEY is sent
as a Bearer key when set. Any node answers for the whole cluster."""

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List

from . import conf
from .exceptions import BagouError

DEFAULT_API_URL = "http://127.0.0.1:9001"


def _base(s: conf.Settings) -> str:
    if not s.http_url:
        return DEFAULT_API_URL
    url = s.http_url
    if url.endswith("/broadcast"):
        url = url[:-len("/broadcast")]
    return url.rstrip("/")


def _get(path: str, channel: str) -> Dict[str, Any]:
    if not isinstance(channel, str) or not channel:
        raise BagouError("channel must be a non-empty string, not %r"
                         % (channel,))
    s = conf.get()
    url = "%s%s?channel=%s" % (_base(s), path,
                               urllib.parse.quote(channel, safe=""))
    headers = {"Accept": "application/json"}
    if s.api_key:
        headers["Authorization"] = "Bearer " + s.api_key
    req = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=s.confirm_timeout) as r:
            return json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        try:
            detail = e.read(2000).decode("utf-8", "replace")
        except OSError:
            detail = ""
        raise BagouError("GET %s answered %d %s%s"
                         % (url, e.code, e.reason,
                            ": " + detail if detail else "")) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise BagouError("cannot reach %s: %s" % (url, reason)) from None


def presence(channel: str) -> List[Dict[str, Any]]:
    """The members of a presence channel across the cluster, one per
    user, sorted by user id: [{"user": ID, "info": {...}}, ...]. Raises
    BagouError when the server refuses (not a presence channel: 400) or
    cannot be reached."""
    return _get("/api/presence", channel)["members"]


def presence_stats(channel: str) -> Dict[str, int]:
    """{"clients": N, "users": M} of a presence channel: its members'
    connections and the members themselves, across the cluster."""
    return _get("/api/presence_stats", channel)


__all__ = ["presence", "presence_stats"]
