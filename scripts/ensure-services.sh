#!/usr/bin/env bash
# Make sure the real Redis and PostgreSQL the tests use are running; start them if not.
set -euo pipefail

REDIS_PORT="${REDIS_PORT:-6379}"
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"

if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null; then
    echo "Redis is not running on 127.0.0.1:$REDIS_PORT and redis-server is not installed." >&2
    echo "Install it (apt-get install redis-server) or start Redis, then re-run." >&2
    exit 1
  fi
  echo "starting redis-server on 127.0.0.1:$REDIS_PORT"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "${REDIS_DIR:-/var/lib/redis}" --logfile "${REDIS_LOG:-/var/log/redis/ci.log}"
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "Redis did not start" >&2; exit 1; }
fi

if ! pg_isready -h "$PGHOST" -p "$PGPORT" -q; then
  if ! command -v pg_ctlcluster >/dev/null || [ ! -d /etc/postgresql ]; then
    echo "PostgreSQL is not running on $PGHOST:$PGPORT and no local cluster is installed." >&2
    exit 1
  fi
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 100); do pg_isready -h "$PGHOST" -p "$PGPORT" -q && break; sleep 0.1; done
  pg_isready -h "$PGHOST" -p "$PGPORT" -q || { echo "PostgreSQL did not start" >&2; exit 1; }
fi

if ! psql -h "$PGHOST" -p "$PGPORT" -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
  psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -c 'create database test' >/dev/null
fi
echo "services: redis 127.0.0.1:$REDIS_PORT ok, postgresql $PGHOST:$PGPORT/test ok"
