#!/bin/sh
# The API listener ([http] api_listen, default 127.0.0.1:9001). With
# [http] api_key set, add -H "Authorization: Bearer $BAGOU_API_KEY".
bagou=${BAGOU_HTTP_URL:-http://127.0.0.1:9001}
channel=${BAGOU_CHANNEL:-news}

curl --fail-with-body --silent --show-error \
     -H 'Content-Type: application/json' --data-binary @- \
     "$bagou/broadcast" <<EOF
{"event": "message", "channel": "$channel", "data": {"text": "Welcome!"}}
EOF
