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
