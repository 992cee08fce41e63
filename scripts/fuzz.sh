#!/usr/bin/env bash
# The long fuzz run (the test suite runs a short one of each property):
#  1. coverage-guided (libFuzzer, `cargo +nightly fuzz`, with AddressSanitizer)
#     on gateway/fuzz's targets, FUZZ_SECONDS each (default 600):
#       http1_request   any bytes through the lean engine's parser and
#                       upstream writer, checked by an independent reading
#                       of what would reach the app;
#       canonical_path  canonical paths are fixed points with nothing left
#                       for an app server to resolve;
#       json_body       the request path's JSON verdict equals the
#                       reference reading (I-JSON + jsonschema);
#     seeded from the conformance corpus, corpora kept in gateway/fuzz/corpus;
#  2. byte-level mutants of the conformance corpus through the same parser
#     oracle (PARSER_CASES, default 3 000 000);
#  3. the body checker against jsonschema over recursive applicators
#     (BODY_CASES, default 200 000) and check_json_body against the
#     reference reading (JSON_CASES, default 200 000);
#  4. mutants sent to both HTTP/1 engines in front of a recording upstream,
#     every invariant of the conformance suite checked (GATEWAY_CASES per
#     engine, default 20 000).
# Usage: scripts/fuzz.sh [libfuzzer|properties|gateway|all]   (default: all)
# Findings: libFuzzer leaves the input in gateway/fuzz/artifacts/<target>/;
# proptest prints the failing input, shrunk.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
scripts/setup.sh
started=$(date +%s)

if [[ "$what" == all || "$what" == libfuzzer ]]; then
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
  seeds=gateway/fuzz/corpus
  mkdir -p "$seeds/http1_request" "$seeds/canonical_path" "$seeds/json_body"
  # One seed per conformance request (its bytes), path and JSON body.
  python3 - "$seeds" <<'PY'
import hashlib, json, os, sys
seeds = sys.argv[1]
def put(target, data):
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(seeds, target, name), "wb") as f:
        f.write(data)
for c in json.load(open("tests/conformance/requests.json")):
    raw = c["request"].encode("latin-1")
    put("http1_request", raw)
    line = raw.split(b"\r\n", 1)[0].split(b" ")
    if len(line) > 1:
        put("canonical_path", line[1].split(b"?")[0])
    if b"\r\n\r\n" in raw:
        body = raw.split(b"\r\n\r\n", 1)[1]
        if body.startswith((b"{", b"[")):
            put("json_body", body)
for body in [b'{"a":1,"a":"x"}', b"1e999", b'"\\ud800"', b"-0", b'{"a":{"a":[1,{"b":"xy"}]}}']:
    put("json_body", body)
PY
  for target in http1_request canonical_path json_body; do
    echo "fuzz: libFuzzer on $target for ${FUZZ_SECONDS:-600} s"
    (cd gateway && cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- \
      -max_total_time="${FUZZ_SECONDS:-600}" -print_final_stats=1)
  done
fi

if [[ "$what" == all || "$what" == properties ]]; then
  echo "fuzz: parser and writer, ${PARSER_CASES:-3000000} mutants"
  PROPTEST_CASES="${PARSER_CASES:-3000000}" cargo test --locked -p gatehouse --lib \
    what_the_lean_engine_forwards_is_what_it_judged
  echo "fuzz: body checker, ${BODY_CASES:-200000} schema/document pairs"
  PROPTEST_CASES="${BODY_CASES:-200000}" cargo test --locked -p gatehouse --lib \
    recursive_applicators_agree_with_jsonschema
  echo "fuzz: check_json_body against the reference reading, ${JSON_CASES:-200000} pairs"
  PROPTEST_CASES="${JSON_CASES:-200000}" cargo test --locked -p gatehouse --lib \
    every_path_judges_as_the_reference
fi

if [[ "$what" == all || "$what" == gateway ]]; then
  cargo build --workspace --bins --locked
  echo "fuzz: both engines end to end, ${GATEWAY_CASES:-20000} mutants each"
  CONFORMANCE_FUZZ_CASES="${GATEWAY_CASES:-20000}" cargo test --locked -p gatehouse-e2e \
    mutated_requests_keep_every_invariant
fi
echo "fuzz: done in $(( $(date +%s) - started )) s, no invariant broken"
