#!/usr/bin/env bash
# The failure-isolation drill: two apps behind Gatehouse with its default
# fences, the gateway under `ulimit -n 2048`, open-loop load on both while
# one app goes healthy → slow (3 s) → healed → hanging → healed → failing
# (500 every time) → a 1 200 requests/s spike while it hangs. Prints one
# line per phase and each requirement with PASS/FAIL; exits 1 when one
# fails. Loopback only; Linux (it counts sockets in /proc); about four
# minutes.
#
#   loadtest/drills/cascade.sh [--phase-secs 30] [--rate 300] [--spike-rate 1200] [--nofile 2048]
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in -h|--help) sed -n '2,9p' "$0"; exit 0 ;; esac

scripts/setup.sh >/dev/null
cargo build --release --locked -p gatehouse --bin gatehouse -p gatehouse-loadtest --bin lowcode-sim --bin cascade
# The drill itself holds a connection per waiting request.
ulimit -n "$(ulimit -Hn)"
exec target/release/cascade "$@"
