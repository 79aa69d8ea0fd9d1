"use strict";
// The API against a real bagou-server: the original BagouWebSocket calls,
// promises, events (on/off/once), channel handlers, and the error codes
// the server answers with.
const {describe, it, before, after, afterEach} = require("node:test");
const assert = require("node:assert/strict");
const BagouWebSocket = require("../bagou.js");
const T = require("../support/testing.js");

let server;
const clients = [];

function client(options, protocols) {
  const ws = new BagouWebSocket(server.url,
                                Object.assign({WebSocket: T.WS}, options),
                                protocols);
  clients.push(ws);
  return ws;
}

async function opened(options) {
  const ws = client(options);
  await T.within(ws.once("open"), 5000, "open");
  return ws;
}

before(async function () {
  server = await T.startServer("[channels]\nclient_publish = subscribed\n");
});

afterEach(function () {
  while (clients.length) clients.pop().close();
});

after(async function () {
  if (server) await server.stop();
});

describe("connection", function () {
  it("opens, reports its state and takes its id from the connect event",
     async function () {
    const seen = [];
    const ws = client({events: {
      connecting: function (a) { seen.push(["connecting", a.attempt]); },
      open: function () { seen.push(["open", this.state]); },
    }});
    assert.equal(ws.state, "connecting");
    const connect = await T.nextEvent(ws, "connect", 5000);
    assert.equal(ws.state, "open");
    assert.equal(typeof connect.data.id, "string");
    assert.equal(ws.id, connect.data.id);
    assert.equal(connect.data.protocol, 1);
    assert.deepEqual(seen, [["connecting", 0], ["open", "open"]]);
  });

  it("calls the original open, close and message options", async function () {
    const calls = [];
    const ws = client({
      open: function (ev) { calls.push("open:" + (this === ws)); },
      close: function (ev) { calls.push("close:" + ev.code); },
      message: function (msg) { calls.push("message:" + msg.event); },
    });
    await T.waitFor(function () { return calls.includes("message:connect"); },
                    5000, "connect message");
    ws.close();
    await T.waitFor(function () { return calls.includes("close:1000"); },
                    5000, "close callback");
    assert.deepEqual(calls, ["open:true", "message:connect", "close:1000"]);
    assert.equal(ws.state, "closed");
  });

  it("works when called without new, and passes protocols through",
     async function () {
    const Rec = T.recorder();
    const ws = BagouWebSocket(server.url, {WebSocket: Rec}, undefined);
    clients.push(ws);
    assert.ok(ws instanceof BagouWebSocket);
    await T.within(ws.once("open"), 5000, "open");
    assert.equal(Rec.last().url, server.url);
  });

  it("throws without any WebSocket implementation",
     {skip: typeof globalThis.WebSocket !== "undefined" &&
      "this Node has a global WebSocket"}, function () {
    assert.throws(function () { return new BagouWebSocket(server.url); },
                  /no WebSocket available/);
  });
});

describe("callbacks and promises", function () {
  it("emit(event, data, callback) answers through the callback (original)",
     async function () {
    const ws = await opened();
    const Rec = T.recorder();
    const ws2 = await opened({WebSocket: Rec});
    const res = await new Promise(function (resolve) {
      const ret = ws2.emit("chat", {text: "hi"}, resolve);
      assert.equal(ret, ws2, "with a callback, emit returns the client");
    });
    // The whole callback message, as the original client gave it.
    const frame = Rec.last().sent.find(function (m) {
      return m.event === "chat";
    });
    assert.deepEqual(res, {event: "callback", callbackId: frame.callbackId,
                           data: {success: true}});
    assert.equal(ws.state, "open");
  });

  it("emit without callback returns a Promise of the success data",
     async function () {
    const ws = await opened();
    const p = ws.emit("chat", {text: "hi"});
    assert.ok(p instanceof Promise);
    assert.deepEqual(await p, {success: true});
    const who = await ws.emit("whoami");
    assert.equal(who.id, ws.id);
  });

  it("subscribe(channel, cb) is the original ack callback", async function () {
    const ws = await opened();
    const res = await new Promise(function (resolve) {
      ws.subscribe("news", resolve);
    });
    assert.equal(res.event, "callback");
    assert.deepEqual(res.data, {success: true, channel: "news"});
    assert.deepEqual(ws.channels, ["news"]);
  });

  it("rejects with .code invalid_channel; the callback form gets the error",
     async function () {
    const ws = await opened();
    await assert.rejects(ws.subscribe("bad channel"), function (err) {
      assert.ok(err instanceof Error);
      assert.equal(err.code, "invalid_channel");
      assert.equal(err.event, "subscribe");
      assert.equal(err.channel, "bad channel");
      assert.match(err.message, /printable/);
      return true;
    });
    const res = await new Promise(function (resolve) {
      ws.subscribe("bad*channel", resolve);
    });
    assert.equal(res.data.success, false);
    assert.equal(res.data.error.code, "invalid_channel");
    assert.deepEqual(ws.channels, []);
  });

  it("rejects with not_allowed when publishing is not allowed",
     async function () {
    const ws = await opened();
    await assert.rejects(ws.publish("elsewhere", "chat", {x: 1}),
                         {code: "not_allowed"});
  });

  it("auth() sends authenticate without a token and rejects auth_failed " +
     "when the server has no way to check it", async function () {
    const Rec = T.recorder();
    const ws = await opened({WebSocket: Rec});
    await assert.rejects(ws.auth(), {code: "auth_failed"});
    const frame = Rec.last().sent.find(function (m) {
      return m.event === "authenticate";
    });
    assert.deepEqual(frame.data, {});
    assert.equal(typeof frame.callbackId, "string");
    await assert.rejects(ws.authenticate("not.a.jwt"), {code: "auth_failed"});
  });

  it("store(key, value) and store(object) merge into the store",
     async function () {
    const ws = await opened();
    assert.deepEqual(await ws.store("name", "Ada"), {success: true});
    await ws.store({lang: "en", n: 1});
    assert.deepEqual(ws.storeData, {name: "Ada", lang: "en", n: 1});
    await assert.rejects(ws.store("big", "x".repeat(5000)),
                         {code: "bad_message"});
    assert.deepEqual(ws.storeData, {name: "Ada", lang: "en", n: 1});
  });

  it("ping() makes a round trip", async function () {
    const ws = await opened();
    assert.deepEqual(await ws.ping(), {success: true});
  });

  it("send() is fire and forget; its failures are error events",
     async function () {
    const Rec = T.recorder();
    const ws = await opened({WebSocket: Rec});
    const ret = ws.send("subscribe", {channel: "bad channel"});
    assert.equal(ret, ws);
    const err = await T.nextEvent(ws, "error", 5000);
    assert.equal(err.data.code, "invalid_channel");
    assert.equal(err.data.event, "subscribe");
    const frame = Rec.last().sent.find(function (m) {
      return m.event === "subscribe";
    });
    assert.equal(frame.callbackId, undefined);
  });

  it("emit('subscribe', ...) is tracked like subscribe()", async function () {
    const ws = await opened();
    await ws.emit("subscribe", {channel: "tracked"});
    assert.deepEqual(ws.channels, ["tracked"]);
    await ws.emit("unsubscribe", {channel: "tracked"});
    assert.deepEqual(ws.channels, []);
  });

  it("throws on programming errors", async function () {
    const ws = await opened();
    assert.throws(function () { ws.emit(""); }, TypeError);
    assert.throws(function () { ws.emit("x", {}, "nope"); }, TypeError);
    assert.throws(function () { ws.on("x", null); }, TypeError);
    assert.throws(function () { ws.authenticate(42); }, TypeError);
    const cyclic = {};
    cyclic.self = cyclic;
    assert.throws(function () { ws.emit("x", cyclic); }, TypeError);
    assert.throws(function () { ws.send("x", {n: 1n}); }, TypeError);
    assert.equal(ws._queue.length + ws._pending.size, 0);
  });
});

describe("broadcasts and handlers", function () {
  it("delivers a POST /broadcast to events, on(), onChannel and message",
     async function () {
    const got = [];
    const ws = await opened({
      events: {message: function (msg) { got.push(["events", msg.data]); }},
      message: function (msg) {
        if (msg.event === "message") got.push(["message", msg.channel]);
      },
    });
    ws.on("message", function (data, msg) { got.push(["on", msg.channel]); });
    ws.onChannel("news", function (data, msg) {
      got.push(["channel", msg.event, data.text]);
    });
    await ws.subscribe("news");
    const r = await server.broadcast({event: "message", channel: "news",
                                      data: {text: "Welcome!"}});
    assert.equal(r.status, 202);
    await T.waitFor(function () { return got.length >= 4; }, 5000, "message");
    assert.deepEqual(got, [["message", "news"],
                           ["events", {text: "Welcome!"}],
                           ["on", "news"],
                           ["channel", "message", "Welcome!"]]);
  });

  it("subscribe(channel, {onMessage}) adds a channel handler that " +
     "unsubscribe removes", async function () {
    const ws = await opened();
    const got = [];
    const onMessage = function (data, msg) { got.push([msg.event, data]); };
    const res = await ws.subscribe("room", {onMessage: onMessage});
    assert.deepEqual(res, {success: true, channel: "room"});
    // The same handler is not added twice (e.g. subscribe in open()).
    await ws.subscribe("room", {onMessage: onMessage});
    await ws.publish("room", "said", {text: "one"});
    await T.waitFor(function () { return got.length === 1; }, 5000, "said");
    assert.deepEqual(got, [["said", {text: "one"}]]);
    // The message carries the sender's id.
    await ws.unsubscribe("room");
    assert.deepEqual(ws.channels, []);
    await ws.subscribe("room");   // no handler this time
    await ws.publish("room", "said", {text: "two"});
    await ws.ping();
    await T.sleep(100);
    assert.equal(got.length, 1);
  });

  it("subscribe(channel, {onMessage, callback}) uses the callback",
     async function () {
    const ws = await opened();
    const res = await new Promise(function (resolve) {
      const ret = ws.subscribe("cbroom", {onMessage: function () {},
                                          callback: resolve});
      assert.equal(ret, ws);
    });
    assert.equal(res.data.success, true);
  });

  it("a failed subscribe drops the handler it added", async function () {
    const ws = await opened();
    await assert.rejects(ws.subscribe("bad channel",
                                      {onMessage: function () {}}),
                         {code: "invalid_channel"});
    assert.equal(ws._channelHandlers.size, 0);
  });

  it("client publishes carry from; unsubscribe stops delivery",
     async function () {
    const a = await opened();
    const b = await opened();
    const got = [];
    b.on("chat", function (data, msg) {
      got.push({data: data, from: msg.from});
    });
    await a.subscribe("lobby");
    await b.subscribe("lobby");
    await a.publish("lobby", "chat", {text: "hello"});
    await T.waitFor(function () { return got.length === 1; }, 5000, "chat");
    assert.deepEqual(got[0], {data: {text: "hello"}, from: a.id});
    await b.unsubscribe("lobby");
    await a.publish("lobby", "chat", {text: "again"});
    await b.ping();
    await T.sleep(100);
    assert.equal(got.length, 1);
  });

  it("once() fires once, off() removes, once() without fn is a Promise",
     async function () {
    const ws = await opened();
    await ws.subscribe("ticks");
    const counts = {on: 0, once: 0, removed: 0, removedOnce: 0};
    const removed = function () { counts.removed++; };
    const removedOnce = function () { counts.removedOnce++; };
    ws.on("tick", function () { counts.on++; });
    ws.once("tick", function () { counts.once++; });
    ws.on("tick", removed);
    ws.off("tick", removed);
    ws.once("tick", removedOnce);
    ws.off("tick", removedOnce);   // by the original function
    const first = ws.once("tick");
    for (let i = 1; i <= 3; i++) {
      await server.broadcast({event: "tick", channel: "ticks", data: {i: i}});
    }
    assert.deepEqual(await T.within(first, 5000, "once promise"), {i: 1});
    await T.waitFor(function () { return counts.on === 3; }, 5000, "ticks");
    assert.deepEqual(counts, {on: 3, once: 1, removed: 0, removedOnce: 0});
    ws.off("tick");
    await server.broadcast({event: "tick", channel: "ticks", data: {i: 4}});
    await ws.ping();
    await T.sleep(100);
    assert.equal(counts.on, 3);
  });

  it("offChannel() removes a channel handler", async function () {
    const ws = await opened();
    let n = 0;
    const fn = function () { n++; };
    ws.onChannel("c1", fn).onChannel("c1", fn);
    await ws.subscribe("c1");
    await server.broadcast({event: "x", channel: "c1"});
    await T.waitFor(function () { return n === 1; }, 5000, "x");
    ws.offChannel("c1", fn);
    await server.broadcast({event: "x", channel: "c1"});
    await ws.ping();
    await T.sleep(100);
    assert.equal(n, 1);
  });

  it("a throwing handler does not stop the others", async function () {
    const ws = await opened();
    const seen = [];
    const errors = [];
    // bagou.js rethrows a handler's exception from a timer: catch it there.
    const realSetTimeout = globalThis.setTimeout;
    globalThis.setTimeout = function (fn, ms) {
      const rest = Array.prototype.slice.call(arguments, 2);
      return realSetTimeout(function () {
        try {
          fn.apply(null, rest);
        } catch (e) {
          errors.push(e.message);
        }
      }, ms);
    };
    try {
      ws.on("boom", function () { throw new Error("handler bug"); });
      ws.on("boom", function (data) { seen.push(data.n); });
      await ws.subscribe("b");
      await server.broadcast({event: "boom", channel: "b", data: {n: 1}});
      await T.waitFor(function () { return seen.length && errors.length; },
                      5000, "both handlers");
    } finally {
      globalThis.setTimeout = realSetTimeout;
    }
    assert.deepEqual(seen, [1]);
    assert.deepEqual(errors, ["handler bug"]);
  });
});

describe("packaging", function () {
  it("is served at GET /bagou.js minified and /bagou.src.js as is, " +
     "byte for byte", async function () {
    const fs = require("node:fs");
    const path = require("node:path");
    const root = path.join(__dirname, "..");
    for (const [url, file] of [["/bagou.js", "dist/bagou.min.js"],
                               ["/bagou.src.js", "bagou.js"]]) {
      const r = await T.request(server.port, "GET", url);
      assert.equal(r.status, 200, url);
      assert.match(r.headers["content-type"], /^application\/javascript/);
      const mine = fs.readFileSync(path.join(root, file), "utf8");
      assert.ok(r.body === mine, "GET " + url + " differs from js/" + file +
                ": make js-dist, then rebuild the server " +
                "(make build/bagou-server)");
    }
  });

  it("defines a global BagouWebSocket when loaded by a <script> tag",
     function () {
    const vm = require("node:vm");
    const fs = require("node:fs");
    const path = require("node:path");
    const window = {};
    window.self = window;
    vm.createContext(window);
    // The readable source and the minified build alike.
    for (const file of ["bagou.js", "dist/bagou.min.js"]) {
      delete window.BagouWebSocket;
      vm.runInContext(fs.readFileSync(path.join(__dirname, "..", file),
                                      "utf8"), window);
      assert.equal(typeof window.BagouWebSocket, "function", file);
      assert.throws(function () {
        return new window.BagouWebSocket("ws://x/");
      }, /no WebSocket/);
    }
  });

  it("loads as CommonJS and as an ES module through package exports",
     async function () {
    assert.equal(require("bagou"), BagouWebSocket);
    assert.equal(require("bagou").BagouWebSocket, BagouWebSocket);
    const esm = await import("bagou");
    assert.equal(esm.default, BagouWebSocket);
    assert.equal(esm.BagouWebSocket, BagouWebSocket);
  });
});
