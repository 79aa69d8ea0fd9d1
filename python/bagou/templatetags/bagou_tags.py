"""{% load bagou_tags %}{% bagou_static %}: defines the global
WEBSOCKET_URL of the page from settings.BAGOU and loads BagouWebSocket
from the server (/bagou.js next to the WebSocket, or SCRIPT_URL)."""

from __future__ import annotations

import json

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from .. import conf

register = template.Library()


def _js_string(value: str) -> str:
    """A JavaScript string literal safe inside <script>."""
    return (json.dumps(value).replace("<", "\\u003C")
            .replace(">", "\\u003E").replace("&", "\\u0026"))


@register.simple_tag
def bagou_static() -> SafeString:
    s = conf.get()
    head = mark_safe("<script>var WEBSOCKET_URL = %s;</script>"
                     % _js_string(s.websocket_url))
    return head + format_html('<script src="{}"></script>', s.script_url)


@register.simple_tag
def bagou_static_debug() -> SafeString:
    """django-bagou's debug variant: the same script here."""
    return bagou_static()
