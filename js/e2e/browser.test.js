"use strict";
/*
 * End-to-end test in a real browser: headless Chromium (Debian's
 * /usr/bin/chromium, driven by playwright-core) loads pages that
 * bagou-server itself serves ([http] static_dir = examples/chat, under
 * /static/, and the client at /bagou.js), with a private RabbitMQ and the
 * example application (examples/app/app.py) answering forwarded events.
 *
 *   cd js && npm run e2e
 *
 * (a) a page subscribes to a channel, receives a broadcast published
 *     through RabbitMQ, survives a restart of the server (SIGTERM, then a
 *     new process on the same port) and receives a later broadcast; when
 *     the server has history ([history] channels = ^room-, tried first),
 *     the chat page shows a late joiner the room's last messages and a
 *     line published during the restart arrives once;
 * (b) the chat example: two people join the same room, see each other's
 *     join notices, talk both ways, one leaves and the other sees it.
 *     Screenshot: build/e2e/chat.png.
 * (c) a page written for the original Django Bagou (e2e/original/, served
 *     by a second bagou-server on the same broker and app,
 *     unchanged original-style code): whole-message events and callbacks,
 *     the sessionId login, a RabbitMQ broadcast, a chat relay, a reply
 *     without an event, the "bagou" sub-protocol.
 *
 * Needs /usr/bin/chromium, build/bagou-server, rabbitmq-server and
 * python3-pika. Missing any of them fails the test, unless
 * BAGOU_E2E_OPTIONAL=1: then it is skipped with the reason.
 */
const {describe, it, before, after} = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const S = require("./support.js");

const WAIT = 15000;          // one expected thing in the page
const RESTART_WAIT = 30000;  // the page's client back after the restart
const WATCHDOG = 420000;     // the whole file

const CONFIG = [
  "[amqp]",
  "exchange = bagou",
  "[forward]",
  "exchange = bagou.events",
  "lifecycle = subscribe,unsubscribe,close",
  "[http]",
  // Absolute: a relative static_dir is relative to the ini's folder,
  // which is a temporary one here.
  "static_dir = " + path.join(S.REPO, "examples", "chat"),
  "",
].join("\n");

const missing = S.missing();
if (missing.length) {
  const why = "browser e2e test: " + missing.join("; ");
  describe("browser end-to-end", function () {
    if (process.env.BAGOU_E2E_OPTIONAL === "1") {
      it("runs in Chromium", {skip: why + " (BAGOU_E2E_OPTIONAL=1)"},
         function () {});
    } else {
      // Fail loudly: the test is meant to run by default.
      it("has its prerequisites", function () {
        assert.fail(why + " (set BAGOU_E2E_OPTIONAL=1 to skip instead)");
      });
    }
  });
  return;
}

const env = {broker: null, app: null, server: null, browser: null,
             original: null, history: false};
const pageErrors = [];       // uncaught exceptions in any page
const consoleLines = [];     // console output of every page (diagnostics)
let stopping = null;

async function stopAll() {
  if (stopping) return stopping;
  stopping = (async function () {
    await S.closeBrowser(env.browser).catch(function () {});
    // How each server ended is checked (exit 0, no sanitizer report):
    // that failure is raised once everything else is stopped.
    let serverEnd = null;
    for (const srv of [env.server, env.original]) {
      if (!srv) continue;
      await srv.stop().catch(function (e) { serverEnd = serverEnd || e; });
      srv.cleanup();
    }
    if (env.app) await env.app.stop().catch(function () {});
    if (env.broker) await env.broker.stop().catch(function () {});
    if (serverEnd) throw serverEnd;
  })();
  return stopping;
}

// A hung step must not hang the run: past the watchdog everything is
// stopped and the process fails.
const watchdog = setTimeout(function () {
  console.error("browser e2e test: still running after " + WATCHDOG +
                " ms, giving up");
  stopAll().finally(function () { process.exit(1); });
}, WATCHDOG);
watchdog.unref();
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.once(sig, function () {
    stopAll().finally(function () { process.exit(130); });
  });
}

function diagnostics() {
  return [
    "---- bagou-server (last lines)", S.tail(env.server && env.server.log()),
    "---- second bagou-server (last lines)",
    S.tail(env.original && env.original.log()),
    "---- examples/app/app.py (last lines)", S.tail(env.app && env.app.log()),
    "---- page console (last lines)", S.tail(consoleLines.join("\n")),
    "---- page errors", pageErrors.join("\n") || "(none)",
  ].join("\n");
}

/** Runs body(); on failure saves screenshots of the given pages and adds
 *  the processes' logs to the error. */
async function withDiagnostics(name, pages, body) {
  try {
    await body();
  } catch (err) {
    fs.mkdirSync(S.OUT_DIR, {recursive: true});
    for (const [label, page] of Object.entries(pages)) {
      if (!page || page.isClosed()) continue;
      const file = path.join(S.OUT_DIR, "failed-" + name + "-" + label +
                             ".png");
      await page.screenshot({path: file, timeout: 5000}).catch(function () {});
      err.message += "\nscreenshot: " + file;
    }
    err.message += "\n" + diagnostics();
    throw err;
  }
}

/** A new page (its own browser context: its own cookies, like another
 *  person) on the chat example, served by bagou-server (server, default
 *  env.server) under /static/. */
async function openChat(label, server) {
  server = server || env.server;
  const context = await env.browser.newContext({
    viewport: {width: 860, height: 640},
  });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on("pageerror", function (err) {
    pageErrors.push(label + ": " + err.message);
  });
  page.on("console", function (msg) {
    consoleLines.push(label + " " + msg.type() + ": " + msg.text());
  });
  const loaded = {};
  page.on("response", function (res) {
    loaded[new URL(res.url()).pathname] = {
      status: res.status(), type: res.headers()["content-type"] || "",
      encoding: res.headers()["content-encoding"] || "",
      cache: res.headers()["cache-control"] || "",
    };
  });
  const res = await page.goto(server.origin + "/static/index.html",
                              {waitUntil: "load", timeout: WAIT});
  assert.equal(res.status(), 200, "GET /static/index.html");
  // The page, its script and stylesheet from /static/, the client from
  // /bagou.js, each with its content type.
  const want = {
    "/static/index.html": "text/html",
    "/static/chat.js": "javascript",
    "/static/style.css": "text/css",
    "/bagou.js": "javascript",
  };
  for (const [p, type] of Object.entries(want)) {
    assert.ok(loaded[p], p + " was not loaded");
    assert.equal(loaded[p].status, 200, p);
    assert.match(loaded[p].type, new RegExp(type), p + " content type");
  }
  // The browser got the minified client gzipped, to be revalidated.
  assert.equal(loaded["/bagou.js"].encoding, "gzip", "/bagou.js encoding");
  assert.equal(loaded["/bagou.js"].cache, "no-cache", "/bagou.js caching");
  // The stylesheet applied, the client connected.
  const bg = await page.$eval("header", function (h) {
    return getComputedStyle(h).backgroundColor;
  });
  assert.equal(bg, "rgb(47, 75, 124)", "style.css applied");
  await page.locator('#status[data-state="online"]').waitFor({timeout: WAIT});
  return page;
}

/** Waits until the page's log shows a line of kind with text. */
function sees(page, kind, text, ms) {
  return page.locator("#log li." + kind, {hasText: text}).first()
    .waitFor({state: "visible", timeout: ms || WAIT});
}

async function join(page, name, room) {
  const joined = page.locator("#log li.join",
                              {hasText: "You joined #" + room});
  // Rejoining a room: the log already has an earlier line like this one.
  const before = await joined.count();
  await page.fill("#name", name);
  await page.fill("#room", room);
  await page.click("#join");
  await joined.nth(before).waitFor({state: "visible", timeout: WAIT});
  await page.waitForFunction(function (title) {
    return document.getElementById("room-title").textContent === title;
  }, "#" + room, {timeout: WAIT});
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

function logLines(page) {
  return page.$$eval("#log li", function (lis) {
    return lis.map(function (li) {
      return li.dataset.kind + ": " + li.textContent;
    });
  });
}

describe("browser end-to-end", function () {
  before(async function () {
    fs.mkdirSync(S.OUT_DIR, {recursive: true});
    for (const f of fs.readdirSync(S.OUT_DIR)) {
      if (/^failed-.*\.png$/.test(f) || f === "chat.png") {
        fs.rmSync(path.join(S.OUT_DIR, f), {force: true});
      }
    }
    // Each one is in env before it starts, so that after() stops it
    // whatever happens.
    env.broker = new S.Broker();
    await env.broker.start();
    // The app first: it declares the bagou.events exchange the server
    // forwards to.
    env.app = new S.App(env.broker.url);
    await env.app.start();
    // History on the chat rooms when the server has it (PROTOCOL.md §9).
    env.server = new S.BagouServer(env.broker.url, CONFIG +
                                   "[history]\nchannels = ^room-\n");
    try {
      await env.server.start();
      env.history = true;
    } catch (err) {
      if (!/unknown section \[history\]/.test(err.message)) throw err;
      env.server.cleanup();
      env.server = new S.BagouServer(env.broker.url, CONFIG);
      await env.server.start();
    }
    env.browser = await S.launchBrowser();
  }, {timeout: 240000});

  after(async function () {
    await stopAll();
    clearTimeout(watchdog);
  }, {timeout: 120000});

  it("a page served from /static/ receives RabbitMQ broadcasts, before " +
     "and after a server restart", {timeout: 120000}, async function (t) {
    const pages = {};
    const chat = function (text) {
      return S.publish(env.broker.url, "room-hist", "chat",
                       {name: "Alice", text: text, from: "elsewhere"});
    };
    await withDiagnostics("restart", pages, async function () {
      const page = pages.probe = await openChat("probe");
      if (env.history) {
        // Said before Bob comes: the chat page shows them first.
        await chat("first line");
        await chat("second line");
        await join(page, "Bob", "hist");
        await sees(page, "chat.earlier", "second line");
        assert.deepEqual((await logLines(page)).slice(0, 5), [
          "info: You are Bob.",
          "info: Earlier in #hist:",
          "chat earlier: Alice first line",
          "chat earlier: Alice second line",
          "join: You joined #hist",
        ]);
      } else {
        t.diagnostic("the server has no [history]: the chat page's " +
                     "history part is not run");
      }
      // A client of the page's own, from the /bagou.js it loaded.
      await page.evaluate(async function () {
        window.got = [];
        const ws = new BagouWebSocket("ws://" + location.host + "/websocket");
        window.probe = ws;
        ws.onChannel("e2e-news", function (data, msg) {
          window.got.push({event: msg.event, channel: msg.channel,
                           data: data});
        });
        await ws.subscribe("e2e-news");
      });

      await S.publish(env.broker.url, "e2e-news", "headline", {n: 1});
      await page.waitForFunction(function () { return window.got.length >= 1; },
                                 null, {timeout: WAIT});
      assert.deepEqual(await page.evaluate(function () { return window.got; }),
                       [{event: "headline", channel: "e2e-news",
                         data: {n: 1}}]);
      const firstId = await page.evaluate(function () {
        return window.probe.id;
      });

      // SIGTERM: the server closes the connections (1001) and exits 0.
      const how = await env.server.stop();
      assert.deepEqual(how, {code: 0, signal: null}, "exit after SIGTERM");
      await page.waitForFunction(function () {
        return window.probe.state !== "open";
      }, null, {timeout: WAIT});
      await page.locator('#status[data-state="reconnecting"]')
        .waitFor({timeout: WAIT});
      await sees(page, "info", "Connection lost, reconnecting");
      // With history, said while the server is down: it arrives once.
      if (env.history) await chat("while you were away");

      // A new process on the same port; the clients come back by
      // themselves and re-subscribe.
      await env.server.start();
      await page.waitForFunction(function () {
        return window.probe.state === "open";
      }, null, {timeout: RESTART_WAIT});
      // Answered after the re-sync's subscribe, which went first.
      await page.evaluate(function () { return window.probe.ping(); });
      const again = await page.evaluate(function () {
        return {id: window.probe.id, channels: window.probe.channels};
      });
      assert.notEqual(again.id, firstId, "a new connection");
      assert.deepEqual(again.channels, ["e2e-news"]);

      await S.publish(env.broker.url, "e2e-news", "headline", {n: 2});
      await page.waitForFunction(function () { return window.got.length >= 2; },
                                 null, {timeout: WAIT});
      assert.deepEqual(await page.evaluate(function () { return window.got; }),
                       [{event: "headline", channel: "e2e-news", data: {n: 1}},
                        {event: "headline", channel: "e2e-news", data: {n: 2}}]);

      // The chat page's own client is back too.
      await page.locator('#status[data-state="online"]')
        .waitFor({timeout: RESTART_WAIT});
      await sees(page, "info", "Reconnected.");
      if (env.history) {
        await sees(page, "chat", "while you were away", RESTART_WAIT);
        await chat("after the restart");
        await sees(page, "chat", "after the restart");
        const all = await logLines(page);
        for (const text of ["first line", "second line",
                            "while you were away", "after the restart"]) {
          assert.equal(all.filter(function (l) {
            return l.endsWith(text);
          }).length, 1, text + " once in:\n" + all.join("\n"));
        }
        assert.ok(!all.some(function (l) { return /missing/.test(l); }),
                  all.join("\n"));
      }
      await page.evaluate(function () { window.probe.close(); });
      assert.deepEqual(pageErrors, []);
    });
    await pages.probe.context().close();
  });

  it("the chat example: join notices, messages both ways, leave notice",
     {timeout: 120000}, async function () {
    const pages = {};
    await withDiagnostics("chat", pages, async function () {
      const alice = pages.alice = await openChat("alice");
      const bob = pages.bob = await openChat("bob");
      await join(alice, "Alice", "lobby");
      await join(bob, "Bob", "lobby");
      await sees(alice, "join", "Bob joined");

      // Join notices go to whoever is in the room when they are sent, so
      // Bob, who came second, sees Alice's when she switches rooms and
      // comes back (which is also the room switch: unsubscribe the old
      // room, subscribe the new one).
      await join(alice, "Alice", "kitchen");
      await sees(bob, "leave", "Alice left");
      await join(alice, "Alice", "lobby");
      await sees(bob, "join", "Alice joined");

      await say(alice, "Hello Bob, can you hear me?");
      await sees(bob, "chat", "Hello Bob, can you hear me?");
      await sees(alice, "chat.mine", "Hello Bob, can you hear me?");
      await say(bob, "Loud and clear, Alice!");
      await sees(alice, "chat", "Loud and clear, Alice!");
      await sees(bob, "chat.mine", "Loud and clear, Alice!");
      // The relays carry the names from the store.
      assert.equal(await bob.textContent("#log li.chat:not(.mine) .who"),
                   "Alice");
      assert.equal(await alice.textContent("#log li.chat:not(.mine) .who"),
                   "Bob");

      await bob.click("#leave");
      await sees(alice, "leave", "Bob left");
      await sees(bob, "info", "You left #lobby");
      assert.equal(await bob.textContent("#room-title"), "Not in a room");
      assert.ok(await bob.isDisabled("#send"), "Bob can no longer send");

      assert.deepEqual(await logLines(alice), [
        "info: You are Alice.",
        "join: You joined #lobby",
        "join: Bob joined",
        "info: You left #lobby.",
        "join: You joined #kitchen",
        "info: You left #kitchen.",
        "join: You joined #lobby",
        "chat mine: Alice Hello Bob, can you hear me?",
        "chat: Bob Loud and clear, Alice!",
        "leave: Bob left",
      ]);
      assert.deepEqual(await logLines(bob), [
        "info: You are Bob.",
        "join: You joined #lobby",
        "leave: Alice left",
        "join: Alice joined",
        "chat: Alice Hello Bob, can you hear me?",
        "chat mine: Bob Loud and clear, Alice!",
        "info: You left #lobby.",
      ]);
      assert.deepEqual(pageErrors, []);

      await alice.screenshot({path: path.join(S.OUT_DIR, "chat.png")});
    });
    await pages.alice.context().close();
    await pages.bob.context().close();
  });
  it("a page written for the original client runs unchanged",
     {timeout: 120000}, async function () {
    const pages = {};
    await withDiagnostics("original", pages, async function () {
      // A second node on the same broker and app, serving the page.
      env.original = new S.BagouServer(env.broker.url, CONFIG.replace(
        "static_dir = " + path.join(S.REPO, "examples", "chat"),
        "static_dir = " + path.join(S.REPO, "js", "e2e", "original")));
      await env.original.start();
      async function openOriginal(name) {
        const context = await env.browser.newContext();
        const page = await context.newPage();
        page.setDefaultTimeout(WAIT);
        page.on("pageerror", function (err) {
          pageErrors.push(name + ": " + err.message);
        });
        page.on("console", function (msg) {
          consoleLines.push(name + " " + msg.type() + ": " + msg.text());
        });
        const res = await page.goto(env.original.origin +
                                    "/static/index.html#" + name,
                                    {waitUntil: "load", timeout: WAIT});
        assert.equal(res.status(), 200, "GET /static/index.html");
        await sees(page, "info", "subscribed to room-original");
        await sees(page, "info", "I am " + name);
        return page;
      }
      const lines = function (page) {
        return page.$$eval("#log li", function (lis) {
          return lis.map(function (li) {
            return li.className + ": " + li.textContent;
          });
        });
      };

      const alice = pages.alice = await openOriginal("Alice");
      const bob = pages.bob = await openOriginal("Bob");
      // The join notice ([forward] lifecycle subscribe), read as
      // msg.data.name and msg.channel.
      await sees(alice, "join", "Bob joined room-original");
      const state = await alice.evaluate(function () {
        return {protocol: ws.protocol, readyState: ws.readyState,
                open: ws.OPEN, settings: typeof ws.settings.events,
                authenticated: ws.authenticated, id: ws.id};
      });
      assert.deepEqual(Object.assign({}, state, {id: null}),
                       {protocol: "bagou", readyState: 1, open: 1,
                        settings: "object", authenticated: false, id: null});

      // The original session login: {sessionId}, answered by the app.
      await alice.evaluate(function () { login("good"); });
      await sees(alice, "info", "logged in as Alice");
      assert.equal(await alice.evaluate(function () {
        return ws.authenticated;
      }), true);
      await bob.evaluate(function () { login("nope"); });
      await sees(bob, "error", "login refused");

      // A broadcast through RabbitMQ, to events.message.
      await S.publish(env.broker.url, "room-original", "message",
                      {name: "Server", text: "Welcome!"});
      await sees(alice, "message", "Server: Welcome!");
      await sees(bob, "message", "Server: Welcome!");

      // A chat relayed by the app; the callback reads msg.data.success.
      await alice.fill("#text", "hi Bob");
      await alice.click("#send");
      await sees(alice, "ack", "sent: hi Bob");
      await sees(bob, "chat", "Alice: hi Bob");

      // What client.jsonify(success=True, message=...) published: a reply
      // to Alice only, without an event, then a sentinel to the room.
      await S.publishRaw(env.broker.url, {client: state.id, success: true,
                                          message: "Message received!"});
      await S.publish(env.broker.url, "room-original", "message",
                      {name: "Server", text: "sentinel"});
      await sees(alice, "reply", "Message received!");
      await sees(bob, "message", "Server: sentinel");
      await sees(alice, "message", "Server: sentinel");

      assert.deepEqual(await lines(alice), [
        "info: I am Alice",
        "info: subscribed to room-original",
        "join: Alice joined room-original",
        "join: Bob joined room-original",
        "info: logged in as Alice",
        "message: Server: Welcome!",
        "chat: Alice: hi Bob",
        "ack: sent: hi Bob",
        "reply: Message received!",
        "message: Server: sentinel",
      ]);
      assert.deepEqual(await lines(bob), [
        "info: I am Bob",
        "info: subscribed to room-original",
        "join: Bob joined room-original",
        "error: login refused",
        "message: Server: Welcome!",
        "chat: Alice: hi Bob",
        "message: Server: sentinel",
      ]);
      assert.deepEqual(pageErrors, []);
    });
    for (const p of Object.values(pages)) await p.context().close();
  });
});
