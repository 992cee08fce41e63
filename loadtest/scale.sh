#!/usr/bin/env bash
# Estate scale: estates of 100, 300 and 1 000 apps (each with a contract of
# its own) and one of a million consumers; for each, `policy lint` and
# `serve` start-up (time, memory), a one-line edit of one app until it is
# live, and the p99 of a steady load while every app compiles again.
# Prints a Markdown table and the growth from the smallest to the largest
# estate. Loopback only; a few minutes.
#
#   loadtest/scale.sh [--apps 100,300,1000] [--consumers 1000000] [--rate 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,9p' "$0"; exit 0 ;; esac

scripts/setup.sh >/dev/null
cargo build --release --locked -p gatehouse --bin gatehouse -p gatehouse-loadtest --bin estate-scale
exec target/release/estate-scale "$@"
