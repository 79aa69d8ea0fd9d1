"""Which Django and which bagou these tests run against: make
test-python runs them with Debian's Django 3.2 and with 4.2 LTS from
bookworm-backports, against the package pip installed into build/venv."""

import os

import bagou


def test_django_version():
    import django
    want = os.environ.get("BAGOU_EXPECT_DJANGO")
    if want:
        assert django.get_version().startswith(want + "."), \
            (django.get_version(), django.__file__)


def test_installed_package():
    if os.environ.get("BAGOU_EXPECT_INSTALLED"):
        assert "site-packages" in bagou.__file__, bagou.__file__
        here = os.path.dirname(os.path.abspath(bagou.__file__))
        assert os.path.exists(os.path.join(here, "py.typed"))
