#!/usr/bin/env bash
# `make bench-runtime` on a lent GPU machine (docs/benchmarks.md, "Inference runtime").
#
# That machine has Python and a CUDA build of torch but reaches no package index, and has
# no wrk. So, in two steps:
#
#   bash .ci/device-bench-runtime.sh prepare      # here: wheels and wrk into var/device/ (~20 MB)
#   bash .ci/device-bench-runtime.sh run          # there, with var/device carried along
#
# From a session with the device tool:
#   run(command="bash .ci/device-bench-runtime.sh run", carry=["var/device"], timeout_s=540)
# The results (Markdown and JSON) land in $OUT, or var/bench/ without it. Every contender
# runs its model on the GPU (BENCH_DEVICE=cuda); each is pinned to one core as on the CPU.
# DEVICE_PYTHON_VERSION (3.12, the GPU image's) picks the wheels; DEVICE_PYTHON (python3)
# the interpreter `run` uses; BENCH_ROUNDS (2) and BENCH_DURATION_S (3) keep it within
# about six minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=var/device

# The runtime's own pins (inference_runtime/requirements.txt, less torch and numpy, which the
# GPU image has) and LitServe's, with what they need that the image lacks.
WHEELS=(
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5
  annotated-types==0.8.0 typing-extensions==4.16.0 annotated-doc==0.0.7 anyio==4.16.0 idna==3.21
  h11==0.16.0 click==8.5.1 uvicorn==0.54.0 uvloop==0.23.0 httptools==0.9.0 orjson==3.13.0
  prometheus-client==0.26.0 litserve==0.2.19 pyzmq==27.3.0
)

prepare() {
  local version="${DEVICE_PYTHON_VERSION:-3.12}"
  rm -rf "$DIR" && mkdir -p "$DIR/whl" "$DIR/bin" "$DIR/lib"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$version" --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d "$DIR/whl" "${WHEELS[@]}"
  command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
  cp "$(command -v wrk)" "$DIR/bin/"
  # wrk's one library the GPU image may lack; OpenSSL and libc are there.
  cp -L "$(ldd "$(command -v wrk)" | awk '/libluajit/ {print $3}')" "$DIR/lib/"
  echo "$version" > "$DIR/python-version"
  du -sh "$DIR"
}

run() {
  local python="${DEVICE_PYTHON:-python3}" site=/tmp/slipway-site out="${OUT:-var/bench}"
  [ -d "$DIR/whl" ] || { echo "no $DIR: run '$0 prepare' first and carry $DIR"; exit 1; }
  command -v taskset >/dev/null || { echo "taskset (util-linux) is missing: every server is pinned with it"; exit 1; }
  "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$site" "$DIR"/whl/*.whl
  export PYTHONPATH="$site" PATH="$PWD/$DIR/bin:$PATH" LD_LIBRARY_PATH="$PWD/$DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  wrk --version | head -1 || true
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
  export BENCH_DEVICE="${BENCH_DEVICE:-cuda}" BENCH_PEERS_PYTHON="$(command -v "$python")" BENCH_OUT="$out"
  export BENCH_ROUNDS="${BENCH_ROUNDS:-2}" BENCH_DURATION_S="${BENCH_DURATION_S:-3}" PYTHONUNBUFFERED=1
  "$python" tests/bench/bench_runtime.py
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run"; exit 2 ;;
esac
