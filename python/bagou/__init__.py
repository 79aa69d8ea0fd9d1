"""Bagou for Python: broadcast() to WebSocket clients of bagou-server from
anywhere (views, signals, Celery tasks, scripts), event handlers in an
events.py run by `python manage.py bagou` or `python -m bagou.worker`, and
the Django integration of django-bagou (settings.BAGOU, {% bagou_static %},
session authentication). See docs/django.md."""

from .api import channels, disconnect, info, subscribe, unsubscribe
from .conf import configure
from .exceptions import (ApiError, BagouError, BroadcastError,
                         ConfigurationError, EventError)
from .history import HistoryError, history
from .presence import presence, presence_stats
from .publish import broadcast

__version__ = "2.0.0"

__all__ = ["ApiError", "BagouError", "BroadcastError", "ConfigurationError",
           "EventError", "HistoryError", "broadcast", "channels", "configure",
           "disconnect", "history", "info", "presence", "presence_stats",
           "subscribe", "unsubscribe", "__version__"]
