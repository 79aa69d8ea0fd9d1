"use strict";
/*
 * Helpers for the browser end-to-end test (browser.test.js): a private
 * RabbitMQ (through rabbitmq.py, the integration tests' broker), the
 * example application (examples/app/app.py), bagou-server with AMQP and
 * forwarding on, publishing a broadcast, and headless Chromium through
 * playwright-core with Debian's /usr/bin/chromium (Playwright never
 * downloads a browser here).
 *
 * Everything listens on 127.0.0.1, every wait is bounded, and every
 * process started here is tracked: stopAll() ends them, and a process
 * "exit" handler SIGKILLs what is still running (the broker helper is
 * instead told to stop by the end of its standard input, so that it can
 * stop RabbitMQ cleanly).
 *
 * Environment: BAGOU_BIN (server binary, default build/bagou-server),
 * BAGOU_CHROMIUM (default /usr/bin/chromium).
 */
const {spawn, spawnSync, execFile} = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const T = require("../support/testing.js");

const HOST = T.HOST;
const REPO = T.REPO;
const PYTHON = "/usr/bin/python3";
const CHROMIUM = process.env.BAGOU_CHROMIUM || "/usr/bin/chromium";
const BROADCAST_BIN = path.join(REPO, "build", "bagou-broadcast");
const RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const OUT_DIR = path.join(REPO, "build", "e2e");

const BROKER_START_MS = 120000;  // the helper waits up to 60 s itself
const BROKER_STOP_MS = 60000;
const APP_START_MS = 20000;
const SERVER_START_MS = 15000;
const STOP_MS = 5000;

/* ------------------------------------------------------------ processes */

const running = new Set();

process.on("exit", function () {
  for (const p of running) {
    if (p.exitCode !== null || p.signalCode !== null) continue;
    try {
      if (p.bagouBroker) p.stdin.destroy();  // it stops RabbitMQ itself
      else p.kill("SIGKILL");
    } catch (e) { /* gone */ }
  }
});

function alive(p) {
  return p !== null && p.exitCode === null && p.signalCode === null;
}

/** Spawns a tracked process whose output is kept (the last 200 kB). */
function start(cmd, args, opts) {
  const p = spawn(cmd, args, Object.assign({cwd: REPO,
    stdio: ["ignore", "pipe", "pipe"]}, opts));
  p.output = "";
  const keep = function (chunk) {
    p.output += chunk.toString("utf8");
    if (p.output.length > 200000) p.output = p.output.slice(-100000);
  };
  p.stdout.on("data", keep);
  p.stderr.on("data", keep);
  p.exited = new Promise(function (resolve) {
    // "close": exited, and its output is all read.
    p.on("close", function (code, signal) {
      running.delete(p);
      resolve({code: code, signal: signal});
    });
    p.on("error", function (err) {
      running.delete(p);
      p.output += "\nspawn failed: " + err.message + "\n";
      resolve({code: null, signal: null, error: err});
    });
  });
  running.add(p);
  return p;
}

/** Resolves true if p exits within ms, else false. */
async function exitsWithin(p, ms) {
  if (!alive(p)) return true;
  let timer;
  const res = await Promise.race([
    p.exited.then(function () { return true; }),
    new Promise(function (resolve) {
      timer = setTimeout(function () { resolve(false); }, ms);
    }),
  ]);
  clearTimeout(timer);
  return res;
}

/** SIGTERM, then SIGKILL after ms; resolves with how it exited. */
async function terminate(p, ms) {
  if (p === null) return null;
  if (alive(p)) {
    try { p.kill("SIGCONT"); } catch (e) { /* gone */ }
    p.kill("SIGTERM");
    if (!await exitsWithin(p, ms || STOP_MS)) {
      p.kill("SIGKILL");
      await exitsWithin(p, 5000);
    }
  }
  return p.exited;
}

function tail(text, n) {
  const lines = String(text || "").trimEnd().split("\n");
  return lines.slice(-(n || 40)).join("\n");
}

/* ------------------------------------------------------------ RabbitMQ */

/** A private broker, started and stopped by js/e2e/rabbitmq.py. */
class Broker {
  constructor() {
    this.proc = null;
    this.url = null;
  }

  async start() {
    const p = start(PYTHON, [path.join(__dirname, "rabbitmq.py")],
                    {stdio: ["pipe", "pipe", "pipe"]});
    p.bagouBroker = true;
    this.proc = p;
    const self = this;
    let lineSeen = null;
    const line = new Promise(function (resolve) {
      let buf = "";
      p.stdout.on("data", function (c) {
        buf += c.toString("utf8");
        const i = buf.indexOf("\n");
        if (i >= 0 && lineSeen === null) {
          lineSeen = buf.slice(0, i);
          resolve(lineSeen);
        }
      });
      p.exited.then(function () { resolve(null); });
    });
    let timer;
    const got = await Promise.race([line, new Promise(function (resolve) {
      timer = setTimeout(function () { resolve(undefined); }, BROKER_START_MS);
    })]);
    clearTimeout(timer);
    let info = null;
    try { info = got ? JSON.parse(got) : null; } catch (e) { /* below */ }
    if (!info || !info.url) {
      const why = got === undefined ?
        "no answer within " + BROKER_START_MS + " ms" :
        info && info.error ? info.error : "the helper exited";
      await self.stop();
      throw new Error("RabbitMQ did not start: " + why + "\n" +
                      tail(p.output, 60));
    }
    this.url = info.url;
    return this;
  }

  /** Closes the helper's stdin (it stops RabbitMQ), bounded. */
  async stop() {
    const p = this.proc;
    if (p === null) return;
    this.proc = null;
    try { p.stdin.end(); } catch (e) { /* closed */ }
    if (await exitsWithin(p, BROKER_STOP_MS)) return;
    await terminate(p, 20000);
  }
}

/* ------------------------------------------------------------ the app */

/** examples/app/app.py, the application that answers forwarded events. */
class App {
  constructor(amqpUrl) {
    this.amqpUrl = amqpUrl;
    this.proc = null;
  }

  async start() {
    const p = start(PYTHON, [
      path.join(REPO, "examples", "app", "app.py"),
      "--url", this.amqpUrl,
      "--events-exchange", "bagou.events",
      "--broadcast-exchange", "bagou",
      "--log-level", "debug",
    ]);
    this.proc = p;
    const end = Date.now() + APP_START_MS;
    // It logs "consuming <queue> ..." once its queue is bound.
    while (!/ consuming /.test(p.output)) {
      if (!alive(p) || Date.now() > end) {
        const out = p.output;
        await this.stop();
        throw new Error("examples/app/app.py did not start consuming " +
                        "within " + APP_START_MS + " ms:\n" + tail(out));
      }
      await T.sleep(50);
    }
    return this;
  }

  log() { return this.proc ? this.proc.output : this.lastLog || ""; }

  async stop() {
    const p = this.proc;
    if (p === null) return null;
    this.lastLog = p.output;
    this.proc = null;
    return terminate(p, STOP_MS);
  }
}

/* ------------------------------------------------------------ bagou-server */

/** bagou-server with AMQP on; config is the ini text. Runs in the
 *  repository root, so relative paths in the ini (static_dir) are
 *  relative to it. start() again after stop() reuses the port. */
class BagouServer {
  constructor(amqpUrl, config) {
    this.amqpUrl = amqpUrl;
    this.config = config;
    this.port = 0;
    this.proc = null;
    this.logText = "";
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "bagou-e2e-"));
    this.ini = path.join(this.dir, "bagou.ini");
  }

  get origin() { return "http://" + HOST + ":" + this.port; }

  async start() {
    if (!this.port) this.port = await T.freePort();
    fs.writeFileSync(this.ini, this.config);
    const end = Date.now() + SERVER_START_MS;
    for (;;) {
      const p = start(T.BIN, ["--listen", HOST + ":" + this.port,
                              "--workers", "2", "--amqp-url", this.amqpUrl,
                              "--config", this.ini]);
      this.proc = p;
      const ok = await this._ready(p, end);
      if (!ok) await p.exited;  // and its output is all read
      const out = p.output;
      this.logText += out;
      p.output = "";  // what follows is in proc.output until stop()
      if (ok) return this;
      const how = await p.exited;
      // Rebinding the port right after a stop can fail for a moment:
      // try again while time is left.
      if (Date.now() < end && /cannot listen|in use/i.test(out)) {
        await T.sleep(200);
        continue;
      }
      this.proc = null;
      throw new Error("bagou-server " + (how.timedOut ?
        "did not answer /health with \"amqp\": \"connected\" within " +
        SERVER_START_MS + " ms" : "exited at start (code " + how.code +
        ", signal " + how.signal + ")") + ":\n" + tail(out));
    }
  }

  // /health answers 200 with "amqp": "connected".
  async _ready(p, end) {
    for (;;) {
      if (!alive(p)) return false;
      try {
        const r = await T.request(this.port, "GET", "/health");
        if (r.status === 200 && JSON.parse(r.body).amqp === "connected") {
          return true;
        }
      } catch (e) { /* not listening yet */ }
      if (Date.now() > end) {
        await terminate(p);
        (await p.exited).timedOut = true;
        return false;
      }
      await T.sleep(50);
    }
  }

  log() {
    return this.logText + (this.proc ? this.proc.output : "");
  }

  /** SIGTERM, SIGKILL after 5 s; resolves with {code, signal}. */
  async stop() {
    const p = this.proc;
    if (p === null) return null;
    this.proc = null;
    const how = await terminate(p, STOP_MS);
    this.logText += p.output;
    return how;
  }

  cleanup() {
    fs.rmSync(this.dir, {recursive: true, force: true});
  }
}

/* ------------------------------------------------------------ publishing */

function run(cmd, args, ms) {
  return new Promise(function (resolve, reject) {
    execFile(cmd, args, {cwd: REPO, timeout: ms, killSignal: "SIGKILL"},
             function (err, stdout, stderr) {
               if (err) {
                 reject(new Error(cmd + " failed (" + (err.code ||
                   err.signal) + "): " + stderr + stdout));
               } else {
                 resolve(stdout);
               }
             });
  });
}

const PIKA_PUBLISH = [
  "import sys, pika",
  "url, exchange, key, body = sys.argv[1:5]",
  "p = pika.URLParameters(url); p.socket_timeout = 10",
  "c = pika.BlockingConnection(p); ch = c.channel(); ch.confirm_delivery()",
  "ch.basic_publish(exchange, key, body.encode())",
  "c.close()",
].join("\n");

/** Publishes the broadcast {event, channel, data} to the exchange
 *  "bagou" (routing key = the channel), confirmed by the broker: with
 *  build/bagou-broadcast when it is built, else with pika. */
async function publish(amqpUrl, channel, event, data) {
  const json = JSON.stringify(data === undefined ? {} : data);
  if (fs.existsSync(BROADCAST_BIN)) {
    await run(BROADCAST_BIN, ["--url", amqpUrl, "--exchange", "bagou",
                              "--event", event, "--channel", channel,
                              "--data", json, "--timeout", "10", "--quiet"],
              20000);
  } else {
    await run(PYTHON, ["-c", PIKA_PUBLISH, amqpUrl, "bagou", channel,
                       JSON.stringify({event: event, channel: channel,
                                       data: JSON.parse(json)})], 20000);
  }
}

/** Publishes body (any JSON object, e.g. a reply with "client" set) to
 *  the exchange "bagou" with pika, confirmed by the broker. */
async function publishRaw(amqpUrl, body, routingKey) {
  await run(PYTHON, ["-c", PIKA_PUBLISH, amqpUrl, "bagou", routingKey || "",
                     JSON.stringify(body)], 20000);
}

/* ------------------------------------------------------------ the browser */

const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
  "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];

/** Headless Chromium (a fresh temporary profile, removed on close). */
async function launchBrowser() {
  const {chromium} = require("playwright-core");
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 60000,
  });
}

/** Closes the browser, bounded (Playwright kills it on exit anyway). */
async function closeBrowser(browser) {
  if (!browser) return;
  let timer;
  await Promise.race([
    browser.close().catch(function () {}),
    new Promise(function (resolve) { timer = setTimeout(resolve, 15000); }),
  ]);
  clearTimeout(timer);
}

/* ------------------------------------------------------------ prerequisites */

/** What is missing to run the test, as a list of sentences. */
function missing() {
  const out = [];
  const exe = function (f) {
    try { fs.accessSync(f, fs.constants.X_OK); return true; }
    catch (e) { return false; }
  };
  if (!exe(CHROMIUM)) {
    out.push(CHROMIUM + " not found (apt-get install -y chromium)");
  }
  if (!exe(T.BIN)) {
    out.push(T.BIN + " not found (make build/bagou-server)");
  }
  if (!exe(RABBITMQ_SERVER)) {
    out.push(RABBITMQ_SERVER + " not found (apt-get install -y " +
             "rabbitmq-server)");
  }
  const py = spawnSync(PYTHON, ["-c", "import pika"], {timeout: 10000});
  if (py.status !== 0) {
    out.push(PYTHON + " cannot import pika (apt-get install -y " +
             "python3-pika)");
  }
  try {
    require.resolve("playwright-core");
  } catch (e) {
    out.push("playwright-core is not installed (cd js && npm ci)");
  }
  return out;
}

module.exports = {
  HOST, REPO, OUT_DIR, CHROMIUM, Broker, App, BagouServer, publish,
  publishRaw,
  launchBrowser, closeBrowser, missing, tail, sleep: T.sleep,
  request: T.request,
};
