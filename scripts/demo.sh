#!/usr/bin/env bash
# Run the demo: lowcode-sim serving the fake estate of loadtest/estate.yaml,
# Gatehouse in front of it with the example policies in policies/, and a
# project-local ClickHouse (scripts/clickhouse.sh) receiving telemetry.
# Ctrl-C stops both.  Usage: scripts/demo.sh [--release] [--governed]
#   --governed  run the control plane (serve --state .state/governance): the
#               first start imports policies/; later changes go through
#               proposals, reviews and activation (tokens in .state/tokens/).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
profile=debug
build=(cargo build --locked --workspace --bins)
governed=0
for arg in "$@"; do
  case "$arg" in
    --release) profile=release; build+=(--release) ;;
    --governed) governed=1 ;;
    *) echo "usage: scripts/demo.sh [--release] [--governed]" >&2; exit 2 ;;
  esac
done
"${build[@]}"
bin="target/$profile"

# A demo consumer: its key is kept in .state/ (never in policies/, which only
# ever holds the key's hash), its policy entry in a git-ignored local file.
mkdir -p .state
if [ ! -s .state/demo.key ] || [ ! -s policies/local-demo.yaml ]; then
  "$bin/gatehouse" consumer new --id demo --name "Demo user" --plan gold \
    --key-file .state/demo.key > policies/local-demo.yaml
fi
key=$(cat .state/demo.key)

scripts/clickhouse.sh start
clickhouse=http://127.0.0.1:${CLICKHOUSE_HTTP_PORT:-18123}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/clickhouse.sh stop || true
}
trap cleanup EXIT INT TERM

"$bin/lowcode-sim" --config loadtest/estate.yaml --threads 1 > /dev/null &
pids+=($!)
source_args=(--policies policies)
admin_hint=""
if [ "$governed" = 1 ]; then
  # Principals named like the reviewer groups in policies/review.yaml.
  mkdir -p .state/tokens
  for p in alice:author,reviewer bob:reviewer carol:reviewer dave:reviewer ops:operator; do
    name=${p%%:*}
    [ -s ".state/tokens/$name" ] || "$bin/gatehouse" admin add-principal --state .state/governance \
      --name "$name" --role "${p#*:}" --token-file ".state/tokens/$name" --rotate
  done
  source_args=(--state .state/governance --policies policies)
  admin_hint="-H \"Authorization: Bearer \$(cat .state/tokens/ops)\" "
fi
"$bin/gatehouse" serve "${source_args[@]}" --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9901 \
  --clickhouse "$clickhouse" --migrate --spool-dir .state/spool &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:9901/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS http://127.0.0.1:9901/readyz >/dev/null || { echo "demo: gateway did not become ready" >&2; exit 1; }

cat <<MSG

Gatehouse is serving the example estate. Your demo API key: $key

  proxy  http://127.0.0.1:8080     admin  http://127.0.0.1:9901

Try (most apps need the key; approvals also serves anonymous callers):
  curl -H 'Host: orders.corp.example' -H "x-api-key: $key" http://127.0.0.1:8080/rest/orders/v1/orders/42
  curl -H 'Host: crm.corp.example' "http://127.0.0.1:8080/CRM/rest/v1/customers?page_size=2&api_key=$key"
  curl -H 'Host: hr.corp.example' -H "x-api-key: $key" http://127.0.0.1:8080/api/hr/departments
  curl -i -H 'Host: orders.corp.example' http://127.0.0.1:8080/rest/orders/v1/orders/42   # 401 without a key
  curl -H 'Host: eu.approvals.corp.example' http://127.0.0.1:8080/approvals/7
  curl -i -H 'Host: orders.corp.example' -H "x-api-key: $key" http://127.0.0.1:8080/rest/orders/v1/nope   # 404 problem+json
  curl -H 'Host: orders.corp.example' -H "x-api-key: $key" -H 'content-type: application/json' -d '{"customer_id":"x","lines":[{"sku":"bad","quantity":0}]}' http://127.0.0.1:8080/rest/orders/v1/orders   # 400: every contract violation
  curl ${admin_hint}http://127.0.0.1:9901/v1/apps                                    # apps, routes, instance health
  curl http://127.0.0.1:9901/metrics                                                 # Prometheus metrics

Every request is a row in ClickHouse ($clickhouse, database gatehouse):
  $bin/gatehouse report                                   # the bottleneck reports
  $bin/gatehouse report slowest_routes --since 15m
  curl '$clickhouse/?query=SELECT+app,route,status,total_us+FROM+gatehouse.requests+ORDER+BY+time_us+DESC+LIMIT+5' 

MSG
if [ "$governed" = 1 ]; then
  cat <<MSG
Governed mode: changes go through review (rules in policies/review.yaml).
  export GATEHOUSE_URL=http://127.0.0.1:9901
  cp -r policies /tmp/change   # edit it, e.g. make a query parameter required
  GATEHOUSE_TOKEN=\$(cat .state/tokens/alice) $bin/gatehouse policy propose /tmp/change --title "my change"
  GATEHOUSE_TOKEN=\$(cat .state/tokens/bob)   $bin/gatehouse policy review 1 --approve
  GATEHOUSE_TOKEN=\$(cat .state/tokens/ops)   $bin/gatehouse policy activate 1
  GATEHOUSE_TOKEN=\$(cat .state/tokens/ops)   $bin/gatehouse policy status | log | rollback
Ctrl-C stops the demo.
MSG
else
  echo "Edit a file in policies/ and the gateway reloads it (an invalid edit is refused and logged)."
  echo "Ctrl-C stops the demo."
fi
wait
