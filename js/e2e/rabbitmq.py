#!/usr/bin/python3
"""A private RabbitMQ for the browser test (js/e2e/browser.test.js).

Starts a broker exactly as the integration tests do
(tests/integration/rabbitmq.py: 127.0.0.1 only, free ports, a private epmd,
everything under a temporary directory), prints one JSON line on stdout,

    {"url": "amqp://guest:guest@127.0.0.1:PORT/", "port": PORT}

or {"error": "..."} if it could not start, then waits. It stops the broker
(and its epmd, and removes the directory) when its standard input reaches
end of file, which also happens when the node process that spawned it
dies, or on SIGTERM / SIGINT.
"""

import json
import os
import signal
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from rabbitmq import BrokerError, RabbitMQ  # noqa: E402


class Stop(Exception):
    pass


def main():
    stop = threading.Event()
    starting = [True]

    def on_signal(_signum, _frame):
        stop.set()
        if starting[0]:
            raise Stop()    # interrupts start(); the finally stops it

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    broker = RabbitMQ()
    try:
        try:
            broker.start()
        except BrokerError as e:
            print(json.dumps({"error": str(e)[-4000:]}), flush=True)
            return 1
        starting[0] = False
        if stop.is_set():
            return 0
        print(json.dumps({"url": broker.url, "port": broker.port}),
              flush=True)
        while not stop.wait(0.2):
            pass
        return 0
    except Stop:
        return 0
    finally:
        starting[0] = False
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
