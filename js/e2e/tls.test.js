"use strict";
/*
 * TLS end-to-end in a real browser: bagou-server with [server] tls_cert and
 * tls_key (a throwaway self-signed certificate for IP:127.0.0.1, made here
 * with the openssl command) serves a page over https:// from [http]
 * static_dir; the page loads /bagou.js over https:// and connects with
 * new BagouWebSocket("wss://127.0.0.1:PORT/websocket"), subscribes, and
 * receives a broadcast sent with POST /broadcast over https://.
 *
 *   cd js && node --test e2e/tls.test.js
 *
 * Headless Chromium (Debian's /usr/bin/chromium through playwright-core)
 * trusts exactly this certificate's public key through
 * --ignore-certificate-errors-spki-list; a browser without that flag must
 * refuse the page, which shows the certificate is really in use. Standalone
 * server (no RabbitMQ). Needs /usr/bin/chromium, build/bagou-server and
 * openssl; missing any of them fails the test, unless BAGOU_E2E_OPTIONAL=1:
 * then it is skipped with the reason.
 */
const {describe, it, before, after} = require("node:test");
const assert = require("node:assert/strict");
const {spawn, execFileSync} = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const https = require("node:https");
const os = require("node:os");
const path = require("node:path");
const S = require("./support.js");
const T = require("../support/testing.js");

const WAIT = 15000;           // one expected thing in the page
const START_MS = 10000;       // the server's /health over https
const WATCHDOG = 180000;      // the whole file
// With an api_key, POST /broadcast on the public listener needs the bearer.
const API_KEY = "tls-e2e-key";

function missing() {
  const out = [];
  const exe = function (f) {
    try { fs.accessSync(f, fs.constants.X_OK); return true; }
    catch (e) { return false; }
  };
  if (!exe(S.CHROMIUM)) {
    out.push(S.CHROMIUM + " not found (apt-get install -y chromium)");
  }
  if (!exe(T.BIN)) out.push(T.BIN + " not found (make build/bagou-server)");
  try {
    execFileSync("openssl", ["version"], {stdio: "ignore", timeout: 10000});
  } catch (e) {
    out.push("openssl not found (apt-get install -y openssl)");
  }
  try {
    require.resolve("playwright-core");
  } catch (e) {
    out.push("playwright-core is not installed (cd js && npm ci)");
  }
  return out;
}

const lacking = missing();
if (lacking.length) {
  const why = "TLS browser test: " + lacking.join("; ");
  describe("wss:// in Chromium", function () {
    if (process.env.BAGOU_E2E_OPTIONAL === "1") {
      it("runs in Chromium", {skip: why + " (BAGOU_E2E_OPTIONAL=1)"},
         function () {});
    } else {
      it("has its prerequisites", function () {
        assert.fail(why + " (set BAGOU_E2E_OPTIONAL=1 to skip instead)");
      });
    }
  });
  return;
}

const env = {dir: null, server: null, log: "", browsers: []};
const consoleLines = [];

/** A self-signed EC certificate for IP:127.0.0.1 in dir. */
function makeCert(dir) {
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt",
    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key",
    "-out", "server.pem", "-days", "2", "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1",
    "-addext", "extendedKeyUsage=serverAuth",
  ], {cwd: dir, stdio: "pipe", timeout: 30000});
  const pem = fs.readFileSync(path.join(dir, "server.pem"), "utf8");
  // What Chromium's --ignore-certificate-errors-spki-list wants: the
  // base64 SHA-256 of the DER SubjectPublicKeyInfo.
  const spki = new crypto.X509Certificate(pem).publicKey
    .export({type: "spki", format: "der"});
  return {pem: pem,
          spki: crypto.createHash("sha256").update(spki).digest("base64")};
}

function page(port) {
  return [
    "<!doctype html>",
    "<meta charset=\"utf-8\"><title>bagou over TLS</title>",
    "<script src=\"/bagou.js\"></script>",
    "<pre id=\"log\"></pre>",
    "<script>",
    "function log(s) {",
    "  document.getElementById('log').textContent += s + '\\n';",
    "}",
    "const ws = new BagouWebSocket('wss://127.0.0.1:" + port +
      "/websocket');",
    "ws.onChannel('tls', function (data) {",
    "  window.received = data;",
    "  log('broadcast ' + JSON.stringify(data));",
    "});",
    "ws.subscribe('tls').then(function () {",
    "  window.subscribed = true;",
    "  log('subscribed');",
    "}, function (err) { log('subscribe failed ' + JSON.stringify(err)); });",
    "</script>",
    "",
  ].join("\n");
}

/** An https request that trusts only the test certificate. */
function request(port, ca, method, urlPath, body) {
  return new Promise(function (resolve, reject) {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const req = https.request({
      host: T.HOST, port: port, method: method, path: urlPath, ca: ca,
      headers: data ? {"Content-Type": "application/json",
                       "Content-Length": data.length,
                       "Authorization": "Bearer " + API_KEY} : {},
      timeout: 5000,
    }, function (res) {
      const chunks = [];
      res.on("data", function (c) { chunks.push(c); });
      res.on("end", function () {
        resolve({status: res.statusCode,
                 body: Buffer.concat(chunks).toString("utf8")});
      });
    });
    req.on("timeout", function () { req.destroy(new Error("HTTP timeout")); });
    req.on("error", reject);
    if (data) req.write(data);
    req.end();
  });
}

async function startServer(dir, port, ca) {
  const ini = path.join(dir, "bagou.ini");
  fs.writeFileSync(ini, [
    "[server]",
    "tls_cert = server.pem",   // relative to the ini's folder
    "tls_key = server.key",
    "[http]",
    "api_key = " + API_KEY,
    "static_dir = " + path.join(dir, "static"),
    "",
  ].join("\n"));
  const proc = spawn(T.BIN, ["--listen", T.HOST + ":" + port,
                             "--workers", "2", "--amqp-url", "none",
                             "--config", ini],
                     {cwd: T.REPO, stdio: ["ignore", "pipe", "pipe"]});
  env.server = proc;
  proc.exited = new Promise(function (resolve) {
    proc.on("exit", function (code, signal) {
      resolve({code: code, signal: signal});
    });
  });
  const keep = function (c) { env.log += c.toString("utf8"); };
  proc.stdout.on("data", keep);
  proc.stderr.on("data", keep);
  const end = Date.now() + START_MS;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error("bagou-server exited at start:\n" + env.log);
    }
    try {
      const r = await request(port, ca, "GET", "/health");
      if (r.status === 200) return;
    } catch (e) { /* not listening yet */ }
    if (Date.now() > end) {
      throw new Error("no /health over https within " + START_MS +
                      " ms:\n" + env.log);
    }
    await T.sleep(50);
  }
}

async function stopAll() {
  for (const b of env.browsers) await S.closeBrowser(b);
  env.browsers = [];
  const p = env.server;
  env.server = null;
  if (p && p.exitCode === null && p.signalCode === null) {
    p.kill("SIGTERM");
    const timer = setTimeout(function () { p.kill("SIGKILL"); }, 5000);
    await p.exited;
    clearTimeout(timer);
  }
  if (env.dir) fs.rmSync(env.dir, {recursive: true, force: true});
  env.dir = null;
}

const watchdog = setTimeout(function () {
  console.error("TLS browser test: still running after " + WATCHDOG +
                " ms, giving up");
  stopAll().finally(function () { process.exit(1); });
}, WATCHDOG);
watchdog.unref();

describe("wss:// in Chromium", function () {
  let port, cert;

  before(async function () {
    env.dir = fs.mkdtempSync(path.join(os.tmpdir(), "bagou-e2e-tls-"));
    cert = makeCert(env.dir);
    port = await T.freePort();
    fs.mkdirSync(path.join(env.dir, "static"));
    fs.writeFileSync(path.join(env.dir, "static", "index.html"), page(port));
    await startServer(env.dir, port, cert.pem);
  });

  after(stopAll);

  it("loads the page over https and receives a broadcast over wss",
     async function () {
       const browser = await S.launchBrowser([
         "--ignore-certificate-errors-spki-list=" + cert.spki,
       ]);
       env.browsers.push(browser);
       const p = await (await browser.newContext()).newPage();
       p.on("console", function (m) { consoleLines.push(m.text()); });
       const url = "https://127.0.0.1:" + port + "/static/index.html";
       const res = await p.goto(url, {waitUntil: "load", timeout: WAIT});
       assert.equal(res.status(), 200, "GET " + url);
       const sec = await res.securityDetails();
       assert.ok(sec, "no TLS details for the page");
       assert.match(sec.protocol, /^TLS 1\.[23]$/, sec.protocol);
       try {
         await p.waitForFunction(function () { return window.subscribed; },
                                 null, {timeout: WAIT});
         const r = await request(port, cert.pem, "POST", "/broadcast",
                                 {event: "news", channel: "tls",
                                  data: {over: "wss"}});
         assert.equal(r.status, 202, r.body);
         await p.waitForFunction(function () { return window.received; },
                                 null, {timeout: WAIT});
       } catch (err) {
         err.message += "\npage log:\n" +
           await p.$eval("#log", function (e) { return e.textContent; })
             .catch(function () { return "(none)"; }) +
           "\nconsole:\n" + consoleLines.join("\n") +
           "\nserver:\n" + S.tail(env.log);
         throw err;
       }
       assert.deepEqual(await p.evaluate(function () {
         return window.received;
       }), {over: "wss"});
     });

  it("is refused by a browser that does not trust the certificate",
     async function () {
       const browser = await S.launchBrowser();
       env.browsers.push(browser);
       const p = await (await browser.newContext()).newPage();
       await assert.rejects(
         p.goto("https://127.0.0.1:" + port + "/static/index.html",
                {timeout: WAIT}),
         /ERR_CERT_AUTHORITY_INVALID/);
     });
});
