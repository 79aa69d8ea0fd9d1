"use strict";
// The original BagouWebSocket's semantics (ORIGINAL.md §6), against a real
// bagou-server: options.events handlers get the whole message with
// `this` = the client; callbacks get the whole callback message; replies
// keep every field; readyState, settings, authenticated, the WebSocket
// constants; sub-protocols reach the server; callbackIds are UUIDs;
// events.callback is refused; send(text) is the WebSocket's send.
const {describe, it, before, after, afterEach} = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");
const BagouWebSocket = require("../bagou.js");
const T = require("../support/testing.js");

const SECRET = "original-secret-0123456789";
const UUID = new RegExp("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-" +
                        "[89ab][0-9a-f]{3}-[0-9a-f]{12}$");

let server;
const clients = [];

function client(options, protocols) {
  const ws = BagouWebSocket(server.url,
                            Object.assign({WebSocket: T.WS,
                                           reconnectDelay: 20,
                                           reconnectDelayMax: 100},
                                          options), protocols);
  clients.push(ws);
  return ws;
}

async function opened(options, protocols) {
  const ws = client(options, protocols);
  await T.within(ws.once("open"), 5000, "open");
  // The server's connect event too: a test that mutes the socket next
  // counts what it holds, and a connect event coming after the open
  // would be one more.
  await T.waitFor(function () { return ws.id; }, 5000, "connect");
  return ws;
}

// The callback message a callback-style call gets.
function answer(call) {
  return T.within(new Promise(call), 5000, "callback");
}

// The callbackId of the last frame sent with event `event`.
function sentId(Rec, event) {
  const frames = Rec.allSent().filter(function (m) {
    return m.event === event;
  });
  return frames[frames.length - 1].callbackId;
}

before(async function () {
  server = await T.startServer("[channels]\nclient_publish = all\n" +
                               "[auth]\nsecret = " + SECRET + "\n");
});

afterEach(function () {
  while (clients.length) clients.pop().close();
});

after(async function () {
  if (server) await server.stop();
});

describe("the original constructor and properties", function () {
  it("works without new; settings, readyState and the WebSocket " +
     "constants are there", async function () {
    const settings = {WebSocket: T.WS};
    const ws = BagouWebSocket(server.url, settings);
    clients.push(ws);
    assert.ok(ws instanceof BagouWebSocket);
    assert.equal(ws.settings, settings);
    assert.equal(ws.options, settings);
    assert.equal(ws.readyState, ws.CONNECTING);
    assert.deepEqual([ws.CONNECTING, ws.OPEN, ws.CLOSING, ws.CLOSED],
                     [0, 1, 2, 3]);
    assert.equal(BagouWebSocket.OPEN, 1);
    assert.equal(ws.authenticated, false);
    await T.within(ws.once("open"), 5000, "open");
    assert.equal(ws.readyState, 1);
    assert.equal(ws.bufferedAmount, 0);
    ws.close();
    await T.waitFor(function () { return ws.readyState === 3; }, 5000,
                    "CLOSED");
  });

  it("passes the sub-protocols to the server: it chooses bagou, and " +
     "refuses a protocol it does not speak", async function () {
    const ws = await opened({}, "bagou");
    assert.equal(ws.protocol, "bagou");
    assert.equal(ws.socket.protocol, "bagou");
    const list = await opened({}, ["chat", "bagou"]);
    assert.equal(list.protocol, "bagou");
    // Only an unknown protocol: the server refuses the upgrade (it never
    // opens), and the client gives up as told.
    const seen = [];
    const refused = client({reconnect: false, events: {
      open: function () { seen.push("open"); },
    }}, ["chat"]);
    await T.waitFor(function () { return refused.state === "closed"; },
                    5000, "refused");
    assert.deepEqual(seen, []);
    assert.equal(refused.readyState, 3);
  });

  it("uses UUID callbackIds, all different", async function () {
    const Rec = T.recorder();
    const ws = await opened({WebSocket: Rec});
    await ws.ping();
    await ws.subscribe("uuid");
    await ws.emit("x", {});
    const ids = Rec.allSent().map(function (m) { return m.callbackId; })
      .filter(Boolean);
    assert.equal(ids.length, 3);
    for (const id of ids) assert.match(id, UUID);
    assert.equal(new Set(ids).size, 3);
  });

  it("makes UUIDs from getRandomValues where randomUUID is missing (an " +
     "http:// page)", function () {
    const webcrypto = require("node:crypto").webcrypto;
    const src = fs.readFileSync(path.join(__dirname, "..", "bagou.js"),
                                "utf8");
    const sandbox = {
      module: {exports: {}}, setTimeout: setTimeout,
      clearTimeout: clearTimeout, setInterval: setInterval,
      clearInterval: clearInterval, console: console,
      crypto: {getRandomValues: function (a) {
        return webcrypto.getRandomValues(a);
      }},
    };
    vm.runInNewContext(src, sandbox);
    const Client = sandbox.module.exports;
    const sent = [];
    function Fake() { this.readyState = 0; }
    Fake.prototype.send = function (t) { sent.push(JSON.parse(t)); };
    Fake.prototype.close = function () {};
    const ws = new Client("ws://x/websocket", {WebSocket: Fake, timeout: 0,
                                               heartbeat: 0});
    ws.socket.readyState = 1;
    ws.socket.onopen({});
    ws.emit("a", {}, function () {});
    ws.emit("b", {}, function () {});
    assert.equal(sent.length, 2);
    assert.match(sent[0].callbackId, UUID);
    assert.notEqual(sent[0].callbackId, sent[1].callbackId);
    ws.close();
  });
});

describe("options.events: the whole message", function () {
  it("gives broadcasts, connect and server errors whole, with this = " +
     "the client", async function () {
    const got = [];
    let self = null;
    const ws = await opened({events: {
      message: function (msg) {
        self = this;
        got.push(["message", msg]);
      },
      connect: function (msg) { got.push(["connect", msg]); },
      error: function (msg) { got.push(["error", msg]); },
      said: function (msg) { got.push(["said", msg]); },
    }});
    await T.waitFor(function () { return got.length >= 1; }, 5000,
                    "connect");
    assert.deepEqual(got.shift(), ["connect", {event: "connect",
                     data: {id: ws.id, protocol: 1}}]);
    await ws.subscribe("room");
    await server.broadcast({event: "message", channel: "room",
                            data: {name: "Ada", text: "hi"}});
    await T.waitFor(function () { return got.length >= 1; }, 5000, "msg");
    assert.equal(self, ws);
    assert.deepEqual(got.shift(), ["message", {event: "message",
                     channel: "room", data: {name: "Ada", text: "hi"}}]);
    // A client publish: msg.from too.
    await ws.publish("room", "said", {text: "yo"});
    await T.waitFor(function () { return got.length >= 1; }, 5000, "said");
    assert.deepEqual(got.shift(), ["said", {event: "said", channel: "room",
                     data: {text: "yo"}, from: ws.id}]);
    // The server's error event, whole.
    ws.send("subscribe", {channel: "bad channel"});
    await T.waitFor(function () { return got.length >= 1; }, 5000, "error");
    const [name, err] = got.shift();
    assert.equal(name, "error");
    assert.equal(err.event, "error");
    assert.equal(err.data.code, "invalid_channel");
    assert.equal(err.data.event, "subscribe");
  });

  it("keeps on() and onChannel() data-first, and off() removes an " +
     "events handler", async function () {
    const got = [];
    const handler = function (msg) { got.push(["events", msg.data.n]); };
    const ws = await opened({events: {tick: handler}});
    ws.on("tick", function (data, msg) {
      got.push(["on", data.n, msg.event]);
    });
    ws.onChannel("t", function (data, msg) {
      got.push(["channel", data.n, msg.channel]);
    });
    await ws.subscribe("t");
    await server.broadcast({event: "tick", channel: "t", data: {n: 1}});
    await T.waitFor(function () { return got.length >= 3; }, 5000, "tick");
    assert.deepEqual(got, [["events", 1], ["on", 1, "tick"],
                           ["channel", 1, "t"]]);
    ws.off("tick", handler);
    await server.broadcast({event: "tick", channel: "t", data: {n: 2}});
    await T.waitFor(function () { return got.length >= 5; }, 5000, "tick 2");
    assert.deepEqual(got.slice(3), [["on", 2, "tick"], ["channel", 2, "t"]]);
  });

  it("hands the client's own errors over as a message too", async function () {
    const got = [];
    const ws = client({queueSize: 0, events: {
      error: function (msg) { got.push(msg); },
    }});
    ws.send("early", {});  // not open yet, and no room in the queue
    await T.waitFor(function () { return got.length >= 1; }, 5000, "error");
    assert.equal(got[0].event, "error");
    assert.equal(got[0].data.code, "queue_full");
  });

  it("drops events.callback with a console warning; answers still go " +
     "to the call's callback", async function () {
    const warned = [];
    const warn = console.warn;
    console.warn = function (text) { warned.push(String(text)); };
    let ws;
    try {
      ws = client({events: {callback: function () {
        throw new Error("events.callback must not run");
      }}});
    } finally {
      console.warn = warn;
    }
    assert.equal(warned.length, 1);
    assert.match(warned[0], /"callback" is a reserved event name/);
    await T.within(ws.once("open"), 5000, "open");
    const msg = await answer(function (resolve) {
      ws.emit("anything", {}, resolve);
    });
    assert.equal(msg.data.success, true);
  });
});

describe("callbacks: the whole callback message", function () {
  it("emit, subscribe, unsubscribe, store, publish, ping, authenticate " +
     "and auth all get {event, callbackId, data}", async function () {
    const Rec = T.recorder();
    const ws = await opened({WebSocket: Rec});
    const calls = [
      ["chat", function (cb) { ws.emit("chat", {text: "hi"}, cb); },
       {success: true}],
      ["subscribe", function (cb) { ws.subscribe("room", cb); },
       {success: true, channel: "room"}],
      ["unsubscribe", function (cb) { ws.unsubscribe("room", cb); },
       {success: true, channel: "room"}],
      ["store", function (cb) { ws.store("name", "Ada", cb); },
       {success: true}],
      ["publish", function (cb) { ws.publish("room", "said", {}, cb); },
       {success: true}],
      ["ping", function (cb) { ws.ping(cb); }, {success: true}],
    ];
    for (const [event, call, data] of calls) {
      let self = null;
      const msg = await answer(function (resolve) {
        call(function (m) { self = this; resolve(m); });
      });
      assert.deepEqual(msg, {event: "callback",
                             callbackId: sentId(Rec, event), data: data},
                       event);
      assert.match(msg.callbackId, UUID);
      assert.equal(self, ws);
    }
    // Failures are in data, as the server sent them.
    const bad = await answer(function (resolve) {
      ws.subscribe("bad channel", resolve);
    });
    assert.equal(bad.event, "callback");
    assert.equal(bad.data.success, false);
    assert.equal(bad.data.error.code, "invalid_channel");
    // authenticate with a token: msg.data.user, and ws.authenticated.
    const tok = T.jwt(SECRET, {sub: "ada", info: {name: "Ada"},
                               exp: Math.floor(Date.now() / 1000) + 600});
    const auth = await answer(function (resolve) {
      ws.authenticate(tok, resolve);
    });
    assert.deepEqual(auth.data, {success: true,
                                 user: {id: "ada", info: {name: "Ada"}}});
    assert.equal(ws.authenticated, true);
    const refused = await answer(function (resolve) {
      ws.emit("authenticate", {token: "not.a.jwt"}, resolve);
    });
    assert.equal(refused.data.error.code, "auth_failed");
    assert.equal(ws.authenticated, false);
    // Promises keep the data form.
    assert.deepEqual(await ws.subscribe("room"),
                     {success: true, channel: "room"});
  });

  it("a local failure comes in the same shape", async function () {
    const ws = client({queueSize: 0});
    const msg = await answer(function (resolve) {
      ws.emit("early", {}, resolve);
    });
    assert.equal(msg.event, "callback");
    assert.match(msg.callbackId, UUID);
    assert.equal(msg.data.success, false);
    assert.equal(msg.data.error.code, "queue_full");
  });

  it("gets an application's reply as sent: no data key when it had " +
     "none, and its other fields", async function () {
    const Rec = T.recorder();
    const ws = await opened({WebSocket: Rec});
    const sock = Rec.last();
    // The server would acknowledge the event itself; hold that answer
    // back and drop it, so that the reply published for the client
    // (what an application behind [forward] sends) answers instead.
    sock.muted = true;
    const first = answer(function (resolve) { ws.emit("a", {}, resolve); });
    const second = answer(function (resolve) { ws.emit("b", {}, resolve); });
    await T.waitFor(function () { return sock.held.length === 2; }, 5000,
                    "the two acknowledgements");
    sock.held = [];
    const idA = sentId(Rec, "a");
    const idB = sentId(Rec, "b");
    await server.broadcast({event: "callback", callbackId: idA,
                            client: ws.id});
    await server.broadcast({event: "callback", callbackId: idB,
                            client: ws.id, data: {success: true},
                            message: "Message received!", count: 2});
    await T.waitFor(function () { return sock.held.length === 2; }, 5000,
                    "the replies");
    sock.unmute();
    const a = await first;
    assert.deepEqual(a, {event: "callback", callbackId: idA});
    assert.equal("data" in a, false);
    assert.deepEqual(await second, {event: "callback", callbackId: idB,
                                    data: {success: true},
                                    message: "Message received!", count: 2});
  });
});

describe("replies and the message option", function () {
  it("a reply without an event reaches the message option only, whole",
     async function () {
    const got = [];
    const ws = await opened({
      message: function (msg) { got.push(["message", msg]); },
      events: {message: function (msg) { got.push(["events", msg]); }},
    });
    ws.on("message", function (data) { got.push(["on", data]); });
    await T.waitFor(function () { return ws.id; }, 5000, "connect");
    got.length = 0;  // the connect event went to the message option
    // What the original client.jsonify(success=True, message=...) sent.
    await server.broadcast({client: ws.id, success: true,
                            message: "Message received!"});
    await server.broadcast({event: "sentinel", client: ws.id});
    await T.waitFor(function () { return got.length >= 2; }, 5000,
                    "reply and sentinel");
    assert.deepEqual(got, [
      ["message", {success: true, message: "Message received!"}],
      ["message", {event: "sentinel"}],
    ]);
  });
});

describe("the WebSocket's own send and the session login data", function () {
  it("send(text) sends a JSON object string as is", async function () {
    const Rec = T.recorder();
    const ws = await opened({WebSocket: Rec});
    const got = [];
    ws.on("callback", function (data, msg) { got.push(msg); });
    const text = '{"event":"subscribe","data":{"channel":"raw"},' +
      '"callbackId":"raw-1"}';
    ws.send(text);
    await T.waitFor(function () { return got.length >= 1; }, 5000, "answer");
    assert.deepEqual(got[0], {event: "callback", callbackId: "raw-1",
                              data: {success: true, channel: "raw"}});
    const sent = Rec.last().sent;
    assert.deepEqual(sent[sent.length - 1], JSON.parse(text));
    // A string that is not a JSON object stays an event name.
    ws.send("{not json");
    assert.deepEqual(sent[sent.length - 1], {event: "{not json", data: {}});
  });

  it("remembers authenticate({sessionId}) as given and sends it again " +
     "after a reconnect; authenticated follows the answers",
     async function () {
    const Rec = T.recorder();
    const ws = await opened({WebSocket: Rec});
    const sock = Rec.last();
    // This server checks tokens only; the answer an application gives
    // to a session login ({user}, no success field) is put in its place.
    sock.muted = true;
    const done = answer(function (resolve) {
      ws.authenticate({sessionId: "k-1"}, resolve);
    });
    await T.waitFor(function () { return sock.held.length === 1; }, 5000,
                    "the server's refusal");
    sock.held = [];
    const id = sentId(Rec, "authenticate");
    const user = {model: "auth.user", pk: 42, fields: {username: "ada"}};
    sock.muted = false;
    sock.onmessage({data: JSON.stringify({event: "callback",
                                          callbackId: id,
                                          data: {user: user}})});
    assert.deepEqual(await done, {event: "callback", callbackId: id,
                                  data: {user: user}});
    assert.equal(ws.authenticated, true);
    // Dropped: the re-sync sends the same data first (this server
    // refuses it: then authenticated stays false, and it says so).
    const refused = T.nextEvent(ws, "error", 5000);
    sock.inner.terminate();
    await T.waitFor(function () { return Rec.instances.length === 2; },
                    5000, "reconnect");
    assert.equal(ws.authenticated, false);
    const again = await refused;
    assert.equal(again.data.code, "auth_failed");
    assert.deepEqual(Rec.last().sent[0].event, "authenticate");
    assert.deepEqual(Rec.last().sent[0].data, {sessionId: "k-1"});
    assert.equal(ws.authenticated, false);
  });
});
