"use strict";
// CLIENT-LOGIC TESTS AGAINST A PROTOCOL FAKE, NOT AGAINST bagou-server.
//
// support/fake.js is a small WebSocket server written for these tests that
// speaks the version 2 messages of docs/PROTOCOL.md (history and recovery,
// presence, the server's unsubscribe and disconnect) the way the client
// reads them, with knobs that make it misbehave on purpose. What is tested
// here is the client's own bookkeeping: positions per channel, resuming by
// itself after a reconnect, dropping duplicates, telling the page
// "recovered" or "gap", the Promises of history(), presence() and
// presenceStats(), join/leave handlers, and the close codes after which it
// does not reconnect. The same features against the real server are in
// server-v2.test.js (skipped until the server announces them).
const {describe, it, afterEach} = require("node:test");
const assert = require("node:assert/strict");
const BagouWebSocket = require("../bagou.js");
const T = require("../support/testing.js");
const {startFake} = require("../support/fake.js");

const FAST = {reconnectDelay: 20, reconnectDelayMax: 60, heartbeat: 0,
              timeout: 3000};

const fakes = [];
const clients = [];

async function fake() {
  const f = await startFake();
  fakes.push(f);
  return f;
}

function client(url, options) {
  const ws = new BagouWebSocket(url, Object.assign({WebSocket: T.WS}, FAST,
                                                   options));
  clients.push(ws);
  return ws;
}

afterEach(async function () {
  while (clients.length) clients.pop().close();
  while (fakes.length) await fakes.pop().stop();
});

/** Collects what the page sees of channel: [offset or n, ...]. */
function collect(ws, channel) {
  const got = [];
  ws.onChannel(channel, function (data) { got.push(data.n); });
  return got;
}

function events(ws, names) {
  const seen = [];
  for (const name of names) {
    ws.on(name, function (a) { seen.push([name, a]); });
  }
  return seen;
}

async function opened(ws) {
  if (ws.state !== "open") await T.within(ws.once("open"), 3000, "open");
}

/** Waits for the next open after a drop. */
async function reopened(ws, f, how) {
  const open = T.within(ws.once("open"), 3000, "reopen");
  how();
  await open;
}

describe("positions and recovery (protocol fake)", function () {
  it("tracks (epoch, offset) per channel from the subscribe answer and " +
     "the broadcasts", async function () {
    const f = await fake();
    const ws = client(f.url);
    const got = collect(ws, "h-news");
    await opened(ws);
    f.publish("h-news", "message", {n: 0});  // before: not delivered
    const res = await ws.subscribe("h-news");
    assert.equal(res.epoch, "epoch-1");
    assert.equal(res.offset, 1);
    assert.deepEqual(ws.position("h-news"), {epoch: "epoch-1", offset: 1});
    f.publish("h-other", "message", {n: 99});
    f.publish("h-news", "message", {n: 1});
    f.publish("h-news", "message", {n: 2});
    await T.waitFor(function () { return got.length === 2; }, 3000, "2");
    assert.deepEqual(got, [1, 2]);
    assert.deepEqual(ws.position("h-news"), {epoch: "epoch-1", offset: 4});
    assert.equal(ws.position("plain"), null);
    await ws.subscribe("plain");
    assert.equal(ws.position("plain"), null);  // no epoch: no history
    // The position returned is a copy.
    ws.position("h-news").offset = 0;
    assert.equal(ws.position("h-news").offset, 4);
    // unsubscribe forgets it.
    await ws.unsubscribe("h-news");
    assert.equal(ws.position("h-news"), null);
  });

  it("resumes by itself after a reconnect: the missed messages once, in " +
     "order, then recovered", async function () {
    const f = await fake();
    const ws = client(f.url);
    const got = collect(ws, "h-news");
    const seen = events(ws, ["recovered", "gap", "resubscribed"]);
    await ws.subscribe("h-news");
    f.publish("h-news", "message", {n: 1});
    await T.waitFor(function () { return got.length === 1; }, 3000, "1");

    // Cut; what is published meanwhile comes back with the recovery.
    const open = T.within(ws.once("open"), 3000, "reopen");
    f.hold = function () { return true; };  // the new connection waits
    f.drop();
    f.publish("h-news", "message", {n: 2});
    f.publish("h-news", "message", {n: 3});
    await open;
    await T.waitFor(function () {
      return f.received("subscribe").length === 2;
    }, 3000, "the re-subscribe");
    const again = f.received("subscribe")[1];
    assert.deepEqual(again.data, {channel: "h-news",
                                  recover: {epoch: "epoch-1", offset: 1}});
    f.hold = null;
    f._handle(Array.from(f.conns)[0], again);
    await T.waitFor(function () { return seen.length >= 2; }, 3000,
                    "recovered");
    f.publish("h-news", "message", {n: 4});
    await T.waitFor(function () { return got.length === 4; }, 3000, "4");
    assert.deepEqual(got, [1, 2, 3, 4]);
    assert.deepEqual(seen[0], ["recovered", {
      channel: "h-news", epoch: "epoch-1", offset: 3,
      since: {epoch: "epoch-1", offset: 1}, count: 2}]);
    assert.equal(seen[1][0], "resubscribed");
    assert.equal(seen[1][1].channel, "h-news");
    assert.equal(seen[1][1].data.recovered, true);
    assert.equal(seen.length, 2);
    assert.deepEqual(ws.position("h-news"), {epoch: "epoch-1", offset: 4});
  });

  it("drops what it already delivered when a recovery replays it",
     async function () {
    const f = await fake();
    f.replayFrom = 5;   // replays 5 offsets more than asked
    const ws = client(f.url);
    const got = collect(ws, "h-news");
    const all = [];
    ws.on("message", function (data) { all.push(data.n); });
    await ws.subscribe("h-news");
    for (let n = 1; n <= 3; n++) f.publish("h-news", "message", {n: n});
    await T.waitFor(function () { return got.length === 3; }, 3000, "3");
    const rec = T.within(ws.once("recovered"), 3000, "recovered");
    f.drop();
    f.publish("h-news", "message", {n: 4});
    const info = await rec;
    assert.equal(info.count, 1);
    f.publish("h-news", "message", {n: 5});
    await T.waitFor(function () { return got.length === 5; }, 3000, "5");
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
    assert.deepEqual(all, [1, 2, 3, 4, 5]);
    // A live duplicate (same offset again) is dropped too.
    f.sendAll({event: "message", channel: "h-news", data: {n: 5},
               offset: 5});
    f.publish("h-news", "message", {n: 6});
    await T.waitFor(function () { return got.length === 6; }, 3000, "6");
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  });

  it("holds live messages that come before the recover answer and " +
     "delivers them after the replay, in order", async function () {
    const f = await fake();
    const ws = client(f.url);
    const got = collect(ws, "h-news");
    const order = [];
    ws.on("recovered", function () { order.push("recovered"); });
    ws.onChannel("h-news", function (d) { order.push(d.n); });
    await ws.subscribe("h-news");
    f.publish("h-news", "message", {n: 1});
    await T.waitFor(function () { return got.length === 1; }, 3000, "1");
    const rec = T.within(ws.once("recovered"), 3000, "recovered");
    f.hold = function () { return true; };
    f.drop();
    f.publish("h-news", "message", {n: 2});
    await T.waitFor(function () { return f.conns.size === 1 &&
      f.received("subscribe").length === 2; }, 3000, "re-subscribe");
    // A live message sent to the new connection before the replay and
    // the answer, as a racy server might.
    f.liveFirst = [{event: "message", data: {n: 3}}];
    f.hold = null;
    f._handle(Array.from(f.conns)[0], f.received("subscribe")[1]);
    await rec;
    // On the wire: 3 (live), then the replay 2, 3: delivered 2, 3, each
    // once, then "recovered".
    assert.deepEqual(order, [1, 2, 3, "recovered"]);
    assert.deepEqual(got, [1, 2, 3]);
  });
});

describe("recovery cut short (protocol fake)", function () {
  it("drops what a recovery held when the connection drops again, and " +
     "recovers it on the next one", async function () {
    const f = await fake();
    const ws = client(f.url);
    const got = collect(ws, "h-news");
    const seen = events(ws, ["recovered", "gap"]);
    await ws.subscribe("h-news");
    f.publish("h-news", "message", {n: 1});
    await T.waitFor(function () { return got.length === 1; }, 3000, "1");
    // The first reconnection replays 2 but never answers: held, not
    // delivered (a message sent after it is), and the connection drops.
    const sentinel = [];
    ws.on("sentinel", function () { sentinel.push(1); });
    f.hold = function (msg, c) {
      if (msg.event !== "subscribe") return false;
      f.send(c, f.log.get("h-news")[1]);
      f.send(c, {event: "sentinel", channel: "other", data: {}});
      return true;
    };
    f.drop();
    f.publish("h-news", "message", {n: 2});
    await T.waitFor(function () { return sentinel.length === 1; }, 3000,
                    "the sentinel after the replay");
    assert.deepEqual(got, [1]);
    f.hold = null;
    f.drop();
    await T.waitFor(function () { return seen.length === 1; }, 3000,
                    "recovered");
    assert.deepEqual(f.received("subscribe")[2].data.recover,
                     {epoch: "epoch-1", offset: 1});
    assert.deepEqual(got, [1, 2]);
    assert.equal(seen[0][0], "recovered");
  });
});

describe("positions across channels (protocol fake)", function () {
  it("a broadcast to several channels, delivered once, is not replayed " +
     "for the others after a reconnect", async function () {
    const f = await fake();
    const ws = client(f.url);
    const all = [];
    ws.on("message", function (data, msg) {
      all.push(msg.channel + ":" + data.n);
    });
    await ws.subscribe("h-a");
    await ws.subscribe("h-b");
    f.publish(["h-a", "h-b"], "message", {n: 1});
    f.publish("h-a", "message", {n: 2});
    await T.waitFor(function () { return all.length === 2; }, 3000, "2");
    // h-b had everything up to offset 2 (offsets grow across channels).
    assert.deepEqual(ws.position("h-b"), {epoch: "epoch-1", offset: 2});
    let recovered = 0;
    ws.on("recovered", function () { recovered++; });
    f.drop();
    await T.waitFor(function () { return recovered === 2; }, 3000,
                    "recovered");
    f.publish("h-b", "message", {n: 3});
    await T.waitFor(function () { return all.length === 3; }, 3000, "3");
    assert.deepEqual(all, ["h-a:1", "h-a:2", "h-b:3"]);
    assert.deepEqual(f.received("subscribe").slice(2).map(function (m) {
      return m.data.recover.offset;
    }), [2, 2]);
  });

  it("a channel still recovering when the connection drops keeps its own " +
     "position", async function () {
    const f = await fake();
    const ws = client(f.url);
    const got = collect(ws, "h-c");
    const gotA = collect(ws, "h-a");
    await ws.subscribe("h-a");
    await ws.subscribe("h-c");
    f.publish("h-c", "message", {n: 1});
    await T.waitFor(function () { return got.length === 1; }, 3000, "1");
    // The next connection answers h-a, not h-c; meanwhile h-c gets 2
    // (not delivered: not subscribed there yet) and h-a gets 3, live.
    f.hold = function (msg) {
      return msg.event === "subscribe" && msg.data.channel === "h-c";
    };
    const open = T.within(ws.once("recovered"), 3000, "h-a recovered");
    f.drop();
    await open;
    f.publish("h-c", "message", {n: 2});
    f.publish("h-a", "message", {n: 3});
    await T.waitFor(function () { return gotA.length === 1; }, 3000, "3");
    assert.deepEqual(ws.position("h-c"), {epoch: "epoch-1", offset: 1});
    // Dropped before h-c's answer: h-c resumes from 1, and gets 2.
    f.hold = null;
    const back = T.within(ws.once("recovered"), 3000, "recovered");
    f.drop();
    await back;
    await T.waitFor(function () { return got.length === 2; }, 3000, "2");
    assert.deepEqual(got, [1, 2]);
    const last = f.received("subscribe").filter(function (m) {
      return m.data.channel === "h-c";
    }).pop();
    assert.deepEqual(last.data.recover, {epoch: "epoch-1", offset: 1});
  });
});

describe("gaps (protocol fake)", function () {
  it("reports a gap after a new epoch, and delivers the new epoch's " +
     "offsets from 1 again", async function () {
    const f = await fake();
    const ws = client(f.url);
    const got = collect(ws, "h-news");
    await ws.subscribe("h-news");
    for (let n = 1; n <= 5; n++) f.publish("h-news", "message", {n: n});
    await T.waitFor(function () { return got.length === 5; }, 3000, "5");
    const gap = T.within(ws.once("gap"), 3000, "gap");
    let recovered = 0;
    ws.on("recovered", function () { recovered++; });
    // The server restarts: new epoch, the old log is gone.
    await f.stop();
    f.newEpoch("epoch-2");
    await f.start();
    const info = await gap;
    assert.deepEqual(info, {channel: "h-news", epoch: "epoch-2", offset: 0,
                            since: {epoch: "epoch-1", offset: 5}});
    f.publish("h-news", "message", {n: 6});  // offset 1 of epoch-2
    f.publish("h-news", "message", {n: 7});
    await T.waitFor(function () { return got.length === 7; }, 3000, "7");
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(ws.position("h-news"), {epoch: "epoch-2", offset: 2});
    assert.equal(recovered, 0);
  });

  it("reports a gap when the position is older than what the server " +
     "keeps, and replays nothing", async function () {
    const f = await fake();
    f.kept = 2;
    const ws = client(f.url);
    const got = collect(ws, "h-news");
    await ws.subscribe("h-news");
    f.publish("h-news", "message", {n: 1});
    await T.waitFor(function () { return got.length === 1; }, 3000, "1");
    ws.close();
    for (let n = 2; n <= 5; n++) f.publish("h-news", "message", {n: n});
    const gap = T.within(ws.once("gap"), 3000, "gap");
    ws.connect();
    const info = await gap;
    assert.deepEqual(info.since, {epoch: "epoch-1", offset: 1});
    assert.equal(info.epoch, "epoch-1");
    assert.equal(info.offset, 5);
    f.publish("h-news", "message", {n: 6});
    await T.waitFor(function () { return got.length === 2; }, 3000, "6");
    assert.deepEqual(got, [1, 6]);
    assert.deepEqual(ws.position("h-news"), {epoch: "epoch-1", offset: 6});
  });

  it("reports a gap when the channel lost its history", async function () {
    const f = await fake();
    const ws = client(f.url);
    await ws.subscribe("h-news");
    const gap = T.within(ws.once("gap"), 3000, "gap");
    f.history = /^$/;
    f.drop();
    const info = await gap;
    assert.deepEqual(info, {channel: "h-news", epoch: null, offset: null,
                            since: {epoch: "epoch-1", offset: 0}});
    assert.equal(ws.position("h-news"), null);
    assert.deepEqual(ws.channels, ["h-news"]);
  });

  it("a recover on a channel already subscribed, answered without " +
     "recovered, is no recovery: no event, live messages kept",
     async function () {
    const f = await fake();
    const ws = client(f.url);
    const got = collect(ws, "h-news");
    const seen = events(ws, ["recovered", "gap"]);
    await ws.subscribe("h-news");
    f.publish("h-news", "message", {n: 1});
    await T.waitFor(function () { return got.length === 1; }, 3000, "1");
    // As bagou-server answers it: idempotent, without "recovered"; a
    // live message comes before the answer.
    f.hold = function (msg, c) {
      if (msg.event !== "subscribe") return false;
      f.publish("h-news", "message", {n: 2});
      f._answer(c, msg, {success: true, channel: "h-news",
                         epoch: "epoch-1", offset: 2});
      return true;
    };
    const res = await ws.subscribe("h-news",
                                   {recover: {epoch: "epoch-1", offset: 0}});
    assert.equal(res.recovered, undefined);
    f.publish("h-news", "message", {n: 3});
    await T.waitFor(function () { return got.length === 3; }, 3000, "3");
    assert.deepEqual(got, [1, 2, 3]);
    assert.deepEqual(seen, []);
  });

  it("subscribe(channel, {recover}) resumes from a position the page " +
     "kept; bad positions throw", async function () {
    const f = await fake();
    for (let n = 1; n <= 4; n++) f.publish("h-news", "message", {n: n});
    const ws = client(f.url);
    const got = collect(ws, "h-news");
    const seen = events(ws, ["recovered", "gap"]);
    const res = await ws.subscribe("h-news",
                                   {recover: {epoch: "epoch-1", offset: 2}});
    assert.equal(res.recovered, true);
    assert.deepEqual(got, [3, 4]);
    assert.equal(seen.length, 1);
    assert.equal(seen[0][0], "recovered");
    assert.equal(seen[0][1].count, 2);
    const lost = await ws.subscribe("h-other",
                                    {recover: {epoch: "old", offset: 7}});
    assert.equal(lost.recovered, false);
    assert.equal(seen[1][0], "gap");
    assert.deepEqual(seen[1][1].since, {epoch: "old", offset: 7});
    const cbs = [];
    ws.subscribe("h-third", {recover: {epoch: "epoch-1", offset: 0},
                             callback: function (msg) { cbs.push(msg); }});
    await T.waitFor(function () { return cbs.length === 1; }, 3000, "cb");
    assert.equal(cbs[0].data.recovered, true);
    // emit("subscribe") with recover is the same request.
    const viaEmit = await ws.emit("subscribe", {
      channel: "h-fourth", recover: {epoch: "epoch-2", offset: 0}});
    assert.equal(viaEmit.recovered, false);
    assert.equal(seen[seen.length - 1][0], "gap");
    assert.equal(seen[seen.length - 1][1].channel, "h-fourth");
    assert.throws(function () {
      ws.emit("subscribe", {channel: "h-news", recover: {epoch: "e"}});
    }, TypeError);
    for (const bad of [{epoch: 1, offset: 1}, {epoch: "e", offset: -1},
                       {epoch: "e", offset: 1.5}, {epoch: "e"}, "e:1"]) {
      assert.throws(function () { ws.subscribe("h-news", {recover: bad}); },
                    TypeError);
    }
  });

  it("a subscribe with recover that never reaches the server fails and " +
     "ends its recovery", async function () {
    const f = await fake();
    const ws = client(f.url, {queueSize: 0});
    const got = collect(ws, "h-news");
    await opened(ws);
    await ws.subscribe("h-news");
    f.publish("h-news", "message", {n: 1});
    await T.waitFor(function () { return got.length === 1; }, 3000, "1");
    await f.stop();
    await T.waitFor(function () { return ws.state !== "open"; }, 3000, "lost");
    await assert.rejects(ws.subscribe("h-news", {recover: {epoch: "epoch-1",
                                                           offset: 1}}),
                         {code: "queue_full"});
    assert.equal(ws._recovering.size, 0);
  });
});

describe("history, presence (protocol fake)", function () {
  it("history() resolves with the publications, oldest first; limit and " +
     "since go to the server", async function () {
    const f = await fake();
    for (let n = 1; n <= 5; n++) f.publish("h-news", "message", {n: n});
    const ws = client(f.url);
    const all = await ws.history("h-news");
    assert.equal(all.success, true);
    assert.equal(all.epoch, "epoch-1");
    assert.equal(all.offset, 5);
    assert.deepEqual(all.publications.map(function (p) { return p.data.n; }),
                     [1, 2, 3, 4, 5]);
    assert.deepEqual(all.publications[0], {event: "message",
                                           channel: "h-news",
                                           data: {n: 1}, offset: 1});
    const two = await ws.history("h-news", {limit: 2});
    assert.deepEqual(two.publications.map(function (p) { return p.offset; }),
                     [4, 5]);
    const since = await ws.history("h-news",
                                   {since: {epoch: "epoch-1", offset: 3}});
    assert.deepEqual(since.publications.map(function (p) {
      return p.offset;
    }), [4, 5]);
    const other = await ws.history("h-news",
                                   {since: {epoch: "x", offset: 3}});
    assert.equal(other.gap, true);
    const sent = f.received("history").map(function (m) { return m.data; });
    assert.deepEqual(sent, [
      {channel: "h-news"},
      {channel: "h-news", limit: 2},
      {channel: "h-news", since: {epoch: "epoch-1", offset: 3}},
      {channel: "h-news", since: {epoch: "x", offset: 3}},
    ]);
    // history() changes no position and delivers nothing.
    assert.equal(ws.position("h-news"), null);
    const cbs = [];
    ws.history("h-news", {limit: 1}, function (msg) { cbs.push(msg); });
    ws.history("h-news", function (msg) { cbs.push(msg); });
    await T.waitFor(function () { return cbs.length === 2; }, 3000, "cbs");
    assert.equal(cbs[0].event, "callback");
    assert.equal(cbs[0].data.publications.length, 1);
    assert.equal(cbs[1].data.publications.length, 5);
    const err = await ws.history("private-x").catch(function (e) {
      return e;
    });
    assert.equal(err.code, "forbidden");
    assert.equal(err.event, "history");
    assert.equal(err.channel, "private-x");
    assert.throws(function () { ws.history("h-news", 5); }, TypeError);
    assert.throws(function () {
      ws.history("h-news", {since: {offset: 1}});
    }, TypeError);
  });

  it("presence() and presenceStats() resolve with members and counts; " +
     "errors reject with the code", async function () {
    const f = await fake();
    const a = client(f.url);
    const b = client(f.url);
    const b2 = client(f.url);
    await a.authenticate("ada");
    await b.authenticate("bob");
    await b2.authenticate("bob");
    const first = await a.subscribe("presence-room");
    assert.deepEqual(first.members, [{user: "ada",
                                      info: {name: "User ada"}}]);
    assert.equal(first.count, 1);
    await b.subscribe("presence-room");
    await b2.subscribe("presence-room");
    const res = await a.presence("presence-room");
    assert.deepEqual(res.members.map(function (m) { return m.user; }).sort(),
                     ["ada", "bob"]);
    const stats = await a.presenceStats("presence-room");
    assert.deepEqual(stats, {success: true, users: 2, clients: 3});
    assert.deepEqual(f.received("presence_stats")[0].data,
                     {channel: "presence-room"});
    await assert.rejects(a.presence("news"), {code: "bad_message",
                                              event: "presence",
                                              channel: "news"});
    await assert.rejects(a.presenceStats("news"),
                         {code: "bad_message", event: "presence_stats"});
    const cbs = [];
    a.presence("presence-room", function (m) { cbs.push(m); });
    a.presenceStats("presence-room", function (m) { cbs.push(m); });
    await T.waitFor(function () { return cbs.length === 2; }, 3000, "cbs");
    assert.equal(cbs[0].data.members.length, 2);
    assert.equal(cbs[1].data.clients, 3);
  });

  it("join and leave handlers per channel: onJoin/onLeave and subscribe's " +
     "onJoin/onLeave; not channel message handlers", async function () {
    const f = await fake();
    const a = client(f.url);
    await a.authenticate("ada");
    const joins = [];
    const leaves = [];
    const other = [];
    const messages = [];
    const global = [];
    a.onJoin("presence-room", function (m, msg) {
      joins.push(m.user + ":" + msg.event);
    });
    a.onJoin("presence-other", function (m) { other.push(m.user); });
    a.onChannel("presence-room", function (d, msg) {
      messages.push(msg.event);
    });
    a.on("presence_join", function (m, msg) {
      global.push(msg.channel + ":" + m.user);
    });
    const subLeaves = [];
    const subJoins = [];
    await a.subscribe("presence-room", {
      onLeave: function (m) { subLeaves.push(m.user); },
      onJoin: function (m) { subJoins.push(m.user); },
    });
    a.onLeave("presence-room", function (m) { leaves.push(m.user); });
    const b = client(f.url);
    await b.authenticate("bob");
    await b.subscribe("presence-room");
    const b2 = client(f.url);
    await b2.authenticate("bob");
    await b2.subscribe("presence-room");   // bob again: no second join
    b2.close();
    f.publish("presence-room", "chat", {n: 1});
    await T.waitFor(function () { return messages.length === 1; }, 3000,
                    "chat");
    b.close();
    await T.waitFor(function () { return leaves.length === 1; }, 3000,
                    "leave");
    assert.deepEqual(joins, ["ada:presence_join", "bob:presence_join"]);
    assert.deepEqual(subJoins, ["ada", "bob"]);
    assert.deepEqual(leaves, ["bob"]);
    assert.deepEqual(subLeaves, ["bob"]);
    assert.deepEqual(other, []);
    assert.deepEqual(messages, ["chat"]);
    assert.deepEqual(global, ["presence-room:ada", "presence-room:bob"]);

    // unsubscribe removes what subscribe added, not onJoin/onLeave's.
    await a.unsubscribe("presence-room");
    await a.subscribe("presence-room");
    const c = client(f.url);
    await c.authenticate("cy");
    await c.subscribe("presence-room");
    await T.waitFor(function () { return joins.length === 4; }, 3000,
                    "cy joins");
    assert.deepEqual(subJoins, ["ada", "bob"]);
    a.offJoin("presence-room");
    a.offLeave("presence-room", function () {});   // not added: no-op
    c.close();
    await T.waitFor(function () { return leaves.length === 2; }, 3000,
                    "cy leaves");
    a.offLeave("presence-room");
    const d = client(f.url);
    await d.authenticate("di");
    await d.subscribe("presence-room");
    await T.waitFor(function () { return global.length === 5; }, 3000,
                    "di joins");
    assert.equal(joins.length, 4);
    assert.throws(function () { a.onJoin("presence-room", 1); }, TypeError);
  });

  it("after a reconnect a presence channel is re-subscribed and the " +
     "page gets the members again in resubscribed", async function () {
    const f = await fake();
    const a = client(f.url, {token: "ada"});
    await a.subscribe("presence-room");
    const again = T.within(a.once("resubscribed"), 3000, "resubscribed");
    f.drop();
    const info = await again;
    assert.equal(info.channel, "presence-room");
    assert.deepEqual(info.data.members, [{user: "ada",
                                          info: {name: "User ada"}}]);
    assert.equal(info.data.count, 1);
  });
});

describe("the server's unsubscribe and disconnect (protocol fake)",
         function () {
  it("a server-initiated unsubscribe drops the channel, its position and " +
     "subscribe's handlers, and is told to the page", async function () {
    const f = await fake();
    const ws = client(f.url);
    const viaSub = [];
    const viaOn = [];
    await ws.subscribe("h-news", {onMessage: function (d) {
      viaSub.push(d.n);
    }});
    ws.onChannel("h-news", function (d, msg) { viaOn.push(msg.event); });
    await ws.subscribe("sport");
    const told = T.within(ws.once("unsubscribed"), 3000, "unsubscribed");
    let channelsThen = null;
    ws.on("unsubscribed", function () { channelsThen = ws.channels; });
    f.sendAll({event: "unsubscribed", data: {channel: "h-news"}});
    assert.deepEqual(await told, {channel: "h-news"});
    assert.deepEqual(channelsThen, ["sport"]);
    assert.equal(ws.position("h-news"), null);
    assert.deepEqual(viaOn, []);   // a notice, not a channel message
    // Not re-subscribed after a reconnect.
    const open = T.within(ws.once("open"), 3000, "reopen");
    f.drop();
    await open;
    await ws.ping();
    const subs = f.received("subscribe").map(function (m) {
      return m.data.channel;
    });
    assert.deepEqual(subs, ["h-news", "sport", "sport"]);
    // subscribe()'s onMessage went with it; onChannel stays.
    f.sendAll({event: "message", channel: "h-news", data: {n: 1}});
    await T.waitFor(function () { return viaOn.length === 1; }, 3000, "on");
    assert.deepEqual(viaSub, []);
  });

  it("a server-initiated subscribe is kept and re-subscribed with its " +
     "position", async function () {
    const f = await fake();
    const ws = client(f.url);
    await opened(ws);
    const told = T.within(ws.once("subscribed"), 3000, "subscribed");
    f.publish("h-news", "message", {n: 1});
    for (const c of f.conns) c.channels.add("h-news").add("news");
    // The server API's shape: the channel in data, no position.
    f.sendAll({event: "subscribed", data: {channel: "news"}});
    assert.deepEqual(await told, {channel: "news"});
    // With a position (and the channel beside data) it is kept too.
    f.sendAll({event: "subscribed", channel: "h-news",
               data: {success: true, channel: "h-news", epoch: "epoch-1",
                      offset: 1}});
    await T.waitFor(function () { return ws.channels.length === 2; }, 3000,
                    "h-news");
    assert.deepEqual(ws.channels, ["news", "h-news"]);
    assert.equal(ws.position("news"), null);
    assert.deepEqual(ws.position("h-news"), {epoch: "epoch-1", offset: 1});
    const rec = T.within(ws.once("recovered"), 3000, "recovered");
    f.drop();
    await rec;
    assert.deepEqual(f.received("subscribe").map(function (m) {
      return m.data;
    }), [{channel: "news"},
         {channel: "h-news", recover: {epoch: "epoch-1", offset: 1}}]);
  });

  it("does not reconnect after a close code 4500-4999: disconnected, " +
     "close, state closed; calls in flight fail with disconnected, later " +
     "ones with closed", async function () {
    const f = await fake();
    const ws = client(f.url);
    await opened(ws);
    await ws.subscribe("news");
    const seen = events(ws, ["disconnected", "close", "reconnecting",
                             "connecting"]);
    f.hold = function (msg) { return msg.event === "chat"; };
    const pending = ws.emit("chat", {});
    await T.waitFor(function () { return f.received("chat").length === 1; },
                    3000, "chat sent");
    f.closeAll(4503, "banned");
    await assert.rejects(pending, {code: "disconnected"});
    await T.waitFor(function () { return ws.state === "closed"; }, 3000,
                    "closed");
    assert.deepEqual(seen.map(function (s) { return s[0]; }),
                     ["disconnected", "close"]);
    assert.deepEqual(seen[0][1], {code: 4503, reason: "banned",
                                  reconnect: false});
    assert.equal(seen[1][1].code, 4503);
    await assert.rejects(ws.ping(), {code: "closed"});
    await T.sleep(150);   // several backoff delays: still closed
    assert.equal(ws.state, "closed");
    assert.equal(f.conns.size, 0);
    // connect() opens again, with the channels.
    ws.connect();
    await opened(ws);
    await ws.ping();
    assert.equal(f.received("subscribe").length, 2);
  });

  it("reconnects after the other 4000-4499 codes, and says so in " +
     "disconnected", async function () {
    const f = await fake();
    const ws = client(f.url);
    await opened(ws);
    await ws.subscribe("news");   // no history: neither recovered nor gap
    const seen = events(ws, ["disconnected", "close", "recovered", "gap"]);
    const open = T.within(ws.once("open"), 3000, "reopen");
    f.closeAll(4000, "go away, come back");
    await open;
    assert.deepEqual(seen[0], ["disconnected", {code: 4000,
                                                reason: "go away, come back",
                                                reconnect: true}]);
    assert.equal(seen[1][0], "close");
    f.closeAll(4499);
    await T.within(ws.once("open"), 3000, "reopen");
    assert.equal(seen[2][1].reconnect, true);
    // 1000 and 1001 are no disconnect of the server's choosing.
    f.closeAll(1001);
    await T.within(ws.once("open"), 3000, "reopen");
    await ws.ping();
    assert.deepEqual(seen.map(function (s) { return s[0]; }),
                     ["disconnected", "close", "disconnected", "close",
                      "close"]);
    assert.equal(f.received("subscribe").length, 4);
  });

  it("with reconnect: false a 4000 disconnect says reconnect: false",
     async function () {
    const f = await fake();
    const ws = client(f.url, {reconnect: false});
    await opened(ws);
    const told = T.within(ws.once("disconnected"), 3000, "disconnected");
    f.closeAll(4000);
    assert.deepEqual(await told, {code: 4000, reason: "", reconnect: false});
  });
});
