#!/bin/sh
# bagou-broadcast finds the broker in BAGOU_AMQP_URL (or --url URL).
channel=${BAGOU_CHANNEL:-news}

bagou-broadcast --event message --channel "$channel" \
                --data '{"text": "Welcome!"}'
