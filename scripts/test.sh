#!/usr/bin/env bash
# Run every Gatehouse check: formatting, lints, unit tests and the end-to-end
# suite (real gateway and lowcode-sim processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests start the gatehouse and lowcode-sim binaries.
cargo build --workspace --bins --locked
cargo test --workspace --locked
# The request-path suites once more with Pingora's proxy carrying plain
# HTTP/1.1 (the lean engine carried them above): one set of tests holds
# both engines to the same behaviour.
GATEHOUSE_E2E_ENGINE=pingora cargo test --locked -p gatehouse-e2e --test e2e -- \
  routing:: identity:: limits_and_errors:: contracts:: telemetry:: balancing:: parity:: \
  resilience::a_post_the_app resilience::a_failing_route resilience::a_hanging_route resilience::under_a_low resilience::over_its_cap
