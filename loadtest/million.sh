#!/usr/bin/env bash
# One million consumers through the gateway: generate N consumers with one
# API key each, serve the "full" benchmark bundle (keys, two per-consumer/IP
# limits, contract) with them, spread GETs over every key, and report the
# start-up time, peak and steady RSS and throughput as a Markdown table.
# The gateway is pinned to CPU 0, loadgen and lowcode-sim to CPU 1. Its
# telemetry goes to a ClickHouse on CPU 1, as in the full mode of bench.sh,
# so the RSS includes the events a batch holds; --no-telemetry serves
# without a sink.
#
# Usage: loadtest/million.sh [--count 1000000] [--duration 60s] [--connections 64]
#                            [--no-telemetry]
set -euo pipefail
cd "$(dirname "$0")/.."

count=1000000; duration=60s; connections=64; telemetry=1
while [ $# -gt 0 ]; do
  case "$1" in
    --count) count=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --no-telemetry) telemetry=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
cargo build --release --locked --workspace --bins
bin=target/release
work=.state/m1
rm -rf "$work"; mkdir -p "$work"
cp -r loadtest/bench/full "$work/pol"

pids=()
ch_env=(CLICKHOUSE_DIR="$PWD/$work/clickhouse" CLICKHOUSE_HTTP_PORT=19133 CLICKHOUSE_TCP_PORT=19134)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "$telemetry" = 1 ] && env "${ch_env[@]}" scripts/clickhouse.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
sink=()
if [ "$telemetry" = 1 ]; then
  env "${ch_env[@]}" taskset -c 1 scripts/clickhouse.sh start >/dev/null
  sink=(--clickhouse http://127.0.0.1:19133 --migrate --spool-dir "$work/spool")
fi

t0=$(date +%s.%N)
"$bin/gatehouse" consumer bulk --count "$count" --keys-file "$work/keys.txt" > "$work/pol/consumers.json"
t1=$(date +%s.%N)
size=$(du -m "$work/pol/consumers.json" | cut -f1)

taskset -c 1 "$bin/lowcode-sim" --app "orders=127.0.0.1:19101" --threads 1 > /dev/null &
pids+=($!)
t2=$(date +%s.%N)
taskset -c 0 "$bin/gatehouse" serve --policies "$work/pol" --listen 127.0.0.1:19501 \
  --admin-listen 127.0.0.1:19502 --threads 1 --no-watch "${sink[@]}" 2> "$work/gatehouse.log" &
gw=$!; pids+=($gw)
for _ in $(seq 1 1200); do curl -fsS http://127.0.0.1:19502/readyz >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS http://127.0.0.1:19502/readyz >/dev/null || { echo "gateway not ready; see $work/gatehouse.log" >&2; exit 1; }
t3=$(date +%s.%N)
rss_ready=$(awk '/VmRSS/ {print $2}' "/proc/$gw/status")

taskset -c 1 "$bin/loadgen" --target 127.0.0.1:19501 --scenario loadtest/scenarios/get-keyed-1m.yaml \
  --mode closed --connections "$connections" --duration "$duration" --warmup 2s --label million \
  --json "$work/load.json" > "$work/load.txt"
rss_load=$(awk '/VmRSS/ {print $2}' "/proc/$gw/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$gw/status")
events="off (--no-telemetry)"
if [ "$telemetry" = 1 ]; then
  sleep 2  # the last batch's insert
  events="on: $(curl -fsS http://127.0.0.1:19502/metrics | awk -F'[{}"]' '/^gatehouse_telemetry_events_total/ {split($0, v, " "); printf "%s %s, ", $3, v[2]}' | sed 's/, $//')"
fi

python3 - "$work/load.json" "$count" "$size" "$t0" "$t1" "$t2" "$t3" "$rss_ready" "$rss_load" "$hwm" "$duration" "$connections" "$events" <<'PY'
import json, sys, datetime
s = json.load(open(sys.argv[1]))
count, size = int(sys.argv[2]), sys.argv[3]
t0, t1, t2, t3 = map(float, sys.argv[4:8])
ready, load, hwm = (int(x) / 1024 for x in sys.argv[8:11])
duration, conns, events = sys.argv[11], sys.argv[12], sys.argv[13]
non2xx = sum(v for k, v in s["statuses"].items() if not k.startswith("2"))
print(f"## One million consumers through the gateway — {datetime.date.today()}")
print()
flag = " --no-telemetry" if events.startswith("off") else ""
print(f"Command: `loadtest/million.sh --count {count} --duration {duration} --connections {conns}{flag}`")
print()
print("| measure | value |")
print("|---|---|")
print(f"| consumers file ({count:,} consumers, one key each) | {size} MB, generated in {t1 - t0:.1f} s |")
print(f"| start to `/readyz` (parse, schema check, compile) | {t3 - t2:.1f} s |")
print(f"| peak RSS (compiling) | {hwm:.0f} MiB |")
print(f"| RSS serving, before load | {ready:.0f} MiB |")
print(f"| RSS after {duration} with keys spread over all consumers (limiter state for every key seen) | **{load:.0f} MiB** |")
print(f"| telemetry to ClickHouse (events) | {events} |")
print(f"| throughput, GET with key lookup + two limits | {s['rps']:.0f} rps, p50 {s['latency_ms']['p50']:.2f} ms, p99 {s['latency_ms']['p99']:.2f} ms, {s['requests']:,} requests, {non2xx} non-2xx, {s['errors']} errors |")
PY
