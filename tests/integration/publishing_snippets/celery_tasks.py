"""A Celery task that broadcasts through Bagou, with bagou_kombu.py."""
import os

from celery import Celery

from bagou_kombu import broadcast

app = Celery("tasks", broker=os.environ.get(
    "BAGOU_AMQP_URL", "amqp://guest:guest@localhost:5672/"))


@app.task
def welcome(channel, text):
    """In the application: welcome.delay("news", "Welcome!")."""
    broadcast(channel, "message", {"text": text})


if __name__ == "__main__":
    # Runs the task right here, without a worker, to try it out.
    welcome.apply(args=(os.environ.get("BAGOU_CHANNEL", "news"),
                        "Welcome!")).get()
