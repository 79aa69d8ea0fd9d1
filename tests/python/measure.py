"""Numbers for the Python package (not a test): broadcast() calls per
second from one process with publisher confirms, and the round trip
client emit -> forwarded -> Django handler -> client.jsonify -> client
(p50/p99), against a private RabbitMQ, bagou-server and the test
project's runner.

    BAGOU_BIN=build/bagou-server build/venv/bin/python tests/python/measure.py
"""

import asyncio
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
sys.path.insert(0, HERE)

from rabbitmq import AmqpServer, RabbitMQ  # noqa: E402
from support import recv_json, send_json, ws_connect  # noqa: E402

N_BROADCAST = int(os.environ.get("N_BROADCAST", "5000"))
N_ROUNDTRIP = int(os.environ.get("N_ROUNDTRIP", "1000"))


def main():
    tmp = tempfile.mkdtemp(prefix="bagou-measure-")
    broker = RabbitMQ(base_dir=tmp).start()
    os.environ.update({"DJANGO_SETTINGS_MODULE": "djproject.settings",
                       "BAGOU_TEST_DIR": tmp, "BAGOU_AMQP_URL": broker.url,
                       "BAGOU_EXCHANGE": "m-bx",
                       "BAGOU_FORWARD_EXCHANGE": "m-ex"})
    import django
    from django.core.management import call_command
    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from conftest import Runner
    srv = AmqpServer(tmp, broker.url, config={
        "amqp": {"exchange": "m-bx"},
        "forward": {"exchange": "m-ex"},
        "limits": {"rate": 100000, "burst": 100000}}, workers=2)
    runner = None
    try:
        srv.start()
        srv.wait_amqp("connected")
        import bagou
        bagou.broadcast("warm", "news")
        t0 = time.perf_counter()
        for i in range(N_BROADCAST):
            bagou.broadcast("message", "news", {"i": i})
        dt = time.perf_counter() - t0
        print("broadcast(): %d calls in %.2f s = %.0f/s (confirms on, one "
              "connection, routing key = channel)"
              % (N_BROADCAST, dt, N_BROADCAST / dt))

        runner = Runner(tmp, {"PYTHONPATH": HERE}, "runner",
                        argv=[sys.executable, "-m", "django", "bagou",
                              "--log-level", "warning"],
                        ready="").start()
        time.sleep(3)

        async def roundtrips():
            ws, _ = await ws_connect(srv)
            times = []
            for i in range(N_ROUNDTRIP + 50):
                t = time.perf_counter()
                await send_json(ws, {"event": "echo", "data": i,
                                     "callbackId": "c%d" % i})
                reply = await recv_json(ws)
                assert reply["callbackId"] == "c%d" % i, reply
                if i >= 50:
                    times.append(time.perf_counter() - t)
            await ws.close()
            return times

        times = sorted(asyncio.run(roundtrips()))
        p = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1e3
        print("round trip emit -> handler -> jsonify -> client: n=%d "
              "p50 %.2f ms, p99 %.2f ms, mean %.2f ms"
              % (len(times), p(0.50), p(0.99),
                 statistics.mean(times) * 1e3))
    finally:
        if runner is not None:
            runner.stop()
        srv.stop()
        broker.stop()


if __name__ == "__main__":
    main()
