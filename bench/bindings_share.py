#!/usr/bin/python3
"""What each node consumes from RabbitMQ with per-channel bindings.

    BAGOU_BIN=build/bagou-server /usr/bin/python3 bench/bindings_share.py \
        [--nodes 3] [--channels 30] [--count 3000]

Starts a private RabbitMQ (tests/integration/rabbitmq.py) and NODES
bagou-server nodes; node k's one WebSocket client subscribes to the
channels c with c % NODES == k (disjoint shares). pika publishes COUNT
broadcasts round-robin over the channels (routing key = the channel,
PROTOCOL.md §5), then one to everyone as a sentinel. Prints, per
[amqp] bindings mode, the share of the broadcasts each node consumed
(bagou_broadcasts_total).
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests",
                                "integration"))

import rawws  # noqa: E402
from rabbitmq import AmqpServer, RabbitMQ, unique_exchange  # noqa: E402
from support import metric_sum  # noqa: E402


def run(broker, nodes, channels, count, mode, tmp):
    exchange = unique_exchange("bagou-share")
    srvs, socks = [], []
    for k in range(nodes):
        s = AmqpServer(tmp, broker.url, name="share%s%d" % (mode, k),
                       config={"amqp": {"exchange": exchange,
                                        "bindings": mode}}, workers=1)
        s.start()
        s.wait_amqp("connected")
        srvs.append(s)
        ws = rawws.RawWS("127.0.0.1", s.port)
        ws.recv_message()
        for c in range(k, channels, nodes):
            ws.send_text(json.dumps({"event": "subscribe", "callbackId":
                                     str(c), "data": {"channel":
                                                      "c%d" % c}}))
            ws.recv_message()
        socks.append(ws)
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    for i in range(count):
        c = "c%d" % (i % channels)
        ch.basic_publish(exchange, c, json.dumps(
            {"event": "t", "channel": c, "data": i}).encode())
    ch.basic_publish(exchange, "", b'{"event":"end"}')
    conn.close()
    shares = []
    for s, ws in zip(srvs, socks):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, m = ws.recv_message(timeout=deadline - time.monotonic())
            if b'"end"' in m:
                break
        n = metric_sum(s.metrics(), "bagou_broadcasts_total") - 1
        shares.append(round(n / count, 3))
        ws.close()
        s.stop()
    return shares


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--channels", type=int, default=30)
    ap.add_argument("--count", type=int, default=3000)
    a = ap.parse_args()
    import tempfile
    tmp = tempfile.mkdtemp(prefix="bagou-share-")
    broker = RabbitMQ()
    broker.start()
    try:
        for mode in ("channels", "all"):
            print(json.dumps({"bindings": mode, "nodes": a.nodes,
                              "channels": a.channels, "count": a.count,
                              "share_consumed": run(broker, a.nodes,
                                                    a.channels, a.count,
                                                    mode, tmp)}))
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
