#!/usr/bin/env bash
# `make bench-runtime` on a lent GPU machine (docs/benchmarks.md, "Inference runtime").
#
# That machine has Python 3.12 and a CUDA build of torch but reaches no package index, and
# has no wrk. So, in two steps:
#
#   bash .ci/device-bench-runtime.sh prepare      # here: wheels and wrk into var/device/ (~12 MB)
#   bash .ci/device-bench-runtime.sh run          # there, with var/device carried along
#
# From a session with the device tool:
#   run(command="bash .ci/device-bench-runtime.sh run", carry=["var/device"], timeout_s=540)
# The results (Markdown, JSON and the whole log) land in $OUT, or var/bench/ without it.
# Every contender runs its model on the GPU (BENCH_DEVICE=cuda) and is pinned to one core,
# as on the CPU. DEVICE_PYTHON_VERSION (3.12, the GPU image's) picks the wheels;
# DEVICE_PYTHON (python3) the interpreter `run` uses; BENCH_ROUNDS (2) and BENCH_DURATION_S
# (3) keep it to about six minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=var/device

# The runtime's pins (inference_runtime/requirements.txt, less torch and numpy, which the GPU
# image has) and LitServe's; pip adds what they need beyond these (opentelemetry-api, ...).
WHEELS=(
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 uvicorn==0.54.0
  uvloop==0.23.0 httptools==0.9.0 orjson==3.13.0 prometheus-client==0.26.0 litserve==0.2.19 pyzmq==27.3.0
)
# What the servers import, less torch and numpy: checked after installing, on both sides.
IMPORTS="fastapi, uvicorn, uvloop, httptools, orjson, prometheus_client, litserve, zmq"

prepare() {
  local version="${DEVICE_PYTHON_VERSION:-3.12}" wrk lib
  rm -rf "$DIR" && mkdir -p "$DIR/whl" "$DIR/bin" "$DIR/lib"
  python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version "$version" --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d "$DIR/whl" "${WHEELS[@]}"
  echo "$version" > "$DIR/python-version"
  # Where this machine has that Python, make sure the wheels are all it takes to import them.
  if "python$version" -c "" 2>/dev/null; then
    local check
    check=$(mktemp -d)
    "python$version" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
      --target "$check" "$DIR"/whl/*.whl
    PYTHONPATH="$check" "python$version" -S -c "import $IMPORTS" || { echo "the wheels are not enough"; exit 1; }
    rm -rf "$check"
  fi
  command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
  wrk=$(command -v wrk)
  cp "$wrk" "$DIR/bin/"
  # Debian's wrk links LuaJIT, which the GPU image lacks; OpenSSL 3 and libc it has.
  lib=$(ldd "$wrk" | awk '/libluajit/ {print $3}')
  if [ -n "$lib" ]; then cp -L "$lib" "$DIR/lib/"; fi
  du -sh "$DIR"
}

run() {
  local python="${DEVICE_PYTHON:-python3}" site=/tmp/slipway-site out="${OUT:-var/bench}" version
  [ -d "$DIR/whl" ] || { echo "no $DIR: run '$0 prepare' first and carry $DIR"; exit 1; }
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$version" != "$(cat "$DIR/python-version")" ]; then
    echo "$DIR holds wheels for Python $(cat "$DIR/python-version"), this is $version:" \
      "run 'DEVICE_PYTHON_VERSION=$version $0 prepare' and carry it again"
    exit 1
  fi
  command -v taskset >/dev/null || { echo "taskset (util-linux) is missing: every server is pinned with it"; exit 1; }
  "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$site" "$DIR"/whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$PWD/$DIR/bin:$PATH"
  export LD_LIBRARY_PATH="$PWD/$DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if ldd "$(command -v wrk)" | grep "not found"; then echo "wrk cannot start here"; exit 1; fi
  "$python" -c "import numpy, torch, $IMPORTS, inference_runtime.server
print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  mkdir -p "$out"
  export BENCH_DEVICE="${BENCH_DEVICE:-cuda}" BENCH_PEERS_PYTHON="$(command -v "$python")" BENCH_OUT="$out"
  export BENCH_ROUNDS="${BENCH_ROUNDS:-2}" BENCH_DURATION_S="${BENCH_DURATION_S:-3}" PYTHONUNBUFFERED=1
  # The orchestrator shares the load generator's core, never the servers', as in bench-runtime.sh.
  taskset -c "${BENCH_LOAD_CPU:-1}" "$python" tests/bench/bench_runtime.py 2>&1 | tee "$out/bench-runtime.log"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run"; exit 2 ;;
esac
