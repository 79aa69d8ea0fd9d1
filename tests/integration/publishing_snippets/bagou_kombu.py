"""broadcast() for Bagou with kombu, the messaging library of Celery."""
import os

from kombu import Connection, Exchange, Producer

AMQP_URL = os.environ.get("BAGOU_AMQP_URL",
                          "amqp://guest:guest@localhost:5672/")

# Declared as bagou-server declares it (topic, durable), so declaring it
# here too is harmless and lets publishing start before any server.
bagou_exchange = Exchange("bagou", type="topic", durable=True)


def broadcast(channel, event, data=None, url=AMQP_URL):
    """Delivers {"event", "channel", "data"} to every client subscribed
    to channel, on every bagou-server node."""
    message = {"event": event, "channel": channel,
               "data": {} if data is None else data}
    # confirm_publish: publish() returns once RabbitMQ has the message;
    # max_retries: give up on an unreachable broker instead of waiting.
    options = {"confirm_publish": True, "max_retries": 3}
    with Connection(url, transport_options=options) as conn:
        producer = Producer(conn, exchange=bagou_exchange,
                            serializer="json")
        producer.publish(message, routing_key=channel, delivery_mode=2,
                         retry=True, retry_policy={"max_retries": 3})


if __name__ == "__main__":
    broadcast(os.environ.get("BAGOU_CHANNEL", "news"), "message",
              {"text": "Welcome!"})
