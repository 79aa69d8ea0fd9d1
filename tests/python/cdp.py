"""Headless Chromium (Debian's /usr/bin/chromium) driven through the
DevTools protocol over its WebSocket, with python3-websockets: enough to
open pages in separate browser contexts (separate cookies), run
JavaScript in them and wait for what they show. Everything is bounded;
close() kills the browser."""

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time

import websockets

CHROMIUM = os.environ.get("BAGOU_CHROMIUM", "/usr/bin/chromium")
START_TIMEOUT = 30.0
CALL_TIMEOUT = 20.0


class BrowserError(Exception):
    pass


class Browser:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bagou-chromium-")
        self.proc = None
        self.ws = None
        self.ids = itertools.count(1)
        self.waiting = {}
        self.reader = None
        self.console = []

    async def start(self):
        log = open(os.path.join(self.dir, "chromium.log"), "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking",
             "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0",
             "--user-data-dir=" + os.path.join(self.dir, "profile"),
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        port_file = os.path.join(self.dir, "profile", "DevToolsActivePort")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise BrowserError("chromium exited with %s: %s"
                                   % (self.proc.returncode, self.log()))
            try:
                with open(port_file) as f:
                    port, path = f.read().split("\n")[:2]
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise BrowserError("chromium did not start: %s"
                                       % self.log())
                await asyncio.sleep(0.1)
        self.ws = await websockets.connect(
            "ws://127.0.0.1:%s%s" % (port.strip(), path.strip()),
            max_size=None, ping_interval=None)
        self.reader = asyncio.ensure_future(self._read())
        return self

    def log(self):
        try:
            with open(os.path.join(self.dir, "chromium.log"), "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""

    async def _read(self):
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                fut = self.waiting.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                elif msg.get("method") == "Runtime.consoleAPICalled":
                    args = msg["params"].get("args", [])
                    self.console.append(" ".join(
                        str(a.get("value", a.get("description", "")))
                        for a in args))
                elif msg.get("method") == "Runtime.exceptionThrown":
                    self.console.append(json.dumps(msg["params"])[:500])
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(BrowserError("browser connection "
                                                   "closed"))

    async def call(self, method, params=None, session=None):
        i = next(self.ids)
        msg = {"id": i, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        fut = asyncio.get_running_loop().create_future()
        self.waiting[i] = fut
        await self.ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(fut, CALL_TIMEOUT)
        if "error" in reply:
            raise BrowserError("%s: %s" % (method, reply["error"]))
        return reply.get("result", {})

    async def new_page(self):
        """A page in a browser context of its own (own cookies)."""
        ctx = (await self.call("Target.createBrowserContext"))[
            "browserContextId"]
        target = (await self.call("Target.createTarget", {
            "url": "about:blank", "browserContextId": ctx}))["targetId"]
        session = (await self.call("Target.attachToTarget", {
            "targetId": target, "flatten": True}))["sessionId"]
        page = Page(self, session)
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        return page

    async def close(self):
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Page:
    def __init__(self, browser, session):
        self.browser = browser
        self.session = session

    async def call(self, method, params=None):
        return await self.browser.call(method, params, self.session)

    async def eval(self, expression):
        """The JSON value of expression (a thrown error raises)."""
        r = await self.call("Runtime.evaluate", {
            "expression": expression, "returnByValue": True,
            "awaitPromise": True})
        if "exceptionDetails" in r:
            raise BrowserError("%s: %s" % (expression[:80],
                                           r["exceptionDetails"]))
        return r["result"].get("value")

    async def goto(self, url):
        await self.call("Page.navigate", {"url": url})
        await self.wait("document.readyState === 'complete' && "
                        "location.href !== 'about:blank'")

    async def wait(self, expression, timeout=15.0):
        """Until expression is truthy in the page."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = await self.eval(expression)
                if last:
                    return last
            except BrowserError as e:  # between two documents
                last = e
            await asyncio.sleep(0.05)
        raise BrowserError("not true within %.0f s: %s (last: %r); "
                           "console: %s" % (timeout, expression, last,
                                            self.browser.console[-10:]))
