"""python -m bagou.worker MODULE: the runner without Django, configured
by the environment; it stops cleanly on SIGTERM."""

import os
import sys

from bghelpers import forwarding
from conftest import Runner
from support import recv_json, request, run, subscribe, ws_connect

HANDLERS = '''
from bagou.events import on_message, on_subscribe

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
