#!/usr/bin/env bash
# The long fuzz run (the test suite runs a short one of each):
#  1. byte-level mutants of the conformance corpus through the lean
#     engine's head parser and upstream writer, checked by an independent
#     reading of what would reach the app (PARSER_CASES, default 3 000 000);
#  2. mutants sent to both HTTP/1 engines in front of a recording upstream,
#     every invariant of the conformance suite checked (GATEWAY_CASES per
#     engine, default 20 000);
#  3. the body checker against jsonschema over recursive applicators
#     (BODY_CASES, default 200 000).
# Usage: scripts/fuzz.sh   (findings: the failing input, shrunk, is printed)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins --locked
started=$(date +%s)
echo "fuzz: parser and writer, ${PARSER_CASES:-3000000} mutants"
PROPTEST_CASES="${PARSER_CASES:-3000000}" cargo test --locked -p gatehouse --lib \
  what_the_lean_engine_forwards_is_what_it_judged
echo "fuzz: body checker, ${BODY_CASES:-200000} schema/document pairs"
PROPTEST_CASES="${BODY_CASES:-200000}" cargo test --locked -p gatehouse --lib \
  recursive_applicators_agree_with_jsonschema
echo "fuzz: both engines end to end, ${GATEWAY_CASES:-20000} mutants each"
CONFORMANCE_FUZZ_CASES="${GATEWAY_CASES:-20000}" cargo test --locked -p gatehouse-e2e \
  mutated_requests_keep_every_invariant
echo "fuzz: done in $(( $(date +%s) - started )) s, no invariant broken"
