"use strict";
// The version 2 features of the client (history and recovery, presence,
// the server's disconnect and unsubscribe; docs/client.md §10) against the
// REAL bagou-server, standalone. Each test is skipped, with the reason,
// while the server does not announce its feature (an ini section it does
// not know, a subscribe answer without "epoch" or "members", a 404 from
// the server API): they run by themselves once the server side is there.
// The client's logic in every corner is tested against a protocol fake in
// protocol-fake.test.js.
const {describe, it, afterEach} = require("node:test");
const assert = require("node:assert/strict");
const BagouWebSocket = require("../bagou.js");
const T = require("../support/testing.js");

const SECRET = "test-secret-0123456789";
const FAST = {reconnectDelay: 20, reconnectDelayMax: 100, heartbeat: 0,
              timeout: 5000};

const servers = [];
const clients = [];

/** A server with config, or null when it refuses the config's section
 *  (the feature is not in this build). */
async function start(config, port) {
  try {
    const srv = await T.startServer(config, port);
    servers.push(srv);
    return srv;
  } catch (e) {
    if (/unknown (section|key)/.test(String(e.message))) return null;
    throw e;
  }
}

function client(url, options) {
  const ws = new BagouWebSocket(url, Object.assign({WebSocket: T.WS}, FAST,
                                                   options));
  clients.push(ws);
  return ws;
}

async function cleanup() {
  while (clients.length) clients.pop().close();
  while (servers.length) await servers.pop().stop();
}

afterEach(cleanup);

/** Skips t with reason, after stopping its clients and servers itself
 *  (node 20 runs no afterEach hook for a test skipped while it runs). */
async function skip(t, reason) {
  await cleanup();
  t.skip(reason);
}

function token(sub, info) {
  return T.jwt(SECRET, {sub: sub, info: info, channels: ["presence-*"],
                        exp: Math.floor(Date.now() / 1000) + 3600});
}

describe("history and recovery (real server)", function () {
  it("resumes after a reconnect with every missed broadcast once, says " +
     "recovered; history() answers; a restart is a gap",
     async function (t) {
    const config = "[history]\nchannels = ^h-\n";
    let srv = await start(config);
    if (!srv) return skip(t, "the server has no [history] section yet");
    const ws = client(srv.url);
    const got = [];
    ws.onChannel("h-news", function (data) { got.push(data.n); });
    const res = await ws.subscribe("h-news");
    if (typeof res.epoch !== "string") {
      return skip(t, "the subscribe answer has no epoch");
    }
    assert.equal(res.offset, 0);
    for (let n = 1; n <= 2; n++) {
      await srv.broadcast({event: "message", channel: "h-news",
                           data: {n: n}});
    }
    await T.waitFor(function () { return got.length === 2; }, 5000, "1, 2");
    const pos = ws.position("h-news");
    assert.equal(pos.epoch, res.epoch);
    assert.ok(pos.offset > 0);

    // Away while 3 and 4 are published; back by itself with recover.
    ws.close();
    await T.waitFor(function () { return ws.socket === null; }, 5000,
                    "closed");
    for (let n = 3; n <= 4; n++) {
      await srv.broadcast({event: "message", channel: "h-news",
                           data: {n: n}});
    }
    const recovered = T.within(ws.once("recovered"), 5000, "recovered");
    ws.connect();
    const info = await recovered;
    assert.equal(info.count, 2);
    assert.deepEqual(info.since, pos);
    await srv.broadcast({event: "message", channel: "h-news", data: {n: 5}});
    await T.waitFor(function () { return got.length === 5; }, 5000, "5");
    assert.deepEqual(got, [1, 2, 3, 4, 5]);

    const hist = await ws.history("h-news", {limit: 2});
    assert.deepEqual(hist.publications.map(function (p) {
      return p.data.n;
    }), [4, 5]);
    assert.equal(hist.publications[1].offset, ws.position("h-news").offset);
    const since = await ws.history("h-news", {since: pos});
    assert.deepEqual(since.publications.map(function (p) {
      return p.data.n;
    }), [3, 4, 5]);
    await assert.rejects(ws.history("plain"), {code: "not_allowed",
                                               event: "history"});

    // A restart (standalone: a new epoch) is a gap, and the new epoch's
    // broadcasts are delivered.
    const port = srv.port;
    const gap = T.within(ws.once("gap"), 8000, "gap");
    await servers.pop().stop();
    srv = await start(config, port);
    const hole = await gap;
    assert.notEqual(hole.epoch, res.epoch);
    await srv.broadcast({event: "message", channel: "h-news", data: {n: 6}});
    await T.waitFor(function () { return got.length === 6; }, 5000, "6");
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  });
});

describe("positions across channels (real server)", function () {
  it("a broadcast to two history channels is delivered once, and not " +
     "again after a reconnect", async function (t) {
    const srv = await start("[history]\nchannels = ^h-\n");
    if (!srv) return skip(t, "the server has no [history] section yet");
    const ws = client(srv.url);
    const all = [];
    ws.on("message", function (data, msg) {
      all.push(msg.channel + ":" + data.n);
    });
    const res = await ws.subscribe("h-a");
    if (typeof res.epoch !== "string") {
      return skip(t, "the subscribe answer has no epoch");
    }
    await ws.subscribe("h-b");
    await srv.broadcast({event: "message", channel: ["h-a", "h-b"],
                         data: {n: 1}});
    await T.waitFor(function () { return all.length === 1; }, 5000, "1");
    let recovered = 0;
    ws.on("recovered", function () { recovered++; });
    ws.close();
    ws.connect();
    await T.waitFor(function () { return recovered === 2; }, 5000,
                    "recovered");
    await srv.broadcast({event: "message", channel: "h-b", data: {n: 2}});
    await T.waitFor(function () { return all.length === 2; }, 5000, "2");
    assert.deepEqual(all, ["h-a:1", "h-b:2"]);
  });
});

describe("presence (real server)", function () {
  it("members in the subscribe answer, onJoin/onLeave, presence() and " +
     "presenceStats()", async function (t) {
    const srv = await start("[auth]\nsecret = " + SECRET + "\n" +
                            "[presence]\nprefix = presence-\n");
    if (!srv) return skip(t, "the server has no [presence] section yet");
    const a = client(srv.url, {token: token("ada", {name: "Ada"})});
    const joins = [];
    const leaves = [];
    const first = await a.subscribe("presence-room", {
      onJoin: function (m) { joins.push(m.user); },
      onLeave: function (m) { leaves.push(m.user); },
    });
    if (!Array.isArray(first.members)) {
      return skip(t, "the subscribe answer has no members");
    }
    assert.deepEqual(first.members, [{user: "ada", info: {name: "Ada"}}]);
    assert.equal(first.count, 1);
    const b = client(srv.url, {token: token("bob", {name: "Bob"})});
    await b.subscribe("presence-room");
    await T.waitFor(function () { return joins.includes("bob"); }, 5000,
                    "bob joins");
    const members = await a.presence("presence-room");
    assert.deepEqual(members.members.map(function (m) {
      return m.user;
    }).sort(), ["ada", "bob"]);
    const stats = await a.presenceStats("presence-room");
    assert.equal(stats.clients, 2);
    assert.equal(stats.users, 2);
    await assert.rejects(a.presence("room"), {code: "bad_message"});
    await b.unsubscribe("presence-room");
    await T.waitFor(function () { return leaves.includes("bob"); }, 5000,
                    "bob leaves");
    assert.deepEqual(leaves, ["bob"]);
  });
});

describe("the server API's disconnect and unsubscribe (real server)",
         function () {
  it("a disconnect with a code from 4500 is not followed by a " +
     "reconnection; an API unsubscribe and subscribe reach the page",
     async function (t) {
    const srv = await start("");
    const ws = client(srv.url);
    await ws.subscribe("news");
    await ws.subscribe("sport");
    const r = await T.request(srv.apiPort, "POST", "/api/unsubscribe",
                              {client: ws.id, channel: "news"});
    if (r.status === 404) return skip(t, "no /api/unsubscribe yet");
    assert.ok(r.status === 200 || r.status === 202, r.status + r.body);
    await T.waitFor(function () {
      return ws.channels.length === 1;
    }, 5000, "news dropped");
    assert.deepEqual(ws.channels, ["sport"]);
    const added = T.within(ws.once("subscribed"), 5000, "subscribed");
    const s = await T.request(srv.apiPort, "POST", "/api/subscribe",
                              {client: ws.id, channel: "extra"});
    assert.ok(s.status === 200 || s.status === 202, s.status + s.body);
    assert.equal((await added).channel, "extra");
    assert.deepEqual(ws.channels, ["sport", "extra"]);

    const seen = [];
    ws.on("disconnected", function (info) { seen.push(info); });
    const closed = T.within(ws.once("close"), 5000, "close");
    const d = await T.request(srv.apiPort, "POST", "/api/disconnect",
                              {client: ws.id, code: 4500, reason: "bye"});
    assert.ok(d.status === 200 || d.status === 202, d.status + d.body);
    const ev = await closed;
    assert.equal(ev.code, 4500);
    assert.deepEqual(seen, [{code: 4500, reason: "bye", reconnect: false}]);
    await T.sleep(300);
    assert.equal(ws.state, "closed");
    const health = JSON.parse((await T.request(srv.port, "GET",
                                               "/health")).body);
    assert.equal(health.connections, 0);
  });
});
