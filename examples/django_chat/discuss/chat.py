"""Saving a message and telling the room (and a mentioned user) about it:
shared by the view (HTTP) and the socket handler (events.py)."""

import re

from django.contrib.auth import get_user_model

from bagou.utils import broadcast

from .models import Message

MAX_TEXT = 2000
MENTION = re.compile(r"^@(\w+)\s")


def room_channel(room):
    return "room-%s" % room


def private_channel(user):
    """Only that user's authenticated connections may join it."""
    return "private-user-%s" % user.pk


def post(user, room, text):
    """Saves the message, broadcasts it to the room; "@name ..." also
    notifies name on their private channel. Returns the Message."""
    msg = Message.objects.create(room=room, user=user, text=text)
    broadcast(event="message", channels=room_channel(room),
              data=msg.as_data())
    m = MENTION.match(text)
    if m:
        target = get_user_model().objects.filter(
            username=m.group(1)).first()
        if target is not None:
            broadcast(event="mention", channels=private_channel(target),
                      data=msg.as_data())
    return msg
