#!/usr/bin/env bash
# Build the gateway with profile-guided optimisation (PGO).
#
#   1. an instrumented release build of `gatehouse` (target/pgo-train/);
#   2. a short training load: that build serves the benchmark's bundles
#      (passthrough and full, telemetry to a local ClickHouse) to loadgen's
#      GET, 1 KB POST (10 % invalid), unauthenticated and HTTP/2 (h2c) traffic;
#   3. llvm-profdata merges the profiles (the llvm-N package that matches
#      rustc's LLVM, installed with apt when missing);
#   4. the release build again, laid out by the profile: target/pgo/release/gatehouse.
#
# Same source, same release profile: PGO only changes which branches the
# compiler treats as hot (code layout, inlining). Cold, it takes two release
# builds (about 25 minutes on 2 cores) and a minute of training; later runs
# rebuild only the profile-guided build (about 10 minutes), since the
# instrumented one is unchanged until the source changes.
# Usage: scripts/build-pgo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=$(command -v "llvm-profdata-$llvm" || true)
if [ -z "$profdata" ]; then
  echo "build-pgo: installing llvm-$llvm (llvm-profdata for rustc's LLVM $llvm) with apt-get"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "llvm-$llvm" >/dev/null || true
  profdata=$(command -v "llvm-profdata-$llvm" || true)
  if [ -z "$profdata" ]; then
    echo "build-pgo: no llvm-profdata-$llvm (apt package llvm-$llvm); an older llvm-profdata cannot read rustc's profiles" >&2
    exit 1
  fi
fi

work=$PWD/.state/pgo
rm -rf "$work"; mkdir -p "$work/raw"
cargo build --release --locked --workspace --bins
RUSTFLAGS="-Cprofile-generate=$work/raw" \
  cargo build --release --locked --target-dir target/pgo-train -p gatehouse --bin gatehouse
trained=target/pgo-train/release/gatehouse
bin=target/release

# The benchmark's bundles name their upstream at 127.0.0.1:19101.
sim_port=19101; pass_port=19611; h2_port=19621; full_port=19631
clickhouse() { CLICKHOUSE_DIR="$work/clickhouse" CLICKHOUSE_HTTP_PORT=19643 CLICKHOUSE_TCP_PORT=19644 scripts/clickhouse.sh "$@"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  clickhouse stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$bin/lowcode-sim" --app "orders=127.0.0.1:$sim_port" --threads 1 >/dev/null &
sim_pid=$!; pids+=($sim_pid)
clickhouse start >/dev/null
cp -r loadtest/bench/full "$work/full-policies"
"$bin/gatehouse" consumer bulk --count 1000 --keys-file "$work/keys.txt" > "$work/full-policies/consumers.json"
# The order scenario reads its keys from the benchmark's place.
mkdir -p .state/bench; cp "$work/keys.txt" .state/bench/keys.txt

gateways=()
serve() { # port admin-port policies extra-args...
  local port=$1 admin=$2 policies=$3; shift 3
  "$trained" serve --policies "$policies" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --threads 1 --no-watch --drain-timeout 1 "$@" 2>>"$work/gatehouse.log" &
  gateways+=($!); pids+=($!)
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "build-pgo: the instrumented gateway on $port did not become ready" >&2; exit 1
}
serve $pass_port 19612 loadtest/bench/passthrough
serve $h2_port 19622 loadtest/bench/passthrough --h2c
serve $full_port 19632 "$work/full-policies" \
  --clickhouse http://127.0.0.1:19643 --migrate --spool-dir "$work/spool"
# A sim that could not bind its port would leave the training to whatever holds it.
kill -0 "$sim_pid" 2>/dev/null || { echo "build-pgo: lowcode-sim did not start (is port $sim_port taken?)" >&2; exit 1; }

load() { # port seconds scenario extra-args...
  local port=$1 secs=$2 scenario=$3; shift 3
  "$bin/loadgen" --target "127.0.0.1:$port" --scenario "loadtest/scenarios/$scenario.yaml" \
    --connections 32 --duration "${secs}s" --warmup 1s "$@" > "$work/load.txt"
  echo "build-pgo: $scenario on $port: $(head -1 "$work/load.txt")"
}
load $pass_port 5 get
load $pass_port 5 order-1kb-nokey
load $h2_port 4 get --h2
load $full_port 10 order-1kb
load $full_port 3 order-1kb-nokey

# SIGTERM: a graceful stop, after which each process writes its profile.
for p in "${gateways[@]}"; do kill -TERM "$p"; done
for p in "${gateways[@]}"; do wait "$p" 2>/dev/null || true; done
ls "$work"/raw/*.profraw >/dev/null 2>&1 || { echo "build-pgo: the training wrote no profile" >&2; exit 1; }
"$profdata" merge -o "$work/gatehouse.profdata" "$work"/raw/*.profraw

RUSTFLAGS="-Cprofile-use=$work/gatehouse.profdata" \
  cargo build --release --locked --target-dir target/pgo -p gatehouse --bin gatehouse
echo "build-pgo: target/pgo/release/gatehouse (profile: $work/gatehouse.profdata)"
