"""Promises of README.md that no other test pinned: Ctrl-C (SIGINT) stops
the server like SIGTERM, and --workers defaults to the number of online
cores."""

import asyncio
import json
import os
import signal
import subprocess
import time

from support import (HOST, free_port, http_get, run, server_binary,
                     wait_closed, wait_for, ws_connect)


def test_sigint_closes_clients_1001_and_exits_0(server):
    srv = server(workers=2)

    async def scenario():
        conns = [await ws_connect(srv) for _ in range(3)]
        t0 = time.monotonic()
        srv.signal(signal.SIGINT)
        codes = [await wait_closed(ws, timeout=5) for ws, _ in conns]
        assert codes == [1001] * 3
        rc = await asyncio.to_thread(srv.wait_exit,
                                     5 - (time.monotonic() - t0))
        assert rc == 0, "exit status %r (None: still running after 5 s)" % rc

    run(scenario())


def test_workers_default_to_online_cores(tmp_path):
    ini = tmp_path / "bagou.ini"
    ini.write_text("")
    port = free_port()
    log = open(tmp_path / "bagou.log", "wb")
    proc = subprocess.Popen(
        [server_binary(), "--config", str(ini), "--listen",
         "%s:%d" % (HOST, port), "--amqp-url", "none"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        def health():
            try:
                status, _, body = http_get(port, "/health", timeout=1.0)
            except OSError:
                return None
            return json.loads(body) if status == 200 else None
        state = wait_for(health, timeout=10, what="/health")
        assert state["workers"] == os.cpu_count(), state
        text = (tmp_path / "bagou.log").read_text()
        assert "(%d workers" % os.cpu_count() in text, text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            rc = None
        log.close()
    assert rc == 0, rc
