"""python -m bagou.worker MODULE: the runner without Django, configured
by the environment; it stops cleanly on SIGTERM."""

import asyncio
import os
import sys

from bghelpers import forwarding
from conftest import Runner
from support import (expect_silence, recv_json, request, run, send_json,
                     subscribe, ws_connect)

HANDLERS = '''
import logging
import time

from bagou.events import on_message, on_subscribe

@on_message
def slow(client, channel, message):
    if message["event"] == "slow":
        logging.getLogger("bagou").warning("slow started")
        time.sleep(float(message["data"]))
        client.jsonify(event="callback", callbackId=message["callbackId"],
                       data={"slept": message["data"]})

@on_message(channel=r"^room-")
def shout(client, channel, message):
    client.jsonify(event="callback", callbackId=message["callbackId"],
                   data={"loud": str(message["data"]).upper(),
                         "channel": channel, "user": client.user})

@on_subscribe
def sub(client, channel, message):
    client.jsonify(event="sub", data={"channel": channel})
'''


def test_plain_worker(tmp_path, rabbitmq, exchanges, amqp_server):
    bx, ex = exchanges
    (tmp_path / "plainhandlers.py").write_text(HANDLERS)
    env = {"BAGOU_AMQP_URL": rabbitmq.url, "BAGOU_EXCHANGE": bx,
           "BAGOU_FORWARD_EXCHANGE": ex, "BAGOU_CONCURRENCY": "2",
           "DJANGO_SETTINGS_MODULE": ""}
    r = Runner(str(tmp_path), env, "plain",
               argv=[sys.executable, "-m", "bagou.worker",
                     "plainhandlers"])
    r.env["PYTHONPATH"] = str(tmp_path)
    r.env.pop("DJANGO_SETTINGS_MODULE")
    srv = amqp_server(config=forwarding(ex), exchange=bx)
    r.start()
    try:
        async def scenario():
            ws, _ = await ws_connect(srv)
            await subscribe(ws, "room-1")
            assert await recv_json(ws) == {"event": "sub",
                                           "data": {"channel": "room-1"}}
            reply = await request(ws, "yell", "hey", callback_id="y")
            assert reply["data"] == {"loud": "HEY", "channel": "room-1",
                                     "user": None}, reply
            await ws.close()
        run(scenario())
    finally:
        code = r.stop()
    assert code == 0, r.log()
    assert "stopped" in r.log()
    assert os.path.exists(r.log_path)


def test_acked_only_after_the_handlers_ran(tmp_path, rabbitmq, exchanges,
                                           amqp_server):
    """A runner killed while a handler runs has not acked the event: with
    a shared WORKER_QUEUE, the next runner gets it and answers."""
    import signal
    from support import wait_for
    bx, ex = exchanges
    (tmp_path / "plainhandlers.py").write_text(HANDLERS)
    env = {"BAGOU_AMQP_URL": rabbitmq.url, "BAGOU_EXCHANGE": bx,
           "BAGOU_FORWARD_EXCHANGE": ex,
           "BAGOU_WORKER_QUEUE": "bagou-handlers-%d" % os.getpid()}

    def runner(name):
        r = Runner(str(tmp_path), env, name,
                   argv=[sys.executable, "-m", "bagou.worker",
                         "plainhandlers"])
        r.env["PYTHONPATH"] = str(tmp_path)
        r.env.pop("DJANGO_SETTINGS_MODULE", None)
        return r

    srv = amqp_server(config=forwarding(ex, None), exchange=bx)
    first = runner("first").start()
    second = None
    try:
        async def scenario():
            nonlocal second
            ws, _ = await ws_connect(srv)
            await send_json(ws, {"event": "slow", "data": 0.5,
                                 "callbackId": "s1"})
            await asyncio.to_thread(
                wait_for, lambda: "slow started" in first.log(), 15.0,
                0.02, "the handler started")
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=10)
            second = await asyncio.to_thread(runner("second").start)
            reply = await recv_json(ws, 20.0)
            assert reply == {"event": "callback", "callbackId": "s1",
                             "data": {"slept": 0.5}}, reply
            await expect_silence(ws, 0.5)
            await ws.close()
        run(scenario(), timeout=90)
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0, second.log()


def test_runner_reconnects(tmp_path, rabbitmq, exchanges, amqp_server):
    """RabbitMQ goes away and comes back: the runner binds its queue
    again by itself and answers events."""
    bx, ex = exchanges
    (tmp_path / "plainhandlers.py").write_text(HANDLERS)
    env = {"BAGOU_AMQP_URL": rabbitmq.url, "BAGOU_EXCHANGE": bx,
           "BAGOU_FORWARD_EXCHANGE": ex}
    r = Runner(str(tmp_path), env, "again",
               argv=[sys.executable, "-m", "bagou.worker", "plainhandlers"])
    r.env["PYTHONPATH"] = str(tmp_path)
    r.env.pop("DJANGO_SETTINGS_MODULE", None)
    srv = amqp_server(config=forwarding(ex, None), exchange=bx)
    r.start()
    try:
        rabbitmq.stop_app()
        try:
            srv.wait_amqp("disconnected", 15)
        finally:
            rabbitmq.start_app()
        srv.wait_amqp("connected", 30)
        r.wait_consuming(2, timeout=30)
        assert "RabbitMQ:" in r.log() and "reconnecting" in r.log()

        async def scenario():
            ws, _ = await ws_connect(srv)
            reply = await request(ws, "slow", 0, callback_id="s")
            assert reply["data"] == {"slept": 0}, reply
            await ws.close()
        run(scenario())
    finally:
        code = r.stop()
    assert code == 0, r.log()
