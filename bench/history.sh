#!/usr/bin/env bash
# bench/history.sh - history on vs off (issue 10), side by side in one run.
#
# For each of BENCH_HISTORY_ROUNDS (2) rounds, alternately: a standalone
# bagou-server (free ports, BENCH_WORKERS workers) with history off, then
# with "[history] channels = ^bench" (size 100, ttl 300); bagou-bench
# fanout to BENCH_CLIENTS (1000) subscribers of channel "bench" with
# BENCH_PUBLISHERS (4) HTTP publishers for BENCH_DURATION (10) s. Prints
# broadcasts/s, deliveries/s, and the server's CPU (utime + stime from
# /proc/PID/stat, over the whole bench) per delivery.
# Then memory per kept publication: a server keeping BENCH_KEEP (20000)
# publications of about 100 bytes on one channel; RSS before and after,
# and bagou_history_bytes, divided by the count.
# Results also go to BENCH_OUT (build/bench-history.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

BAGOU_BIN=${BAGOU_BIN:-build/bagou-server}
BAGOU_BENCH=${BAGOU_BENCH:-build/bagou-bench}
BENCH_WORKERS=${BENCH_WORKERS:-2}
BENCH_CLIENTS=${BENCH_CLIENTS:-1000}
BENCH_PUBLISHERS=${BENCH_PUBLISHERS:-4}
BENCH_DURATION=${BENCH_DURATION:-10}
BENCH_HISTORY_ROUNDS=${BENCH_HISTORY_ROUNDS:-2}
BENCH_KEEP=${BENCH_KEEP:-20000}
BENCH_OUT=${BENCH_OUT:-build/bench-history.txt}
LOGDIR=build/bench-logs
mkdir -p "$LOGDIR"
ulimit -n 20000 2>/dev/null || ulimit -Sn "$(ulimit -Hn)"

SERVER_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bagou-hbench.XXXXXX")
cleanup() {
	if [ -n "$SERVER_PID" ]; then
		kill -KILL "$SERVER_PID" 2>/dev/null || true
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
	/usr/bin/python3 -c 'import socket; s=socket.socket();
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {	# start TAG INI_TEXT
	printf '%s\n' "$2" >"$TMP/$1.ini"
	PORT=$(free_port)
	API=$(free_port)
	"$BAGOU_BIN" --listen "127.0.0.1:$PORT" --api-listen "127.0.0.1:$API" \
		--workers "$BENCH_WORKERS" --amqp-url none \
		--config "$TMP/$1.ini" --log-level warn \
		>"$LOGDIR/hist-$1.log" 2>&1 &
	SERVER_PID=$!
	for _ in $(seq 1 100); do
		curl -fsS "http://127.0.0.1:$API/health" >/dev/null 2>&1 &&
			return 0
		sleep 0.1
	done
	echo "history.sh: $1: server did not start" >&2
	exit 1
}

stop() {
	kill -TERM "$SERVER_PID"
	wait "$SERVER_PID" || true
	SERVER_PID=
}

cpu_ticks() {
	awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"
}

jget() {
	sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$1"
}

BASE='[channels]
client_publish = all
[limits]
rate = 0'
HZ=$(getconf CLK_TCK)
ROWS=()
for round in $(seq 1 "$BENCH_HISTORY_ROUNDS"); do
	for mode in off on; do
		ini=$BASE
		[ "$mode" = on ] && ini="$BASE
[history]
channels = ^bench"
		start "$mode$round" "$ini"
		c0=$(cpu_ticks)
		out=$("$BAGOU_BENCH" fanout --url "ws://127.0.0.1:$PORT/websocket" \
			--http "127.0.0.1:$API" --clients "$BENCH_CLIENTS" \
			--channel bench --duration "$BENCH_DURATION" --size 100 \
			--publish http --publishers "$BENCH_PUBLISHERS" \
			2>"$LOGDIR/hist-$mode$round.err" | grep '^{' | tail -1)
		c1=$(cpu_ticks)
		stop
		bps=$(jget "$out" broadcasts_per_s)
		dps=$(jget "$out" delivered_per_s)
		lost=$(jget "$out" lost)
		ooo=$(jget "$out" out_of_order)
		us=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v d="$dps" \
			-v s="$BENCH_DURATION" 'BEGIN { if (d > 0)
			printf "%.3f", t / hz * 1e6 / (d * s); else print "-" }')
		ROWS+=("$(printf '%-8s %-5s %12s %12s %8s %6s %10s' \
			"round$round" "$mode" "$bps" "$dps" "$lost" "$ooo" "$us")")
		echo "${ROWS[-1]}"
	done
done

# Memory per kept publication.
start keep "$BASE
[history]
channels = ^keep
size = $BENCH_KEEP
ttl = 3600"
sleep 0.5
rss0=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")
/usr/bin/python3 - "$API" "$BENCH_KEEP" <<'PY'
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(0, n, 200):
    batch = [{"event": "m", "channel": "keep",
              "data": {"i": j, "text": "x" * 80}}
             for j in range(i, min(n, i + 200))]
    c.request("POST", "/broadcast", json.dumps(batch),
              {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status != 202:
        raise SystemExit("POST /broadcast: %d" % r.status)
PY
sleep 1
rss1=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")
hb=$(curl -fsS "http://127.0.0.1:$API/metrics" |
	awk '/^bagou_history_bytes / { print $2 }')
kept=$(curl -fsS "http://127.0.0.1:$API/metrics" |
	awk '/^bagou_history_publications / { print $2 }')
stop
{
	echo "history on/off: $BENCH_CLIENTS subscribers, $BENCH_PUBLISHERS" \
		"HTTP publishers, $BENCH_WORKERS workers, ${BENCH_DURATION} s"
	printf '%-8s %-5s %12s %12s %8s %6s %10s\n' round history \
		broadcasts/s deliveries/s lost ooo cpu_us/dlv
	printf '%s\n' "${ROWS[@]}"
	echo "kept $kept publications (~100 B data): RSS +$((rss1 - rss0)) KiB" \
		"= $(( (rss1 - rss0) * 1024 / BENCH_KEEP )) B each;" \
		"bagou_history_bytes $hb = $(( hb / BENCH_KEEP )) B each"
} | tee "$BENCH_OUT"
