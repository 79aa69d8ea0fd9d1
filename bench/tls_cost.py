#!/usr/bin/python3
"""What TLS costs bagou-server: connections per second and server CPU per
connection (TCP + TLS handshake + WebSocket upgrade + connect event +
close), plain vs TLS with an ECDSA P-256 and an RSA 2048 certificate, and
server memory per idle connection.

    BAGOU_BIN=build/bagou-server /usr/bin/python3 bench/tls_cost.py [N]

Loopback only; every server it starts is stopped. Rough numbers: the
clients run on the same machine (their share of the CPU counts against the
connection rate, not against the server CPU figures).
"""

import asyncio
import os
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time

import websockets

HOST = "127.0.0.1"
BIN = os.environ.get("BAGOU_BIN", "build/bagou-server")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_cert(d, kind):
    key = os.path.join(d, kind + ".key")
    pem = os.path.join(d, kind + ".pem")
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] \
        if kind == "ec" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509"] + newkey +
                   ["-nodes", "-keyout", key, "-out", pem, "-days", "1",
                    "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return pem, key


class Server:
    def __init__(self, d, cert=None):
        self.port = free_port()
        ini = os.path.join(d, "bench.ini")
        with open(ini, "w") as f:
            f.write("[server]\nping_interval = 0\n")
            if cert:
                f.write("tls_cert = %s\ntls_key = %s\n" % cert)
            f.write("[limits]\nrate = 0\n")
        self.log = open(os.path.join(d, "bench.log"), "ab")
        self.proc = subprocess.Popen(
            [BIN, "--config", ini, "--listen", "%s:%d" % (HOST, self.port),
             "--workers", "2", "--amqp-url", "none", "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.scheme = "wss" if cert else "ws"
        time.sleep(0.5)

    def cpu(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def one(srv, ctx):
    ws = await websockets.connect("%s://%s:%d/websocket"
                                  % (srv.scheme, HOST, srv.port),
                                  ssl=ctx, open_timeout=10, close_timeout=5,
                                  compression=None)
    await asyncio.wait_for(ws.recv(), 10)
    return ws


async def rate(srv, n, concurrency=8):
    ctx = client_ctx() if srv.scheme == "wss" else None
    left = [n]

    async def loop():
        while left[0] > 0:
            left[0] -= 1
            ws = await one(srv, ctx)
            await ws.close()
    cpu0, t0 = srv.cpu(), time.monotonic()
    await asyncio.wait_for(asyncio.gather(*[loop() for _ in
                                            range(concurrency)]), 600)
    dt, dcpu = time.monotonic() - t0, srv.cpu() - cpu0
    return n / dt, dcpu * 1000.0 / n


async def idle_memory(srv, n):
    ctx = client_ctx() if srv.scheme == "wss" else None
    # Warm up once so one-time allocations do not count.
    ws = await one(srv, ctx)
    await ws.close()
    await asyncio.sleep(0.5)
    before = srv.rss_kib()
    conns = []
    for i in range(0, n, 50):
        conns += await asyncio.gather(*[one(srv, ctx) for _ in
                                        range(min(50, n - i))])
    await asyncio.sleep(1.0)
    after = srv.rss_kib()
    for ws in conns:
        await ws.close()
    return (after - before) * 1024.0 / n


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as d:
        certs = {"plain": None, "tls-ecdsa": make_cert(d, "ec"),
                 "tls-rsa2048": make_cert(d, "rsa")}
        print("%-12s %10s %16s %18s" % ("mode", "conn/s", "server CPU ms",
                                        "bytes/idle conn"))
        for name, cert in certs.items():
            srv = Server(d, cert)
            try:
                cps, cpu_ms = asyncio.run(rate(srv, n))
                mem = asyncio.run(idle_memory(srv, n))
            finally:
                srv.stop()
            print("%-12s %10.0f %16.3f %18.0f" % (name, cps, cpu_ms, mem))


if __name__ == "__main__":
    main()
