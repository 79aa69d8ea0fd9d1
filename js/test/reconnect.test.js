"use strict";
// Reconnection against a real bagou-server that is stopped (SIGTERM) and
// started again on the same port: state events, re-authentication,
// re-subscription and store re-sent by the client itself, the queue of
// messages sent while disconnected, and close().
const {describe, it, afterEach} = require("node:test");
const assert = require("node:assert/strict");
const BagouWebSocket = require("../bagou.js");
const T = require("../support/testing.js");

const SECRET = "test-secret-0123456789";
const FAST = {reconnectDelay: 50, reconnectDelayMax: 300};

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

function record(ws, names) {
  const seen = [];
  names.forEach(function (name) {
    ws.on(name, function (a) {
      seen.push(name === "close" ? name + ":" + a.code : name);
    });
  });
  return seen;
}

describe("server restart", function () {
  it("reconnects, re-subscribes and re-sends the store by itself, then " +
     "receives later broadcasts", async function () {
    const config = "[channels]\nclient_publish = all\n";
    let srv = await start(config);
    const Rec = T.recorder();
    const ws = client(srv.url, {WebSocket: Rec});
    const got = [];
    ws.onChannel("news", function (data) { got.push(data.n); });
    await T.within(ws.once("open"), 5000, "open");
    await ws.subscribe("news");
    await ws.subscribe("sport");
    await ws.store("name", "Ada");
    await ws.store({lang: "en"});
    const firstId = ws.id;
    await srv.broadcast({event: "message", channel: "news", data: {n: 1}});
    await T.waitFor(function () { return got.length === 1; }, 5000, "n=1");

    const seen = record(ws, ["close", "reconnecting", "connecting", "open"]);
    const port = srv.port;
    const how = await srv.stop("SIGTERM");
    assert.equal(how.code, 0);
    await T.waitFor(function () { return ws.state !== "open"; }, 5000,
                    "the client to notice");
    assert.deepEqual(seen.slice(0, 2), ["close:1001", "reconnecting"]);
    assert.ok(["reconnecting", "connecting"].includes(ws.state));

    srv = await start(config, port);
    await T.waitFor(function () { return seen.includes("open"); }, 10000,
                    "reopen");
    assert.equal(ws.state, "open");
    await T.waitFor(function () { return ws.id && ws.id !== firstId; }, 5000,
                    "a new client id");

    // The new connection was re-synced without any call from us.
    const sock = Rec.last();
    await T.waitFor(function () { return sock.received.filter(function (m) {
      return m.event === "callback";
    }).length >= 3; }, 5000, "re-sync answers");
    const resent = sock.sent.map(function (m) {
      return m.event + ":" + JSON.stringify(m.data);
    });
    assert.deepEqual(resent.slice(0, 3), [
      "subscribe:{\"channel\":\"news\"}",
      "subscribe:{\"channel\":\"sport\"}",
      "store:{\"name\":\"Ada\",\"lang\":\"en\"}",
    ]);
    const who = await ws.emit("whoami");
    assert.deepEqual(who.channels.sort(), ["news", "sport"]);
    assert.deepEqual(ws.channels, ["news", "sport"]);

    const r = await srv.broadcast({event: "message", channel: "news",
                                   data: {n: 2}});
    assert.equal(r.status, 202);
    await T.waitFor(function () { return got.length === 2; }, 5000, "n=2");
    assert.deepEqual(got, [1, 2]);
  });

  it("re-authenticates with its token first, so private channels come " +
     "back", async function () {
    const config = "[auth]\nsecret = " + SECRET + "\n";
    let srv = await start(config);
    const token = T.jwt(SECRET, {sub: "u42", channels: ["private-*"],
                                 exp: Math.floor(Date.now() / 1000) + 3600});
    const Rec = T.recorder();
    const ws = client(srv.url, {WebSocket: Rec});
    const got = [];
    ws.on("secret", function (data) { got.push(data); });
    await T.within(ws.once("open"), 5000, "open");
    await assert.rejects(ws.subscribe("private-room"), {code: "forbidden"});
    const res = await ws.authenticate(token);
    assert.equal(res.user.id, "u42");
    await ws.subscribe("private-room");

    const port = srv.port;
    await srv.stop();
    await T.waitFor(function () { return ws.state !== "open"; }, 5000,
                    "disconnect");
    const reopened = ws.once("open");
    srv = await start(config, port);
    await T.within(reopened, 10000, "reopen");
    const sock = Rec.last();
    await T.waitFor(function () { return sock.received.filter(function (m) {
      return m.event === "callback";
    }).length >= 2; }, 5000, "re-sync answers");
    assert.deepEqual(sock.sent.slice(0, 2).map(function (m) {
      return m.event;
    }), ["authenticate", "subscribe"]);
    assert.equal(sock.sent[0].data.token, token);
    const who = await ws.emit("whoami");
    assert.equal(who.user, "u42");
    assert.deepEqual(who.channels, ["private-room"]);
    await srv.broadcast({event: "secret", channel: "private-room",
                         data: {ok: true}});
    await T.waitFor(function () { return got.length === 1; }, 5000, "secret");
  });

  it("authenticates with options.token on every connection",
     async function () {
    const config = "[auth]\nsecret = " + SECRET + "\n";
    let srv = await start(config);
    const ws = client(srv.url, {token: T.jwt(SECRET, {
      sub: "fixed", channels: ["private-ok"]})});
    // Queued before the connection opens; sent after the authentication.
    await ws.subscribe("private-ok");
    assert.equal((await ws.emit("whoami")).user, "fixed");
    const port = srv.port;
    await srv.stop();
    const reopened = ws.once("open");
    srv = await start(config, port);
    await T.within(reopened, 10000, "reopen");
    assert.equal((await ws.emit("whoami")).user, "fixed");
  });

  it("calls a token function before every connection", async function () {
    const config = "[auth]\nsecret = " + SECRET + "\n";
    let srv = await start(config);
    let calls = 0;
    const ws = client(srv.url, {token: async function () {
      calls++;
      return T.jwt(SECRET, {sub: "user" + calls});
    }});
    await T.within(ws.once("open"), 5000, "open");
    await T.waitFor(async function () {
      return (await ws.emit("whoami")).user === "user1";
    }, 5000, "user1");
    const port = srv.port;
    await srv.stop();
    const reopened = ws.once("open");
    srv = await start(config, port);
    await T.within(reopened, 10000, "reopen");
    assert.equal((await ws.emit("whoami")).user, "user" + calls);
    assert.ok(calls >= 2);
  });

  it("a re-subscription the server now refuses becomes an error event",
     async function () {
    let srv = await start("[auth]\nsecret = " + SECRET + "\n");
    const ws = client(srv.url, {});
    await T.within(ws.once("open"), 5000, "open");
    await ws.authenticate(T.jwt(SECRET, {sub: "a", channels: ["private-x"]}));
    await ws.subscribe("private-x", {onMessage: function () {}});
    await ws.subscribe("public");
    const port = srv.port;
    await srv.stop();
    // The new server has another secret: the stored token fails.
    const errors = [];
    ws.on("error", function (data) {
      errors.push(data.code + ":" + data.event);
    });
    const reopened = ws.once("open");
    srv = await start("[auth]\nsecret = another-secret-xyz\n", port);
    await T.within(reopened, 10000, "reopen");
    await T.waitFor(function () { return errors.length >= 2; }, 5000,
                    "errors");
    assert.deepEqual(errors, ["auth_failed:authenticate",
                              "forbidden:subscribe"]);
    assert.deepEqual(ws.channels, ["public"]);
    assert.equal(ws._channelHandlers.size, 0);
  });
});

describe("authentication order", function () {
  it("messages sent after authenticate() wait for its answer",
     async function () {
    const srv = await start("[auth]\nsecret = " + SECRET + "\n");
    const ws = client(srv.url, {});
    await T.within(ws.once("open"), 5000, "open");
    const token = T.jwt(SECRET, {sub: "b", channels: ["private-b"]});
    const auth = ws.authenticate(token);
    const sub = ws.subscribe("private-b");   // no await in between
    assert.equal((await auth).user.id, "b");
    assert.deepEqual(await sub, {success: true, channel: "private-b"});
  });
});

describe("queue while disconnected", function () {
  it("an unsubscribe made while disconnected is not undone by the " +
     "re-sync", async function () {
    let srv = await start("");
    const Rec = T.recorder();
    const ws = client(srv.url, {WebSocket: Rec});
    await T.within(ws.once("open"), 5000, "open");
    await ws.subscribe("stay");
    await ws.subscribe("leave");
    const port = srv.port;
    await srv.stop();
    await T.waitFor(function () { return ws.state !== "open"; }, 5000,
                    "disconnect");
    const left = ws.unsubscribe("leave");
    const reopened = ws.once("open");
    srv = await start("", port);
    await T.within(reopened, 10000, "reopen");
    assert.deepEqual(await T.within(left, 5000, "unsubscribe"),
                     {success: true, channel: "leave"});
    assert.deepEqual(ws.channels, ["stay"]);
    assert.deepEqual((await ws.emit("whoami")).channels, ["stay"]);
    assert.equal(Rec.last().sent.filter(function (m) {
      return m.event === "subscribe" && m.data.channel === "leave";
    }).length, 0);
  });

  it("keeps emits made while disconnected and sends them after the " +
     "re-sync, in order", async function () {
    const config = "[channels]\nclient_publish = all\n";
    let srv = await start(config);
    const ws = client(srv.url, {queueSize: 5});
    await T.within(ws.once("open"), 5000, "open");
    await ws.subscribe("q");
    const port = srv.port;
    await srv.stop();
    await T.waitFor(function () { return ws.state !== "open"; }, 5000,
                    "disconnect");

    const sent = [1, 2, 3].map(function (n) {
      return ws.publish("q", "item", {n: n});
    });
    let cbAnswer = null;
    ws.emit("chat", {}, function (res) { cbAnswer = res; });
    ws.send("item-ff", {});
    // Full: a sixth message is refused at once, never silently.
    await assert.rejects(ws.publish("q", "item", {n: 6}),
                         {code: "queue_full"});
    const overflow = await new Promise(function (resolve) {
      ws.emit("x", {}, resolve);
    });
    assert.equal(overflow.event, "callback");
    assert.deepEqual(overflow.data.error.code, "queue_full");
    const sendError = T.nextEvent(ws, "error", 2000);
    ws.send("y", {});
    assert.equal((await sendError).data.code, "queue_full");

    const got = [];
    ws.on("item", function (data) { got.push(data.n); });
    srv = await start(config, port);
    const results = await T.within(Promise.all(sent), 10000, "queued");
    assert.deepEqual(results, [{success: true}, {success: true},
                               {success: true}]);
    await T.waitFor(function () { return got.length === 3 && cbAnswer; },
                    5000, "delivery");
    assert.deepEqual(got, [1, 2, 3]);
    assert.deepEqual(cbAnswer.data, {success: true});
  });

  it("queues calls made before the first connection", async function () {
    const srv = await start("");
    const ws = client(srv.url, {});
    assert.equal(ws.state, "connecting");
    const p = ws.subscribe("early");
    const q = ws.store("k", 1);
    assert.deepEqual(await p, {success: true, channel: "early"});
    assert.deepEqual(await q, {success: true});
  });

  it("a queued message that times out is dropped, not sent later",
     async function () {
    let srv = await start("");
    const Rec = T.recorder();
    const ws = client(srv.url, {WebSocket: Rec, timeout: 200});
    await T.within(ws.once("open"), 5000, "open");
    const port = srv.port;
    await srv.stop();
    await T.waitFor(function () { return ws.state !== "open"; }, 5000,
                    "disconnect");
    const t0 = Date.now();
    await assert.rejects(ws.emit("late", {}), {code: "timeout"});
    assert.ok(Date.now() - t0 >= 150);
    const reopened = ws.once("open");
    srv = await start("", port);
    await T.within(reopened, 10000, "reopen");
    await ws.ping();
    assert.equal(Rec.allSent().filter(function (m) {
      return m.event === "late";
    }).length, 0);
  });

  it("re-sends state events lost in flight and fails the others with " +
     "disconnected", async function () {
    const srv = await start("");
    const Rec = T.recorder();
    const ws = client(srv.url, {WebSocket: Rec});
    await T.within(ws.once("open"), 5000, "open");
    const sock = Rec.last();
    sock.muted = true;   // answers are lost with the connection
    const sub = ws.subscribe("inflight");
    const other = ws.emit("chat", {});
    await T.waitFor(function () { return sock.sent.length >= 2; }, 2000,
                    "sent");
    sock.terminate();
    await assert.rejects(other, {code: "disconnected"});
    assert.deepEqual(await T.within(sub, 10000, "subscribe"),
                     {success: true, channel: "inflight"});
    assert.notEqual(Rec.last(), sock);
    assert.deepEqual((await ws.emit("whoami")).channels, ["inflight"]);
  });
});

describe("timeouts", function () {
  it("a missing answer fails with code timeout (promise and callback), " +
     "later answers are ignored", async function () {
    const srv = await start("");
    const Rec = T.recorder();
    const ws = client(srv.url, {WebSocket: Rec, timeout: 150});
    await T.within(ws.once("open"), 5000, "open");
    const sock = Rec.last();
    sock.muted = true;
    const t0 = Date.now();
    await assert.rejects(ws.emit("slow", {}), function (err) {
      assert.equal(err.code, "timeout");
      assert.equal(err.event, "slow");
      return true;
    });
    assert.ok(Date.now() - t0 >= 120);
    const res = await new Promise(function (resolve) {
      ws.emit("slow", {}, resolve);
    });
    assert.equal(res.event, "callback");
    assert.equal(typeof res.callbackId, "string");
    assert.equal(res.data.success, false);
    assert.equal(res.data.error.code, "timeout");
    const stray = [];
    ws.on("callback", function (data, msg) { stray.push(msg.callbackId); });
    sock.unmute();
    assert.deepEqual(await ws.ping(), {success: true});
    // The two late answers reach "callback" handlers, nothing else.
    assert.equal(stray.length, 2);
  });

  it("timeout 0 waits as long as it takes", async function () {
    const srv = await start("");
    const Rec = T.recorder();
    const ws = client(srv.url, {WebSocket: Rec, timeout: 0});
    await T.within(ws.once("open"), 5000, "open");
    const p = ws.ping();
    assert.deepEqual(await p, {success: true});
    assert.equal(ws._pending.size, 0);
  });
});

describe("heartbeat", function () {
  it("pings, and reconnects when the pings go unanswered", async function () {
    const srv = await start("");
    const Rec = T.recorder();
    const ws = client(srv.url, {WebSocket: Rec, heartbeat: 100,
                                heartbeatTimeout: 200});
    await T.within(ws.once("open"), 5000, "open");
    const sock = Rec.last();
    await T.waitFor(function () {
      return sock.sent.filter(function (m) { return m.event === "ping"; })
        .length >= 2;
    }, 2000, "pings");
    assert.equal(ws.state, "open");
    sock.muted = true;
    const closed = await T.within(ws.once("close"), 3000, "close");
    assert.equal(closed.code, 1006);
    assert.equal(closed.reason, "heartbeat timeout");
    await T.within(ws.once("open"), 5000, "reopen");
    assert.notEqual(Rec.last(), sock);
  });

  it("notices a hung server (SIGSTOP) and comes back after SIGCONT",
     async function () {
    const srv = await start("");
    const ws = client(srv.url, {heartbeat: 100, heartbeatTimeout: 200,
                                connectTimeout: 300});
    await T.within(ws.once("open"), 5000, "open");
    await ws.subscribe("frozen");
    srv.signal("SIGSTOP");
    try {
      await T.within(ws.once("close"), 3000, "close");
      await T.sleep(500);   // attempts meanwhile time out
      assert.notEqual(ws.state, "open");
    } finally {
      srv.signal("SIGCONT");
    }
    await T.within(ws.once("open"), 10000, "reopen");
    const got = T.nextEvent(ws, "thaw", 5000);
    await T.waitFor(async function () {
      return (await ws.emit("whoami")).channels.includes("frozen");
    }, 5000, "re-subscribed");
    await srv.broadcast({event: "thaw", channel: "frozen", data: {}});
    await got;
  });
});

describe("close, reconnect options and backoff", function () {
  it("close() stops reconnecting; later calls fail with closed; " +
     "connect() comes back with the same channels", async function () {
    const srv = await start("");
    const ws = client(srv.url, {});
    await T.within(ws.once("open"), 5000, "open");
    await ws.subscribe("kept");
    const pending = ws.emit("chat", {});
    const seen = record(ws, ["close", "reconnecting", "connecting"]);
    ws.close();
    assert.equal(ws.state, "closed");
    await assert.rejects(pending, {code: "closed"});
    await T.waitFor(function () { return seen.length; }, 5000, "close");
    await T.sleep(400);
    assert.deepEqual(seen, ["close:1000"]);
    await assert.rejects(ws.emit("chat", {}), {code: "closed"});
    ws.connect();
    await T.within(ws.once("open"), 5000, "reopen");
    await T.waitFor(async function () {
      return (await ws.emit("whoami")).channels.includes("kept");
    }, 5000, "kept");
  });

  it("close() in a close handler stops without a second close",
     async function () {
    const srv = await start("");
    const ws = client(srv.url, {});
    await T.within(ws.once("open"), 5000, "open");
    const seen = record(ws, ["close", "reconnecting", "connecting"]);
    ws.on("close", function () { this.close(); });
    await srv.stop();
    await T.waitFor(function () { return seen.length; }, 5000, "close");
    await T.sleep(400);
    assert.deepEqual(seen, ["close:1001"]);
    assert.equal(ws.state, "closed");
  });

  it("close() while reconnecting emits close and stops", async function () {
    const port = await T.freePort();
    const ws = client("ws://127.0.0.1:" + port + "/websocket", {});
    await T.within(ws.once("reconnecting"), 5000, "reconnecting");
    const closed = ws.once("close");
    ws.close();
    assert.equal((await T.within(closed, 1000, "close")).code, 1000);
    const seen = record(ws, ["connecting"]);
    await T.sleep(400);
    assert.deepEqual(seen, []);
  });

  it("reconnect: false closes for good when the server goes away",
     async function () {
    const srv = await start("");
    const ws = client(srv.url, {reconnect: false});
    await T.within(ws.once("open"), 5000, "open");
    const seen = record(ws, ["close", "reconnecting"]);
    await srv.stop();
    await T.waitFor(function () { return ws.state === "closed"; }, 5000,
                    "closed");
    assert.deepEqual(seen, ["close:1001"]);
    await assert.rejects(ws.emit("x", {}), {code: "closed"});
  });

  it("backs off exponentially with full jitter, up to reconnectAttempts",
     async function () {
    const port = await T.freePort();   // nothing listens there
    const random = Math.random;
    const draws = [0.999, 0.999, 0.999, 0.999, 0, 0.5];
    Math.random = function () { return draws.length ? draws.shift() : 0.5; };
    try {
      const ws = client("ws://127.0.0.1:" + port + "/websocket",
                        {reconnectDelay: 20, reconnectDelayMax: 100,
                         reconnectAttempts: 6});
      const delays = [];
      ws.on("reconnecting", function (a) {
        delays.push([a.attempt, a.delay]);
      });
      const closed = await T.within(ws.once("close"), 5000, "give up");
      assert.equal(closed.code, 1006);
      assert.equal(ws.state, "closed");
      // caps 20, 40, 80, 100 (max), 100, 100 times the random draw
      assert.deepEqual(delays, [[1, 19], [2, 39], [3, 79], [4, 99], [5, 0],
                                [6, 50]]);
    } finally {
      Math.random = random;
    }
  });
});
