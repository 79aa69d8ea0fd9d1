/*
 * bagou.js - the client for Bagou (protocol 1). No dependencies, no build
 * step: load it with a <script> tag (global BagouWebSocket), require() it
 * (CommonJS), or import it (bagou.mjs). docs/client.md is the reference.
 *
 *   const ws = new BagouWebSocket("wss://example.com/websocket", {
 *     events: { message: (msg) => console.log(msg.channel, msg.data) },
 *   });
 *   ws.onChannel("news", (data) => show(data));
 *   await ws.subscribe("news");               // Promise of the data
 *   ws.emit("chat", {text: "hi"}, (msg) => msg.data.success); // original
 *   ws.on("reconnecting", ({attempt, delay}) => {});
 *
 * Two forms, as docs/client.md §4 tabulates: what the original client
 * took (options.events handlers, callbacks) gets the whole message, as the
 * original did; what is new (on(), onChannel, Promises) gets data first.
 *
 * What it keeps across connections: the subscribed channels, the store and
 * the authentication. After a reconnect it re-sends them by itself, in that
 * order (authentication first), then what was queued while disconnected.
 * For a channel with history (PROTOCOL.md §9) it also keeps the last
 * position seen, (epoch, offset), re-subscribes with "recover" from it,
 * drops what it has already delivered, and says "recovered" or "gap".
 *
 * Inside, one request object per message follows one path: the queue
 * (this._queue, while the socket is not open, or behind an authenticate
 * still in flight), then the pending table (this._pending, sent and waiting
 * for its callback), then settled exactly once: by its answer, a timeout,
 * a local failure (queue_full, closed, disconnected), never twice.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) {
    module.exports = factory();
  } else {
    root.BagouWebSocket = factory();
  }
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  const DEFAULTS = {
    timeout: 10000,            // ms before a callback/Promise fails, 0 = never
    reconnect: true,
    reconnectDelay: 500,       // ms, base of the exponential backoff
    reconnectDelayMax: 10000,  // ms, cap of the backoff
    reconnectAttempts: Infinity, // attempts in a row before giving up
    queueSize: 100,            // messages kept while disconnected
    heartbeat: 25000,          // ms between application pings, 0 = off
    heartbeatTimeout: 10000,   // ms to wait for the answer to a ping
    connectTimeout: 10000,     // ms for one connection attempt, 0 = none
    token: null,               // JWT (string or function) to authenticate with
  };

  // Events whose success changes what the client re-sends after a reconnect.
  // They are idempotent, so one lost with the connection is sent again.
  const STATE_EVENTS = {subscribe: 1, unsubscribe: 1, store: 1,
                        authenticate: 1};

  const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;  // WebSocket's

  // Close codes from the server after which the client does not
  // reconnect (docs/client.md §6): the server, or the application through
  // POST /api/disconnect, said this connection must not come back. The
  // rest of 4000-4999 (4001 slow consumer, 4002 token expired, a
  // disconnect that lets the client back) is followed by a reconnection.
  const NO_RECONNECT_MIN = 4500, NO_RECONNECT_MAX = 4999;

  // Server notices about a channel (PROTOCOL.md §10, §11): they carry the
  // channel, but are not messages published to it, so channel message
  // handlers (onChannel, onMessage) do not get them.
  const NOTICES = {presence_join: "join", presence_leave: "leave",
                   subscribed: "", unsubscribed: ""};
  const noop = function () {};

  function failure(code, message) {
    return {success: false, error: {code: code, message: message}};
  }

  // callbackIds are UUID strings (version 4), as the original's were.
  function uuid() {
    const c = typeof crypto !== "undefined" ? crypto : null;
    if (c && typeof c.randomUUID === "function") return c.randomUUID();
    const b = new Uint8Array(16);
    if (c && typeof c.getRandomValues === "function") {
      c.getRandomValues(b);
    } else {
      for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = "";
    for (let i = 0; i < 16; i++) h += (b[i] + 0x100).toString(16).slice(1);
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) +
      "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  // What a callback gets: the whole callback message, as the server sent
  // it, or one in the same shape for a failure the client detected.
  function callbackMessage(req, res) {
    return {event: "callback", callbackId: req.id, data: res};
  }

  // An authenticate answer that authenticated: {success: true, ...}, or
  // an application's answer with a user and no success field (the
  // original session login answered {user: ...}, or {} when refused).
  function authOk(res) {
    return !!res && (res.success === true ||
                     (res.success === undefined && res.user != null));
  }

  // An options.events handler: the whole message (for a state event,
  // which is no message, its argument), `this` the client.
  function wholeMessage(fn) {
    const wrapper = function (a, b) {
      return fn.call(this, b !== undefined ? b : a);
    };
    wrapper.listener = fn;
    return wrapper;
  }

  // Run user code; an exception is reported (uncaught, asynchronously)
  // without breaking the client's own bookkeeping.
  function safely(fn, self, args) {
    try {
      return fn.apply(self, args);
    } catch (e) {
      setTimeout(function () { throw e; }, 0);
    }
  }

  // The frame is built when the call is made: what is sent later from the
  // queue is what the data was then, and data that JSON cannot encode
  // (a cycle, a BigInt) throws in the caller, not in a socket event.
  function encode(req) {
    const msg = {event: req.event, data: req.data};
    if (req.id) msg.callbackId = req.id;
    req.text = JSON.stringify(msg);
  }

  // A position given by the page: {epoch: string, offset: integer >= 0}.
  function position(p, what) {
    if (!p || typeof p !== "object" || typeof p.epoch !== "string" ||
        typeof p.offset !== "number" || !(p.offset >= 0) ||
        Math.floor(p.offset) !== p.offset) {
      throw new TypeError("BagouWebSocket." + what + " must be {epoch: " +
                          "string, offset: integer >= 0}");
    }
    return {epoch: p.epoch, offset: p.offset};
  }

  function toError(res, req) {
    const info = (res && res.error) || {};
    const err = new Error(info.message || info.code || "request failed");
    err.code = info.code || "error";
    err.event = req.event;
    if (req.channel !== undefined) err.channel = req.channel;
    err.data = res;
    return err;
  }

  /**
   * new BagouWebSocket(url, options, protocols): connects at once. The
   * options are described in docs/client.md; `open`, `close`, `message`
   * and `events` are the original ones. protocols (the WebSocket
   * sub-protocols) go to the WebSocket constructor on every connection.
   */
  function BagouWebSocket(url, options, protocols) {
    if (!(this instanceof BagouWebSocket)) {
      return new BagouWebSocket(url, options, protocols);
    }
    options = options || {};
    this.url = url;
    this.protocols = protocols;
    this.options = options;
    this.settings = options;  // the original's name for them
    this.authenticated = false;  // this connection is authenticated
    this.id = null;          // client id from the server's connect event
    this.state = "closed";   // connecting | open | reconnecting | closed
    this.socket = null;      // the current WebSocket, if any

    const opt = {};
    for (const key in DEFAULTS) {
      opt[key] = options[key] !== undefined && options[key] !== null ?
        options[key] : DEFAULTS[key];
    }
    this._opt = opt;
    this._Impl = options.WebSocket ||
      (typeof WebSocket !== "undefined" ? WebSocket : null);
    if (!this._Impl) {
      throw new Error("BagouWebSocket: no WebSocket available " +
                      "(pass options.WebSocket, e.g. require(\"ws\"))");
    }

    this._handlers = Object.create(null);  // event -> [fn]
    // channel -> [{fn, auto, kind}], kind "message", "join" or "leave"
    this._channelHandlers = new Map();
    this._queue = [];           // requests waiting to be sent, in order
    this._queued = 0;           // new user messages among them (queueSize)
    this._pending = new Map();  // callbackId -> request, in sending order
    this._barrier = null;       // authenticate in flight: the rest waits

    // What the server holds for this client, re-sent after a reconnect.
    this._channels = new Set();
    // channel -> {epoch, offset}: the last position delivered on a
    // channel with history, known once a subscribe answer gave its epoch.
    this._positions = new Map();
    // channel -> {req, from, buffer}: a subscribe with "recover" in
    // flight; the channel's messages wait in buffer until its answer.
    this._recovering = new Map();
    // {epoch, offset}: the highest offset delivered live on this
    // connection. Offsets grow across channels in one epoch and each
    // connection gets them in that order, so every channel with a
    // position and no recovery on its way has had all of its messages up
    // to there: its position moves up to it (_markPositions), and a
    // broadcast to several channels, delivered once, is not replayed for
    // the others after a reconnect.
    this._mark = null;
    this._storeData = {};
    this._auth = opt.token ? {token: opt.token} : null;
    this._authToken = null;     // the token a function returned, this time

    this._stopped = true;       // close() was called (or not yet connected)
    this._attempt = 0;          // failed attempts since the last open
    this._generation = 0;       // bumps on every new attempt and on close()
    this._timers = {reconnect: null, connect: null, beat: null, beatWait: null};
    this._beatReq = null;
    this._inClose = false;      // firing "close" for a connection just lost

    // The original's events: called with the whole message.
    const events = options.events || {};
    for (const name in events) {
      if (!Object.prototype.hasOwnProperty.call(events, name)) continue;
      if (name === "callback") {
        // Reserved: answers go to the call's own callback.
        if (typeof console !== "undefined") {
          console.warn("BagouWebSocket: \"callback\" is a reserved " +
                       "event name; the events.callback handler is " +
                       "ignored (pass a callback to the call instead)");
        }
        continue;
      }
      if (typeof events[name] !== "function") {
        throw new TypeError("BagouWebSocket: events." + name +
                            " must be a function");
      }
      this.on(name, wholeMessage(events[name]));
    }
    this.connect();
  }

  const proto = BagouWebSocket.prototype;

  /* ------------------------------------------------------------ events */

  /** on(event, fn): fn(data, msg) for server events, fn(arg) for states. */
  proto.on = function (event, fn) {
    if (typeof fn !== "function") {
      throw new TypeError("BagouWebSocket.on: handler must be a function");
    }
    (this._handlers[event] = this._handlers[event] || []).push(fn);
    return this;
  };

  /** off(event, fn) removes fn; off(event) every handler of event; off()
   *  every handler. Handlers added with once() are removed by their fn. */
  proto.off = function (event, fn) {
    if (event === undefined) {
      this._handlers = Object.create(null);
      return this;
    }
    const list = this._handlers[event] || [];
    this._handlers[event] = fn ? list.filter(function (f) {
      return f !== fn && f.listener !== fn;
    }) : [];
    return this;
  };

  /** once(event, fn): fn runs for the next event only. Without fn,
   *  returns a Promise of the event's first argument. */
  proto.once = function (event, fn) {
    if (fn === undefined) {
      const self = this;
      return new Promise(function (resolve) { self.once(event, resolve); });
    }
    const self = this;
    const wrapper = function () {
      self.off(event, wrapper);
      return fn.apply(this, arguments);
    };
    wrapper.listener = fn;
    return this.on(event, wrapper);
  };

  /** onChannel(channel, fn): fn(data, msg) for every message that arrives
   *  on channel, whatever its event. Adding the same fn twice is a no-op. */
  proto.onChannel = function (channel, fn) {
    this._addChannelHandler(channel, fn, false, "message");
    return this;
  };

  /** offChannel(channel, fn) removes fn; offChannel(channel) all. */
  proto.offChannel = function (channel, fn) {
    return this._offKind(channel, fn, "message");
  };

  /** onJoin(channel, fn): fn(member, msg) when a user joins the presence
   *  channel (presence_join; member = {user, info}). Same function once. */
  proto.onJoin = function (channel, fn) {
    this._addChannelHandler(channel, fn, false, "join");
    return this;
  };

  /** onLeave(channel, fn): fn(member, msg) when a user's last connection
   *  leaves the presence channel (presence_leave). */
  proto.onLeave = function (channel, fn) {
    this._addChannelHandler(channel, fn, false, "leave");
    return this;
  };

  /** offJoin(channel, fn) / offLeave(channel, fn); without fn, all. */
  proto.offJoin = function (channel, fn) {
    return this._offKind(channel, fn, "join");
  };
  proto.offLeave = function (channel, fn) {
    return this._offKind(channel, fn, "leave");
  };

  proto._offKind = function (channel, fn, kind) {
    this._removeChannelEntries(channel, function (h) {
      return h.kind === kind && (!fn || h.fn === fn);
    });
    return this;
  };

  proto._addChannelHandler = function (channel, fn, auto, kind) {
    if (typeof fn !== "function") {
      throw new TypeError("BagouWebSocket: channel handler must be a " +
                          "function");
    }
    const list = this._channelHandlers.get(channel) || [];
    if (list.some(function (h) { return h.fn === fn && h.kind === kind; })) {
      return null;
    }
    const entry = {fn: fn, auto: auto, kind: kind};
    list.push(entry);
    this._channelHandlers.set(channel, list);
    return entry;
  };

  proto._removeChannelEntries = function (channel, test) {
    const list = this._channelHandlers.get(channel);
    if (!list) return;
    const rest = list.filter(function (h) { return !test(h); });
    if (rest.length) this._channelHandlers.set(channel, rest);
    else this._channelHandlers.delete(channel);
  };

  proto._fire = function (event, a, b) {
    const list = this._handlers[event];
    if (!list || !list.length) return;
    const copy = list.slice();
    for (let i = 0; i < copy.length; i++) safely(copy[i], this, [a, b]);
  };

  // A client-side error, delivered like the server's error events; with
  // no "error" handler it goes to the console rather than nowhere.
  proto._error = function (code, message, extra) {
    const data = {code: code, message: message};
    if (extra) Object.assign(data, extra);
    const list = this._handlers.error;
    if ((!list || !list.length) && typeof console !== "undefined") {
      console.warn("BagouWebSocket: " + code + ": " + message);
    }
    this._fire("error", data, {event: "error", data: data});
  };

  proto._setState = function (state, event, arg) {
    this.state = state;
    if (event) this._emitState(event, arg);
  };

  // The state events, with the original open/close options first.
  proto._emitState = function (event, arg) {
    if (event === "open" && this.options.open) {
      safely(this.options.open, this, [arg]);
    }
    if (event === "close" && this.options.close) {
      safely(this.options.close, this, [arg]);
    }
    this._fire(event, arg);
  };

  /* ------------------------------------------------------------ calls */

  /**
   * emit(event, data, callback): sends one message. With a callback,
   * callback(msg) gets the whole callback message, {event: "callback",
   * callbackId, data: {success: true, ...} or {success: false, error:
   * {code, message}}}, and emit returns this. Without, returns a Promise
   * of the data, rejected with an Error carrying .code.
   */
  proto.emit = function (event, data, callback) {
    if (typeof event !== "string" || !event) {
      throw new TypeError("BagouWebSocket.emit: event must be a non-empty " +
                          "string");
    }
    if (typeof data === "function" && callback === undefined) {
      callback = data;
      data = undefined;
    }
    data = data === undefined ? {} : data;
    const extra = {};
    if (STATE_EVENTS[event] && data && typeof data === "object") {
      if (event === "subscribe" || event === "unsubscribe") {
        extra.channel = data.channel;
      }
      if (event === "subscribe" && data.recover != null) {
        // As subscribe(channel, {recover}): recovered or gap follows.
        extra.recover = position(data.recover, "emit: recover");
        extra.already = this._channels.has(data.channel);
      }
      if (event === "authenticate") {
        extra.barrier = true;
        // What is sent again after a reconnect: the token, or the data
        // as given (the original's {sessionId: ...}).
        extra.authWith = typeof data.token === "string" ?
          {token: data.token} : {data: Object.assign({}, data)};
      }
    }
    const req = this._prepare(event, data, callback, extra);
    if (extra.recover) this._startRecovery(extra.channel, req, extra.recover);
    return this._launch(req);
  };

  /** send(event, data): fire and forget (no callbackId, no answer). Queued
   *  while disconnected; failures arrive as "error" events.
   *  send(text) with one string holding a JSON object is the WebSocket's
   *  own send (the original returned the WebSocket): text goes as is. */
  proto.send = function (event, data) {
    if (typeof event !== "string" || !event) {
      throw new TypeError("BagouWebSocket.send: event must be a non-empty " +
                          "string");
    }
    let raw = null;
    if (arguments.length === 1 && event.charAt(0) === "{") {
      let parsed = null;
      try { parsed = JSON.parse(event); } catch (e) { /* an event name */ }
      if (parsed && typeof parsed === "object") raw = parsed;
    }
    const req = {id: null, event: raw ? raw.event : event,
                 data: raw ? raw.data : data === undefined ? {} : data,
                 internal: false, counted: true, settled: false, done: null};
    if (raw) req.text = event;
    else encode(req);
    this._submit(req);
    return this;
  };

  /**
   * subscribe(channel, callback) - the original form: callback(answer).
   * subscribe(channel, {onMessage, onJoin, onLeave, recover, callback}) -
   *   also adds the handlers (removed again by unsubscribe(channel) or a
   *   failure); recover: {epoch, offset} asks for what followed that
   *   position (PROTOCOL.md §9), answered by "recovered" or "gap".
   * Without a callback, returns a Promise. Channels are re-subscribed after
   * every reconnect, with "recover" from the last position on a channel
   * with history.
   */
  proto.subscribe = function (channel, arg) {
    let callback = arg;
    const entries = [];
    const data = {channel: channel};
    let recover = null;
    if (arg && typeof arg === "object") {
      callback = arg.callback;
      if (arg.recover !== undefined && arg.recover !== null) {
        recover = position(arg.recover, "subscribe: recover");
        data.recover = recover;
      }
      const kinds = [["onMessage", "message"], ["onJoin", "join"],
                     ["onLeave", "leave"]];
      for (const k of kinds) {
        if (arg[k[0]] === undefined) continue;
        const entry = this._addChannelHandler(channel, arg[k[0]], true, k[1]);
        if (entry) entries.push(entry);
      }
    }
    const req = this._prepare("subscribe", data, callback,
                              {channel: channel, entries: entries,
                               recover: recover,
                               already: this._channels.has(channel)});
    if (recover) this._startRecovery(channel, req, recover);
    return this._launch(req);
  };

  /** history(channel, {limit, since: {epoch, offset}}, callback): the
   *  channel's last publications, or those after since (PROTOCOL.md §9).
   *  Promise of {success, channel, epoch, offset, publications, gap?}
   *  without a callback. Positions are not changed by it. */
  proto.history = function (channel, opts, callback) {
    if (typeof opts === "function" && callback === undefined) {
      callback = opts;
      opts = undefined;
    }
    const data = {channel: channel};
    if (opts !== undefined && opts !== null) {
      if (typeof opts !== "object") {
        throw new TypeError("BagouWebSocket.history: options must be an " +
                            "object");
      }
      if (opts.limit !== undefined) data.limit = opts.limit;
      if (opts.since !== undefined && opts.since !== null) {
        data.since = position(opts.since, "history: since");
      }
    }
    return this._request("history", data, callback, {channel: channel});
  };

  /** presence(channel, callback): the members of a presence channel,
   *  across the cluster: Promise of {success, members: [{user, info}]}. */
  proto.presence = function (channel, callback) {
    return this._request("presence", {channel: channel}, callback,
                         {channel: channel});
  };

  /** presenceStats(channel, callback): Promise of {success, clients,
   *  users} for a presence channel. */
  proto.presenceStats = function (channel, callback) {
    return this._request("presence_stats", {channel: channel}, callback,
                         {channel: channel});
  };

  /** position(channel): {epoch, offset} of the last message delivered on
   *  a channel with history (a copy), or null. */
  proto.position = function (channel) {
    const pos = this._positions.get(channel);
    if (!pos) return null;
    const mark = this._mark;
    const live = !this._recovering.has(channel);
    return {epoch: pos.epoch,
            offset: live && mark && mark.epoch === pos.epoch ?
              Math.max(pos.offset, mark.offset) : pos.offset};
  };

  /** unsubscribe(channel, callback): leaves channel (and drops the
   *  handlers subscribe() added for it). Promise without callback. */
  proto.unsubscribe = function (channel, callback) {
    return this._request("unsubscribe", {channel: channel}, callback,
                         {channel: channel});
  };

  /** store(key, value, callback) or store({key: value, ...}, callback):
   *  merged into the connection's store, re-sent after a reconnect. */
  proto.store = function (key, value, callback) {
    let data;
    if (key && typeof key === "object") {
      data = Object.assign({}, key);
      callback = value;
    } else {
      data = {};
      data[key] = value;
    }
    return this._request("store", data, callback);
  };

  /** authenticate(token, callback): HS256 JWT. Remembered on success and
   *  sent again first thing after a reconnect. Messages sent after it wait
   *  for its answer. authenticate({sessionId: KEY}, callback) sends that
   *  object as the data instead (the original session login). */
  proto.authenticate = function (token, callback) {
    if (token && typeof token === "object" && !Array.isArray(token)) {
      const data = Object.assign({}, token);
      return this._request("authenticate", data, callback,
                           {barrier: true, authWith: {data: data}});
    }
    if (typeof token !== "string") {
      throw new TypeError("BagouWebSocket.authenticate: token must be a " +
                          "string or an object");
    }
    return this._request("authenticate", {token: token}, callback,
                         {barrier: true, authWith: {token: token}});
  };

  /** auth(callback): authenticate without a token, the session-cookie
   *  path answered by the application. Remembered like authenticate(). */
  proto.auth = function (callback) {
    return this._request("authenticate", {}, callback,
                         {barrier: true, authWith: {token: null}});
  };

  /** publish(channel, event, data, callback): client publish, where the
   *  server's [channels] client_publish allows it. */
  proto.publish = function (channel, event, data, callback) {
    if (typeof data === "function" && callback === undefined) {
      callback = data;
      data = undefined;
    }
    return this._request("publish", {channel: channel, event: event,
                                     data: data === undefined ? {} : data},
                         callback, {channel: channel});
  };

  /** ping(callback): a round trip through the server. */
  proto.ping = function (callback) {
    return this._request("ping", {}, callback);
  };

  /** The channels the server has confirmed, in subscription order. */
  Object.defineProperty(proto, "channels", {
    get: function () { return Array.from(this._channels); },
  });

  /** The store as the server has confirmed it (a copy). */
  Object.defineProperty(proto, "storeData", {
    get: function () { return Object.assign({}, this._storeData); },
  });

  /* The WebSocket's own properties, as the original (which returned the
   * WebSocket itself) had them. readyState is the current socket's;
   * between connections CONNECTING while a reconnection is on its way,
   * CLOSED once the client stopped. */
  Object.defineProperty(proto, "readyState", {
    get: function () {
      if (this.socket) return this.socket.readyState;
      return this.state === "closed" ? CLOSED : CONNECTING;
    },
  });
  ["protocol", "extensions", "bufferedAmount", "binaryType"].forEach(
    function (name) {
      Object.defineProperty(proto, name, {
        get: function () {
          const s = this.socket;
          if (s && s[name] !== undefined) return s[name];
          return name === "bufferedAmount" ? 0 :
            name === "binaryType" ? "blob" : "";
        },
      });
    });
  [["CONNECTING", CONNECTING], ["OPEN", OPEN], ["CLOSING", CLOSING],
   ["CLOSED", CLOSED]].forEach(function (kv) {
    Object.defineProperty(proto, kv[0], {value: kv[1]});
    Object.defineProperty(BagouWebSocket, kv[0], {value: kv[1]});
  });

  /* ------------------------------------------------------ requests */

  proto._request = function (event, data, callback, extra) {
    return this._launch(this._prepare(event, data, callback, extra));
  };

  // A request built (its frame encoded, its callback or Promise made)
  // but not armed or submitted yet: _launch does that.
  proto._prepare = function (event, data, callback, extra) {
    const self = this;
    const req = Object.assign({
      id: uuid(), event: event, data: data, internal: false,
      counted: true, settled: false, done: null, timer: null, where: null,
    }, extra || {});
    encode(req);
    let promise = null;
    if (typeof callback === "function") {
      // The original form: the whole callback message.
      req.done = function (res, msg) {
        safely(callback, self, [msg || callbackMessage(req, res)]);
      };
    } else if (callback !== undefined && callback !== null) {
      throw new TypeError("BagouWebSocket: callback must be a function");
    } else {
      promise = new Promise(function (resolve, reject) {
        req.done = function (res) {
          if (res && res.success === false) reject(toError(res, req));
          else resolve(res);
        };
      });
    }
    req.promise = promise;
    return req;
  };

  proto._launch = function (req) {
    this._arm(req);
    this._submit(req);
    return req.promise || this;
  };

  // Internal requests (the re-sync after a reconnect) report failures as
  // "error" events.
  proto._internal = function (event, data, extra) {
    const self = this;
    const req = Object.assign({
      id: uuid(), event: event, data: data, internal: true,
      counted: false, settled: false, timer: null, where: null,
    }, extra || {});
    encode(req);
    req.done = function (res) {
      if (res && res.success === false) {
        const info = res.error || {};
        const more = {event: event};
        if (req.channel !== undefined) more.channel = req.channel;
        self._error(info.code || "error", info.message || "", more);
      }
    };
    this._arm(req);
    return req;
  };

  proto._arm = function (req) {
    const self = this;
    if (this._opt.timeout > 0) {
      req.timer = setTimeout(function () { self._expire(req); },
                             this._opt.timeout);
    }
  };

  // Settle once: a local failure is delivered asynchronously, so a
  // callback never runs inside the call that made the request. res is
  // the answer's data, msg the whole callback message (none for a local
  // failure).
  proto._settle = function (req, res, later, msg) {
    if (req.settled) return;
    req.settled = true;
    if (req.timer) clearTimeout(req.timer);
    req.timer = null;
    if (req.recover && req.where !== "pending") {
      // Never to be answered (closed, queue_full, expired in the queue):
      // its recovery ends here.
      const rec = this._recovering.get(req.channel);
      if (rec && rec.req === req) this._flushRecovery(req.channel, rec);
    }
    if (req.done) {
      if (later) {
        Promise.resolve().then(function () { req.done(res, msg); });
      } else {
        req.done(res, msg);
      }
    } else if (res && res.success === false && !req.internal) {
      // send(): nobody waits for an answer, so say it as an error event.
      const self = this;
      Promise.resolve().then(function () {
        self._error(res.error.code, res.error.message, {event: req.event});
      });
    }
  };

  proto._fail = function (req, code, message) {
    this._settle(req, failure(code, message), true);
  };

  proto._canSend = function () {
    return this.state === "open" && this.socket !== null &&
      this.socket.readyState === OPEN && this._barrier === null;
  };

  proto._submit = function (req) {
    if (this.state === "closed") {
      this._fail(req, "closed", "the client is closed");
      return;
    }
    if (this._canSend() && this._queue.length === 0) {
      this._transmit(req);
      return;
    }
    if (req.counted && this._queued >= this._opt.queueSize) {
      this._fail(req, "queue_full", "the send queue is full (" +
                 this._opt.queueSize + " messages)");
      return;
    }
    req.where = "queue";
    this._queue.push(req);
    if (req.counted) this._queued++;
  };

  proto._transmit = function (req) {
    if (req.id) {
      this._pending.set(req.id, req);
      req.where = "pending";
    } else {
      req.where = null;
    }
    if (req.barrier) this._barrier = req;
    this.socket.send(req.text);
  };

  proto._flush = function () {
    while (this._queue.length && this._canSend()) {
      const req = this._queue.shift();
      if (req.counted) this._queued--;
      req.counted = false;
      this._transmit(req);
    }
  };

  proto._expire = function (req) {
    req.timer = null;
    if (req.settled) return;
    if (req.where === "queue") {
      // Never sent: it leaves the queue, so it never goes out later.
      const i = this._queue.indexOf(req);
      if (i >= 0) this._queue.splice(i, 1);
      if (req.counted) this._queued--;
      req.where = null;
    } else if (req.where === "pending") {
      // A state event stays pending so that its late answer still updates
      // what is re-sent after a reconnect; any other is forgotten.
      if (!STATE_EVENTS[req.event]) {
        this._pending.delete(req.id);
        req.where = null;
      }
      if (this._barrier === req) {
        this._barrier = null;
        this._settle(req, failure("timeout", "no answer within " +
                                  this._opt.timeout + " ms"));
        this._flush();
        return;
      }
    }
    this._settle(req, failure("timeout", "no answer within " +
                              this._opt.timeout + " ms"));
  };

  // The answer to one of our messages: res its data, msg the whole
  // callback message.
  proto._answer = function (req, res, msg) {
    this._pending.delete(req.id);
    req.where = null;
    const ok = !(res && res.success === false);
    const ch = req.channel;
    let resubscribed = false;
    if (req.event === "subscribe") {
      if (ok) {
        this._channels.add(ch);
        this._subscribed(req, res || {});
        resubscribed = !!req.resync;
      } else if (req.resync) {
        // The new connection is not subscribed: forget the channel.
        this._forget(ch);
      } else {
        const entries = req.entries || [];
        this._removeChannelEntries(ch, function (h) {
          return entries.indexOf(h) >= 0;
        });
        const rec = this._recovering.get(ch);
        if (rec && rec.req === req) this._flushRecovery(ch, rec);
      }
    } else if (req.event === "unsubscribe" && ok) {
      this._forget(ch);
    } else if (req.event === "store" && ok && req.data &&
               typeof req.data === "object") {
      Object.assign(this._storeData, req.data);
    } else if (req.event === "authenticate") {
      if (authOk(res)) {
        this.authenticated = true;
        if (req.authWith && !req.resync) {
          this._auth = req.authWith;
          this._authToken = null;
        }
      } else if (!ok) {
        this.authenticated = false;
      }
    }
    if (req.beat) {
      req.done(res);
      return;
    }
    const wasBarrier = this._barrier === req;
    if (wasBarrier) this._barrier = null;
    this._settle(req, res || {}, false, msg);
    if (wasBarrier) this._flush();
    if (resubscribed) {
      this._fire("resubscribed", {channel: ch, data: res || {}});
    }
  };

  // Leaves nothing of channel behind: no re-subscription, no position,
  // no recovery (its held messages dropped), no handler subscribe() added.
  proto._forget = function (channel) {
    this._channels.delete(channel);
    this._positions.delete(channel);
    this._recovering.delete(channel);
    this._removeChannelEntries(channel, function (h) { return h.auto; });
  };

  /* ---------------------------------------------- positions, recovery */

  // A subscribe with "recover" from `from` is on its way: the channel's
  // messages wait until its answer says what they are.
  proto._startRecovery = function (channel, req, from) {
    const rec = this._recovering.get(channel);
    if (rec) {
      rec.req = req;
      rec.from = from;
    } else {
      this._recovering.set(channel, {req: req, from: from, buffer: []});
    }
  };

  // A message with an offset on `channel`: false when it is held back
  // (a recovery is on its way) or was delivered already.
  proto._track = function (msg) {
    const rec = this._recovering.get(msg.channel);
    if (rec) {
      rec.buffer.push(msg);
      return false;
    }
    const pos = this._positions.get(msg.channel);
    if (!pos) return true;
    if (msg.offset <= pos.offset) return false;
    pos.offset = msg.offset;
    const mark = this._mark;
    if (mark && mark.epoch === pos.epoch) {
      mark.offset = Math.max(mark.offset, msg.offset);
    } else {
      this._mark = {epoch: pos.epoch, offset: msg.offset};
    }
    return true;
  };

  // The connection ends (lost, or close()): the channels it delivered
  // live move up to its mark (see this._mark); those still recovering
  // keep their position, and what their recovery held back is dropped,
  // so the next recovery asks for it again. A page's own subscribe with
  // recover is sent again, and keeps its recovery.
  proto._endConnection = function () {
    const mark = this._mark;
    this._mark = null;
    if (mark) {
      for (const [ch, pos] of this._positions) {
        if (pos.epoch === mark.epoch && !this._recovering.has(ch)) {
          pos.offset = Math.max(pos.offset, mark.offset);
        }
      }
    }
    for (const [ch, rec] of Array.from(this._recovering)) {
      if (rec.req.internal) this._recovering.delete(ch);
      else rec.buffer = [];
    }
  };

  // Delivers what a recovery held back, oldest first (by offset, should
  // a live message have come before the replay), each once: those past
  // pos (none is skipped without a position).
  proto._release = function (buffer, pos) {
    let n = 0;
    const sorted = buffer.slice().sort(function (a, b) {
      return a.offset - b.offset;
    });
    for (const msg of sorted) {
      if (pos) {
        if (msg.offset <= pos.offset) continue;
        pos.offset = msg.offset;
      }
      n++;
      this._dispatch(msg);
    }
    return n;
  };

  // A recovery ends without an answer that says how (its subscribe
  // failed): what it held is delivered against the position it started
  // from.
  proto._flushRecovery = function (channel, rec) {
    this._recovering.delete(channel);
    const pos = this._positions.get(channel) || null;
    this._release(rec.buffer, pos);
  };

  // A successful subscribe answer: the channel's position when it has
  // history ({epoch, offset: TOP}), and the end of a recovery, told to
  // the page as "recovered" (after the replayed messages) or "gap"
  // (before anything that came after the hole).
  proto._subscribed = function (req, res) {
    const ch = req.channel;
    const rec = this._recovering.get(ch);
    // A recover on a channel this connection was already subscribed to
    // is answered without "recovered" (it received live all along): no
    // recovery, and what came meanwhile counts from the live position.
    const mine = !!rec && rec.req === req &&
      !(req.already && res.recovered === undefined);
    if (rec && rec.req === req) this._recovering.delete(ch);
    const from = mine ? rec.from : this._positions.get(ch) || null;
    const top = typeof res.offset === "number" ? res.offset : 0;
    let pos = null;
    if (typeof res.epoch === "string") {
      // Within one epoch what was delivered stays delivered.
      pos = {epoch: res.epoch,
             offset: from && from.epoch === res.epoch ? from.offset : 0};
      this._positions.set(ch, pos);
    } else {
      this._positions.delete(ch);
    }
    if (!mine) {
      if (rec && rec.req === req) this._release(rec.buffer, pos);
      if (pos) pos.offset = Math.max(pos.offset, top);
      return;
    }
    const since = {epoch: from.epoch, offset: from.offset};
    if (res.recovered === true && pos && from.epoch === pos.epoch) {
      const count = this._release(rec.buffer, pos);
      pos.offset = Math.max(pos.offset, top);
      this._fire("recovered", {channel: ch, epoch: pos.epoch,
                               offset: pos.offset, since: since,
                               count: count});
      return;
    }
    this._fire("gap", {channel: ch, epoch: pos ? pos.epoch : null,
                       offset: pos ? top : null, since: since});
    this._release(rec.buffer, pos);
    if (pos) pos.offset = Math.max(pos.offset, top);
  };

  /* --------------------------------------------------- connection */

  /** connect(): opens the connection again after close(). The channels,
   *  store and authentication are kept and re-sent. */
  proto.connect = function () {
    if (!this._stopped) return this;
    this._stopped = false;
    this._attempt = 0;
    this._open(true);
    return this;
  };

  /** close(code, reason): closes for good (until connect()); stops
   *  reconnecting; what is queued or waiting fails with code "closed". */
  proto.close = function (code, reason) {
    if (this._stopped) return this;
    this._stopped = true;
    this._generation++;
    this._clearTimers();
    const s = this.socket;
    this.state = "closed";
    this._endConnection();
    this._failAll("closed", "the client was closed");
    if (s) {
      try {
        s.close(code || 1000, reason);
      } catch (e) {
        this._detach(s);
        this._lost({code: 1006, reason: String(e.message || e),
                    wasClean: false});
      }
    } else if (!this._inClose) {
      const self = this;
      Promise.resolve().then(function () {
        self._emitState("close", {code: code || 1000, reason: reason || "",
                                  wasClean: true});
      });
    }
    return this;
  };

  proto._clearTimers = function () {
    for (const k in this._timers) {
      if (this._timers[k]) {
        clearTimeout(this._timers[k]);
        clearInterval(this._timers[k]);
        this._timers[k] = null;
      }
    }
    this._beatReq = null;
  };

  proto._failAll = function (code, message) {
    const queue = this._queue;
    const pending = Array.from(this._pending.values());
    this._queue = [];
    this._queued = 0;
    this._pending.clear();
    this._barrier = null;
    for (const req of pending.concat(queue)) {
      req.where = null;
      if (req.internal || req.beat) {
        if (req.timer) clearTimeout(req.timer);
        req.settled = true;
      } else {
        this._fail(req, code, message);
      }
    }
  };

  // One connection attempt. A token function is called first, each time,
  // so that a reconnect after expiry (4002) can use a fresh token.
  proto._open = function (first) {
    const self = this;
    const gen = ++this._generation;
    this._setState("connecting", "connecting", {attempt: this._attempt});
    if (gen !== this._generation) return;  // close() in a handler
    const auth = this._auth;
    if (auth && typeof auth.token === "function") {
      let got;
      try {
        got = Promise.resolve(auth.token.call(this));
      } catch (e) {
        got = Promise.reject(e);
      }
      got.then(function (token) {
        if (gen !== self._generation) return;
        self._authToken = token;
        self._createSocket(false);
      }, function (e) {
        if (gen !== self._generation) return;
        self._error("auth_failed", "the token function failed: " +
                    (e && e.message ? e.message : String(e)),
                    {event: "authenticate"});
        self._lost({code: 1006, reason: "no token", wasClean: false});
      });
      return;
    }
    this._createSocket(first);
  };

  proto._createSocket = function (rethrow) {
    const self = this;
    let s;
    try {
      s = this.protocols ? new this._Impl(this.url, this.protocols) :
        new this._Impl(this.url);
    } catch (e) {
      if (rethrow) {
        this._stopped = true;
        this.state = "closed";
        throw e;
      }
      this._error("connect_failed", String(e && e.message ? e.message : e));
      this._lost({code: 1006, reason: String(e), wasClean: false});
      return;
    }
    this.socket = s;
    s.onopen = function (ev) { if (s === self.socket) self._opened(ev); };
    s.onclose = function (ev) {
      if (s !== self.socket) return;
      self._detach(s);
      self._lost(ev);
    };
    s.onmessage = function (ev) {
      if (s === self.socket) self._receive(ev.data);
    };
    s.onerror = noop;  // a close event follows
    if (this._opt.connectTimeout > 0) {
      this._timers.connect = setTimeout(function () {
        self._timers.connect = null;
        self._drop(s, "connect timeout");
      }, this._opt.connectTimeout);
    }
  };

  proto._detach = function (s) {
    s.onopen = noop;
    s.onmessage = noop;
    s.onclose = noop;
    s.onerror = noop;
    if (this.socket === s) this.socket = null;
  };

  // Gives up on a socket that does not answer (connect or heartbeat
  // timeout) without waiting for a closing handshake that may never end.
  proto._drop = function (s, reason) {
    if (s !== this.socket) return;
    this._detach(s);
    try {
      if (typeof s.terminate === "function") s.terminate();
      else s.close(4000, reason);
    } catch (e) { /* already closing */ }
    this._lost({code: 1006, reason: reason, wasClean: false});
  };

  proto._opened = function (ev) {
    const self = this;
    if (this._timers.connect) {
      clearTimeout(this._timers.connect);
      this._timers.connect = null;
    }
    this._attempt = 0;
    this.state = "open";
    if (this._opt.heartbeat > 0) {
      this._timers.beat = setInterval(function () { self._beat(); },
                                      this._opt.heartbeat);
    }
    // Re-sync before the open handlers run, so that what they send goes
    // out after the authentication.
    this._resync();
    this._setState("open", "open", ev);
  };

  // Authentication, then the channels, then the store, in front of what
  // waited in the queue.
  proto._resync = function () {
    const front = [];
    if (this._auth) {
      let data = this._auth.data;
      if (!data) {
        const token = typeof this._auth.token === "function" ?
          this._authToken : this._auth.token;
        data = token == null ? {} : {token: token};
      }
      front.push(this._internal("authenticate", Object.assign({}, data),
                                {barrier: true, resync: true}));
    }
    // A channel whose last queued request is an unsubscribe is not
    // subscribed again only to be left.
    const last = new Map();
    for (const req of this._queue) {
      if (req.event === "subscribe" || req.event === "unsubscribe") {
        last.set(req.channel, req.event);
      }
    }
    for (const ch of this._channels) {
      if (last.get(ch) === "unsubscribe") continue;
      // From the last position delivered, on a channel with history.
      const pos = this._positions.get(ch);
      const data = {channel: ch};
      if (pos) data.recover = {epoch: pos.epoch, offset: pos.offset};
      const req = this._internal("subscribe", data,
                                 {channel: ch, resync: true,
                                  recover: data.recover || null});
      if (pos) this._startRecovery(ch, req, data.recover);
      front.push(req);
    }
    if (Object.keys(this._storeData).length) {
      front.push(this._internal("store", Object.assign({}, this._storeData),
                                {resync: true}));
    }
    for (const req of front) req.where = "queue";
    this._queue = front.concat(this._queue);
    this._flush();
  };

  // The connection is gone (closed, dropped or never opened).
  proto._lost = function (ev) {
    const wasOpen = this.state === "open";
    this._clearTimers();
    this.socket = null;
    this._barrier = null;
    this.authenticated = false;  // until the re-sync authenticates again
    // Sent but unanswered: state events go again after the re-sync, the
    // rest fail with "disconnected" (they may or may not have been done).
    const again = [];
    for (const req of this._pending.values()) {
      if (req.internal || req.beat || req.settled) {
        if (req.timer) clearTimeout(req.timer);
        req.settled = true;
      } else if (STATE_EVENTS[req.event]) {
        req.where = "queue";
        again.push(req);
      } else {
        req.where = null;
        this._fail(req, "disconnected",
                   "the connection closed before the answer");
      }
    }
    this._pending.clear();
    const rest = [];
    for (const req of this._queue) {
      if (req.internal) {
        if (req.timer) clearTimeout(req.timer);
        req.settled = true;
      } else {
        rest.push(req);
      }
    }
    this._queue = again.concat(rest);
    this._endConnection();

    // The server closed with a code of its own (4000-4999): said to the
    // page, with whether the client comes back.
    const code = ev && typeof ev.code === "number" ? ev.code : 0;
    const final = code >= NO_RECONNECT_MIN && code <= NO_RECONNECT_MAX;
    if (code >= 4000 && code <= 4999 && !this._stopped) {
      this._fire("disconnected", {
        code: code, reason: ev.reason || "",
        reconnect: !final && !!this._opt.reconnect &&
          this._attempt < this._opt.reconnectAttempts,
      });
    }

    if (this._stopped) {
      this._setState("closed", "close", ev);
      return;
    }
    if (final) {
      this._stopped = true;
      this.state = "closed";
      this._failAll("closed", "the server closed the connection for good " +
                    "(" + code + (ev.reason ? " " + ev.reason : "") + ")");
      this._setState("closed", "close", ev);
      return;
    }
    if (this._opt.reconnect && this._attempt < this._opt.reconnectAttempts) {
      if (wasOpen) {
        this._inClose = true;
        this._setState("reconnecting", "close", ev);
        this._inClose = false;
        if (this._stopped) return;  // close() in a close handler
      }
      this._scheduleReconnect();
      return;
    }
    this._stopped = true;
    this.state = "closed";
    this._failAll("closed", "the connection closed");
    this._setState("closed", "close", ev);
  };

  // Exponential backoff with full jitter: a random delay between 0 and
  // min(reconnectDelayMax, reconnectDelay * 2^attempt).
  proto._scheduleReconnect = function () {
    const self = this;
    const cap = Math.min(this._opt.reconnectDelayMax,
                         this._opt.reconnectDelay * Math.pow(2, this._attempt));
    const delay = Math.floor(Math.random() * cap);
    this._attempt++;
    this._setState("reconnecting", "reconnecting",
                   {attempt: this._attempt, delay: delay});
    if (this._stopped || this.state !== "reconnecting") return;  // closed
    this._timers.reconnect = setTimeout(function () {
      self._timers.reconnect = null;
      self._open(false);
    }, delay);
  };

  // Application-level heartbeat: a ping with a callbackId; no answer in
  // heartbeatTimeout and the connection is dropped and re-established.
  proto._beat = function () {
    const self = this;
    if (this._beatReq || !this.socket || this.socket.readyState !== OPEN) {
      return;
    }
    const s = this.socket;
    const req = {id: uuid(), event: "ping", data: {},
                 beat: true, internal: true, settled: false};
    req.done = function () {
      req.settled = true;
      if (self._beatReq === req) self._beatReq = null;
      if (self._timers.beatWait) clearTimeout(self._timers.beatWait);
      self._timers.beatWait = null;
    };
    this._beatReq = req;
    this._pending.set(req.id, req);
    s.send(JSON.stringify({event: "ping", data: {}, callbackId: req.id}));
    this._timers.beatWait = setTimeout(function () {
      self._timers.beatWait = null;
      self._drop(s, "heartbeat timeout");
    }, this._opt.heartbeatTimeout);
  };

  proto._receive = function (text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      return;
    }
    if (!msg || typeof msg !== "object" || Array.isArray(msg)) return;
    if (typeof msg.event !== "string") {
      // A reply the application published without an event (the
      // original's client.jsonify(success=True, ...)): only the
      // catch-all message option sees it.
      if (this.options.message) safely(this.options.message, this, [msg]);
      return;
    }
    if (msg.event === "connect" && msg.data && typeof msg.data === "object") {
      this.id = msg.data.id;
    }
    if (msg.event === "callback" && typeof msg.callbackId === "string") {
      const req = this._pending.get(msg.callbackId);
      if (req) {
        this._answer(req, msg.data, msg);
        return;
      }
    }
    if (typeof msg.channel === "string" && typeof msg.offset === "number" &&
        !this._track(msg)) {
      return;
    }
    if (msg.event === "unsubscribed" || msg.event === "subscribed") {
      // The server API's acknowledgement: {"event": "unsubscribed",
      // "data": {"channel": C}} (the channel in data, or beside it).
      const data = msg.data && typeof msg.data === "object" ? msg.data : {};
      const ch = typeof msg.channel === "string" ? msg.channel : data.channel;
      if (typeof ch === "string") {
        if (msg.event === "unsubscribed") this._forget(ch);
        else this._serverSubscribed(ch, data);
      }
    }
    this._dispatch(msg);
  };

  // A subscription the server made for this client (POST
  // /api/subscribe): kept and re-subscribed like one the page asked for.
  proto._serverSubscribed = function (channel, data) {
    this._channels.add(channel);
    if (typeof data.epoch !== "string" || typeof data.offset !== "number" ||
        this._recovering.has(channel)) {
      return;
    }
    const pos = this._positions.get(channel);
    if (pos && pos.epoch === data.epoch) {
      pos.offset = Math.max(pos.offset, data.offset);
    } else {
      this._positions.set(channel, {epoch: data.epoch, offset: data.offset});
    }
  };

  // One message to the page: the message option, on() handlers, then
  // the channel's handlers of its kind (a broadcast to onChannel and
  // onMessage, presence_join to onJoin, presence_leave to onLeave).
  proto._dispatch = function (msg) {
    if (this.options.message) safely(this.options.message, this, [msg]);
    this._fire(msg.event, msg.data, msg);
    if (typeof msg.channel === "string") {
      const list = this._channelHandlers.get(msg.channel);
      if (list) {
        const kind = Object.prototype.hasOwnProperty.call(NOTICES, msg.event) ?
          NOTICES[msg.event] : "message";
        for (const h of list.slice()) {
          if (h.kind === kind) safely(h.fn, this, [msg.data, msg]);
        }
      }
    }
  };

  BagouWebSocket.BagouWebSocket = BagouWebSocket;
  BagouWebSocket.DEFAULTS = Object.freeze(Object.assign({}, DEFAULTS));
  return BagouWebSocket;
});
