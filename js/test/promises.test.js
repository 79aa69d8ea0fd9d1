"use strict";
// Promises of docs/client.md that no other test pinned: connect_failed,
// the console warning without an error handler, a token function called
// again after 4002, queueSize 0, offChannel(channel) without fn,
// BagouWebSocket.DEFAULTS, connectTimeout, callbacks never called
// synchronously, terminate() used on a dead connection, and the backoff
// count starting again after a connection opened.
// Against a real bagou-server.
const {describe, it, afterEach} = require("node:test");
const assert = require("node:assert/strict");
const BagouWebSocket = require("../bagou.js");
const net = require("node:net");
const T = require("../support/testing.js");

const SECRET = "promises-secret-0123456789";
const FAST = {reconnectDelay: 50, reconnectDelayMax: 200};

const servers = [];
const clients = [];

async function start(config, port) {
  const srv = await T.startServer(config, port);
  servers.push(srv);
  return srv;
}

function client(url, options) {
  const ws = new BagouWebSocket(url, Object.assign({WebSocket: T.WS}, FAST,
                                                   options));
  clients.push(ws);
  return ws;
}

afterEach(async function () {
  while (clients.length) clients.pop().close();
  while (servers.length) await servers.pop().stop();
});

describe("docs/client.md promises", function () {
  it("reports connect_failed when the WebSocket constructor throws on a " +
     "reconnection", async function () {
    const srv = await start("");
    let made = 0;
    class OnceWS extends T.WS {
      constructor(url, protocols) {
        made += 1;
        if (made > 1) throw new Error("no more sockets");
        super(url, protocols);
      }
    }
    const ws = client(srv.url, {WebSocket: OnceWS});
    const errors = [];
    ws.on("error", function (data) { errors.push(data.code); });
    await T.within(ws.once("open"), 5000, "open");
    await srv.stop();            // the reconnection's constructor throws
    await T.waitFor(function () { return errors.includes("connect_failed"); },
                    5000, "a connect_failed error event");
    assert.ok(made >= 2, "the constructor was called again");
  });

  it("logs its own errors with console.warn when no error handler is " +
     "registered", async function () {
    const srv = await start("");
    const ws = client(srv.url, {queueSize: 0});
    await T.within(ws.once("open"), 5000, "open");
    await srv.stop();
    await T.waitFor(function () { return ws.state !== "open"; }, 5000,
                    "the client noticing the stop");
    const warned = [];
    const saved = console.warn;
    console.warn = function () { warned.push(Array.from(arguments)); };
    try {
      ws.send("anything", {x: 1});   // queue_full: belongs to no call
      await T.waitFor(function () { return warned.length > 0; }, 2000,
                      "a console.warn");
      await T.sleep(100);
    } finally {
      console.warn = saved;
    }
    assert.equal(warned.length, 1, JSON.stringify(warned));
    assert.match(warned[0].join(" "), /queue_full/);
  });

  it("calls a token function again after 4002 and authenticates with the " +
     "fresh token", async function () {
    const srv = await start("[auth]\nsecret = " + SECRET + "\n");
    const issued = [];
    const ws = client(srv.url, {
      token: function () {
        const n = issued.length + 1;
        issued.push(n);
        // The first token expires in 2 s (the server closes with 4002);
        // the next ones last an hour.
        const ttl = n === 1 ? 2 : 3600;
        return T.jwt(SECRET, {sub: "user-" + n,
                              exp: Math.floor(Date.now() / 1000) + ttl});
      },
    });
    const closes = [];
    ws.on("close", function (ev) { closes.push(ev.code); });
    await T.within(ws.once("open"), 5000, "open");
    await T.waitFor(function () { return closes.includes(4002); }, 8000,
                    "close 4002 at the first token's expiry");
    await T.waitFor(function () {
      return issued.length >= 2 && ws.state === "open";
    }, 8000, "a reconnection with a second token");
    const me = await ws.emit("whoami", {});
    assert.equal(me.user, "user-" + issued[issued.length - 1]);
  });

  it("queueSize 0 queues nothing: a call while disconnected fails at once " +
     "with queue_full", async function () {
    const srv = await start("");
    const ws = client(srv.url, {queueSize: 0});
    await T.within(ws.once("open"), 5000, "open");
    await srv.stop();
    await T.waitFor(function () { return ws.state !== "open"; }, 5000,
                    "the client noticing the stop");
    const t0 = Date.now();
    await assert.rejects(ws.emit("anything", {}), function (err) {
      return err.code === "queue_full";
    });
    assert.ok(Date.now() - t0 < 1000, "failed at once, not on a timeout");
  });

  it("offChannel(channel) removes every handler of the channel",
     async function () {
    const srv = await start("");
    const ws = client(srv.url);
    await T.within(ws.once("open"), 5000, "open");
    const got = [];
    ws.onChannel("news", function (data) { got.push("a" + data.n); });
    ws.onChannel("news", function (data) { got.push("b" + data.n); });
    ws.onChannel("sport", function (data) { got.push("s" + data.n); });
    await ws.subscribe("news");
    await ws.subscribe("sport");
    await srv.broadcast({event: "m", channel: "news", data: {n: 1}});
    await T.waitFor(function () { return got.length === 2; }, 5000,
                    "both news handlers");
    ws.offChannel("news");
    await srv.broadcast({event: "m", channel: "news", data: {n: 2}});
    // A sentinel on another channel: the news message came before it.
    await srv.broadcast({event: "m", channel: "sport", data: {n: 3}});
    await T.waitFor(function () { return got.includes("s3"); }, 5000,
                    "the sentinel");
    assert.deepEqual(got.slice().sort(), ["a1", "b1", "s3"]);
  });

  it("BagouWebSocket.DEFAULTS holds the documented defaults", function () {
    assert.deepEqual(Object.assign({}, BagouWebSocket.DEFAULTS), {
      timeout: 10000, reconnect: true, reconnectDelay: 500,
      reconnectDelayMax: 10000, reconnectAttempts: Infinity, queueSize: 100,
      heartbeat: 25000, heartbeatTimeout: 10000, connectTimeout: 10000,
      token: null});
  });

  it("connectTimeout bounds one attempt: a server that takes the TCP " +
     "connection and never answers the handshake gets a new attempt",
     async function () {
    const accepted = [];
    const hung = net.createServer(function (s) { accepted.push(s); });
    await new Promise(function (r) { hung.listen(0, T.HOST, r); });
    const url = "ws://" + T.HOST + ":" + hung.address().port + "/websocket";
    try {
      const ws = client(url, {connectTimeout: 200});
      await T.waitFor(function () { return accepted.length >= 3; }, 3000,
                      "attempts after connectTimeout");
      assert.notEqual(ws.state, "open");
      ws.close();
      // connectTimeout 0: no limit, the one attempt just waits.
      const before = accepted.length;
      const patient = client(url, {connectTimeout: 0});
      await T.sleep(1000);
      assert.equal(accepted.length, before + 1);
      assert.equal(patient.state, "connecting");
    } finally {
      for (const s of accepted) s.destroy();
      await new Promise(function (r) { hung.close(r); });
    }
  });

  it("never calls a callback synchronously inside the call that made it",
     async function () {
    const srv = await start("");
    const ws = client(srv.url, {queueSize: 0});
    await T.within(ws.once("open"), 5000, "open");
    await srv.stop();
    await T.waitFor(function () { return ws.state !== "open"; }, 5000,
                    "the connection lost");
    let inside = true;
    let calledInside = null;
    const answered = new Promise(function (resolve) {
      // queueSize 0: the call fails at once, with queue_full.
      ws.emit("x", {}, function (msg) {
        calledInside = inside;
        resolve(msg);
      });
    });
    inside = false;
    const msg = await T.within(answered, 2000, "the callback");
    assert.equal(calledInside, false);
    assert.equal(msg.data.error.code, "queue_full");
  });

  it("drops a dead connection with terminate() when the WebSocket has one",
     async function () {
    const srv = await start("");
    let terminated = 0;
    class CountingWS extends T.WS {
      terminate() {
        terminated += 1;
        return super.terminate();
      }
    }
    const ws = client(srv.url, {WebSocket: CountingWS, heartbeat: 100,
                                heartbeatTimeout: 200});
    await T.within(ws.once("open"), 5000, "open");
    srv.signal("SIGSTOP");
    try {
      const closed = await T.within(ws.once("close"), 3000, "close");
      assert.equal(closed.reason, "heartbeat timeout");
      assert.ok(terminated >= 1, "terminate() was not called");
    } finally {
      srv.signal("SIGCONT");
    }
  });

  it("starts the backoff count again once a connection opens",
     async function () {
    let srv = await start("");
    const port = srv.port;
    const ws = client(srv.url, {reconnectDelay: 20, reconnectDelayMax: 40});
    const attempts = [];
    ws.on("reconnecting", function (a) { attempts.push(a.attempt); });
    await T.within(ws.once("open"), 5000, "open");
    await srv.stop();
    await T.waitFor(function () { return attempts.length >= 3; }, 5000,
                    "three reconnection attempts");
    const reopened = ws.once("open");   // before the server is back
    srv = await start("", port);
    await T.within(reopened, 10000, "reopen");
    const before = attempts.length;
    assert.deepEqual(attempts.slice(0, 3), [1, 2, 3]);
    await srv.stop();
    await T.waitFor(function () { return attempts.length > before; }, 5000,
                    "a reconnection after the second loss");
    assert.equal(attempts[before], 1);
  });
});
