"""HS256 tokens that bagou-server checks with its [auth] secret
(PROTOCOL.md §6), for pages that authenticate with a token instead of the
session: ws.authenticate(token), or ?token= on the WebSocket URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Dict, Iterable, Optional

from . import conf
from .exceptions import ConfigurationError


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def make_token(user_id: Any, channels: Optional[Iterable[str]] = None,
               info: Optional[Dict[str, Any]] = None,
               lifetime: float = 3600, secret: Optional[str] = None,
               now: Optional[float] = None) -> str:
    """A JWT (HS256) with sub = str(user_id), exp = now + lifetime
    seconds, and the optional info (an object the other clients may see,
    e.g. in presence) and channels (private channels it opens; a trailing
    * matches any suffix). secret: default AUTH_SECRET of the settings,
    which must equal the server's [auth] secret."""
    key = secret if secret is not None else conf.get().auth_secret
    if not key:
        raise ConfigurationError("make_token: no secret (set AUTH_SECRET to "
                                 "the server's [auth] secret)")
    if user_id is None or str(user_id) == "":
        raise ValueError("make_token: user_id is required")
    issued = int(time.time() if now is None else now)
    claims: Dict[str, Any] = {"sub": str(user_id), "iat": issued,
                              "exp": issued + int(lifetime)}
    if info is not None:
        claims["info"] = dict(info)
    if channels is not None:
        claims["channels"] = [str(c) for c in channels]
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"},
                             separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing = ("%s.%s" % (header, payload)).encode("ascii")
    sig = hmac.new(key.encode("utf-8"), signing, hashlib.sha256).digest()
    return "%s.%s.%s" % (header, payload, _b64(sig))


__all__ = ["make_token"]
