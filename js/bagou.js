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
    this._channelHandlers = new Map();    // channel -> [{fn, auto}]
    this._queue = [];           // requests waiting to be sent, in order
    this._queued = 0;           // new user messages among them (queueSize)
    this._pending = new Map();  // callbackId -> request, in sending order
    this._barrier = null;       // authenticate in flight: the rest waits

    // What the server holds for this client, re-sent after a reconnect.
    this._channels = new Set();
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
    this._addChannelHandler(channel, fn, false);
    return this;
  };

  /** offChannel(channel, fn) removes fn; offChannel(channel) all. */
  proto.offChannel = function (channel, fn) {
    const list = this._channelHandlers.get(channel);
    if (!list) return this;
    const rest = fn ? list.filter(function (h) { return h.fn !== fn; }) : [];
    if (rest.length) this._channelHandlers.set(channel, rest);
    else this._channelHandlers.delete(channel);
    return this;
  };

  proto._addChannelHandler = function (channel, fn, auto) {
    if (typeof fn !== "function") {
      throw new TypeError("BagouWebSocket: channel handler must be a " +
                          "function");
    }
    const list = this._channelHandlers.get(channel) || [];
    if (list.some(function (h) { return h.fn === fn; })) return null;
    const entry = {fn: fn, auto: auto};
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
      if (event === "authenticate") {
        extra.barrier = true;
        // What is sent again after a reconnect: the token, or the data
        // as given (the original's {sessionId: ...}).
        extra.authWith = typeof data.token === "string" ?
          {token: data.token} : {data: Object.assign({}, data)};
      }
    }
    return this._request(event, data, callback, extra);
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
   * subscribe(channel, {onMessage, callback}) - also adds onMessage as a
   *   channel handler, removed again by unsubscribe(channel) or a failure.
   * Without a callback, returns a Promise. Channels are re-subscribed after
   * every reconnect.
   */
  proto.subscribe = function (channel, arg) {
    let callback = arg;
    let entry = null;
    if (arg && typeof arg === "object") {
      callback = arg.callback;
      if (arg.onMessage !== undefined) {
        entry = this._addChannelHandler(channel, arg.onMessage, true);
      }
    }
    return this._request("subscribe", {channel: channel}, callback,
                         {channel: channel, entry: entry});
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
    this._arm(req);
    this._submit(req);
    return promise || this;
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
    if (req.event === "subscribe") {
      if (ok) {
        this._channels.add(ch);
      } else if (req.resync) {
        // The new connection is not subscribed: forget the channel.
        this._channels.delete(ch);
        this._removeChannelEntries(ch, function (h) { return h.auto; });
      } else if (req.entry) {
        const entry = req.entry;
        this._removeChannelEntries(ch, function (h) { return h === entry; });
      }
    } else if (req.event === "unsubscribe" && ok) {
      this._channels.delete(ch);
      this._removeChannelEntries(ch, function (h) { return h.auto; });
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
      front.push(this._internal("subscribe", {channel: ch},
                                {channel: ch, resync: true}));
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

    if (this._stopped) {
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
    if (this.options.message) safely(this.options.message, this, [msg]);
    this._fire(msg.event, msg.data, msg);
    if (typeof msg.channel === "string") {
      const list = this._channelHandlers.get(msg.channel);
      if (list) {
        for (const h of list.slice()) safely(h.fn, this, [msg.data, msg]);
      }
    }
  };

  BagouWebSocket.BagouWebSocket = BagouWebSocket;
  BagouWebSocket.DEFAULTS = Object.freeze(Object.assign({}, DEFAULTS));
  return BagouWebSocket;
});
