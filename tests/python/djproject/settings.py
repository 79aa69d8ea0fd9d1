"""The Django project of the Python tests: written the django-bagou way
(settings.BAGOU, 'bagou' in INSTALLED_APPS, handlers in chat/events.py).
The broker, exchanges, database and session engine come from the
environment the tests set."""

import os

BASE = os.environ.get("BAGOU_TEST_DIR", "/tmp")

SECRET_KEY = "bagou-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "bagou",
    "djproject.chat",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.path.join(BASE, "db.sqlite3"),
}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
SESSION_ENGINE = os.environ.get("BAGOU_TEST_SESSION_ENGINE",
                                "django.contrib.sessions.backends.db")
SESSION_FILE_PATH = BASE
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {},
}]
ROOT_URLCONF = "djproject.urls"
LOGGING_CONFIG = None

BAGOU = {
    "AMQP_BROKER_URL": os.environ.get("BAGOU_AMQP_URL",
                                      "amqp://guest:guest@localhost:5672/"),
    "EXCHANGE": os.environ.get("BAGOU_EXCHANGE", "bagou"),
    "FORWARD_EXCHANGE": os.environ.get("BAGOU_FORWARD_EXCHANGE",
                                       "bagou.events"),
    "WEBSOCKET_URL": os.environ.get("BAGOU_WEBSOCKET_URL",
                                    "ws://localhost:9000/websocket"),
    "QUEUE_NAME": "bagou",
    "AUTH": True,
    "DEFAULT_HANDLER_CLASS": "bagou.handler.WebSocketHandler",
    "CONCURRENCY": 3,
}
