#!/bin/sh
set -e
channel=${BAGOU_CHANNEL:-news}
client=$BAGOU_CLIENT    # an id a connection received in its connect event

# Several channels (routing key ""): a client subscribed to more than
# one of them still receives the message once.
bagou-broadcast --event message --channel "$channel" --channel alerts \
                --data '{"text": "Maintenance at 22:00"}'

# One connection only, e.g. the answer to a forwarded event:
bagou-broadcast --event callback --client "$client" \
                --callback-id c-17 --data '{"success": true}'

# Everybody but that connection; --quiet prints nothing on success.
bagou-broadcast --event message --exclude "$client" \
                --data '{"text": "Someone joined"}' --quiet
