#!/usr/bin/env bash
# bench/run.sh - Bagou's load benchmarks (see bench/README.md).
#
# Starts a fresh bagou-server on 127.0.0.1 (free port, --amqp-url none,
# --config with "[channels] client_publish = all" from a temporary file) for
# each benchmark, waits for GET /health, runs bagou-bench against it, and
# stops the server with SIGTERM, checking that it exits:
#   (a) fanout, BENCH_CLIENTS_SMALL (100) subscribers, HTTP publishers
#   (b) fanout, BENCH_CLIENTS_LARGE (1000) subscribers, HTTP publishers
#   (c) fanout, BENCH_CLIENTS_SMALL (100) subscribers, WebSocket publishers
#   (d) fanout, BENCH_CLIENTS_LARGE (1000) subscribers, WebSocket publishers
#   (h) fanout, BENCH_MANY_CLIENTS (5000) subscribers spread over
#       BENCH_MANY_CHANNELS (500) channels, HTTP publishers
#   (e) idle, BENCH_IDLE_CLIENTS (10000) connections: server VmRSS before
#       and with all connected, KB per idle connection
#   (f) AMQP ingest: a private RabbitMQ holds BENCH_INGEST_COUNT (100000)
#       broadcasts in a durable queue; a server started with "[amqp] queue
#       = it" consumes them: broadcasts/s until bagou_broadcasts_total
#       reaches the count (bench/amqp_ingest.py); with 0 subscribers, and
#       with BENCH_CLIENTS_LARGE (1000) subscribers on the channel and
#       BENCH_INGEST_COUNT_SUBS (10000) broadcasts (then also deliveries/s)
#   (g) AMQP -> WebSocket latency: BENCH_CLIENTS_LARGE subscribers
#       (bagou-bench --publish external), a pika publisher
#       (bench/amqp_pub.py) publishing to exchange "bagou" at each rate of
#       BENCH_AMQP_RATES ("200 1000") for BENCH_AMQP_DURATION s
# Rows f and g start a private RabbitMQ (127.0.0.1, free ports, a private
# epmd, a temporary directory) and stop it at the end; without
# rabbitmq-server, epmd or python3-pika they are skipped with a message.
# HTTP publishers POST /broadcast to the server's API listener
# (--api-listen, a second free port), each on one keep-alive connection;
# WebSocket publishers send client publishes on one connection each.  Prints a table and writes it, with
# the raw JSON lines, to BENCH_OUT.
#
# Environment (defaults in brackets):
#   BAGOU_BIN [build/bagou-server]   BAGOU_BENCH [build/bagou-bench]
#   BENCH_DURATION [10] s of publishing   BENCH_SIZE [100] bytes
#   BENCH_RATE [0] broadcasts/s, 0 = as fast as delivered
#   BENCH_PUBLISHERS [4] publisher slots
#   BENCH_WS_DEPTH [1] publishes in flight per WebSocket publisher
#   BENCH_WORKERS [2]   BENCH_CLIENTS_SMALL [100]   BENCH_CLIENTS_LARGE [1000]
#   BENCH_IDLE_CLIENTS [10000]   BENCH_IDLE_HOLD [10] s
#   BENCH_CONNECT_RATE [2000]/s   BENCH_DRAIN [5] s
#   BENCH_ONLY [a,b,c,d,e,f,g,h]   BENCH_LOG_LEVEL [warn]
#   BENCH_STOP_TIMEOUT [10] s
#   BENCH_INGEST_COUNT [100000]   BENCH_INGEST_COUNT_SUBS [10000]
#   BENCH_INGEST_TIMEOUT [120] s   BENCH_AMQP_RATES ["200 1000"]/s
#   BENCH_AMQP_DURATION [BENCH_DURATION] s   BENCH_PYTHON [/usr/bin/python3]
#   RABBITMQ_BIN [/usr/lib/rabbitmq/bin]   BENCH_KEEP_RABBITMQ [0] 1 = keep
#                   the broker's directory (logs) after the run
#   BENCH_ARGS [] extra bagou-bench options (fanout and idle)
#   BENCH_OUT [build/bench-results.txt]   BENCH_VERBOSE [0] show progress
#   BENCH_QUICK [0] 1 = quick run: defaults BENCH_DURATION=2,
#                   BENCH_IDLE_CLIENTS=2000, BENCH_IDLE_HOLD=3,
#                   BENCH_INGEST_COUNT=20000, BENCH_INGEST_COUNT_SUBS=2000
# Quick run: BENCH_QUICK=1 bench/run.sh, or the same by hand:
#            BENCH_DURATION=2 BENCH_IDLE_CLIENTS=2000 BENCH_IDLE_HOLD=3 \
#            BENCH_INGEST_COUNT=20000 BENCH_INGEST_COUNT_SUBS=2000 bench/run.sh
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "${BENCH_QUICK:-0}" = 1 ]; then
	BENCH_DURATION=${BENCH_DURATION:-2}
	BENCH_IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-2000}
	BENCH_IDLE_HOLD=${BENCH_IDLE_HOLD:-3}
	BENCH_INGEST_COUNT=${BENCH_INGEST_COUNT:-20000}
	BENCH_INGEST_COUNT_SUBS=${BENCH_INGEST_COUNT_SUBS:-2000}
fi
BAGOU_BIN=${BAGOU_BIN:-build/bagou-server}
BAGOU_BENCH=${BAGOU_BENCH:-build/bagou-bench}
BENCH_DURATION=${BENCH_DURATION:-10}
BENCH_SIZE=${BENCH_SIZE:-100}
BENCH_RATE=${BENCH_RATE:-0}
BENCH_PUBLISHERS=${BENCH_PUBLISHERS:-4}
BENCH_WS_DEPTH=${BENCH_WS_DEPTH:-1}
BENCH_WORKERS=${BENCH_WORKERS:-2}
BENCH_CLIENTS_SMALL=${BENCH_CLIENTS_SMALL:-100}
BENCH_CLIENTS_LARGE=${BENCH_CLIENTS_LARGE:-1000}
BENCH_IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-10000}
BENCH_IDLE_HOLD=${BENCH_IDLE_HOLD:-10}
BENCH_CONNECT_RATE=${BENCH_CONNECT_RATE:-2000}
BENCH_DRAIN=${BENCH_DRAIN:-5}
BENCH_ONLY=${BENCH_ONLY:-a,b,c,d,e,f,g,h}
BENCH_MANY_CLIENTS=${BENCH_MANY_CLIENTS:-5000}
BENCH_MANY_CHANNELS=${BENCH_MANY_CHANNELS:-500}
BENCH_LOG_LEVEL=${BENCH_LOG_LEVEL:-warn}
BENCH_STOP_TIMEOUT=${BENCH_STOP_TIMEOUT:-10}
BENCH_ARGS=${BENCH_ARGS:-}
BENCH_OUT=${BENCH_OUT:-build/bench-results.txt}
BENCH_VERBOSE=${BENCH_VERBOSE:-0}
BENCH_INGEST_COUNT=${BENCH_INGEST_COUNT:-100000}
BENCH_INGEST_COUNT_SUBS=${BENCH_INGEST_COUNT_SUBS:-10000}
BENCH_INGEST_TIMEOUT=${BENCH_INGEST_TIMEOUT:-120}
BENCH_AMQP_RATES=${BENCH_AMQP_RATES:-200 1000}
BENCH_AMQP_DURATION=${BENCH_AMQP_DURATION:-$BENCH_DURATION}
BENCH_PYTHON=${BENCH_PYTHON:-/usr/bin/python3}
RABBITMQ_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
BENCH_KEEP_RABBITMQ=${BENCH_KEEP_RABBITMQ:-0}

LOGDIR=build/bench-logs
CONFIG=
SERVER_PID=
PORT=
API_PORT=
FAILED=0
ROWS=()
JSONS=()
STOPS=()
BG_PIDS=()		# bagou-bench and python helpers running in the background
TMPFILES=()		# per-benchmark ini files
AMQP_SKIP=		# why rows f and g did not run
AMQP_URL=
BROKER_DIR=
BROKER_PID=
EPMD_PID=
BROKER_NODE=
BROKER_ENV=()

die() {
	echo "run.sh: $*" >&2
	exit 1
}

for f in "$BAGOU_BIN" "$BAGOU_BENCH"; do
	[ -x "$f" ] || die "$f is missing or not executable (run make)"
done
mkdir -p "$LOGDIR" "$(dirname "$BENCH_OUT")"

# Client publishes (the ws publishers) are off by default in the server,
# and each connection is rate-limited (100 messages/s): a benchmark
# publisher must be neither.
CONFIG=$(mktemp "${TMPDIR:-/tmp}/bagou-bench.XXXXXX.ini")
printf '; written by bench/run.sh\n[channels]\nclient_publish = all\n[limits]\nrate = 0\n' \
	>"$CONFIG"

# The server needs a descriptor per connection, and more.
if ! ulimit -n 20000 2>/dev/null; then
	ulimit -Sn "$(ulimit -Hn)"
	echo "run.sh: warning: fd limit is only $(ulimit -n)" >&2
fi

# shellcheck disable=SC2317  # called by the trap
cleanup() {
	local p
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill -KILL "$SERVER_PID" 2>/dev/null || true
	fi
	for p in "${BG_PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	broker_stop
	[ -n "$CONFIG" ] && rm -f "$CONFIG"
	for p in "${TMPFILES[@]}"; do
		rm -f "$p"
	done
}
trap cleanup EXIT

port_busy() {
	if command -v ss >/dev/null; then
		[ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

# Below the ephemeral range, so client sockets never take it.
free_port() {
	local p
	for _ in $(seq 1 100); do
		p=$((20000 + RANDOM % 12000))
		if ! port_busy "$p"; then
			echo "$p"
			return 0
		fi
	done
	die "no free port found"
}

http_get() {
	if command -v curl >/dev/null; then
		curl -fsS --max-time 2 "http://127.0.0.1:$PORT$1" 2>/dev/null
	else
		# shellcheck disable=SC2016  # expanded by the inner bash
		timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" &&
			printf "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" \
				"$1" "Connection: close" >&3 &&
			sed "1,/^\r$/d" <&3' "$PORT" "$1" 2>/dev/null
	fi
}

rss_kb() {
	awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# jget JSON KEY: the value of a flat key of bagou-bench's JSON line.
jget() {
	sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$1"
}

# start_server TAG [AMQP_URL [CONFIG]]: --amqp-url none and $CONFIG by
# default.  Returns once GET /health answers (not: once AMQP is up).
start_server() {
	local tag=$1 amqp=${2:-none} config=${3:-$CONFIG}
	PORT=$(free_port)
	API_PORT=$(free_port)
	while [ "$API_PORT" = "$PORT" ]; do API_PORT=$(free_port); done
	"$BAGOU_BIN" --listen "127.0.0.1:$PORT" --workers "$BENCH_WORKERS" \
		--api-listen "127.0.0.1:$API_PORT" \
		--amqp-url "$amqp" --config "$config" \
		--log-level "$BENCH_LOG_LEVEL" \
		>"$LOGDIR/server-$tag.log" 2>&1 &
	SERVER_PID=$!
	for _ in $(seq 1 100); do
		if http_get /health >/dev/null; then
			return 0
		fi
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then
			tail -20 "$LOGDIR/server-$tag.log" >&2
			SERVER_PID=
			die "$tag: bagou-server exited at start"
		fi
		sleep 0.1
	done
	die "$tag: no answer on /health after 10 s"
}

# SIGTERM, then the exit must come within BENCH_STOP_TIMEOUT seconds.
stop_server() {
	local tag=$1 t0 t1 rc=0 waited
	t0=$(date +%s.%N)
	kill -TERM "$SERVER_PID"
	for _ in $(seq 1 $((BENCH_STOP_TIMEOUT * 20))); do
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$SERVER_PID" 2>/dev/null; then
		kill -KILL "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		STOPS+=("$tag: FAIL, still running ${BENCH_STOP_TIMEOUT} s" \
			"after SIGTERM (killed)")
		FAILED=1
	else
		wait "$SERVER_PID" || rc=$?
		t1=$(date +%s.%N)
		waited=$(awk -v a="$t0" -v b="$t1" \
			'BEGIN { printf "%.2f", b - a }')
		if [ "$rc" = 0 ]; then
			STOPS+=("$tag: ok, exited 0 in $waited s after SIGTERM")
		else
			STOPS+=("$tag: WARN, exit status $rc in $waited s" \
				"after SIGTERM")
		fi
	fi
	SERVER_PID=
}

# run_bench TAG MODE ARGS...: stdout to $LOGDIR/TAG.out, sets JSON, RC.
run_bench() {
	local tag=$1
	shift
	RC=0
	# shellcheck disable=SC2086
	if [ "$BENCH_VERBOSE" = 1 ]; then
		"$BAGOU_BENCH" "$@" $BENCH_ARGS >"$LOGDIR/$tag.out" || RC=$?
	else
		"$BAGOU_BENCH" "$@" $BENCH_ARGS >"$LOGDIR/$tag.out" \
			2>"$LOGDIR/$tag.err" || RC=$?
	fi
	JSON=$(grep '^{' "$LOGDIR/$tag.out" | tail -1 || true)
	grep -v '^{' "$LOGDIR/$tag.out" || true
	if [ "$RC" != 0 ]; then
		FAILED=1
		echo "run.sh: $tag: bagou-bench exited $RC" >&2
		[ -f "$LOGDIR/$tag.err" ] && tail -5 "$LOGDIR/$tag.err" >&2
	fi
	[ -n "$JSON" ] && JSONS+=("$tag $JSON")
	return 0
}

FANOUT_FMT='%-16s %7s %4s %5s %9s %10s %11s %7s %5s %8s %8s %8s %8s %7s %4s'

fanout() {
	local tag=$1 clients=$2 publish=$3 channels=${4:-1}
	echo "== $tag: fanout, $clients subscribers on $channels channel(s)," \
		"$BENCH_PUBLISHERS" \
		"$publish publishers, $BENCH_WORKERS workers," \
		"rate $BENCH_RATE, ${BENCH_DURATION} s, ${BENCH_SIZE} B"
	start_server "$tag"
	run_bench "$tag" fanout --url "ws://127.0.0.1:$PORT/websocket" \
		--http "127.0.0.1:$API_PORT" --clients "$clients" \
		--channel bench --channels "$channels" --rate "$BENCH_RATE" \
		--duration "$BENCH_DURATION" --size "$BENCH_SIZE" \
		--publish "$publish" --publishers "$BENCH_PUBLISHERS" \
		--depth "$BENCH_WS_DEPTH" \
		--connect-rate "$BENCH_CONNECT_RATE" --drain "$BENCH_DRAIN"
	stop_server "$tag"
	if [ -z "$JSON" ]; then
		ROWS+=("$(printf '%-16s %7s %4s  (no result, exit %s)' \
			"$tag" "$clients" "$publish" "$RC")")
		return
	fi
	# shellcheck disable=SC2059  # the format is ours
	ROWS+=("$(printf "$FANOUT_FMT" \
		"$tag" "$clients" "$publish" "$(jget "$JSON" subscribed)" \
		"$(jget "$JSON" broadcasts_per_s)" \
		"$(jget "$JSON" delivered_per_s)" \
		"$(jget "$JSON" expected)" "$(jget "$JSON" lost)" \
		"$(jget "$JSON" out_of_order)" "$(jget "$JSON" p50_ms)" \
		"$(jget "$JSON" p99_ms)" "$(jget "$JSON" max_ms)" \
		"$(jget "$JSON" ack_p50_ms)" "$(jget "$JSON" reconnects)" \
		"$RC")")
}

idle() {
	local tag=$1 clients=$2 ready bpid rss0 rss1 conns health wait_s
	echo "== $tag: idle, $clients connections, $BENCH_WORKERS workers," \
		"hold ${BENCH_IDLE_HOLD} s"
	start_server "$tag"
	sleep 0.5
	rss0=$(rss_kb "$SERVER_PID" || echo 0)
	ready=$LOGDIR/$tag.ready
	rm -f "$ready"
	RC=0
	# shellcheck disable=SC2086
	"$BAGOU_BENCH" idle --url "ws://127.0.0.1:$PORT/websocket" \
		--clients "$clients" --channel bench --hold "$BENCH_IDLE_HOLD" \
		--connect-rate "$BENCH_CONNECT_RATE" --ready-file "$ready" \
		$BENCH_ARGS >"$LOGDIR/$tag.out" 2>"$LOGDIR/$tag.err" &
	bpid=$!
	# Setup is bounded by the bench itself; this only guards a hang.
	wait_s=$((clients / BENCH_CONNECT_RATE + 60))
	for _ in $(seq 1 $((wait_s * 10))); do
		[ -e "$ready" ] && break
		kill -0 "$bpid" 2>/dev/null || break
		sleep 0.1
	done
	rss1=
	conns=
	if [ -e "$ready" ]; then
		sleep 1
		rss1=$(rss_kb "$SERVER_PID" || true)
		health=$(http_get /health || true)
		conns=$(jget "$health" connections)
	fi
	wait "$bpid" || RC=$?
	JSON=$(grep '^{' "$LOGDIR/$tag.out" | tail -1 || true)
	grep -v '^{' "$LOGDIR/$tag.out" || true
	if [ "$RC" != 0 ]; then
		FAILED=1
		echo "run.sh: $tag: bagou-bench exited $RC" >&2
		tail -5 "$LOGDIR/$tag.err" >&2
	fi
	stop_server "$tag"
	if [ -z "$JSON" ] || [ -z "$rss1" ]; then
		ROWS+=("IDLE $(printf '%-16s %7s  (no result, exit %s)' \
			"$tag" "$clients" "$RC")")
		return
	fi
	JSONS+=("$tag $JSON")
	local connected
	connected=$(jget "$JSON" connected)
	IDLE_ROW=$(awk -v t="$tag" -v n="$clients" -v c="$connected" \
		-v a="$rss0" -v b="$rss1" -v h="${conns:-?}" -v rc="$RC" \
		'BEGIN { printf "%-16s %7s %9s %13s %12s %12s %10.2f %4s",
			t, n, c, h, a, b, c ? (b - a) / c : 0, rc }')
	ROWS+=("IDLE $IDLE_ROW")
}

# ---------------------------------------------------------------- RabbitMQ
# Rows f and g: one private broker for both, on 127.0.0.1 only, with free
# ports, a private epmd and everything under a temporary directory (the
# /usr/sbin wrappers would switch user and use another Erlang cookie, so
# the scripts of RABBITMQ_BIN are run directly, with HOME in that
# directory for the cookie).  Both run in sessions of their own, so stopping
# them kills their process groups (beam.smp and its helpers), nothing else.

# Sets AMQP_SKIP when rows f and g cannot run here.
amqp_check() {
	if [ ! -x "$RABBITMQ_BIN/rabbitmq-server" ]; then
		AMQP_SKIP="rabbitmq-server is not installed ($RABBITMQ_BIN/"
		AMQP_SKIP+="rabbitmq-server missing; apt-get install "
		AMQP_SKIP+="rabbitmq-server python3-pika)"
	elif ! command -v epmd >/dev/null || ! command -v setsid >/dev/null
	then
		AMQP_SKIP="epmd or setsid not found (rabbitmq-server's erlang,"
		AMQP_SKIP+=" util-linux)"
	elif ! "$BENCH_PYTHON" -c 'import pika' 2>/dev/null; then
		AMQP_SKIP="$BENCH_PYTHON cannot import pika (apt-get install "
		AMQP_SKIP+="python3-pika)"
	fi
}

broker_start() {
	local port dist epmd_port d ok=0 loopback
	port=$(free_port)
	dist=$(free_port)
	epmd_port=$(free_port)
	if [ "$dist" = "$port" ] || [ "$epmd_port" = "$port" ] ||
		[ "$epmd_port" = "$dist" ]; then
		dist=$(free_port)
		epmd_port=$(free_port)
	fi
	BROKER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/bagou-bench-rabbitmq.XXXXXX")
	d=$BROKER_DIR
	mkdir -p "$d/mnesia" "$d/log" "$d/plugins-expand"
	echo "[]." >"$d/enabled_plugins"
	echo "[]." >"$d/advanced.config"
	echo "# empty: keeps /etc/rabbitmq/rabbitmq-env.conf out" \
		>"$d/rabbitmq-env.conf"
	printf '%s\n' "listeners.tcp.1 = 127.0.0.1:$port" \
		"loopback_users.guest = true" "log.console = false" \
		"log.file = rabbit.log" "log.file.level = warning" \
		"disk_free_limit.absolute = 1MB" \
		"vm_memory_high_watermark.relative = 0.8" >"$d/rabbitmq.conf"
	BROKER_NODE=bagou-bench-$port@localhost
	loopback="-kernel inet_dist_use_interface {127,0,0,1}"
	BROKER_ENV=(HOME="$d" LC_ALL=C.UTF-8 LANG=C.UTF-8
		ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$epmd_port"
		RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
		RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
		RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
		RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
		RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log"
		RABBITMQ_PLUGINS_EXPAND_DIR="$d/plugins-expand"
		RABBITMQ_PID_FILE="$d/rabbitmq.pid"
		RABBITMQ_NODENAME="$BROKER_NODE"
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port"
		RABBITMQ_DIST_PORT="$dist"
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$loopback"
		RABBITMQ_CTL_ERL_ARGS="$loopback")
	AMQP_URL=amqp://guest:guest@127.0.0.1:$port/
	echo "== RabbitMQ: starting $BROKER_NODE on 127.0.0.1:$port" \
		"(private epmd on $epmd_port, files in $d)"
	env "${BROKER_ENV[@]}" setsid epmd -port "$epmd_port" \
		-address 127.0.0.1 </dev/null >"$d/epmd.log" 2>&1 &
	EPMD_PID=$!
	(cd "$d" && exec env "${BROKER_ENV[@]}" setsid \
		"$RABBITMQ_BIN/rabbitmq-server") </dev/null >"$d/startup.log" 2>&1 &
	BROKER_PID=$!
	# Ready = an AMQP login works (about 5 s); at most 90 s.
	# shellcheck disable=SC2016  # python, not shell
	if "$BENCH_PYTHON" -c '
import sys, time, os, pika
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("rabbitmq-server exited")
    p = pika.URLParameters(url)
    p.connection_attempts = 1
    p.socket_timeout = p.stack_timeout = 2
    try:
        pika.BlockingConnection(p).close()
        sys.exit(0)
    except Exception:
        time.sleep(0.3)
sys.exit("no AMQP login within 90 s")' "$AMQP_URL" "$BROKER_PID"; then
		ok=1
	fi
	if [ "$ok" != 1 ]; then
		tail -30 "$d/startup.log" "$d"/log/*.log >&2 2>/dev/null || true
		AMQP_SKIP="RabbitMQ did not start (log above)"
		FAILED=1
		BENCH_KEEP_RABBITMQ=1 broker_stop
		return 1
	fi
	echo "== RabbitMQ: ready at $AMQP_URL"
}

# rabbitmqctl stop, then SIGKILL of the broker's and epmd's process groups.
broker_stop() {
	local keep=${BENCH_KEEP_RABBITMQ:-0}
	[ -n "$BROKER_DIR" ] || return 0
	if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
		timeout 60 env "${BROKER_ENV[@]}" "$RABBITMQ_BIN/rabbitmqctl" \
			-n "$BROKER_NODE" -q stop >>"$BROKER_DIR/ctl.log" 2>&1 ||
			true
		for _ in $(seq 1 200); do
			kill -0 "$BROKER_PID" 2>/dev/null || break
			sleep 0.1
		done
	fi
	# setsid made each of them a session and group leader: their ids.
	if [ -n "$BROKER_PID" ]; then
		kill -KILL -- "-$BROKER_PID" 2>/dev/null || true
		wait "$BROKER_PID" 2>/dev/null || true
	fi
	if [ -n "$EPMD_PID" ]; then
		kill -KILL -- "-$EPMD_PID" 2>/dev/null || true
		wait "$EPMD_PID" 2>/dev/null || true
	fi
	if [ "$keep" = 1 ]; then
		echo "run.sh: RabbitMQ files kept in $BROKER_DIR" >&2
	else
		rm -rf "$BROKER_DIR"
	fi
	BROKER_DIR=
	BROKER_PID=
	EPMD_PID=
	return 0
}

# wait_file PATH PID SECONDS: until PATH exists, PID ends, or time is up.
wait_file() {
	for _ in $(seq 1 $(($3 * 10))); do
		[ -e "$1" ] && return 0
		kill -0 "$2" 2>/dev/null || break
		sleep 0.1
	done
	[ -e "$1" ]
}

# forget_pid PID: no longer a background process for cleanup().
forget_pid() {
	local p keep=()
	for p in "${BG_PIDS[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	BG_PIDS=("${keep[@]}")
}

# Starts bagou-bench --publish external in the background: BPID.
external_bench() {
	local tag=$1 clients=$2 ready=$3 donef=$4 wait_s=$5 drain=$6
	# shellcheck disable=SC2086
	"$BAGOU_BENCH" fanout --url "ws://127.0.0.1:$PORT/websocket" \
		--clients "$clients" --channel bench --publish external \
		--ready-file "$ready" --done-file "$donef" \
		--duration "$wait_s" --drain "$drain" \
		--connect-rate "$BENCH_CONNECT_RATE" $BENCH_ARGS \
		>"$LOGDIR/$tag.out" 2>"$LOGDIR/$tag.err" &
	BPID=$!
	BG_PIDS+=("$BPID")
}

# finish_external_bench TAG: waits for BPID; sets JSON and RC.
finish_external_bench() {
	local tag=$1
	RC=0
	wait "$BPID" || RC=$?
	forget_pid "$BPID"
	JSON=$(grep '^{' "$LOGDIR/$tag.out" | tail -1 || true)
	grep -v '^{' "$LOGDIR/$tag.out" || true
	if [ "$RC" != 0 ]; then
		FAILED=1
		echo "run.sh: $tag: bagou-bench exited $RC" >&2
		tail -5 "$LOGDIR/$tag.err" >&2
	fi
	[ -n "$JSON" ] && JSONS+=("$tag $JSON")
	return 0
}

INGEST_FMT='%-18s %5s %7s %8s %9s %8s %8s %10s %9s %6s %4s %4s %5s'

# (f) ingest TAG SUBSCRIBERS COUNT
ingest() {
	local tag=$1 subs=$2 count=$3 q cfg gate release donef ready ipid
	local irc=0 ijson='' bjson='' brc=- wait_s
	echo "== $tag: AMQP ingest, $count broadcasts queued in RabbitMQ," \
		"$subs subscribers, $BENCH_WORKERS workers, ${BENCH_SIZE} B"
	q=bagou-bench-$tag-$$
	gate=$LOGDIR/$tag.gate
	release=$LOGDIR/$tag.release
	donef=$LOGDIR/$tag.done
	ready=$LOGDIR/$tag.ready
	rm -f "$gate" "$release" "$release.tmp" "$donef" "$ready"
	cfg=$(mktemp "${TMPDIR:-/tmp}/bagou-bench.XXXXXX.ini")
	TMPFILES+=("$cfg")
	printf '; written by bench/run.sh\n[amqp]\nqueue = %s\n' "$q" >"$cfg"
	"$BENCH_PYTHON" bench/amqp_ingest.py --url "$AMQP_URL" --queue "$q" \
		--count "$count" --size "$BENCH_SIZE" --channel bench \
		--gate-file "$gate" --release-file "$release" \
		--done-file "$donef" --timeout "$BENCH_INGEST_TIMEOUT" \
		>"$LOGDIR/$tag.ingest.out" 2>"$LOGDIR/$tag.ingest.err" &
	ipid=$!
	BG_PIDS+=("$ipid")
	# Filling takes about 5 s per 100,000 messages.
	if wait_file "$gate" "$ipid" $((count / 5000 + 90)); then
		start_server "$tag" "$AMQP_URL" "$cfg"
		if [ "$subs" -gt 0 ]; then
			wait_s=$((BENCH_INGEST_TIMEOUT * 2 + 30))
			external_bench "$tag" "$subs" "$ready" "$donef" \
				"$wait_s" 60
			wait_file "$ready" "$BPID" \
				$((subs / BENCH_CONNECT_RATE + 60)) || true
		fi
		# The server is up (and the subscribers subscribed): go.
		echo "$API_PORT" >"$release.tmp"
		mv "$release.tmp" "$release"
	else
		echo "run.sh: $tag: the queue was not filled" >&2
		kill -TERM "$ipid" 2>/dev/null || true
	fi
	wait "$ipid" || irc=$?
	forget_pid "$ipid"
	[ -e "$donef" ] || echo "$count 0 0" >"$donef"
	ijson=$(grep '^{' "$LOGDIR/$tag.ingest.out" | tail -1 || true)
	if [ "$irc" != 0 ]; then
		FAILED=1
		echo "run.sh: $tag: amqp_ingest.py exited $irc" >&2
		tail -5 "$LOGDIR/$tag.ingest.err" >&2
	fi
	[ -n "$ijson" ] && JSONS+=("$tag $ijson")
	if [ -n "$SERVER_PID" ]; then
		if [ "$subs" -gt 0 ]; then
			finish_external_bench "$tag"
			bjson=$JSON
			brc=$RC
		fi
		stop_server "$tag"
	fi
	rm -f "$cfg"
	if [ -z "$ijson" ]; then
		ROWS+=("INGEST $(printf '%-18s %5s %7s  (no result, exit %s)' \
			"$tag" "$subs" "$count" "$irc")")
		return
	fi
	# shellcheck disable=SC2059  # the format is ours
	ROWS+=("INGEST $(printf "$INGEST_FMT" "$tag" "$subs" "$count" \
		"$(jget "$ijson" fill_per_s)" \
		"$(jget "$ijson" broadcasts_per_s)" \
		"$(jget "$ijson" queue_per_s)" \
		"$(jget "$ijson" poll_max_ms)" \
		"${bjson:+$(jget "$bjson" delivered_per_s)}" \
		"${bjson:+$(jget "$bjson" expected)}" \
		"${bjson:+$(jget "$bjson" lost)}" \
		"${bjson:+$(jget "$bjson" out_of_order)}" \
		"$irc" "$brc")")
}

E2E_FMT='%-20s %5s %6s %8s %10s %9s %6s %4s %8s %8s %8s %8s %5s %5s'

# (g) e2e TAG SUBSCRIBERS RATE
e2e() {
	local tag=$1 subs=$2 rate=$3 ready donef ppid prc=0 pjson='' ok=0
	echo "== $tag: AMQP -> WebSocket latency, $subs subscribers," \
		"pika publisher at $rate/s for ${BENCH_AMQP_DURATION} s," \
		"${BENCH_SIZE} B"
	ready=$LOGDIR/$tag.ready
	donef=$LOGDIR/$tag.done
	rm -f "$ready" "$donef" "$donef.tmp"
	start_server "$tag" "$AMQP_URL"
	for _ in $(seq 1 200); do
		case $(http_get /health || true) in
		*'"amqp":"connected"'*) ok=1; break ;;
		esac
		sleep 0.1
	done
	[ "$ok" = 1 ] || echo "run.sh: $tag: warning: /health does not" \
		"say amqp connected after 20 s" >&2
	external_bench "$tag" "$subs" "$ready" "$donef" \
		"$(awk -v d="$BENCH_AMQP_DURATION" \
			'BEGIN { printf "%d", d + 90 }')" "$BENCH_DRAIN"
	# Connects first, publishes once every subscriber is subscribed.
	"$BENCH_PYTHON" bench/amqp_pub.py --url "$AMQP_URL" --channel bench \
		--rate "$rate" --duration "$BENCH_AMQP_DURATION" \
		--size "$BENCH_SIZE" --wait-file "$ready" \
		--wait-timeout $((subs / BENCH_CONNECT_RATE + 60)) \
		--done-file "$donef" \
		>"$LOGDIR/$tag.pub.out" 2>"$LOGDIR/$tag.pub.err" &
	ppid=$!
	BG_PIDS+=("$ppid")
	wait "$ppid" || prc=$?
	forget_pid "$ppid"
	# A publisher that died early wrote nothing: let the bench finish.
	[ -e "$donef" ] || echo "0 0 0" >"$donef"
	pjson=$(grep '^{' "$LOGDIR/$tag.pub.out" | tail -1 || true)
	if [ "$prc" != 0 ]; then
		FAILED=1
		echo "run.sh: $tag: amqp_pub.py exited $prc" >&2
		tail -5 "$LOGDIR/$tag.pub.err" >&2
	fi
	[ -n "$pjson" ] && JSONS+=("$tag $pjson")
	finish_external_bench "$tag"
	stop_server "$tag"
	if [ -z "$JSON" ] || [ -z "$pjson" ]; then
		ROWS+=("E2E $(printf '%-20s %5s %6s  (no result, exit %s/%s)' \
			"$tag" "$subs" "$rate" "$prc" "$RC")")
		return
	fi
	# shellcheck disable=SC2059  # the format is ours
	ROWS+=("E2E $(printf "$E2E_FMT" "$tag" "$subs" "$rate" \
		"$(jget "$pjson" per_s)" "$(jget "$JSON" delivered_per_s)" \
		"$(jget "$JSON" expected)" "$(jget "$JSON" lost)" \
		"$(jget "$JSON" out_of_order)" "$(jget "$JSON" p50_ms)" \
		"$(jget "$JSON" p99_ms)" "$(jget "$JSON" max_ms)" \
		"$(jget "$pjson" late_max_ms)" "$prc" "$RC")")
}

S=$BENCH_CLIENTS_SMALL
L=$BENCH_CLIENTS_LARGE
case ",$BENCH_ONLY," in *,a,*) fanout "fanout-$S-http" "$S" http ;; esac
case ",$BENCH_ONLY," in *,b,*) fanout "fanout-$L-http" "$L" http ;; esac
case ",$BENCH_ONLY," in *,c,*) fanout "fanout-$S-ws" "$S" ws ;; esac
case ",$BENCH_ONLY," in *,d,*) fanout "fanout-$L-ws" "$L" ws ;; esac
case ",$BENCH_ONLY," in *,h,*)
	fanout "channels-$BENCH_MANY_CLIENTS-$BENCH_MANY_CHANNELS" \
		"$BENCH_MANY_CLIENTS" http "$BENCH_MANY_CHANNELS" ;; esac
case ",$BENCH_ONLY," in *,e,*)
	idle "idle-$BENCH_IDLE_CLIENTS" "$BENCH_IDLE_CLIENTS" ;; esac
case ",$BENCH_ONLY," in *,[fg],*)
	amqp_check
	if [ -n "$AMQP_SKIP" ]; then
		echo "== f, g: skipped: $AMQP_SKIP"
	else
		broker_start || true
	fi ;;
esac
if [ -n "$AMQP_URL" ] && [ -z "$AMQP_SKIP" ]; then
	case ",$BENCH_ONLY," in *,f,*)
		ingest amqp-ingest-0 0 "$BENCH_INGEST_COUNT"
		ingest "amqp-ingest-$L" "$L" "$BENCH_INGEST_COUNT_SUBS" ;;
	esac
	case ",$BENCH_ONLY," in *,g,*)
		for r in $BENCH_AMQP_RATES; do
			e2e "amqp-e2e-$L-r$r" "$L" "$r"
		done ;;
	esac
	broker_stop
fi

{
	echo "Bagou benchmarks, $(date -u '+%Y-%m-%d %H:%M:%S UTC')," \
		"$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "server $BAGOU_BIN, $BENCH_WORKERS workers, --amqp-url none," \
		"[channels] client_publish = all, [limits] rate = 0" \
		"(f, g: --amqp-url to a" \
		"private RabbitMQ $(dpkg-query -W -f '${Version}' \
			rabbitmq-server 2>/dev/null || echo '?'));"
	echo "fanout: rate $BENCH_RATE, ${BENCH_DURATION} s, ${BENCH_SIZE} B," \
		"$BENCH_PUBLISHERS publishers (http: 1 POST in flight each," \
		"one keep-alive connection each to the API listener;" \
		"ws: $BENCH_WS_DEPTH in flight each)"
	echo
	case ",$BENCH_ONLY," in *,[abcdh],*)
		# shellcheck disable=SC2059  # the format is ours
		printf "$FANOUT_FMT\n" fanout clients pub subs bcast/s deliv/s \
			expected lost ooo p50_ms p99_ms max_ms ack_p50 \
			reconn exit
		for r in "${ROWS[@]}"; do
			case $r in "IDLE "* | "INGEST "* | "E2E "*) ;;
			*) echo "$r" ;; esac
		done
		echo ;;
	esac
	case ",$BENCH_ONLY," in *,e,*)
		printf '%-16s %7s %9s %13s %12s %12s %10s %4s\n' idle \
			clients connected server_conns rss_before_kb \
			rss_after_kb kb_per_conn exit
		for r in "${ROWS[@]}"; do
			case $r in "IDLE "*) echo "${r#IDLE }" ;; esac
		done
		echo ;;
	esac
	case ",$BENCH_ONLY," in *,[fg],*)
		if [ -n "$AMQP_SKIP" ]; then
			echo "amqp (f, g): skipped: $AMQP_SKIP"
			echo
		fi ;;
	esac
	case ",$BENCH_ONLY," in *,f,*)
		if [ -z "$AMQP_SKIP" ]; then
			echo "ingest: a durable queue filled with pika (fill/s)," \
				"then consumed by a server with [amqp] queue;"
			echo "bcast/s: slope of bagou_broadcasts_total (GET" \
				"/metrics every 50 ms, slowest answer poll_ms);" \
				"queue/s: of the queue's ready messages (broker side)"
			# shellcheck disable=SC2059  # the format is ours
			printf "$INGEST_FMT\n" ingest subs count fill/s \
				bcast/s queue/s poll_ms deliv/s expected \
				lost ooo exit bench
			for r in "${ROWS[@]}"; do
				case $r in "INGEST "*) echo "${r#INGEST }" ;;
				esac
			done
			echo
		fi ;;
	esac
	case ",$BENCH_ONLY," in *,g,*)
		if [ -z "$AMQP_SKIP" ]; then
			echo "e2e: pika publishes to exchange bagou (routing key" \
				"= channel, no confirms) for ${BENCH_AMQP_DURATION} s;" \
				"latency = receive - publish, CLOCK_MONOTONIC"
			# shellcheck disable=SC2059  # the format is ours
			printf "$E2E_FMT\n" e2e subs rate pub/s deliv/s \
				expected lost ooo p50_ms p99_ms max_ms late_ms \
				exit bench
			for r in "${ROWS[@]}"; do
				case $r in "E2E "*) echo "${r#E2E }" ;; esac
			done
			echo
		fi ;;
	esac
	echo "server stop:"
	for s in "${STOPS[@]}"; do
		echo "  $s"
	done
	echo
	echo "raw:"
	for j in "${JSONS[@]}"; do
		echo "  $j"
	done
} | tee "$BENCH_OUT"
echo "run.sh: results in $BENCH_OUT, logs in $LOGDIR/"
exit "$FAILED"
