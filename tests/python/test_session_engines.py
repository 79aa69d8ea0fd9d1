"""Session authentication with other session engines than the database
one: the runner uses SessionStore of settings.SESSION_ENGINE, whatever
it is (here the file and the signed-cookie backends)."""

import pytest

from bghelpers import forwarding, session_for
from conftest import Runner
from support import recv_json, request, run, ws_connect

ENGINES = ["django.contrib.sessions.backends.file",
           "django.contrib.sessions.backends.signed_cookies"]


@pytest.mark.parametrize("engine", ENGINES)
def test_engine(engine, tmp_path, django_env, exchanges, amqp_server):
    from django.test import override_settings
    bx, ex = exchanges
    env = dict(django_env, BAGOU_EXCHANGE=bx, BAGOU_FORWARD_EXCHANGE=ex,
               BAGOU_TEST_SESSION_ENGINE=engine)
    r = Runner(str(tmp_path), env, "runner").start()
    try:
        srv = amqp_server(config=forwarding(ex), exchange=bx)
        with override_settings(SESSION_ENGINE=engine):
            user, sid = session_for("gina")

        async def scenario():
            ws, _ = await ws_connect(srv)
            assert (await recv_json(ws))["event"] == "welcome"
            reply = await request(ws, "authenticate", {"sessionId": sid},
                                  callback_id="a")
            assert reply["data"]["user"]["pk"] == user.pk, reply
            assert (await recv_json(ws))["data"]["user"] == "gina"
            reply = await request(ws, "authenticate",
                                  {"sessionId": sid[:-2] + "xx"},
                                  callback_id="b")
            assert reply.get("data") in ({}, None), reply
            # A failed attempt leaves the connection gina's.
            assert (await recv_json(ws))["data"]["user"] == "gina"
            await ws.close()

        run(scenario())
    finally:
        assert r.stop() == 0, r.log()
