#!/usr/bin/env bash
# Install what building and testing Gatehouse needs on a fresh Debian machine.
# Idempotent: installs only what is missing.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)          # Pingora builds zlib-ng from source
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)      # test certificates
command -v curl >/dev/null 2>&1 || need_apt+=(curl)            # the demo's readiness check
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v clickhouse-server >/dev/null 2>&1 || need_apt+=(clickhouse-server clickhouse-client)  # telemetry tests and demo

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing. Install Rust 1.89 or newer (https://rustup.rs) and run again." >&2
  exit 1
fi
rust_minor=$(rustc --version | sed -E 's/rustc 1\.([0-9]+).*/\1/')
if [ "${rust_minor:-0}" -lt 89 ]; then
  echo "setup: Rust $(rustc --version) is too old; Gatehouse needs 1.89 or newer." >&2
  exit 1
fi
