/*
 * bagou.js - browser client for Bagou (protocol 1).
 *
 * Usable from a <script> tag (global BagouWebSocket) or as a CommonJS
 * module. Keeps the original API:
 *
 *   var ws = new BagouWebSocket("ws://host:9000/websocket", {
 *     open: function () {}, close: function (ev) {},
 *     message: function (msg) {}, events: { chat: function (data, msg) {} }
 *   });
 *   ws.subscribe("news", function (res) {});
 *   ws.emit("chat", {text: "hi"}, function (res) {});
 *   ws.store("name", "Ada", function (res) {});
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) {
    module.exports = factory();
  } else {
    root.BagouWebSocket = factory();
  }
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  function BagouWebSocket(url, options, protocols) {
    if (!(this instanceof BagouWebSocket)) {
      return new BagouWebSocket(url, options, protocols);
    }
    options = options || {};
    this.url = url;
    this.options = options;
    this.id = null;
    this._handlers = {};
    this._callbacks = {};
    this._nextCallback = 1;
    var events = options.events || {};
    for (var name in events) {
      if (Object.prototype.hasOwnProperty.call(events, name)) {
        this.on(name, events[name]);
      }
    }
    var Impl = options.WebSocket ||
      (typeof WebSocket !== "undefined" ? WebSocket : null);
    if (!Impl) throw new Error("BagouWebSocket: no WebSocket available");
    this.socket = protocols ? new Impl(url, protocols) : new Impl(url);
    var self = this;
    this.socket.onopen = function (ev) {
      if (options.open) options.open.call(self, ev);
    };
    this.socket.onclose = function (ev) {
      self._failPending("connection closed");
      if (options.close) options.close.call(self, ev);
    };
    this.socket.onmessage = function (ev) { self._receive(ev.data); };
  }

  BagouWebSocket.prototype._receive = function (text) {
    var msg;
    try { msg = JSON.parse(text); } catch (e) { return; }
    if (!msg || typeof msg.event !== "string") return;
    if (msg.event === "connect" && msg.data) this.id = msg.data.id;
    if (msg.event === "callback" && msg.callbackId in this._callbacks) {
      var cb = this._callbacks[msg.callbackId];
      delete this._callbacks[msg.callbackId];
      cb(msg.data);
      return;
    }
    if (this.options.message) this.options.message.call(this, msg);
    var list = this._handlers[msg.event] || [];
    for (var i = 0; i < list.length; i++) list[i].call(this, msg.data, msg);
  };

  BagouWebSocket.prototype._failPending = function (why) {
    var pending = this._callbacks;
    this._callbacks = {};
    for (var id in pending) {
      pending[id]({success: false, error: {code: "disconnected",
                                           message: why}});
    }
  };

  BagouWebSocket.prototype.on = function (event, fn) {
    (this._handlers[event] = this._handlers[event] || []).push(fn);
    return this;
  };

  BagouWebSocket.prototype.off = function (event, fn) {
    var list = this._handlers[event] || [];
    this._handlers[event] = fn ? list.filter(function (f) {
      return f !== fn;
    }) : [];
    return this;
  };

  BagouWebSocket.prototype.emit = function (event, data, callback) {
    var msg = {event: event, data: data === undefined ? {} : data};
    if (typeof callback === "function") {
      msg.callbackId = "c" + this._nextCallback++;
      this._callbacks[msg.callbackId] = callback;
    }
    this.socket.send(JSON.stringify(msg));
    return this;
  };

  BagouWebSocket.prototype.subscribe = function (channel, callback) {
    return this.emit("subscribe", {channel: channel}, callback);
  };

  BagouWebSocket.prototype.unsubscribe = function (channel, callback) {
    return this.emit("unsubscribe", {channel: channel}, callback);
  };

  BagouWebSocket.prototype.store = function (key, value, callback) {
    var data = {};
    data[key] = value;
    return this.emit("store", data, callback);
  };

  BagouWebSocket.prototype.close = function () {
    this.socket.close(1000);
  };

  return BagouWebSocket;
});
