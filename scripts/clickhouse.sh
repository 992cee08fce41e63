#!/usr/bin/env bash
# A project-local ClickHouse for the demo and development:
#   scripts/clickhouse.sh start|stop|status
# Installs Debian's clickhouse-server if missing; data, logs and config live
# under .state/clickhouse; loopback only. Ports: CLICKHOUSE_HTTP_PORT (18123)
# and CLICKHOUSE_TCP_PORT (19000).
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${CLICKHOUSE_DIR:-$PWD/.state/clickhouse}"
http_port="${CLICKHOUSE_HTTP_PORT:-18123}"
tcp_port="${CLICKHOUSE_TCP_PORT:-19000}"
url="http://127.0.0.1:$http_port"

install() {
  command -v clickhouse-server >/dev/null 2>&1 && return
  echo "clickhouse: installing Debian's clickhouse-server"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends clickhouse-server clickhouse-client
}

write_config() {
  mkdir -p "$dir"/{data,tmp,user_files,format_schemas,log}
  cat > "$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/error.log</errorlog><size>50M</size><count>3</count></logger>
    <http_port>$http_port</http_port>
    <tcp_port>$tcp_port</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
</yandex>
XML
  cat > "$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
XML
}

running() {
  [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null
}

case "${1:-}" in
  start)
    install
    if running && curl -fsS "$url/ping" >/dev/null 2>&1; then echo "clickhouse: already running at $url"; exit 0; fi
    # Another server on the port would answer the readiness check below for
    # a server of ours that failed to bind.
    if curl -fsS "$url/ping" >/dev/null 2>&1; then
      echo "clickhouse: $url already answers, but not from $dir; stop that server or set CLICKHOUSE_HTTP_PORT" >&2
      exit 1
    fi
    write_config
    # exec: the recorded pid is clickhouse-server's own, so `stop` signals the server.
    (cd "$dir" && exec nohup clickhouse-server --config-file="$dir/config.xml") > "$dir/log/stdout.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 1 100); do
      if curl -fsS "$url/ping" 2>/dev/null | grep -q "Ok."; then echo "clickhouse: ready at $url"; exit 0; fi
      running || { echo "clickhouse: failed to start; see $dir/log" >&2; tail -20 "$dir/log/stdout.log" "$dir/log/error.log" >&2 || true; exit 1; }
      sleep 0.1
    done
    echo "clickhouse: not ready after 10 s; see $dir/log" >&2; exit 1 ;;
  stop)
    if running; then
      pid=$(cat "$dir/pid"); kill -TERM "$pid"
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      echo "clickhouse: stopped"
    else
      echo "clickhouse: not running"
    fi
    rm -f "$dir/pid" ;;
  status)
    if running && curl -fsS "$url/ping" >/dev/null 2>&1; then echo "clickhouse: running at $url"; else echo "clickhouse: not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
