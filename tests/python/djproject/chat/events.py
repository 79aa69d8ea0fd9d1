"""Handlers written the django-bagou way; the tests observe them through
what the clients receive."""

from bagou.events import (on_authenticate, on_close, on_message, on_open,
                          on_store, on_subscribe, on_unsubscribe)
from bagou.utils import broadcast


@on_open
def welcome(client):
    client.jsonify(event="welcome", data={"id": client.id},
                   note="kept")


@on_close
def gone(client):
    if "watched" in client.channels:
        broadcast(event="gone", channels="watchers",
                  data={"id": client.id, "channels": client.channels})


@on_message
def first(client, channel, message):
    if message["event"] == "order":
        client.jsonify(event="step", data=1)
    elif message["event"] == "echo":
        client.jsonify(event="callback", callbackId=message["callbackId"],
                       data={"echo": message["data"], "channel": channel,
                             "user": client.user.username
                             if client.user else None,
                             "authenticated": client.authenticated,
                             "store": client.store},
                       extra={"kept": True})
    elif message["event"] == "intro":
        # docs/intro.rst of django-bagou, word for word.
        client.jsonify(success=True, message="Message received!")
    elif message["event"] == "boom":
        raise RuntimeError("boom, as asked")


@on_message
def second(client, channel, message):
    if message["event"] == "order":
        client.jsonify(event="step", data=2)


@on_message(channel=r"^room-")
def say(client, channel, message):
    if message["event"] == "say":
        broadcast(event="said", channels=client.channels,
                  data={"text": message["data"]["text"], "room": channel,
                        "from": client.id})


@on_subscribe(channel=r"^room-")
def joined(client, channel, message):
    broadcast(channels=channel, event="joined",
              data={"id": client.id, "channel": message["data"]["channel"],
                    "channels": sorted(client.channels)})


@on_unsubscribe(channel=r"^room-")
def left(client, channel, message):
    broadcast(event="left", channels=channel, data={"id": client.id})


@on_store
def stored(client, message):
    client.jsonify(event="stored", data={"store": client.store,
                                         "merged": message["data"]})


@on_authenticate
def hello(client, message, session_id):
    client.jsonify(event="hello", data={
        "user": client.user.username if client.user else None,
        "authenticated": client.authenticated,
        "session": session_id is not None})
