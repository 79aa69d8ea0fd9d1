"""Socket handlers, written as for django-bagou: run them with
`python manage.py bagou`."""

from bagou.events import on_close, on_message, on_subscribe, on_unsubscribe
from bagou.utils import broadcast

from . import chat


def display_name(client):
    return client.user.get_username() if client.user else "a guest"


@on_subscribe(channel=r"^room-")
def joined(client, channel, message):
    broadcast(event="join", channels=channel,
              data={"name": display_name(client)})


@on_unsubscribe(channel=r"^room-")
def left(client, channel, message):
    broadcast(event="leave", channels=channel,
              data={"name": display_name(client)})


@on_close
def gone(client):
    """A page closed: its rooms see it leave."""
    rooms = [c for c in client.channels if c.startswith("room-")]
    if rooms:
        broadcast(event="leave", channels=rooms,
                  data={"name": display_name(client)})


@on_message(channel=r"^room-")
def say(client, channel, message):
    """ws.emit('message', {text: ...}, cb) from a page in a room."""
    if message["event"] != "message":
        return
    text = (message.get("data") or {}).get("text")
    cb = message.get("callbackId")
    if client.user is None:
        client.jsonify(event="callback", callbackId=cb,
                       data={"success": False, "error": "log in first"})
        return
    if not isinstance(text, str) or not text.strip() or \
            len(text) > chat.MAX_TEXT:
        client.jsonify(event="callback", callbackId=cb,
                       data={"success": False,
                             "error": "text must be 1-%d characters"
                                      % chat.MAX_TEXT})
        return
    room = channel[len("room-"):]
    msg = chat.post(client.user, room, text.strip())
    client.jsonify(event="callback", callbackId=cb,
                   data={"success": True, "id": msg.pk})
