"""Fixtures of the Python package tests: the integration tests' private
RabbitMQ and bagou-server (tests/integration), a Django project written
the django-bagou way (djproject/), and its handler runner
(`python -m django bagou`) as a subprocess.

Run (make test-python does it, with the installed package and each
Django): BAGOU_BIN=build/bagou-server build/venv/bin/python -m pytest
tests/python"""

import importlib.util
import os
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
IT = os.path.join(os.path.dirname(HERE), "integration")
sys.path.insert(0, IT)
sys.path.insert(0, HERE)

from rabbitmq import amqp_server, publisher, unique_exchange  # noqa: E402,F401
from support import wait_for  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "bagou_integration_conftest", os.path.join(IT, "conftest.py"))
_it = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_it)
rabbitmq = _it.rabbitmq
server = _it.server
pytest_runtest_makereport = _it.pytest_runtest_makereport

RUNNER_START_TIMEOUT = 30.0
RUNNER_STOP_TIMEOUT = 15.0


# ---------------------------------------------------------------- Django

@pytest.fixture(scope="session")
def django_env(tmp_path_factory, rabbitmq):
    """The environment of every Django process of the session (this one
    and the runners): settings, one sqlite file, the broker. Django is
    set up here too, the database migrated."""
    d = str(tmp_path_factory.mktemp("django"))
    env = {
        "DJANGO_SETTINGS_MODULE": "djproject.settings",
        "BAGOU_TEST_DIR": d,
        "BAGOU_AMQP_URL": rabbitmq.url,
    }
    os.environ.update(env)
    import django
    from django.core.management import call_command
    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    return env


class Runner:
    """`python -m django bagou` (the runner of manage.py) as a
    subprocess, with the test project's events.py."""

    def __init__(self, tmpdir, env, name, argv=None, cwd=HERE,
                 ready=" consuming "):
        self.env = dict(os.environ)
        self.env.update(env)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.log_path = os.path.join(tmpdir, name + ".log")
        self.argv = argv or [sys.executable, "-m", "django", "bagou",
                             "--log-level", "debug"]
        self.cwd = cwd
        self.ready = ready
        self.proc = None
        self._log = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd)
        self.wait_consuming(1)
        return self

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_consuming(self, n, timeout=RUNNER_START_TIMEOUT):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("the runner exited with %s:\n%s"
                                     % (self.proc.returncode, self.log()))
            return self.log().count(self.ready) >= n
        wait_for(ready, timeout=timeout, what="%r in the log" % self.ready)

    def stop(self):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=RUNNER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


@pytest.fixture(scope="module")
def exchanges():
    """(broadcast exchange, forward exchange) of one test module."""
    return unique_exchange("bagou-py"), unique_exchange("bagou-py-events")


@pytest.fixture(scope="module")
def runner(tmp_path_factory, django_env, exchanges):
    """The Django handler runner of the module, on its exchanges. It
    must stop cleanly (exit 0) on SIGTERM; its log is printed."""
    bx, ex = exchanges
    env = dict(django_env, BAGOU_EXCHANGE=bx, BAGOU_FORWARD_EXCHANGE=ex)
    r = Runner(str(tmp_path_factory.mktemp("runner")), env, "runner")
    try:
        r.start()
        yield r
    finally:
        code = r.stop()
        print("---- runner log\n%s" % r.log())
    assert code == 0, "the runner did not stop cleanly: %r" % code
