"""Publish one broadcast to Bagou with pika."""
import json
import os

import pika

url = os.environ.get("BAGOU_AMQP_URL", "amqp://guest:guest@localhost:5672/")
channel = os.environ.get("BAGOU_CHANNEL", "news")

message = {"event": "message", "channel": channel,
           "data": {"text": "Welcome!"}}

connection = pika.BlockingConnection(pika.URLParameters(url))
try:
    ch = connection.channel()
    # With confirms, basic_publish returns once RabbitMQ has the message
    # and raises if it refuses it (e.g. no exchange "bagou" yet).
    ch.confirm_delivery()
    ch.basic_publish(
        exchange="bagou",
        routing_key=channel,  # the channel name: exactly one channel
        body=json.dumps(message),
        properties=pika.BasicProperties(content_type="application/json",
                                        delivery_mode=2))
finally:
    connection.close()
