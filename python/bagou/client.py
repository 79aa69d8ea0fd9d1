"""The `client` a handler receives: the connection a forwarded event came
from (PROTOCOL.md §5), as django-bagou's handlers saw it."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Set

log = logging.getLogger("bagou")

_UNSET = object()


class Client:
    """id, channels, store, user, authenticated, jsonify(). Built from the
    "client" object of one forwarded event; changes to it stay local
    (subscribe and store through the client's own messages)."""

    def __init__(self, info: Dict[str, Any],
                 publish: Callable[[Dict[str, Any]], None]) -> None:
        self.id: str = info["id"]
        self.node: Optional[str] = info.get("node")
        chans = info.get("channels")
        self.channels: List[str] = [c for c in chans if isinstance(c, str)] \
            if isinstance(chans, list) else []
        store = info.get("store")
        self.store: Dict[str, Any] = dict(store) \
            if isinstance(store, dict) else {}
        uid = info.get("user")
        self.user_id: Optional[str] = None if uid is None else str(uid)
        info_obj = info.get("info")
        self.info: Dict[str, Any] = dict(info_obj) \
            if isinstance(info_obj, dict) else {}
        self._publish = publish
        self._user: Any = _UNSET
        self.answered: Set[str] = set()

    # ------------------------------------------------------------ user
    @property
    def authenticated(self) -> bool:
        """True when the connection is a user's (token or session)."""
        return self.user_id is not None

    @property
    def user(self) -> Any:
        """The Django User of an authenticated connection (loaded by its
        primary key on first use), or None: anonymous, no such user, or
        no Django."""
        if self._user is _UNSET:
            self._user = _load_user(self.user_id)
        return self._user

    def set_user(self, user: Any) -> None:
        """After a session authentication: this connection is user's."""
        self._user = user
        self.user_id = None if user is None else str(user.pk)

    # ------------------------------------------------------------ send
    def jsonify(self, **kwargs: Any) -> None:
        """Sends kwargs as one JSON message to this connection only, as
        given (every field kept, `event` may be left out, e.g.
        jsonify(success=True, message="Message received!")):
        jsonify(event="message", data={...}), or the answer to
        a callback, jsonify(event="callback", callbackId=message[
        "callbackId"], data={...}). Raises BroadcastError when the broker
        does not take it."""
        msg = dict(kwargs)
        msg["client"] = self.id
        self._publish(msg)
        if msg.get("event") == "callback" and \
                isinstance(msg.get("callbackId"), str):
            self.answered.add(msg["callbackId"])

    def __repr__(self) -> str:
        return "<bagou client %s user=%s channels=%r>" % (
            self.id, self.user_id, self.channels)


def _load_user(user_id: Optional[str]) -> Any:
    if user_id is None:
        return None
    try:
        from django.apps import apps
        if not apps.ready:
            return None
        from django.contrib.auth import get_user_model
        from django.core.exceptions import ValidationError
    except ImportError:
        return None
    model = get_user_model()
    try:
        return model._default_manager.filter(pk=user_id).first()
    except (ValueError, TypeError, ValidationError):
        # A token's "sub" that is not a primary key of this model.
        return None
