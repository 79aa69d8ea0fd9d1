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
#   (e) idle, BENCH_IDLE_CLIENTS (10000) connections: server VmRSS before
#       and with all connected, KB per idle connection
# HTTP publishers POST /broadcast, one connection per POST (the server
# closes each after its answer); WebSocket publishers send client
# publishes on one connection each.  Prints a table and writes it, with
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
#   BENCH_ONLY [a,b,c,d,e]   BENCH_LOG_LEVEL [warn]   BENCH_STOP_TIMEOUT [10] s
#   BENCH_ARGS [] extra bagou-bench options (fanout and idle)
#   BENCH_OUT [build/bench-results.txt]   BENCH_VERBOSE [0] show progress
#   BENCH_QUICK [0] 1 = quick run: defaults BENCH_DURATION=2,
#                   BENCH_IDLE_CLIENTS=2000, BENCH_IDLE_HOLD=3
# Quick run: BENCH_QUICK=1 bench/run.sh, or the same by hand:
#            BENCH_DURATION=2 BENCH_IDLE_CLIENTS=2000 BENCH_IDLE_HOLD=3 \
#            bench/run.sh
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "${BENCH_QUICK:-0}" = 1 ]; then
	BENCH_DURATION=${BENCH_DURATION:-2}
	BENCH_IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-2000}
	BENCH_IDLE_HOLD=${BENCH_IDLE_HOLD:-3}
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
BENCH_ONLY=${BENCH_ONLY:-a,b,c,d,e}
BENCH_LOG_LEVEL=${BENCH_LOG_LEVEL:-warn}
BENCH_STOP_TIMEOUT=${BENCH_STOP_TIMEOUT:-10}
BENCH_ARGS=${BENCH_ARGS:-}
BENCH_OUT=${BENCH_OUT:-build/bench-results.txt}
BENCH_VERBOSE=${BENCH_VERBOSE:-0}

LOGDIR=build/bench-logs
CONFIG=
SERVER_PID=
PORT=
FAILED=0
ROWS=()
JSONS=()
STOPS=()

die() {
	echo "run.sh: $*" >&2
	exit 1
}

for f in "$BAGOU_BIN" "$BAGOU_BENCH"; do
	[ -x "$f" ] || die "$f is missing or not executable (run make)"
done
mkdir -p "$LOGDIR" "$(dirname "$BENCH_OUT")"

# Client publishes (the ws publishers) are off by default in the server.
CONFIG=$(mktemp "${TMPDIR:-/tmp}/bagou-bench.XXXXXX.ini")
printf '; written by bench/run.sh\n[channels]\nclient_publish = all\n' \
	>"$CONFIG"

# The server needs a descriptor per connection, and more.
if ! ulimit -n 20000 2>/dev/null; then
	ulimit -Sn "$(ulimit -Hn)"
	echo "run.sh: warning: fd limit is only $(ulimit -n)" >&2
fi

# shellcheck disable=SC2317  # called by the trap
cleanup() {
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill -KILL "$SERVER_PID" 2>/dev/null || true
	fi
	[ -n "$CONFIG" ] && rm -f "$CONFIG"
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

start_server() {
	local tag=$1
	PORT=$(free_port)
	"$BAGOU_BIN" --listen "127.0.0.1:$PORT" --workers "$BENCH_WORKERS" \
		--amqp-url none --config "$CONFIG" \
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
	local tag=$1 clients=$2 publish=$3
	echo "== $tag: fanout, $clients subscribers, $BENCH_PUBLISHERS" \
		"$publish publishers, $BENCH_WORKERS workers," \
		"rate $BENCH_RATE, ${BENCH_DURATION} s, ${BENCH_SIZE} B"
	start_server "$tag"
	run_bench "$tag" fanout --url "ws://127.0.0.1:$PORT/websocket" \
		--http "127.0.0.1:$PORT" --clients "$clients" \
		--channel bench --rate "$BENCH_RATE" \
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

S=$BENCH_CLIENTS_SMALL
L=$BENCH_CLIENTS_LARGE
case ",$BENCH_ONLY," in *,a,*) fanout "fanout-$S-http" "$S" http ;; esac
case ",$BENCH_ONLY," in *,b,*) fanout "fanout-$L-http" "$L" http ;; esac
case ",$BENCH_ONLY," in *,c,*) fanout "fanout-$S-ws" "$S" ws ;; esac
case ",$BENCH_ONLY," in *,d,*) fanout "fanout-$L-ws" "$L" ws ;; esac
case ",$BENCH_ONLY," in *,e,*)
	idle "idle-$BENCH_IDLE_CLIENTS" "$BENCH_IDLE_CLIENTS" ;; esac

{
	echo "Bagou benchmarks, $(date -u '+%Y-%m-%d %H:%M:%S UTC')," \
		"$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "server $BAGOU_BIN, $BENCH_WORKERS workers, --amqp-url none," \
		"[channels] client_publish = all;"
	echo "fanout: rate $BENCH_RATE, ${BENCH_DURATION} s, ${BENCH_SIZE} B," \
		"$BENCH_PUBLISHERS publishers (http: 1 POST in flight each," \
		"a new connection per POST; ws: $BENCH_WS_DEPTH in flight each)"
	echo
	case ",$BENCH_ONLY," in *,[abcd],*)
		# shellcheck disable=SC2059  # the format is ours
		printf "$FANOUT_FMT\n" fanout clients pub subs bcast/s deliv/s \
			expected lost ooo p50_ms p99_ms max_ms ack_p50 \
			reconn exit
		for r in "${ROWS[@]}"; do
			case $r in "IDLE "*) ;; *) echo "$r" ;; esac
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
