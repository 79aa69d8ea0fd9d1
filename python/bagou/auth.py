"""Django session authentication over the socket (settings.BAGOU["AUTH"]):
the sessionId a page sends (or the sessionid cookie the server forwards)
is looked up with the configured session engine (any backend:
settings.SESSION_ENGINE), then django.contrib.auth.get_user() finds the
user the way a request would (backend, session hash, is_active)."""

from __future__ import annotations

import importlib
import json
from http.cookies import CookieError, SimpleCookie
from typing import Any, Dict, List, Optional

from .exceptions import ConfigurationError


def session_id_from(data: Any, cookie: Any) -> Optional[str]:
    """data["sessionId"], else the session cookie of the Cookie header."""
    if isinstance(data, dict) and isinstance(data.get("sessionId"), str) \
            and data["sessionId"]:
        return str(data["sessionId"])
    if not isinstance(cookie, str) or not cookie:
        return None
    try:
        from django.conf import settings
        name = settings.SESSION_COOKIE_NAME
    except ImportError:
        name = "sessionid"
    jar: "SimpleCookie[str]" = SimpleCookie()
    try:
        jar.load(cookie)
        if name in jar:
            return jar[name].value
    except CookieError:
        pass
    # SimpleCookie gives up on a whole header at the first cookie it does
    # not like; a plain split finds ours anyway.
    for part in cookie.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name and value:
            return value
    return None


def django_ready() -> bool:
    """Whether Django is installed, configured and its apps loaded (no
    sessions to check otherwise: AUTH then has no effect)."""
    try:
        from django.apps import apps
    except ImportError:
        return False
    return bool(apps.ready)


class _Request:
    """What django.contrib.auth.get_user() reads of a request."""

    def __init__(self, session: Any) -> None:
        self.session = session


def session_user(session_id: Optional[str]) -> Any:
    """The active User of that session, or None."""
    if not session_id:
        return None
    from django.conf import settings
    from django.contrib.auth import get_user
    engine = importlib.import_module(settings.SESSION_ENGINE)
    session = engine.SessionStore(session_key=session_id)
    user = get_user(_Request(session))
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user


def serialize_user(user: Any) -> Dict[str, Any]:
    """The user as django.core.serializers' JSON serializer writes it,
    {"model", "pk", "fields"}, without the password hash."""
    from django.core import serializers
    meta = user._meta
    fields = [f.name for f in list(meta.local_fields) +
              list(meta.local_many_to_many) if f.name != "password"]
    text = serializers.serialize("json", [user], fields=fields)
    out: Dict[str, Any] = json.loads(text)[0]
    return out


def channels_for(user: Any, setting: Any) -> List[str]:
    """The private channels the user may join: AUTH_CHANNELS, a list of
    format strings ("private-user-{pk}") or a callable (or its dotted
    path) taking the user; default ["private-user-<pk>"]."""
    if setting is None:
        return ["private-user-%s" % user.pk]
    if isinstance(setting, str):
        module, _, name = setting.rpartition(".")
        try:
            setting = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigurationError("AUTH_CHANNELS: cannot import %r: %s"
                                     % (setting, e)) from None
    if callable(setting):
        return [str(c) for c in setting(user)]
    return [str(c).format(user=user, pk=user.pk) for c in setting]


def auth_reply(user: Any, setting: Any) -> Dict[str, Any]:
    """The "auth" object of the reply that makes the server treat the
    connection as user (PROTOCOL.md §5)."""
    return {"user": str(user.pk),
            "info": {"username": user.get_username()},
            "channels": channels_for(user, setting)}
