#!/usr/bin/env bash
# Side-by-side benchmark, one run: the same load straight to lowcode-sim
# ("direct"), through nginx, through "ceiling" (ceiling-proxy: a bare tokio +
# httparse loop that forwards bytes unchanged, the per-request floor a tokio
# proxy can reach), through Gatehouse "passthrough" (routing only, telemetry
# off) and Gatehouse "full" (API keys, two limits, contract validation of a
# ~1 KB body, telemetry to ClickHouse on).
#
# The proxy under test is pinned to CPU 0; loadgen, lowcode-sim and
# ClickHouse share CPU 1. Targets alternate, ROUNDS rounds (default 3); the
# table reports medians with CPU time per request (from /proc) and RSS, and
# the ratios against nginx. An HTTP/2 row pair (cleartext h2, prior
# knowledge, 4 connections carrying the same concurrency) compares nginx's
# `http2` listener with Gatehouse's `--h2c`. Figures are appended to
# loadtest/RESULTS.md.
#
# With --proxy-quota PCT every proxy under test may use only PCT % of CPU 0
# (a cgroup CPU quota): the load generator's core then has room to spare and
# the rps ratios measure the proxies, not the generator. Each row records how
# busy the generator's core was and how often the proxy slept waiting for
# work; the summary flags rows where the generator, not the proxy, set the
# pace (then lower PCT: 35 leaves the generator room on a 2-vCPU guest where
# going direct is only ~1.2x nginx's POST rate at 50).
#
# The open-loop latency part runs direct, nginx and full in turn
# (--open-rounds, default 3) at half of nginx's median POST rate, with
# ClickHouse moved onto CPU 0 under SCHED_IDLE: there it only takes the idle
# half of the proxy's core and never preempts the proxy or the generator (on
# its own machine in production).
#
# With --pgo the Gatehouse rows run the profile-guided build of
# scripts/build-pgo.sh, and a "full, no PGO" row runs the plain release build
# of the same commit beside it, so the run shows what PGO changes.
#
# With --baseline BIN (a gatehouse binary of another commit, e.g. the one
# before a change) "passthrough, before" and "full, before" rows run BIN
# beside the current build in every round: a same-run A/B of a change.
#
# Usage: loadtest/bench.sh [--rounds N] [--duration 10s] [--connections 64]
#                          [--proxy-quota PCT] [--open-rounds N] [--pgo]
#                          [--baseline BIN]
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3; duration=10s; connections=64; consumers=1000; quota=""; open_rounds=3; pgo=0; baseline=
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --consumers) consumers=$2; shift 2 ;;
    --proxy-quota) quota=$2; shift 2 ;;
    --open-rounds) open_rounds=$2; shift 2 ;;
    --pgo) pgo=1; shift ;;
    --baseline) baseline=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
command -v nginx >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo; $SUDO apt-get install -y -qq --no-install-recommends nginx-light >/dev/null || $SUDO apt-get install -y -qq --no-install-recommends nginx >/dev/null; }
command -v python3 >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo; $SUDO apt-get install -y -qq python3 >/dev/null; }
cargo build --release --locked --workspace --bins
bin=target/release
gatehouse=$bin/gatehouse
if [ "$pgo" = 1 ]; then
  scripts/build-pgo.sh
  gatehouse=target/pgo/release/gatehouse
fi
work=.state/bench
rm -rf "$work"; mkdir -p "$work"
sim_port=19101; nginx_port=19201; nginx_h2_port=19211; pass_port=19301; pass_h2_port=19311
full_port=19401; admin_a=19302; admin_b=19402; admin_c=19312; ceiling_port=19501
nopgo_port=19411; admin_d=19412
base_pass_port=19421; admin_e=19422; base_full_port=19431; admin_f=19432

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # nginx may remove its pid file between a test and a read: read once, quietly.
  nginx_master=$(cat "$work/nginx.pid" 2>/dev/null || true)
  [ -n "$nginx_master" ] && kill "$nginx_master" 2>/dev/null || true
  CLICKHOUSE_DIR="$PWD/$work/clickhouse" CLICKHOUSE_HTTP_PORT=19123 CLICKHOUSE_TCP_PORT=19124 scripts/clickhouse.sh stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  [ -n "${cg:-}" ] && rmdir "$cg" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

taskset -c 1 "$bin/lowcode-sim" --app "orders=127.0.0.1:$sim_port" --threads 1 > /dev/null &
pids+=($!)

sed -e "s#__DIR__#$PWD/$work#g" -e "s#__PORT__#$nginx_port#" -e "s#__H2_PORT__#$nginx_h2_port#" -e "s#__UPSTREAM_PORT__#$sim_port#" loadtest/nginx.conf.template > "$work/nginx.conf"
taskset -c 0 nginx -c "$PWD/$work/nginx.conf" -g "daemon off;" &
pids+=($!)

taskset -c 0 "$bin/ceiling-proxy" --listen "127.0.0.1:$ceiling_port" --upstream "127.0.0.1:$sim_port" > /dev/null &
ceiling_pid=$!; pids+=($ceiling_pid)

CLICKHOUSE_DIR="$PWD/$work/clickhouse" CLICKHOUSE_HTTP_PORT=19123 CLICKHOUSE_TCP_PORT=19124 taskset -c 1 scripts/clickhouse.sh start >/dev/null

cp -r loadtest/bench/full "$work/full-policies"
"$bin/gatehouse" consumer bulk --count "$consumers" --keys-file "$work/keys.txt" > "$work/full-policies/consumers.json"

taskset -c 0 "$gatehouse" serve --policies loadtest/bench/passthrough --listen "127.0.0.1:$pass_port" \
  --admin-listen "127.0.0.1:$admin_a" --threads 1 --no-watch 2> "$work/gatehouse-passthrough.log" &
pass_pid=$!; pids+=($pass_pid)
taskset -c 0 "$gatehouse" serve --policies loadtest/bench/passthrough --listen "127.0.0.1:$pass_h2_port" \
  --admin-listen "127.0.0.1:$admin_c" --threads 1 --no-watch --h2c 2> "$work/gatehouse-passthrough-h2.log" &
pass_h2_pid=$!; pids+=($pass_h2_pid)
taskset -c 0 "$gatehouse" serve --policies "$work/full-policies" --listen "127.0.0.1:$full_port" \
  --admin-listen "127.0.0.1:$admin_b" --threads 1 --no-watch \
  --clickhouse http://127.0.0.1:19123 --migrate --spool-dir "$work/spool" 2> "$work/gatehouse-full.log" &
full_pid=$!; pids+=($full_pid)

for port in $admin_a $admin_b $admin_c; do
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
done
# With --pgo: the plain release build in full mode too (started once the
# first full gateway has migrated ClickHouse's schema).
nopgo_pid=""
if [ "$pgo" = 1 ]; then
  taskset -c 0 "$bin/gatehouse" serve --policies "$work/full-policies" --listen "127.0.0.1:$nopgo_port" \
    --admin-listen "127.0.0.1:$admin_d" --threads 1 --no-watch \
    --clickhouse http://127.0.0.1:19123 --spool-dir "$work/spool-nopgo" 2> "$work/gatehouse-full-nopgo.log" &
  nopgo_pid=$!; pids+=($nopgo_pid)
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$admin_d/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
fi
# With --baseline: the other build in passthrough and full mode, beside.
base_pass_pid=""; base_full_pid=""
if [ -n "$baseline" ]; then
  taskset -c 0 "$baseline" serve --policies loadtest/bench/passthrough --listen "127.0.0.1:$base_pass_port" \
    --admin-listen "127.0.0.1:$admin_e" --threads 1 --no-watch 2> "$work/gatehouse-passthrough-base.log" &
  base_pass_pid=$!; pids+=($base_pass_pid)
  taskset -c 0 "$baseline" serve --policies "$work/full-policies" --listen "127.0.0.1:$base_full_port" \
    --admin-listen "127.0.0.1:$admin_f" --threads 1 --no-watch \
    --clickhouse http://127.0.0.1:19123 --spool-dir "$work/spool-base" 2> "$work/gatehouse-full-base.log" &
  base_full_pid=$!; pids+=($base_full_pid)
  for port in $admin_e $admin_f; do
    for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
fi
sleep 1
nginx_pid=$(pgrep -f "nginx: worker process" | head -1)
sim_pid=${pids[0]}

if [ -n "$quota" ]; then
  # cgroup v2 (cpu.max) or v1 (cfs quota): PCT % of one CPU per 10 ms period.
  period=10000; limit=$((period * quota / 100))
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    cg=/sys/fs/cgroup/gatehouse-bench; mkdir -p "$cg"; echo "$limit $period" > "$cg/cpu.max"; tasks="$cg/cgroup.threads"
  else
    cg=/sys/fs/cgroup/cpu/gatehouse-bench
    mkdir -p "$cg" || { echo "--proxy-quota needs a writable cgroup CPU controller" >&2; exit 1; }
    echo "$period" > "$cg/cpu.cfs_period_us"; echo "$limit" > "$cg/cpu.cfs_quota_us"; tasks="$cg/tasks"
  fi
  for p in $(cat "$work/nginx.pid" 2>/dev/null) $(pgrep -f "nginx: worker process") "$ceiling_pid" "$pass_pid" "$pass_h2_pid" "$full_pid" $nopgo_pid $base_pass_pid $base_full_pid; do
    for t in /proc/"$p"/task/*; do echo "${t##*/}" > "$tasks"; done
  done
  echo "proxies limited to $quota % of CPU 0 ($cg)"
fi

cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # user, kernel
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# The generator's core: busy and total ticks (busy = all but idle and iowait).
gen_ticks() { awk '$1 == "cpu1" {t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }
# Times the process went to sleep waiting for work (all threads): a proxy
# that is the bottleneck seldom does; one waiting on the generator often does.
idle_waits() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n + 0}'; }

run() { # label port pid scenario round [loadgen options…]
  local label=$1 port=$2 pid=$3 scenario=$4 round=$5
  shift 5
  local user0 sys0 user1 sys1 busy0 all0 busy1 all1 waits0 waits1
  read -r user0 sys0 < <(cpu_ticks "$pid")
  read -r busy0 all0 < <(gen_ticks)
  waits0=$(idle_waits "$pid")
  taskset -c 1 "$bin/loadgen" --target "127.0.0.1:$port" --scenario "$scenario" "$@" \
    --connections "$connections" --duration "$duration" --warmup 2s --label "$label" \
    --json "$work/$label-$round.json" > "$work/$label-$round.txt"
  read -r user1 sys1 < <(cpu_ticks "$pid")
  read -r busy1 all1 < <(gen_ticks)
  waits1=$(idle_waits "$pid")
  echo "{\"cpu_ticks\": $((user1 + sys1 - user0 - sys0)), \"user_ticks\": $((user1 - user0)), \"rss_kib\": $(rss_kib "$pid"), \"gen_busy_ticks\": $((busy1 - busy0)), \"gen_ticks\": $((all1 - all0)), \"idle_waits\": $((waits1 - waits0))}" > "$work/$label-$round.proc.json"
  echo "  $label: $(head -1 "$work/$label-$round.txt")"
}

for round in $(seq 1 "$rounds"); do
  echo "round $round"
  for mix in get order; do
    case $mix in
      get) plain=loadtest/scenarios/get.yaml; keyed=loadtest/scenarios/get.yaml ;;
      order) plain=loadtest/scenarios/order-1kb-nokey.yaml; keyed=loadtest/scenarios/order-1kb.yaml ;;
    esac
    run "direct-$mix" $sim_port "$sim_pid" "$plain" "$round"
    run "nginx-$mix" $nginx_port "$nginx_pid" "$plain" "$round"
    run "ceiling-$mix" $ceiling_port "$ceiling_pid" "$plain" "$round"
    run "passthrough-$mix" $pass_port "$pass_pid" "$plain" "$round"
    [ -n "$base_pass_pid" ] && run "passthroughbase-$mix" $base_pass_port "$base_pass_pid" "$plain" "$round"
    [ "$mix" = order ] && run "full-$mix" $full_port "$full_pid" "$keyed" "$round"
    if [ "$mix" = order ] && [ -n "$base_full_pid" ]; then
      run "fullbase-$mix" $base_full_port "$base_full_pid" "$keyed" "$round"
    fi
    if [ "$mix" = order ] && [ -n "$nopgo_pid" ]; then
      run "fullnopgo-$mix" $nopgo_port "$nopgo_pid" "$keyed" "$round"
    fi
  done
  run nginx-h2get $nginx_h2_port "$nginx_pid" loadtest/scenarios/get.yaml "$round" --h2
  run passthrough-h2get $pass_h2_port "$pass_h2_pid" loadtest/scenarios/get.yaml "$round" --h2
done

# Latency at half of nginx's max POST rate: open loop (constant arrival
# rate, latency from the intended send time): direct, nginx and full in
# turn. The aim compares full with direct; nginx's tail at the same rate
# shows what any proxy hop costs on the machine.
half=$(python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
rps = [json.load(open(f"{work}/nginx-order-{r}.json"))["rps"] for r in range(1, rounds + 1)]
print(int(statistics.median(rps) / 2))
PY
)
if [ -n "$quota" ]; then
  # Latency is measured without the quota: its throttling would add up to a period.
  if [ -f "$cg/cpu.max" ]; then echo "max $period" > "$cg/cpu.max"; else echo -1 > "$cg/cpu.cfs_quota_us"; fi
fi
echo "open loop at $half rps (half of nginx's POST median), ClickHouse on CPU 0 under SCHED_IDLE"
ch_pid=$(cat "$work/clickhouse/pid")
taskset -a -p -c 0 "$ch_pid" >/dev/null
for t in /proc/"$ch_pid"/task/*; do chrt -i -p 0 "${t##*/}" 2>/dev/null || true; done
for round in $(seq 1 "$open_rounds"); do
  run open-direct-order $sim_port "$sim_pid" loadtest/scenarios/order-1kb-nokey.yaml "$round" --mode open --rate "$half"
  run open-nginx-order $nginx_port "$nginx_pid" loadtest/scenarios/order-1kb-nokey.yaml "$round" --mode open --rate "$half"
  run open-full-order $full_port "$full_pid" loadtest/scenarios/order-1kb.yaml "$round" --mode open --rate "$half"
done

python3 loadtest/summarize.py "$work" "$rounds" "$(nproc)" "$duration" "$connections" "$consumers" "$quota" "$open_rounds" "$pgo" "$baseline" > "$work/summary.md"
# The full gateway's telemetry over the whole run: every event should be inserted, none dropped.
sleep 2
curl -fsS "http://127.0.0.1:$admin_b/metrics" | awk -F'[{}"]' '/^gatehouse_telemetry_events_total/ {split($0, v, " "); printf "%s %s, ", $3, v[2]}' \
  | sed 's/, $//' | { read -r line || true; echo; echo "Telemetry of the full gateway over the run (events): $line."; } >> "$work/summary.md"
cat "$work/summary.md"
{
  echo
  cat "$work/summary.md"
} >> loadtest/RESULTS.md
echo "appended to loadtest/RESULTS.md"
