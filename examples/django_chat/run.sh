#!/bin/sh
# Starts the Django chat example: migrates its sqlite database, creates
# the demo users (alice, bob), runs the Bagou handlers
# (python manage.py bagou) in the background and Django's development
# server in the foreground on 127.0.0.1:8000. Ctrl-C stops both.
# Needs RabbitMQ and bagou-server with bagou.ini running (README.md).
#
# Environment: PYTHON (default /usr/bin/python3), CHAT_ADDR (default
# 127.0.0.1:8000), and the overrides of chatsite/settings.py.
set -e
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-/usr/bin/python3}
addr=${CHAT_ADDR:-127.0.0.1:8000}
cd "$here"
# The bagou package: installed (pip install ./python), else the checkout's.
if ! "$python" -c 'import bagou' 2>/dev/null; then
  PYTHONPATH="$repo/python${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONPATH
fi
"$python" manage.py migrate --verbosity 0
"$python" manage.py demo_users
"$python" manage.py bagou &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT INT TERM
echo "chat: http://$addr/ (log in as alice or bob, password bagou-demo)"
"$python" manage.py runserver --noreload "$addr"
