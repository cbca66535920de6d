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

# --- Docker engine, image registry, base image and wheelhouse for the build tests ---
SLIPWAY_CACHE="${SLIPWAY_CACHE:-/var/cache/slipway}"

ensure_docker() {
  if [ -n "${DOCKER_HOST:-}" ] || docker info >/dev/null 2>&1; then return; fi
  command -v dockerd >/dev/null || _apt_install docker.io
  command -v docker >/dev/null || _apt_install docker.io
  echo "Starting the Docker daemon..." >&2
  # A machine's daemon, not this run's: in a session of its own, so that nothing stopping this shell's
  # process group (a Ctrl-C, a job runner ending) takes it down under a later run.
  _as_root setsid sh -c 'nohup dockerd --data-root /var/lib/docker --host unix:///var/run/docker.sock >/var/log/slipway-dockerd.log 2>&1 &'
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 0.5; done
  echo "The Docker daemon did not start; see /var/log/slipway-dockerd.log" >&2
  return 1
}

ensure_registry() {
  # The tests' registry with a password is a docker-registry of their own, whichever registry the rest use.
  command -v htpasswd >/dev/null || _apt_install apache2-utils
  command -v docker-registry >/dev/null || _apt_install docker-registry
  if [ -n "${SLIPWAY_REGISTRY:-}" ]; then return; fi
  local dir; dir=$(mktemp -d /tmp/slipway-registry.XXXXXX)
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$dir" "$port" > "$dir/config.yml"
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  _cleanup_services+=("kill $!; rm -rf $dir")
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
  export SLIPWAY_REGISTRY="127.0.0.1:$port"
  # The tests' registry with a password serves the same storage: an image pushed here once need not go up again.
  export SLIPWAY_TEST_REGISTRY_STORAGE="$dir/data"
  echo "Started a throwaway image registry on $SLIPWAY_REGISTRY" >&2
}

# A Debian base image with Python 3.11, made locally (no image can be pulled here).
ensure_base_image() {
  local image=slipway-base/debian-python:bookworm
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || _apt_install debootstrap
    local root="$SLIPWAY_CACHE/rootfs-bookworm"
    if [ ! -x "$root/usr/bin/python3" ]; then
      echo "Making the base image with debootstrap (about a minute, once)..." >&2
      _as_root rm -rf "$root"
      _as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" >/dev/null
    fi
    _as_root tar -C "$root" -c . | docker import - "$image" >/dev/null
  fi
  export SLIPWAY_BASE_IMAGE_CPU="$image"
}

# Wheels for the requirements files given, in a directory named after their contents (downloaded once).
_wheelhouse() {
  local name=$1; shift
  local key; key=$(cat "$@" 2>/dev/null | sha256sum | cut -c1-12)
  local dir="$SLIPWAY_CACHE/$name-$key"
  if [ ! -f "$dir/.complete" ]; then
    mkdir -p "$dir"
    echo "Downloading wheels into $dir (once)..." >&2
    local args=(); for file in "$@"; do args+=(-r "$file"); done
    if .venv/bin/python -m pip download --quiet --dest "$dir" --only-binary=:all: "${args[@]}" >"$dir/.log" 2>&1; then
      touch "$dir/.complete"
    else
      grep -v "is ignored" "$dir/.log" >&2; return 1
    fi
  fi
  echo "$dir"
}

# The runtime's wheels, so test builds install offline (and the CPU torch wheel); the control plane's,
# for the test that builds its images.
ensure_wheelhouse() {
  SLIPWAY_WHEELHOUSE=$(_wheelhouse wheelhouse inference_runtime/requirements.txt)
  SLIPWAY_CONTROLPLANE_WHEELHOUSE=$(_wheelhouse controlplane-wheelhouse requirements.txt requirements-validator.txt \
    inference_runtime/requirements.txt)
  export SLIPWAY_WHEELHOUSE SLIPWAY_CONTROLPLANE_WHEELHOUSE SLIPWAY_PIP_OFFLINE=1
}
