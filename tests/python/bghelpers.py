"""Helpers of the Python package tests (the fixtures are in conftest)."""

import time


def forwarding(ex, lifecycle="open,close,subscribe,unsubscribe,store,"
               "authenticate",
               **sections):
    cfg = {"forward": {"exchange": ex}}
    if lifecycle:
        cfg["forward"]["lifecycle"] = lifecycle
    cfg.update(sections)
    return cfg


def session_for(username):
    """(user, session key) of a logged-in Django session, through the
    test client (so through the configured session engine)."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    User = get_user_model()
    user, _ = User.objects.get_or_create(username=username,
                                         defaults={"email":
                                                   username + "@example.org"})
    c = Client()
    c.force_login(user)
    from django.conf import settings
    return user, c.cookies[settings.SESSION_COOKIE_NAME].value


def time_left(deadline):
    return max(0.0, deadline - time.monotonic())
