"""The command line: --version, --help, bad flags, --check-config."""

import os
import re
import socket
import time
import subprocess

import pytest

from support import HOST, REPO, free_port, server_binary

TIMEOUT = 10


def run_bin(*args, timeout=TIMEOUT):
    binary = server_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail("no server binary at %s (set BAGOU_BIN)" % binary)
    return subprocess.run([binary] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def write(tmp_path, text, name="bagou.ini"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_version():
    p = run_bin("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "bagou-server 0.1.0"


def test_help():
    p = run_bin("--help")
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    assert "usage" in out.lower()
    for flag in ("--config", "--listen", "--workers", "--amqp-url",
                 "--log-level", "--check-config", "--api-listen"):
        assert flag in out, flag


@pytest.mark.parametrize("args", [
    ["--bogus"],
    ["--workers"],
    ["--config"],
    ["stray-argument"],
], ids=["unknown_flag", "workers_no_value", "config_no_value",
        "positional"])
def test_bad_flags_exit_2_with_usage(args):
    p = run_bin(*args)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "usage" in p.stderr.lower(), p.stderr


@pytest.mark.parametrize("args,flag", [
    (["--workers", "abc"], "--workers"),
    (["--workers", "-1"], "--workers"),
    (["--log-level", "loud"], "--log-level"),
    (["--listen", "nowhere"], "--listen"),
], ids=["workers_not_a_number", "workers_negative", "bad_log_level",
        "bad_listen"])
def test_bad_flag_value_exit_2(args, flag):
    """A bad value: exit 2 with a message naming the flag (or usage)."""
    p = run_bin(*args)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert flag in p.stderr or "usage" in p.stderr.lower(), p.stderr


GOOD_INI = """\
; every key the tests rely on
[server]
path = /websocket
ping_interval = 30

[limits]
max_message_size = 65536
max_subscriptions = 1000
max_store_bytes = 4096
max_queued_bytes = 1048576

[channels]
client_publish = subscribed

[http]
api_key = abc
"""


def test_check_config_good(tmp_path):
    path = write(tmp_path, GOOD_INI)
    p = run_bin("--config", path, "--check-config")
    assert p.returncode == 0, p.stderr


def test_check_config_empty_file(tmp_path):
    path = write(tmp_path, "")
    p = run_bin("--config", path, "--check-config")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("value", ["none", "subscribed", "all"])
def test_check_config_client_publish_values(tmp_path, value):
    path = write(tmp_path, "[channels]\nclient_publish = %s\n" % value)
    p = run_bin("--config", path, "--check-config")
    assert p.returncode == 0, p.stderr


def test_check_config_shipped_example():
    path = os.path.join(REPO, "etc", "bagou.ini")
    if not os.path.exists(path):
        pytest.skip("etc/bagou.ini not written yet")
    p = run_bin("--config", path, "--check-config")
    assert p.returncode == 0, p.stderr


BAD_INIS = [
    # (id, text, line of the error or None when any line will do)
    ("unknown_key", "[limits]\nmax_message_size = 1024\nbogus_key = 1\n", 3),
    ("unknown_key_server", "\n[server]\npathh = /x\n", 3),
    ("bad_number", "[limits]\n\nmax_message_size = abc\n", 3),
    ("negative_number", "[limits]\nmax_subscriptions = -5\n", 2),
    ("bad_enum", "[channels]\nclient_publish = sometimes\n", 2),
    ("queue_below_message", "[limits]\nmax_message_size = 65536\n"
                            "max_queued_bytes = 1024\n", None),
    ("unknown_section", "[nonsense]\nx = 1\n", 1),
]


@pytest.mark.parametrize("text,line", [(t, n) for _, t, n in BAD_INIS],
                         ids=[i for i, _, _ in BAD_INIS])
def test_check_config_bad(tmp_path, text, line):
    path = write(tmp_path, text)
    p = run_bin("--config", path, "--check-config")
    assert p.returncode == 2, (p.returncode, p.stderr)
    if line is None:
        # A rule across keys may not have one line, but names the file.
        want = re.escape(path) + r":(\d+: )?"
    else:
        want = re.escape(path) + ":%d: \\S" % line
    assert re.search(want, p.stderr), \
        "stderr should match %r:\n%s" % (want, p.stderr)


def test_check_config_missing_file(tmp_path):
    p = run_bin("--config", str(tmp_path / "absent.ini"), "--check-config")
    assert p.returncode != 0
    assert "absent.ini" in p.stderr


def test_start_with_bad_config_exits_2(tmp_path):
    path = write(tmp_path, "[limits]\nbogus_key = 1\n")
    p = run_bin("--config", path, "--listen", "%s:%d" % (HOST, free_port()),
                "--workers", "1", "--amqp-url", "none")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert path + ":2:" in p.stderr


def test_listen_port_in_use_fails_fast(tmp_path):
    path = write(tmp_path, "")
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(1)
        port = s.getsockname()[1]
        t0 = time.monotonic()
        p = run_bin("--config", path, "--listen", "%s:%d" % (HOST, port),
                    "--workers", "1", "--amqp-url", "none", timeout=10)
        took = time.monotonic() - t0
    # README: exit code 1 is a start-up failure such as a taken port.
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert str(port) in p.stderr, p.stderr
    # Fast: no retry loop, no waiting for a timeout.
    assert took < 3.0, took


def test_missing_static_dir_exits_2(tmp_path):
    path = write(tmp_path, "[http]\nstatic_dir = %s\n" % (tmp_path / "nope"))
    p = run_bin("--config", path, "--listen", "%s:%d" % (HOST, free_port()),
                "--workers", "1", "--amqp-url", "none")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "static_dir" in p.stderr and "No such file" in p.stderr
