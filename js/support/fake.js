"use strict";
/*
 * A PROTOCOL FAKE, not bagou-server: a small WebSocket server (the `ws`
 * package) on 127.0.0.1 that speaks the version 2 messages of
 * docs/PROTOCOL.md as the client sees them (history and recovery §9,
 * presence §10, the server-initiated unsubscribe and disconnect of §11),
 * so that js/test/protocol-fake.test.js can test the client's own logic
 * (positions, resume, dedupe, gap, promises, presence handlers, close
 * codes) whatever the server branch it runs against. Each knob below
 * makes it misbehave on purpose in one way a real server may (replay
 * what the client had, deliver live messages before the recover answer,
 * change epoch, trim history).
 *
 * The real server is tested by js/test/server-v2.test.js.
 */
const WS = require("ws");

const HOST = "127.0.0.1";

class FakeServer {
  constructor() {
    this.port = 0;
    this.wss = null;
    this.conns = new Set();
    this.nextId = 1;
    this.epoch = "epoch-1";
    this.offset = 0;          // the last offset given, this epoch
    this.log = new Map();     // channel -> [{event, channel, data, offset}]
    this.trimmed = new Map(); // channel -> the last offset no longer kept
    this.history = /^h-/;     // channels with history
    this.presencePrefix = "presence-";
    this.kept = Infinity;     // publications kept per channel
    this.replayFrom = 0;      // > 0: recovery replays that many extra old
    this.liveFirst = [];      // broadcasts sent before a recover's answer
    this.hold = null;         // fn(msg, conn): true holds the answer back
    this.frames = [];         // every message received, {conn, msg}
  }

  get url() { return "ws://" + HOST + ":" + this.port + "/websocket"; }

  /** Listens (on the same port again after stop()). */
  start() {
    const self = this;
    return new Promise(function (resolve, reject) {
      const wss = new WS.WebSocketServer({host: HOST, port: self.port});
      wss.on("error", reject);
      wss.on("listening", function () {
        self.port = wss.address().port;
        self.wss = wss;
        resolve(self);
      });
      wss.on("connection", function (sock) { self._open(sock); });
    });
  }

  /** Drops every connection (1006 for the client) and stops listening. */
  stop() {
    const wss = this.wss;
    this.wss = null;
    for (const c of this.conns) c.sock.terminate();
    this.conns.clear();
    return new Promise(function (resolve) {
      if (!wss) resolve();
      else wss.close(function () { resolve(); });
    });
  }

  /** Terminates every connection, keeps listening. */
  drop() {
    for (const c of Array.from(this.conns)) c.sock.terminate();
  }

  /** Closes every connection with a close frame (code, reason). */
  closeAll(code, reason) {
    for (const c of Array.from(this.conns)) c.sock.close(code, reason);
  }

  /** A new epoch: offsets start again from 1, the log is gone. */
  newEpoch(epoch) {
    this.epoch = epoch;
    this.offset = 0;
    this.log = new Map();
    this.trimmed = new Map();
  }

  /** Publishes to the subscribers of channel (a name or a list: one
   *  offset, kept per history channel, delivered once per connection as
   *  the first listed channel it is subscribed to). */
  publish(channel, event, data) {
    const names = Array.isArray(channel) ? channel : [channel];
    const self = this;
    const offset = names.some(function (n) { return self.history.test(n); }) ?
      ++this.offset : 0;
    const label = function (name) {
      const m = {event: event, channel: name, data: data};
      if (offset && self.history.test(name)) m.offset = offset;
      return m;
    };
    for (const name of names) {
      if (!offset || !this.history.test(name)) continue;
      const list = this.log.get(name) || [];
      list.push(label(name));
      while (list.length > this.kept) {
        this.trimmed.set(name, list.shift().offset);
      }
      this.log.set(name, list);
    }
    for (const c of this.conns) {
      const first = names.find(function (n) { return c.channels.has(n); });
      if (first !== undefined) this.send(c, label(first));
    }
    return label(names[0]);
  }

  /** Sends msg to every connection (or to those test(conn) accepts). */
  sendAll(msg, test) {
    for (const c of this.conns) if (!test || test(c)) this.send(c, msg);
  }

  send(c, msg) {
    if (c.sock.readyState === WS.OPEN) c.sock.send(JSON.stringify(msg));
  }

  /** The received messages named event, in order. */
  received(event) {
    return this.frames.filter(function (f) {
      return f.msg.event === event;
    }).map(function (f) { return f.msg; });
  }

  _open(sock) {
    const c = {id: "fake-" + this.nextId++, sock: sock, channels: new Set(),
               user: null, info: null};
    this.conns.add(c);
    const self = this;
    sock.on("message", function (text) {
      let msg;
      try { msg = JSON.parse(String(text)); } catch (e) { return; }
      self.frames.push({conn: c, msg: msg});
      if (self.hold && self.hold(msg, c)) return;
      self._handle(c, msg);
    });
    sock.on("close", function () {
      self.conns.delete(c);
      for (const ch of c.channels) self._leave(c, ch);
    });
    this.send(c, {event: "connect", data: {id: c.id, protocol: 1}});
  }

  _answer(c, msg, data) {
    if (msg.callbackId) {
      this.send(c, {event: "callback", callbackId: msg.callbackId,
                    data: data});
    } else if (data.success === false) {
      this.send(c, {event: "error", data: Object.assign({event: msg.event},
                                                        data.error)});
    }
  }

  _fail(c, msg, code, message) {
    this._answer(c, msg, {success: false,
                          error: {code: code, message: message}});
  }

  /** Handles one client message (also what a hold() let through). */
  _handle(c, msg) {
    const data = msg.data || {};
    const ch = data.channel;
    switch (msg.event) {
    case "ping":
      return this._answer(c, msg, {success: true});
    case "authenticate":
      // The token is the user id (a fake: no JWT).
      if (typeof data.token !== "string" || !data.token) {
        return this._fail(c, msg, "auth_failed", "no token");
      }
      c.user = data.token;
      c.info = {name: "User " + data.token};
      return this._answer(c, msg, {success: true,
                                   user: {id: c.user, info: c.info}});
    case "subscribe":
      return this._subscribe(c, msg, ch, data.recover);
    case "unsubscribe":
      if (c.channels.has(ch)) {
        c.channels.delete(ch);
        this._leave(c, ch);
      }
      return this._answer(c, msg, {success: true, channel: ch});
    case "history":
      return this._history(c, msg, ch, data);
    case "presence":
    case "presence_stats":
      if (!ch.startsWith(this.presencePrefix)) {
        return this._fail(c, msg, "bad_message", "not a presence channel");
      }
      if (msg.event === "presence") {
        return this._answer(c, msg, {success: true,
                                     members: this._members(ch)});
      }
      return this._answer(c, msg, {
        success: true, users: this._members(ch).length,
        clients: Array.from(this.conns).filter(function (o) {
          return o.channels.has(ch);
        }).length,
      });
    default:
      return this._answer(c, msg, {success: true});
    }
  }

  _subscribe(c, msg, ch, recover) {
    if (ch.startsWith(this.presencePrefix) && !c.user) {
      return this._fail(c, msg, "forbidden", "presence needs a user");
    }
    const joined = !c.channels.has(ch);
    const firstOfUser = joined && ch.startsWith(this.presencePrefix) &&
      !this._members(ch).some(function (m) { return m.user === c.user; });
    c.channels.add(ch);
    const res = {success: true, channel: ch};
    if (this.history.test(ch)) {
      const list = this.log.get(ch) || [];
      res.epoch = this.epoch;
      res.offset = this.offset;
      if (recover) {
        const ok = recover.epoch === this.epoch &&
          recover.offset >= (this.trimmed.get(ch) || 0);
        const live = this.liveFirst;
        this.liveFirst = [];
        for (const m of live) this.send(c, this.publish(ch, m.event, m.data));
        if (ok) {
          for (const m of list) {
            if (m.offset > recover.offset - this.replayFrom) this.send(c, m);
          }
        }
        res.offset = this.offset;
        res.recovered = ok;
      }
    }
    if (ch.startsWith(this.presencePrefix)) {
      res.members = this._members(ch);
      res.count = res.members.length;
    }
    this._answer(c, msg, res);
    if (firstOfUser) {
      const join = {event: "presence_join", channel: ch,
                    data: {user: c.user, info: c.info}};
      this.sendAll(join, function (o) { return o.channels.has(ch); });
    }
  }

  _history(c, msg, ch, data) {
    if (typeof ch !== "string" || !ch) {
      return this._fail(c, msg, "invalid_channel", "no channel");
    }
    if (ch.startsWith("private-")) {
      return this._fail(c, msg, "forbidden", "private channel");
    }
    const list = this.log.get(ch) || [];
    const limit = Math.min(data.limit === undefined ? 50 : data.limit, 100);
    let pubs = list;
    let gap = false;
    if (data.since) {
      if (data.since.epoch === this.epoch) {
        pubs = list.filter(function (m) {
          return m.offset > data.since.offset;
        });
      } else {
        gap = true;
      }
    }
    pubs = pubs.slice(Math.max(0, pubs.length - limit));
    const res = {success: true, channel: ch, epoch: this.epoch,
                 offset: this.offset, publications: pubs};
    if (gap) res.gap = true;
    this._answer(c, msg, res);
  }

  _members(ch) {
    const users = new Map();
    for (const o of this.conns) {
      if (o.user && o.channels.has(ch) && !users.has(o.user)) {
        users.set(o.user, {user: o.user, info: o.info});
      }
    }
    return Array.from(users.values());
  }

  _leave(c, ch) {
    if (!ch.startsWith(this.presencePrefix) || !c.user) return;
    const still = Array.from(this.conns).some(function (o) {
      return o !== c && o.user === c.user && o.channels.has(ch);
    });
    if (still) return;
    const leave = {event: "presence_leave", channel: ch,
                   data: {user: c.user, info: c.info}};
    this.sendAll(leave, function (o) { return o.channels.has(ch); });
  }
}

async function startFake() {
  return new FakeServer().start();
}

module.exports = {FakeServer, startFake};
