"""Bagou for Python: broadcast() to WebSocket clients of bagou-server from
anywhere (views, signals, Celery tasks, scripts), event handlers in an
events.py run by `python manage.py bagou` or `python -m bagou.worker`, and
the Django integration of django-bagou (settings.BAGOU, {% bagou_static %},
session authentication). See docs/django.md."""

from .conf import configure
from .exceptions import (BagouError, BroadcastError, ConfigurationError,
                         EventError)
from .presence import presence, presence_stats
from .publish import broadcast

__version__ = "2.0.0"

__all__ = ["BagouError", "BroadcastError", "ConfigurationError",
           "EventError", "broadcast", "configure", "presence",
           "presence_stats", "__version__"]
