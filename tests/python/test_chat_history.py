"""examples/chat with history (issue 10): a late joiner sees the room's
last messages, marked as earlier ones, once, above what comes after its
join; without [history] the page is as before. Headless Chromium, the
real bagou-server, RabbitMQ and examples/app/app.py."""

import json
import os
import sys

import pytest

from bghelpers import forwarding
from cdp import CHROMIUM, Browser
from conftest import Runner
from support import REPO, run

LINES = ("Array.from(document.querySelectorAll('#log li'))"
         ".filter(li => !li.hidden)"
         ".map(li => li.dataset.kind + ': ' + li.textContent)")


@pytest.fixture
def chat(tmp_path, exchanges, amqp_server, rabbitmq):
    """Factory: chat(history) -> bagou-server serving examples/chat, with
    app.py answering its events."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("no %s: apt-get install chromium" % CHROMIUM)
    bx, ex = exchanges
    runners = []

    def start(history):
        sections = {"http": {"static_dir": os.path.join(REPO, "examples",
                                                        "chat")}}
        if history:
            sections["history"] = {"channels": "^room-",
                                   "stream": bx + ".history"}
        srv = amqp_server(config=forwarding(
            ex, "subscribe,unsubscribe,close", **sections), exchange=bx)
        app = Runner(str(tmp_path), {}, "app%d" % len(runners),
                     argv=[sys.executable, os.path.join(REPO, "examples",
                                                        "app", "app.py"),
                           "--url", rabbitmq.url, "--events-exchange", ex,
                           "--broadcast-exchange", bx]).start()
        runners.append(app)
        return srv

    yield start
    for r in runners:
        r.stop()


async def open_chat(browser, srv, name, room="lobby"):
    page = await browser.new_page()
    await page.goto("http://127.0.0.1:%d/static/index.html" % srv.port)
    await page.wait("document.getElementById('status').dataset.state "
                    "=== 'online'")
    await page.eval("""(() => {
        document.getElementById('name').value = %s;
        document.getElementById('room').value = %s;
        document.getElementById('join').click(); return true; })()"""
                    % (json.dumps(name), json.dumps(room)))
    await page.wait("Array.from(document.querySelectorAll('#log li.join'))"
                    ".some(li => li.textContent === 'You joined #%s')"
                    % room)
    await page.wait("!document.getElementById('join').disabled")
    return page


async def say(page, text):
    await page.eval("""(() => {
        document.getElementById('text').value = %s;
        document.getElementById('send').click(); return true; })()"""
                    % json.dumps(text))
    await page.wait("Array.from(document.querySelectorAll('#log li.mine'))"
                    ".some(li => li.textContent.endsWith(%s))"
                    % json.dumps(text))


# Without history the page is unchanged: js/e2e/browser.test.js checks
# its exact log lines against a server without [history]; the variant is
# kept for a run by hand (-k 'False').
@pytest.mark.parametrize("history", [True, pytest.param(
    False, marks=pytest.mark.skipif(
        not os.environ.get("CHAT_HISTORY_BOTH"),
        reason="covered by js/e2e; CHAT_HISTORY_BOTH=1 runs it"))])
def test_late_joiner_sees_earlier_messages(chat, history):
    srv = chat(history)

    async def scenario():
        browser = await Browser().start()
        try:
            alice = await open_chat(browser, srv, "Alice")
            for t in ("one", "two", "three"):
                await say(alice, t)
            bob = await open_chat(browser, srv, "Bob")
            await say(alice, "after")
            await bob.wait("Array.from(document.querySelectorAll("
                           "'#log li')).some(li => li.textContent === "
                           "'Alice after')")
            got = [x for x in await bob.eval(LINES)
                   if not x.startswith("info: You are ")]
            if history:
                assert got[:4] == ["info: Earlier in #lobby:",
                                   "chat earlier: Alice one",
                                   "chat earlier: Alice two",
                                   "chat earlier: Alice three"], got
                assert got[4] == "join: You joined #lobby", got
                rest = got[4:]
            else:
                rest = got
            assert "Earlier" not in " ".join(rest)
            assert rest[-1] == "chat: Alice after", got
            assert sum(1 for x in got if x.endswith("Alice one")) == \
                (1 if history else 0), got
        finally:
            await browser.close()

    run(scenario(), timeout=120)
