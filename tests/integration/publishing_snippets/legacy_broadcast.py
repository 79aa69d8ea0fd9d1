"""The original Bagou helper, unchanged: it publishes straight to the
queue that bagou-server consumes when run with [amqp] queue = bagou
(legacy single-queue mode, one node only)."""
import json
import os

import pika

AMQP_URL = os.environ.get("BAGOU_AMQP_URL",
                          "amqp://guest:guest@localhost:5672/")
QUEUE_NAME = os.environ.get("BAGOU_QUEUE", "bagou")


def broadcast(channels, event, data={}, callback=None):
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.basic_publish(exchange='', routing_key=QUEUE_NAME,
                          body=json.dumps({"event": event,
                                           "callbackId": callback,
                                           "channel": channels,
                                           "data": data}))
    connection.close()


if __name__ == "__main__":
    broadcast([os.environ.get("BAGOU_CHANNEL", "news")], "message",
              {"text": "Welcome!"})
