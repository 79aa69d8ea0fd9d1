"""Settings of the Bagou chat example: a plain Django project with
'bagou' in INSTALLED_APPS and settings.BAGOU as django-bagou had it.
Environment overrides (used by run.sh and the tests): CHAT_DB,
BAGOU_AMQP_URL, BAGOU_WEBSOCKET_URL, BAGOU_EXCHANGE,
BAGOU_FORWARD_EXCHANGE."""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECRET_KEY = os.environ.get("CHAT_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "bagou",
    "discuss",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "chatsite.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.environ.get("CHAT_DB", os.path.join(BASE_DIR, "chat.sqlite3")),
}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"

BAGOU = {
    # Where pages connect: bagou-server with examples/django_chat/bagou.ini.
    "WEBSOCKET_URL": os.environ.get("BAGOU_WEBSOCKET_URL",
                                    "ws://127.0.0.1:9000/websocket"),
    "AMQP_BROKER_URL": os.environ.get("BAGOU_AMQP_URL",
                                      "amqp://guest:guest@localhost:5672/"),
    # The exchange bagou-server consumes ([amqp] exchange) and the one it
    # forwards client events to ([forward] exchange).
    "EXCHANGE": os.environ.get("BAGOU_EXCHANGE", "bagou"),
    "FORWARD_EXCHANGE": os.environ.get("BAGOU_FORWARD_EXCHANGE",
                                       "bagou.events"),
    # Session authentication over the socket.
    "AUTH": True,
}
