"""Configuration forms with a real server (issue 11 item 6): environment
overrides BAGOU_<SECTION>_<KEY> between the ini and the command line,
wildcard origins at the upgrade (403 when not matched), list keys over
indented lines and repeated keys (five 47-byte origins), and
--check-config on the shipped etc/bagou.ini and on bad input."""

import os
import subprocess

import pytest
import websockets

from support import (HOST, Server, request, run, server_binary,
                     stop_servers, wait_for, ws_connect)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

# Five origins of 47 bytes each: more than one ini line holds.
LONG = ["https://%s.example.org" % (c * 27) for c in "abcde"]


def clean_env(**extra):
    """os.environ without any BAGOU_ variable but BAGOU_BIN, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BAGOU_") or k == "BAGOU_BIN"}
    env.update(extra)
    return env


def check_config(path, env=None):
    p = subprocess.run([server_binary(), "--config", path,
                        "--check-config"], capture_output=True, text=True,
                       timeout=10, env=env if env is not None
                       else clean_env(), stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


async def accepted(srv, origin):
    ws, _ = await ws_connect(srv, origin=origin)
    assert await request(ws, "ping") == {"event": "pong"}
    await ws.close()


async def refused_403(srv, origin):
    with pytest.raises(websockets.exceptions.InvalidStatusCode) as exc:
        ws, _ = await ws_connect(srv, origin=origin)
        await ws.close()
    assert exc.value.status_code == 403, origin


class EnvListenServer(Server):
    """A Server without --listen: its port comes from BAGOU_SERVER_LISTEN,
    set in this process's environment (restored by monkeypatch) just
    before the start."""

    def argv(self):
        argv = super().argv()
        i = argv.index("--listen")
        del argv[i:i + 2]
        os.environ["BAGOU_SERVER_LISTEN"] = "%s:%d" % (HOST, self.port)
        return argv


@pytest.fixture
def env_server(request, tmp_path, monkeypatch):
    """Factory like `server`, environment-listening; always stopped."""
    started = []
    request.node.bagou_servers = started
    # Recorded by monkeypatch, so that the value argv() sets is undone
    # (delenv of an unset variable records nothing).
    monkeypatch.setenv("BAGOU_SERVER_LISTEN", "127.0.0.1:1")

    def start(config):
        srv = EnvListenServer(str(tmp_path), config=config,
                              name="env%d" % len(started))
        started.append(srv)
        return srv.start()

    yield start
    stop_servers(started)


def test_env_overrides_listen_and_origins(env_server, monkeypatch):
    """BAGOU_SERVER_LISTEN and BAGOU_SERVER_ORIGINS beat the ini's listen
    and origins; variables of other tools are ignored."""
    monkeypatch.setenv("BAGOU_SERVER_ORIGINS", "https://*.env.example")
    monkeypatch.setenv("BAGOU_START_TIMEOUT", "10")
    monkeypatch.setenv("BAGOU_HTTP_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("BAGOU_EXCHANGE", "not-a-server-key")
    srv = env_server({"server": {"listen": "127.0.0.1:1",
                                 "origins": "https://ini.example"}})
    # It listens where the environment said (the fixture found /health
    # there); the ini's port 1 was never bound.
    # The start-up line may come just after /health first answers.
    wait_for(lambda: "listening on 127.0.0.1:%d" % srv.port in srv.log(),
             what="the start-up line")

    async def scenario():
        await accepted(srv, "https://a.env.example")
        await refused_403(srv, "https://ini.example")

    run(scenario())


def test_command_line_beats_environment(server, monkeypatch):
    monkeypatch.setenv("BAGOU_SERVER_WORKERS", "3")
    monkeypatch.setenv("BAGOU_LOG_LEVEL", "error")
    srv = server({"server": {"workers": "1"}}, workers=2)
    # --workers 2 and --log-level info (the fixture's) win over the
    # environment, which won over the ini's workers = 1.
    wait_for(lambda: "listening on" in srv.log(), what="the start-up line")
    assert "(2 workers" in srv.log()


def test_wildcard_origins_at_upgrade(server):
    srv = server("[server]\n"
                 "origins = https://exact.example,\n"
                 "    https://*.example.com\n"
                 "    http://*.local.example:8080\n")

    async def scenario():
        for origin in ("https://a.example.com", "https://a.b.example.com",
                       "HTTPS://A.Example.Com", "https://exact.example",
                       "http://x.local.example:8080"):
            await accepted(srv, origin)
        for origin in ("https://example.com", "https://example.com.evil.com",
                       "https://evilexample.com", "http://a.example.com",
                       "https://a.example.com:8443", "https://.example.com",
                       "http://x.local.example", "null"):
            await refused_403(srv, origin)

    run(scenario())
    assert srv.health()["connections"] == 0


@pytest.mark.parametrize("form", ["continued", "repeated"])
def test_long_origins_list(server, form):
    if form == "continued":
        ini = "[server]\norigins =\n" + "".join(
            "  %s,\n" % o for o in LONG)
    else:
        ini = "[server]\n" + "".join("origins = %s\n" % o for o in LONG)
    assert all(len(o) == 47 for o in LONG)
    srv = server(ini)

    async def scenario():
        for origin in LONG:
            await accepted(srv, origin)
        await refused_403(srv, "https://%s.example.org" % ("f" * 27))

    run(scenario())


def test_check_config_shipped_ini():
    code, out, err = check_config(os.path.join(ROOT, "etc", "bagou.ini"))
    assert (code, err) == (0, "")
    assert out.strip().endswith("bagou.ini: ok")
    # Other tools' BAGOU_ variables change nothing.
    code, _, err = check_config(
        os.path.join(ROOT, "etc", "bagou.ini"),
        clean_env(BAGOU_START_TIMEOUT="5", BAGOU_HTTP_URL="http://x",
                  BAGOU_CHANNEL="c", BAGOU_AUTH="true"))
    assert (code, err) == (0, "")


@pytest.mark.parametrize("text,line,msg", [
    ("[server]\nworkers = 2\nping_interval = -1\n", 3,
     "[server] ping_interval: expected an integer from 0 to 3600, got '-1'"),
    ("[server]\norigins = https://a.example\n  https://*\n", 3,
     "[server] origins: 'https://*': a '*' may only stand for whole labels "
     "at the start of the host, as in https://*.example.com"),
    ("[server]\norigins = https://*foo.example.com\n", 2,
     "[server] origins: 'https://*foo.example.com': a '*' may only stand "
     "for whole labels at the start of the host, as in "
     "https://*.example.com"),
    ("[server]\norigins = https://a.example/\n", 2,
     "[server] origins: 'https://a.example/': expected null or "
     "SCHEME://HOST[:PORT], with no path, as in https://example.com"),
    ("[server]\norigins = https://a.example\n  workers = 2\n", 3,
     "[server] origins: 'workers': expected null or SCHEME://HOST[:PORT], "
     "with no path, as in https://example.com"),
    ("[server]\npath = /a\n  /b\n", 3,
     "indented line: only list keys (origins, lifecycle) may go on over "
     "indented lines"),
    ("[server]\npath = /a\npath = /b\n", 3,
     "duplicate key 'path' in [server] (first set on line 2)"),
    ("[server]\norigins = " + ",".join(LONG) + "\n", 2,
     "line longer than 198 bytes (a list may go on over indented lines)"),
])
def test_check_config_bad_value(tmp_path, text, line, msg):
    path = str(tmp_path / "bad.ini")
    with open(path, "w") as f:
        f.write(text)
    code, out, err = check_config(path)
    assert code == 2
    assert out == ""
    assert err.strip() == "bagou-server: %s:%d: %s" % (path, line, msg)


def test_check_config_unknown_env_key(tmp_path):
    path = str(tmp_path / "ok.ini")
    with open(path, "w") as f:
        f.write("[server]\nworkers = 1\n")
    code, _, err = check_config(path, clean_env(BAGOU_SERVER_LISTN="*:1"))
    assert code == 2
    assert err.strip() == ("bagou-server: environment BAGOU_SERVER_LISTN: "
                           "unknown key 'LISTN' in [server]")
    code, out, err = check_config(path, clean_env(BAGOU_LIMITS_RATE="5"))
    assert (code, err) == (0, "")


def test_check_config_static_dir(tmp_path):
    """A static_dir the start would refuse fails --check-config too."""
    path = str(tmp_path / "static.ini")
    with open(path, "w") as f:
        f.write("[http]\nstatic_dir = %s\n" % (tmp_path / "missing"))
    code, _, err = check_config(path)
    assert code == 2
    assert err.strip() == ("bagou-server: [http] static_dir '%s': No such "
                           "file or directory" % (tmp_path / "missing"))
    with open(path, "w") as f:
        f.write("[http]\nstatic_dir = %s\n" % tmp_path)
    assert check_config(path)[0] == 0
