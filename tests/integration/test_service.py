"""Issue 11 item 3, a service an operator trusts: `make install`, the man
page, the systemd unit (its systemd-analyze exposure), the sd_notify
messages a Type=notify service owes systemd (READY, RELOADING, STOPPING,
WATCHDOG), secrets from credential files, paths relative to the ini's
folder, and the start-up log naming the config file."""

import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import jwt
import pytest

from support import (REPO, START_TIMEOUT, free_port, http_get, request,
                     run, server_binary, wait_for, ws_connect)

UNIT = os.path.join(REPO, "etc", "bagou.service")


def make_install(destdir, *args):
    env = dict(os.environ)
    # The outer make (make test) may pass its own flags down; the install
    # under test is a plain one.
    env.pop("MAKEFLAGS", None)
    env.pop("MAKELEVEL", None)
    return subprocess.run(
        ["make", "-s", "-C", REPO, "install", "DESTDIR=%s" % destdir]
        + list(args), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, timeout=300, text=True)


# ---------------------------------------------------------------- install

def test_make_install_tree(tmp_path):
    dest = tmp_path / "root"
    p = make_install(dest, "PREFIX=/usr")
    assert p.returncode == 0, p.stdout
    files = sorted(str(f.relative_to(dest)) for f in dest.rglob("*")
                   if f.is_file())
    assert files == [
        "etc/bagou/bagou.ini",
        "usr/bin/bagou-broadcast",
        "usr/bin/bagou-server",
        "usr/lib/systemd/system/bagou.service",
        "usr/share/bagou/bagou.ini.example",
        "usr/share/bagou/bagou.js",
        "usr/share/bagou/bagou.js.map",
        "usr/share/bagou/bagou.src.js",
        "usr/share/man/man8/bagou-server.8.gz",
    ], files
    for name in ("usr/bin/bagou-server", "usr/bin/bagou-broadcast"):
        assert os.stat(dest / name).st_mode & 0o777 == 0o755
    for name in ("etc/bagou/bagou.ini", "usr/share/bagou/bagou.js",
                 "usr/lib/systemd/system/bagou.service",
                 "usr/share/man/man8/bagou-server.8.gz"):
        assert os.stat(dest / name).st_mode & 0o777 == 0o644, name
    # bagou.js is what the server serves at /bagou.js: the minified
    # client, whose sourceMappingURL names bagou.js.map beside it.
    for inst, src in (("bagou.js", "dist/bagou.min.js"),
                      ("bagou.js.map", "dist/bagou.min.js.map"),
                      ("bagou.src.js", "bagou.js")):
        with open(os.path.join(REPO, "js", src), "rb") as f:
            assert (dest / "usr/share/bagou" / inst).read_bytes() == \
                f.read(), inst

    # The unit points at where this PREFIX put the binary.
    unit = (dest / "usr/lib/systemd/system/bagou.service").read_text()
    assert re.search(r"^ExecStart=/usr/bin/bagou-server --config "
                     r"/etc/bagou/bagou.ini$", unit, re.M), unit
    assert "/usr/local" not in unit

    # The installed binary runs and accepts the installed ini.
    bin_ = str(dest / "usr/bin/bagou-server")
    p = subprocess.run([bin_, "--version"], stdout=subprocess.PIPE,
                       text=True, timeout=10)
    assert p.returncode == 0 and p.stdout.startswith("bagou-server ")
    ini = str(dest / "etc/bagou/bagou.ini")
    p = subprocess.run([bin_, "--check-config", "--config", ini],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=10)
    assert p.returncode == 0, p.stdout

    # A second install keeps the operator's ini.
    with open(ini, "a") as f:
        f.write("; edited by the operator\n")
    p = make_install(dest, "PREFIX=/usr")
    assert p.returncode == 0, p.stdout
    assert "KEEP" in p.stdout
    assert open(ini).read().endswith("; edited by the operator\n")


def test_make_install_default_prefix(tmp_path):
    dest = tmp_path / "root"
    p = make_install(dest)
    assert p.returncode == 0, p.stdout
    assert (dest / "usr/local/bin/bagou-server").is_file()
    assert (dest / "usr/local/share/man/man8/bagou-server.8.gz").is_file()
    assert (dest / "usr/local/lib/systemd/system/bagou.service").is_file()
    assert (dest / "etc/bagou/bagou.ini").is_file()


def test_man_page_renders(tmp_path):
    dest = tmp_path / "root"
    p = make_install(dest, "PREFIX=/usr")
    assert p.returncode == 0, p.stdout
    page = dest / "usr/share/man/man8/bagou-server.8.gz"
    with gzip.open(page, "rt") as f:
        assert f.read().startswith(".\\\"")
    env = dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat",
               LC_ALL="C.UTF-8")
    p = subprocess.run(["man", "--warnings", "-l", str(page)], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr          # no groff warnings
    text = p.stdout
    assert text.startswith("BAGOU-SERVER(8)"), text[:200]
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS",
                    "SIGNALS", "EXIT STATUS", "ENVIRONMENT", "FILES"):
        assert re.search(r"^%s$" % heading, text, re.M), heading
    for word in ("--check-config", "--api-listen", "SIGHUP",
                 "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY", "api_key_file"):
        assert word in text, word


# ---------------------------------------------------------------- unit

def test_unit_file_settings():
    unit = open(UNIT).read()
    settings = {}
    for line in unit.splitlines():
        if line and line[0] not in "#;[" and "=" in line:
            k, v = line.split("=", 1)
            settings.setdefault(k, []).append(v)
    assert settings["Type"] == ["notify"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["WatchdogSec"] == ["30"]
    assert settings["Restart"] == ["on-failure"]
    # What main.c exits with on a bad configuration (checked below).
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert settings["ExecStart"] == [
        "/usr/local/bin/bagou-server --config /etc/bagou/bagou.ini"]


def test_config_error_exits_with_the_unit_s_no_restart_status(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[server]\nnope = 1\n")
    p = subprocess.run([server_binary(), "--config", str(ini)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=10)
    assert p.returncode == 2, p.stderr
    assert "RestartPreventExitStatus=2" in open(UNIT).read()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_unit_exposure_at_most_2():
    p = subprocess.run(["systemd-analyze", "security", "--offline=true",
                        "--no-pager", UNIT], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    m = re.search(r"Overall exposure level for bagou\.service: "
                  r"([0-9.]+)", p.stdout)
    assert m, p.stdout
    assert float(m.group(1)) <= 2.0, p.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_installed_unit_verifies(tmp_path):
    """systemd parses every line of the installed unit (an unknown or
    misspelt setting would only be warned about, then ignored)."""
    prefix = tmp_path / "prefix"
    p = make_install("", "PREFIX=%s" % prefix,
                     "SYSCONFDIR=%s" % (prefix / "etc"))
    assert p.returncode == 0, p.stdout
    unit = prefix / "lib/systemd/system/bagou.service"
    assert "ExecStart=%s/bin/bagou-server --config %s/etc/bagou/bagou.ini" \
        % (prefix, prefix) in unit.read_text()
    p = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(unit)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    assert p.returncode == 0, p.stdout
    for bad in ("Unknown key", "Failed to parse", "ignoring", "Invalid"):
        assert bad not in p.stdout, p.stdout


# ---------------------------------------------------------------- notify

class NotifySocket:
    """A datagram socket bound to an abstract name, as systemd's
    $NOTIFY_SOCKET is; .env is the '@name' form."""

    def __init__(self):
        self.name = "bagou-test-notify-%d-%d" % (os.getpid(),
                                                 time.monotonic_ns())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.env = "@" + self.name

    def expect(self, want, timeout=5.0, skip=("WATCHDOG=1",)):
        """The next message other than those in skip; asserts it
        matches the regex want, returns it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no %r within %.1f s" % (want, timeout)
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                raise AssertionError("no %r within %.1f s" % (want, timeout))
            if msg in skip:
                continue
            assert re.fullmatch(want, msg), (want, msg)
            return msg

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(monkeypatch):
    ns = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", ns.env)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield ns
    ns.close()


def test_notify_ready_reloading_stopping(server, notify):
    srv = server()
    notify.expect("READY=1", skip=())
    srv.signal(signal.SIGHUP)
    msg = notify.expect(r"RELOADING=1\nMONOTONIC_USEC=[0-9]+", skip=())
    usec = int(msg.split("=")[-1])
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < now - usec < 10_000_000, (now, usec)
    notify.expect("READY=1", skip=())
    assert http_get(srv.port, "/health")[0] == 200
    srv.signal(signal.SIGTERM)
    notify.expect("STOPPING=1", skip=())
    assert srv.wait_exit(10) == 0


def test_notify_watchdog(server, notify, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")    # pings every 0.1 s
    srv = server()
    notify.expect("READY=1")
    t0 = time.monotonic()
    for _ in range(10):
        notify.expect("WATCHDOG=1", timeout=2.0, skip=())
    # Ten pings at half the interval take 1 s; at the full interval
    # (what systemd would already count as late) they would take 2 s.
    assert time.monotonic() - t0 < 1.6
    srv.stop()
    notify.expect("STOPPING=1")


def test_notify_no_watchdog_without_watchdog_usec(server, notify):
    srv = server()
    notify.expect("READY=1", skip=())
    srv.signal(signal.SIGTERM)
    # Sentinel: STOPPING arrives, and nothing else came before it.
    notify.expect("STOPPING=1", skip=())
    assert srv.wait_exit(10) == 0


def test_notify_socket_nobody_listens_on_is_a_warning(server, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "@bagou-test-nobody-%d-%d"
                       % (os.getpid(), time.monotonic_ns()))
    srv = server()          # serves all the same
    wait_for(lambda: "cannot notify NOTIFY_SOCKET=@bagou-test-nobody-"
             in srv.log(), what="the warning")
    assert "Connection refused" in srv.log()


# ---------------------------------------------------------------- secrets

def test_api_key_from_credentials_directory(server, tmp_path, monkeypatch):
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "api-key").write_text("k3y-from-a-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    srv = server({"http": {"api_key_file": "api-key"}})
    body = b'{"event":"e","channel":"c","data":1}'
    status, _, _ = srv.post("/broadcast", body)
    assert status == 401
    status, _, _ = srv.post("/broadcast", body, headers={
        "Authorization": "Bearer wrong"})
    assert status == 403
    status, _, _ = srv.post("/broadcast", body, headers={
        "Authorization": "Bearer k3y-from-a-credential"})
    assert status == 202
    # The secret is not written to the log.
    assert "k3y-from-a-credential" not in srv.log()


def test_jwt_secret_file_next_to_the_ini(server, tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    # Server's ini is tmp_path/bagou0.ini: a relative name is looked up
    # in that folder, whatever the working directory.
    (tmp_path / "jwt-secret").write_text("jwt-s3cret-from-a-file\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    srv = server({"auth": {"secret_file": "jwt-secret"}})

    def tok(secret):
        return jwt.encode({"sub": "alice", "exp": int(time.time()) + 60},
                          secret, algorithm="HS256")

    async def scenario():
        ws, _ = await ws_connect(srv)
        bad = await request(ws, "authenticate",
                            {"token": tok("not-the-secret")},
                            callback_id="1")
        assert bad["data"]["success"] is False, bad
        good = await request(ws, "authenticate",
                             {"token": tok("jwt-s3cret-from-a-file")},
                             callback_id="2")
        assert good == {"event": "callback", "callbackId": "2",
                        "data": {"success": True,
                                 "user": {"id": "alice"}}}, good
        await ws.close()

    run(scenario())


def run_start_failure(argv, timeout=10):
    return subprocess.run(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def test_missing_credential_file_is_a_start_up_error(tmp_path, monkeypatch):
    creds = tmp_path / "credentials"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    ini = tmp_path / "bagou.ini"
    ini.write_text("[auth]\nsecret_file = jwt-secret\n")
    p = run_start_failure([server_binary(), "--config", str(ini),
                           "--amqp-url", "none", "--listen",
                           "127.0.0.1:1"])
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == (
        "bagou-server: %s:2: [auth] secret_file: cannot read '%s': "
        "No such file or directory" % (ini, creds / "jwt-secret")), p.stderr


def test_secret_and_secret_file_together_is_an_error(tmp_path):
    (tmp_path / "s").write_text("x\n")
    ini = tmp_path / "bagou.ini"
    ini.write_text("[http]\napi_key_file = s\napi_key = y\n")
    p = run_start_failure([server_binary(), "--check-config", "--config",
                           str(ini)])
    assert p.returncode == 2, p.stderr
    assert "api_key and api_key_file: set one of them, not both" \
        in p.stderr, p.stderr
    (tmp_path / "empty").write_text("\n")
    ini.write_text("[http]\napi_key_file = empty\n")
    p = run_start_failure([server_binary(), "--check-config", "--config",
                           str(ini)])
    assert p.returncode == 2 and "on one line" in p.stderr, p.stderr
    (tmp_path / "dir").mkdir()
    ini.write_text("[http]\napi_key_file = dir\n")
    p = run_start_failure([server_binary(), "--check-config", "--config",
                           str(ini)])
    assert p.returncode == 2 and "Is a directory" in p.stderr, p.stderr


# ---------------------------------------------------------------- paths

def test_static_dir_relative_to_the_ini(server, tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_text("hello from the ini's folder\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)        # the server's working directory
    srv = server({"http": {"static_dir": "www"}})
    status, _, body = srv.get("/static/hello.txt")
    assert status == 200 and body == b"hello from the ini's folder\n"


def test_start_up_log_names_the_config_file(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    srv = server()
    # Given as an absolute path by the fixture; a relative one is made
    # absolute too (below).
    assert "info  config %s\n" % os.path.realpath(srv.config_path) \
        in srv.log(), srv.log()


def test_start_up_log_names_a_relative_config_absolutely(tmp_path):
    (tmp_path / "rel.ini").write_text("[log]\nlevel = info\n")
    log_path = tmp_path / "rel.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [server_binary(), "--config", "rel.ini", "--amqp-url", "none",
             "--listen", "127.0.0.1:%d" % free_port(), "--api-listen", "",
             "--workers", "1"],
            cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "listening on" in log_path.read_text(),
                 timeout=START_TIMEOUT, what="the listening line")
    finally:
        proc.terminate()
        rc = proc.wait(timeout=10)
    assert rc == 0, log_path.read_text()
    assert "info  config %s\n" % (tmp_path / "rel.ini") \
        in log_path.read_text()
