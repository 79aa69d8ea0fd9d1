"""The fixtures' own promise: a server that crashed, was killed, exited
with another status or logged a sanitizer report fails the test that
owned it (support.Server.ended_problems, support.stop_servers)."""

import signal

import pytest

from support import Server, stop_servers, wait_for


def started(tmp_path, name):
    srv = Server(str(tmp_path), name=name)
    return srv.start()


def test_clean_sigterm_is_no_problem(tmp_path):
    srv = started(tmp_path, "clean")
    assert srv.ended_problems() == []
    assert srv.returncode == 0
    stop_servers([srv])            # nothing raised


def test_killed_server_is_reported(tmp_path):
    srv = started(tmp_path, "killed")
    srv.signal(signal.SIGKILL)
    wait_for(lambda: not srv.alive(), what="the server gone")
    problems = srv.ended_problems()
    assert problems and "killed by signal 9" in problems[0], problems
    with pytest.raises(AssertionError, match="did not end cleanly"):
        stop_servers([srv])


def test_sanitizer_report_in_log_is_reported(tmp_path):
    srv = started(tmp_path, "reported")
    srv.stop()
    with open(srv.log_path, "a") as f:
        f.write("==1==ERROR: AddressSanitizer: heap-use-after-free on "
                "address 0x1\n")
    problems = srv.ended_problems()
    assert any("sanitizer report" in p for p in problems), problems


def test_expected_exit_can_be_declared(tmp_path):
    srv = started(tmp_path, "declared")
    srv.signal(signal.SIGKILL)
    wait_for(lambda: not srv.alive(), what="the server gone")
    srv.expected_exit = (-signal.SIGKILL,)
    assert srv.ended_problems() == []


def test_broker_starts_again_when_its_dist_port_was_taken(tmp_path,
                                                          monkeypatch):
    """A port chosen free may be bound by anyone before the broker binds
    it (CI once lost the serial pass this way: "could not bind to
    distribution port"); the broker then starts on new ports."""
    import socket

    import rabbitmq
    from support import HOST, free_port

    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((HOST, 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    pairs = []
    real_pair = rabbitmq._port_pair

    def first_pair_collides():
        pair = (free_port(), taken) if not pairs else real_pair()
        pairs.append(pair)
        return pair

    monkeypatch.setattr(rabbitmq, "_port_pair", first_pair_collides)
    broker = rabbitmq.RabbitMQ(base_dir=str(tmp_path))
    try:
        broker.start()
        assert len(pairs) == 2, pairs
        assert broker.dist_port != taken
        assert broker.try_login()
    finally:
        broker.stop()
        holder.close()
