"""'bagou' in INSTALLED_APPS: every installed app's events.py is imported
when Django starts, so its @on_... handlers are registered (as with
django-bagou), and the settings cache follows override_settings."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed
from django.utils.module_loading import autodiscover_modules


def _setting_changed(setting: str = "", **_kwargs: Any) -> None:
    if setting == "BAGOU":
        from . import conf
        conf.reset()


class BagouConfig(AppConfig):
    name = "bagou"
    verbose_name = "Bagou"

    def ready(self) -> None:
        setting_changed.connect(_setting_changed,
                                dispatch_uid="bagou.conf.reset")
        autodiscover_modules("events")
