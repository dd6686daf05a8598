#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the catalog's PostgreSQL tests and print
# its SQLAlchemy URL. Installs Debian's postgresql package if needed (CI machines start bare).
# Usage: eval "$(bash scripts/test_postgres.sh start)"   ...   bash scripts/test_postgres.sh stop
set -euo pipefail
DATA=${NEVE_PG_DIR:-/tmp/neve-test-pg}
PORT=${NEVE_PG_PORT:-54329}
cmd=${1:-start}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "$cmd" in
  start)
    if [ -z "$bindir" ]; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
        bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
      else
        echo "echo 'PostgreSQL not available: catalog PostgreSQL tests will be skipped' >&2"; exit 0
      fi
    fi
    if ! as_pg "$bindir/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
      rm -rf "$DATA"; mkdir -p "$DATA"; [ "$(id -u)" = 0 ] && chown postgres "$DATA"
      as_pg "$bindir/initdb" -D "$DATA" -A trust -U neve >/dev/null
      as_pg "$bindir/pg_ctl" -D "$DATA" -l "$DATA/log" -w \
        -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1" start >/dev/null
    fi
    echo "export NEVE_TEST_POSTGRES_URL=postgresql+psycopg://neve@127.0.0.1:$PORT/postgres"
    ;;
  stop)
    [ -n "$bindir" ] && as_pg "$bindir/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
    ;;
esac
