#!/usr/bin/env bash
# Run the demo: lowcode-sim serving the fake estate of loadtest/estate.yaml,
# Gatehouse in front of it with the example policies in policies/, and a
# project-local ClickHouse (scripts/clickhouse.sh) receiving telemetry.
# Ctrl-C stops both.  Usage: scripts/demo.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
profile=debug
build=(cargo build --locked --workspace --bins)
if [ "${1:-}" = "--release" ]; then
  profile=release
  build+=(--release)
fi
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
"$bin/gatehouse" serve --policies policies --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9901 \
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
  curl http://127.0.0.1:9901/v1/apps                                                 # apps, routes, instance health
  curl http://127.0.0.1:9901/metrics                                                 # Prometheus metrics

Every request is a row in ClickHouse ($clickhouse, database gatehouse):
  $bin/gatehouse report                                   # the bottleneck reports
  $bin/gatehouse report slowest_routes --since 15m
  curl '$clickhouse/?query=SELECT+app,route,status,total_us+FROM+gatehouse.requests+ORDER+BY+time_us+DESC+LIMIT+5' 

Edit a file in policies/ and the gateway reloads it (an invalid edit is refused and logged).
Ctrl-C stops the demo.
MSG
wait
