"""Fixtures: a factory that starts real bagou-server processes and always
stops them, and a hook that appends their logs to a failing test's report.

Run: BAGOU_BIN=build/bagou-server /usr/bin/python3 -m pytest tests/integration
"""

import os

import pytest

from support import Server, stop_servers


@pytest.fixture
def server(request, tmp_path):
    """Factory: server(config=None, workers=2, extra_args=(),
    api_listen=None) → a started Server (its API listener on a free port
    unless api_listen says otherwise, see support.Server). config is {section: {key: value}} or ini text. Every server
    started is stopped (SIGTERM, SIGKILL after 5 s) when the test ends."""
    started = []
    request.node.bagou_servers = started

    def start(config=None, workers=2, extra_args=(), api_listen=None):
        srv = Server(str(tmp_path), config=config, workers=workers,
                     extra_args=extra_args, name="bagou%d" % len(started),
                     api_listen=api_listen)
        started.append(srv)
        srv.start()
        return srv

    yield start
    stop_servers(started)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for i, srv in enumerate(getattr(item, "bagou_servers", [])):
        text = srv.log()
        if len(text) > 20000:
            text = "[... %d bytes cut ...]\n" % (len(text) - 20000) \
                + text[-20000:]
        state = ("running" if srv.alive()
                 else "exit status %s" % srv.proc.returncode
                 if srv.proc is not None else "not started")
        report.sections.append(
            ("bagou-server %d log (%s, port %s)" % (i, state, srv.port),
             text or "(empty)"))


@pytest.fixture(scope="session")
def rabbitmq():
    """A private RabbitMQ broker for the whole session (rabbitmq.py): on
    127.0.0.1, free AMQP and distribution ports, its own node name, data
    and logs in a fresh directory under build/rabbitmq/ (removed at the
    end). Exposes .url, .port, .node,
    .stop_app(), .start_app(), .rabbitmqctl(*args), .log(). Always
    stopped at the end of the session."""
    from rabbitmq import RabbitMQ
    broker = RabbitMQ(base_dir=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "build",
        "rabbitmq"))
    try:
        broker.start()
    except Exception as e:
        broker.stop()
        pytest.fail("RabbitMQ did not start: %s" % e, pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()
