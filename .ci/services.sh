# Sourced by .ci/test.sh and .ci/bench.sh: PostgreSQL and Redis for the suite.
# Uses DATABASE_URL / CELERY_BROKER_URL when set; else the servers on the standard
# ports when they answer; else starts throwaway ones (stopped on exit). Never SQLite.

_as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

_apt_install() {
  echo "Installing $* from Debian's packages..." >&2
  _as_root apt-get update -qq >/dev/null && _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

_cleanup_services=()
_stop_services() { for cmd in "${_cleanup_services[@]}"; do eval "$cmd" >/dev/null 2>&1 || true; done; }
trap _stop_services EXIT

_ensure_database() {
  psql -h 127.0.0.1 -p "$1" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'slipway'" | grep -q 1 ||
    psql -h 127.0.0.1 -p "$1" -U postgres -qc "CREATE DATABASE slipway" >/dev/null
}

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then return; fi
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/slipway"
    _ensure_database 5432
    return
  fi
  local initdb; initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -n1)
  if [ -z "$initdb" ]; then _apt_install postgresql; initdb=$(ls /usr/lib/postgresql/*/bin/initdb | tail -n1); fi
  local bindir; bindir=$(dirname "$initdb")
  local dir; dir=$(mktemp -d /tmp/slipway-pg.XXXXXX)
  local run=(); if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; run=(runuser -u postgres --); fi
  "${run[@]}" "$bindir/initdb" -q -D "$dir/data" -U postgres -A trust >/dev/null
  "${run[@]}" "$bindir/pg_ctl" -s -D "$dir/data" -o "-p 55432 -k $dir -c listen_addresses=127.0.0.1" -w start >/dev/null
  _cleanup_services+=("${run[*]} $bindir/pg_ctl -s -D $dir/data -m immediate stop; rm -rf $dir")
  export DATABASE_URL="postgres://postgres@127.0.0.1:55432/slipway"
  _ensure_database 55432
  echo "Started a throwaway PostgreSQL on 127.0.0.1:55432" >&2
}

ensure_redis() {
  if [ -n "${CELERY_BROKER_URL:-}" ]; then return; fi
  if command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; then
    export CELERY_BROKER_URL="redis://127.0.0.1:6379/${SLIPWAY_TEST_REDIS_DB:-11}"
    return
  fi
  command -v redis-server >/dev/null || _apt_install redis-server
  local dir; dir=$(mktemp -d /tmp/slipway-redis.XXXXXX)
  redis-server --port 56379 --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --maxmemory-policy noeviction --daemonize yes --pidfile "$dir/redis.pid" >/dev/null
  _cleanup_services+=("kill \$(cat $dir/redis.pid); rm -rf $dir")
  for _ in $(seq 50); do [ "$(redis-cli -p 56379 ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  export CELERY_BROKER_URL="redis://127.0.0.1:56379/0"
  echo "Started a throwaway Redis on 127.0.0.1:56379" >&2
}

ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then return; fi
  _apt_install chromium
}
