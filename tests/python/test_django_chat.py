"""examples/django_chat end to end: two users log in through Django in
headless Chromium and chat through the real bagou-server, RabbitMQ, the
example's handlers (manage.py bagou) and its view; the page is written
the django-bagou way ({% bagou_static %}, BagouWebSocket, msg.data)."""

import json
import os
import sys

import pytest

from bghelpers import forwarding
from cdp import CHROMIUM, Browser
from conftest import Runner
from support import REPO, free_port, run

EXAMPLE = os.path.join(REPO, "examples", "django_chat")


@pytest.fixture
def chat(tmp_path, rabbitmq, exchanges, amqp_server):
    """(server, Django URL): bagou-server with the example's forwarding,
    the example's runner and Django's development server."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("no %s: apt-get install chromium" % CHROMIUM)
    bx, ex = exchanges
    # As the example's bagou.ini: rooms keep history.
    srv = amqp_server(config=forwarding(ex, "open,close,subscribe,"
                                        "unsubscribe",
                                        history={"channels": "^room-"}),
                      exchange=bx)
    env = {"DJANGO_SETTINGS_MODULE": "chatsite.settings",
           "CHAT_DB": str(tmp_path / "chat.sqlite3"),
           "BAGOU_AMQP_URL": rabbitmq.url, "BAGOU_EXCHANGE": bx,
           "BAGOU_FORWARD_EXCHANGE": ex,
           "BAGOU_WEBSOCKET_URL": srv.ws_url()}
    manage = [sys.executable, os.path.join(EXAMPLE, "manage.py")]
    setup = Runner(str(tmp_path), env, "setup", cwd=EXAMPLE)
    for cmd in (["migrate", "--verbosity", "0"], ["demo_users"]):
        import subprocess
        res = subprocess.run(manage + cmd, env=setup.env, cwd=EXAMPLE,
                             capture_output=True, timeout=120)
        assert res.returncode == 0, res.stderr.decode()
    runner = Runner(str(tmp_path), env, "runner", cwd=EXAMPLE,
                    argv=manage + ["bagou"]).start()
    port = free_port()
    web = Runner(str(tmp_path), env, "web", cwd=EXAMPLE,
                 argv=manage + ["runserver", "--noreload",
                                "127.0.0.1:%d" % port],
                 ready="Quit the server").start()
    try:
        yield srv, "http://127.0.0.1:%d" % port
    finally:
        web.stop()
        code = runner.stop()
        print("---- runner\n%s\n---- web\n%s" % (runner.log(), web.log()))
        assert code == 0


async def login(browser, base, name):
    page = await browser.new_page()
    await page.goto(base + "/")
    await page.wait("document.getElementById('id_username') !== null")
    await page.eval("""(() => {
        document.getElementById('id_username').value = %s;
        document.getElementById('id_password').value = 'bagou-demo';
        document.getElementById('login').click(); return true; })()"""
                    % json.dumps(name))
    # Redirected to the lobby; the page authenticated its socket with
    # the session and joined its private channel and the room.
    await page.wait("document.body && "
                    "document.body.getAttribute('data-ready') === '1'")
    return page


def lines(page):
    return page.eval("Array.from(document.querySelectorAll('#log div'))"
                     ".map(d => d.className + '|' + d.textContent)")


async def wait_line(page, text, timeout=15.0):
    await page.wait("Array.from(document.querySelectorAll('#log div'))"
                    ".some(d => d.className + '|' + d.textContent === %s)"
                    % json.dumps(text), timeout=timeout)


async def say(page, text, button="send"):
    await page.eval("""(() => {
        document.getElementById('text').value = %s;
        document.getElementById(%s).click(); return true; })()"""
                    % (json.dumps(text), json.dumps(button)))


def test_two_users_chat(chat):
    srv, base = chat

    async def scenario():
        browser = await Browser().start()
        try:
            alice = await login(browser, base, "alice")
            bob = await login(browser, base, "bob")
            # @on_subscribe: alice sees bob join (bob sees himself too).
            await wait_line(alice, "notice|bob joined")
            # Over the socket (on_message handler), both see it.
            await say(alice, "hello bob")
            for page in (alice, bob):
                await wait_line(page, "msg|alice: hello bob")
            # Over HTTP (the view saves, then broadcasts).
            await say(bob, "hi alice, from the form", button="post")
            for page in (alice, bob):
                await wait_line(page, "msg|bob: hi alice, from the form")
            # A mention reaches bob's private channel only.
            await say(alice, "@bob look")
            await wait_line(bob, "mention|@alice in #lobby: @bob look")
            await wait_line(alice, "msg|alice: @bob look")
            await say(alice, "sentinel")
            await wait_line(alice, "msg|alice: sentinel")
            assert not any(x.startswith("mention|")
                           for x in await lines(alice))
            # The messages were saved: a reload shows them as history.
            await bob.goto(base + "/rooms/lobby/")
            await bob.wait("document.body.getAttribute('data-ready')")
            await wait_line(bob, "msg|alice: hello bob")
            # @on_unsubscribe/on_close: bob leaves, alice sees it.
            await bob.call("Page.navigate", {"url": "about:blank"})
            await wait_line(alice, "notice|bob left")
        finally:
            await browser.close()

    run(scenario(), timeout=120)


def test_page_survives_a_server_restart(chat):
    """The rooms keep history (the example's bagou.ini): a line posted
    while bagou-server is down (SIGKILL) reaches both open pages once,
    after bagou.js reconnected and resumed the room by itself; the page's
    code is the django-bagou one, unchanged."""
    srv, base = chat
    post = ("fetch(POST_URL, {method: 'POST', body: new URLSearchParams("
            "{text: %s}), headers: {'X-CSRFToken': CSRF}, "
            "credentials: 'same-origin'}).then(r => r.status)")

    async def scenario():
        browser = await Browser().start()
        try:
            alice = await login(browser, base, "alice")
            bob = await login(browser, base, "bob")
            await say(alice, "before the restart")
            for page in (alice, bob):
                await wait_line(page, "msg|alice: before the restart")
            srv.signal(9)
            srv.wait_exit(10)
            # Saved and broadcast by the view while no node runs: the
            # stream keeps it.
            assert await bob.eval(post % json.dumps("while down")) == 200
            srv.start(port=srv.port)  # where the pages reconnect
            srv.wait_amqp("connected", timeout=15.0)
            for page in (alice, bob):
                await wait_line(page, "msg|bob: while down", timeout=40)
                await page.wait("document.body.getAttribute('data-ready')"
                                " === '1'", timeout=30)
            # Live again after the resume; then each line once.
            await say(alice, "after the restart")
            for page in (alice, bob):
                await wait_line(page, "msg|alice: after the restart")
                got = await lines(page)
                for text in ("msg|alice: before the restart",
                             "msg|bob: while down",
                             "msg|alice: after the restart"):
                    assert got.count(text) == 1, (text, got)
        finally:
            await browser.close()

    run(scenario(), timeout=150)


def test_run_sh(tmp_path, rabbitmq):
    """examples/django_chat/run.sh, the example's one command: it
    migrates, creates the demo users, starts the runner and Django, and
    stops both on SIGINT."""
    import signal
    import subprocess
    import urllib.request
    port = free_port()
    env = dict(os.environ, CHAT_DB=str(tmp_path / "chat.sqlite3"),
               CHAT_ADDR="127.0.0.1:%d" % port, PYTHON=sys.executable,
               BAGOU_AMQP_URL=rabbitmq.url, BAGOU_EXCHANGE="run-sh-bx",
               BAGOU_FORWARD_EXCHANGE="run-sh-ex")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([os.path.join(EXAMPLE, "run.sh")], env=env,
                                stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        from support import wait_for

        def up():
            assert proc.poll() is None, log.read_text()
            text = log.read_text()
            return "Quit the server" in text and " consuming " in text
        wait_for(up, timeout=60, what="run.sh serving")
        with urllib.request.urlopen("http://127.0.0.1:%d/login/" % port,
                                    timeout=10) as r:
            assert r.status == 200
            assert b"alice and bob" in r.read()
        assert "user alice, password bagou-demo" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    text = log.read_text()
    assert "bagou.worker INFO stopped" in text, text
