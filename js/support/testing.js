"use strict";
/*
 * Test helpers for js/test/: a real bagou-server on 127.0.0.1 (a free port,
 * a temporary ini, always stopped), HTTP helpers, a recording WebSocket
 * wrapper around the `ws` package, and bounded waits. Kept outside test/
 * so that `node --test test/` does not run it as a test file.
 *
 * BAGOU_BIN overrides the server binary (default ../build/bagou-server
 * from the repository root).
 */
const {spawn} = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const crypto = require("node:crypto");
const WS = require("ws");

const HOST = "127.0.0.1";
const REPO = path.resolve(__dirname, "..", "..");
const BIN = process.env.BAGOU_BIN || path.join(REPO, "build", "bagou-server");
const START_TIMEOUT = 10000;
const STOP_TIMEOUT = 5000;

function freePort() {
  return new Promise(function (resolve, reject) {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, HOST, function () {
      const port = srv.address().port;
      srv.close(function () { resolve(port); });
    });
  });
}

function sleep(ms) {
  return new Promise(function (resolve) { setTimeout(resolve, ms); });
}

/** Resolves with fn()'s first truthy value; rejects after ms. */
async function waitFor(fn, ms, what) {
  const end = Date.now() + (ms || 5000);
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) {
      throw new Error("timed out waiting for " + (what || String(fn)));
    }
    await sleep(20);
  }
}

/** The next `event` of a BagouWebSocket, or an error after ms. */
function nextEvent(ws, event, ms) {
  return new Promise(function (resolve, reject) {
    const timer = setTimeout(function () {
      ws.off(event, handler);
      reject(new Error("no \"" + event + "\" event within " + ms + " ms"));
    }, ms || 5000);
    function handler(a, b) {
      clearTimeout(timer);
      ws.off(event, handler);
      resolve(b === undefined ? a : {data: a, msg: b});
    }
    ws.on(event, handler);
  });
}

/** Rejects if promise does not settle within ms. */
function within(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise(function (resolve, reject) {
      timer = setTimeout(function () {
        reject(new Error((what || "operation") + " did not settle within " +
                         ms + " ms"));
      }, ms);
    }),
  ]).finally(function () { clearTimeout(timer); });
}

function request(port, method, urlPath, body, headers) {
  return new Promise(function (resolve, reject) {
    const data = body === undefined ? null :
      Buffer.from(typeof body === "string" ? body : JSON.stringify(body));
    const req = http.request({
      host: HOST, port: port, method: method, path: urlPath,
      headers: Object.assign(data ? {"Content-Type": "application/json",
                                     "Content-Length": data.length} : {},
                             headers || {}),
      timeout: 5000,
    }, function (res) {
      const chunks = [];
      res.on("data", function (c) { chunks.push(c); });
      res.on("end", function () {
        resolve({status: res.statusCode, headers: res.headers,
                 body: Buffer.concat(chunks).toString("utf8")});
      });
    });
    req.on("timeout", function () { req.destroy(new Error("HTTP timeout")); });
    req.on("error", reject);
    if (data) req.write(data);
    req.end();
  });
}

/* What a sanitizer prints when it finds something. */
const SANITIZER_REPORTS = ["ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                           "runtime error:", "WARNING: ThreadSanitizer"];

/** A bagou-server process. config: ini text. */
class Server {
  constructor(config, port) {
    this.config = config || "";
    this.port = port || 0;
    this.apiPort = 0;  // the API listener: POST /broadcast, /metrics
    this.proc = null;
    this.logText = "";
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "bagou-js-"));
  }

  get url() { return "ws://" + HOST + ":" + this.port + "/websocket"; }

  async start() {
    if (!fs.existsSync(BIN)) {
      throw new Error(BIN + " not found: run `make build/bagou-server` " +
                      "first (or set BAGOU_BIN)");
    }
    if (!this.port) this.port = await freePort();
    while (!this.apiPort || this.apiPort === this.port) {
      this.apiPort = await freePort();
    }
    const ini = path.join(this.dir, "bagou.ini");
    fs.writeFileSync(ini, this.config);
    const proc = spawn(BIN, ["--listen", HOST + ":" + this.port,
                             "--api-listen", HOST + ":" + this.apiPort,
                             "--workers", "2", "--amqp-url", "none",
                             "--config", ini],
                       {stdio: ["ignore", "pipe", "pipe"]});
    this.proc = proc;
    this.exited = new Promise(function (resolve) {
      proc.on("exit", function (code, signal) {
        resolve({code: code, signal: signal});
      });
    });
    const self = this;
    const keep = function (c) {
      self.logText += c.toString("utf8");
      if (self.logText.length > 200000) {
        self.logText = self.logText.slice(-100000);
      }
    };
    proc.stdout.on("data", keep);
    proc.stderr.on("data", keep);
    const end = Date.now() + START_TIMEOUT;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new Error("bagou-server exited at start:\n" + this.logText);
      }
      try {
        const r = await request(this.port, "GET", "/health");
        if (r.status === 200) return this;
      } catch (e) { /* not listening yet */ }
      if (Date.now() > end) {
        await this.stop();
        throw new Error("bagou-server did not answer /health within " +
                        START_TIMEOUT + " ms:\n" + this.logText);
      }
      await sleep(25);
    }
  }

  /**
   * SIGTERM (or signal), SIGKILL after STOP_TIMEOUT; resolves on exit.
   * Stopped with SIGTERM (the default), the server must exit 0 and its
   * log hold no sanitizer report: otherwise this rejects with the log's
   * tail, so a crash after a test's last assertion still fails it.
   */
  async stop(signal) {
    const proc = this.proc;
    if (!proc) return null;
    this.proc = null;
    let how;
    if (proc.exitCode !== null || proc.signalCode !== null) {
      how = await this.exited;
    } else {
      try { process.kill(proc.pid, "SIGCONT"); } catch (e) { /* gone */ }
      proc.kill(signal || "SIGTERM");
      const timer = setTimeout(function () { proc.kill("SIGKILL"); },
                               STOP_TIMEOUT);
      how = await this.exited;
      clearTimeout(timer);
    }
    const report = SANITIZER_REPORTS.find((p) => this.logText.includes(p));
    if (report || (!signal || signal === "SIGTERM") &&
        (how.code !== 0 || how.signal !== null)) {
      throw new Error("bagou-server did not end cleanly (exit " +
                      JSON.stringify(how) +
                      (report ? ", sanitizer report" : "") + "):\n" +
                      this.logText.slice(-4000));
    }
    return how;
  }

  signal(sig) { if (this.proc) process.kill(this.proc.pid, sig); }

  broadcast(body) {
    return request(this.apiPort, "POST", "/broadcast", body);
  }

  log() { return this.logText; }
}

async function startServer(config, port) {
  return new Server(config, port).start();
}

/**
 * A WebSocket class (for options.WebSocket) wrapping `ws`: it records what
 * the client sends (parsed, in .sent) and receives, and can be muted: then
 * incoming messages are held back, as if the server had hung, until
 * unmute() delivers them. Each call makes a new class with its own
 * .instances list.
 */
function recorder() {
  class TestSocket {
    constructor(url, protocols) {
      this.url = url;
      this.sent = [];
      this.received = [];
      this.muted = false;
      this.held = [];
      this.onopen = null;
      this.onclose = null;
      this.onerror = null;
      this.onmessage = null;
      const inner = protocols ? new WS(url, protocols) : new WS(url);
      this.inner = inner;
      const self = this;
      inner.onopen = function (ev) { if (self.onopen) self.onopen(ev); };
      inner.onclose = function (ev) { if (self.onclose) self.onclose(ev); };
      inner.onerror = function (ev) { if (self.onerror) self.onerror(ev); };
      inner.onmessage = function (ev) {
        self.received.push(JSON.parse(ev.data));
        if (self.muted) self.held.push(ev);
        else if (self.onmessage) self.onmessage(ev);
      };
      TestSocket.instances.push(this);
    }
    unmute() {
      this.muted = false;
      const held = this.held;
      this.held = [];
      for (const ev of held) if (this.onmessage) this.onmessage(ev);
    }
    get readyState() { return this.inner.readyState; }
    send(text) {
      this.sent.push(JSON.parse(text));
      this.inner.send(text);
    }
    close(code, reason) { this.inner.close(code, reason); }
    terminate() { this.inner.terminate(); }
    static last() {
      return TestSocket.instances[TestSocket.instances.length - 1];
    }
    /** Every frame sent by every socket, in order. */
    static allSent() {
      return [].concat.apply([], TestSocket.instances.map(function (s) {
        return s.sent;
      }));
    }
  }
  TestSocket.instances = [];
  TestSocket.OPEN = 1;
  return TestSocket;
}

/** An HS256 JWT for [auth] secret. */
function jwt(secret, claims) {
  const b64 = function (obj) {
    return Buffer.from(JSON.stringify(obj)).toString("base64url");
  };
  const head = b64({alg: "HS256", typ: "JWT"}) + "." + b64(claims);
  const sig = crypto.createHmac("sha256", secret).update(head)
    .digest("base64url");
  return head + "." + sig;
}

module.exports = {
  HOST, REPO, BIN, WS, Server, startServer, freePort, sleep, waitFor,
  nextEvent, within, request, recorder, jwt,
};
