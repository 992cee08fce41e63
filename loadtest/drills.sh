#!/usr/bin/env bash
# Run Gatehouse's fault drills at full length against release builds and
# print the results table (one line per drill): requests sent, answered and
# failed, clients' retries of a closed kept-alive connection, events
# expected vs rows in ClickHouse, rows missing, and the time from the first
# failure to the last.
#
#   loadtest/drills.sh [--seconds 60] [--rate 800] [DRILL_FILTER]
#
# The same drills run in the test suite (8 s at 200 requests/s).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
rate=800
filter=e2e::drills::
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) filter="$1"; shift ;;
  esac
done

scripts/setup.sh
cargo build --release --workspace --bins --locked
echo "| drill | length | sent | answered | failed | retried | events expected | rows | missing | first→last failure |"
echo "|---|---|---|---|---|---|---|---|---|---|"
GATEHOUSE_DRILL_SECS="$seconds" GATEHOUSE_DRILL_RATE="$rate" \
  cargo test --release --locked -p gatehouse-e2e --test e2e -- "$filter" \
    --nocapture --test-threads 1 2>/tmp/gatehouse-drills.log \
  | grep --line-buffered '^| ' || {
    echo "a drill failed; its output is in /tmp/gatehouse-drills.log" >&2
    exit 1
  }
