# Slipway's control plane: one Dockerfile, two images from the same code.
#
#   web     the web server (gunicorn: the UI and the REST API); no torch.
#   worker  the Celery worker and the scheduler (`celery beat`): validation in a sandboxed
#           child needs the CPU torch build, image builds need a Docker engine (DOCKER_HOST).
#
# From the repository root:
#   docker build -f docker/controlplane.Dockerfile --target web -t slipway-web .
#   docker build -f docker/controlplane.Dockerfile --target worker -t slipway-worker .
# Without direct internet access, the same build arguments as docker/runtime.Dockerfile:
#   --build-arg PIP_INDEX_URL=https://pypi.internal/simple, --build-arg WHEELHOUSE=path/to/wheels
#   (with PIP_NO_INDEX=1 for no index at all), extra CA certificates in docker/certs/ (or
#   --build-arg EXTRA_CA_DIR=path), and `--network host` where the builder must reach a proxy.
# Running them: README.md ("Running it in production") and docker/kubernetes/slipway.yaml.

ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS python

SHELL ["/bin/sh", "-eu", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/slipway/venv \
    PATH=/opt/slipway/venv/bin:$PATH

# --- Python (when the base has none that can make a virtualenv) and a non-root user ---------
RUN if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip" >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    grep -q '^slipway:' /etc/group || echo 'slipway:x:10001:' >> /etc/group; \
    grep -q '^slipway:' /etc/passwd || echo 'slipway:x:10001:10001:Slipway:/var/lib/slipway:/usr/sbin/nologin' >> /etc/passwd; \
    mkdir -p /var/lib/slipway; \
    chown 10001:10001 /var/lib/slipway

# --- Dependencies, in stages of their own ---------------------------------------------------
# Only the finished virtualenvs leave these stages: the wheelhouse and CA files copied in
# here would otherwise stay in the images as layers. pip's settings go into a file, so that
# the worker's stage, built on the web's, installs with the same ones.
FROM python AS web-dependencies
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_NO_INDEX=
ARG WHEELHOUSE=docker/wheelhouse
ARG EXTRA_CA_DIR=docker/certs
COPY ${WHEELHOUSE} /tmp/wheelhouse/
COPY ${EXTRA_CA_DIR} /tmp/extra-ca/
ENV PIP_CONFIG_FILE=/tmp/pip.conf
RUN { echo '[global]'; \
      echo 'find-links = /tmp/wheelhouse'; \
      [ -z "$PIP_INDEX_URL" ] || echo "index-url = $PIP_INDEX_URL"; \
      [ -z "$PIP_EXTRA_INDEX_URL" ] || echo "extra-index-url = $PIP_EXTRA_INDEX_URL"; \
      [ -z "$PIP_TRUSTED_HOST" ] || echo "trusted-host = $PIP_TRUSTED_HOST"; \
      [ -z "$PIP_NO_INDEX" ] || echo "no-index = true"; \
    } > /tmp/pip.conf; \
    extra_ca=$(find /tmp/extra-ca -type f \( -name '*.crt' -o -name '*.pem' \) | sort); \
    if [ -n "$extra_ca" ]; then \
        system_ca=/etc/ssl/certs/ca-certificates.crt; \
        { if [ -f "$system_ca" ]; then cat "$system_ca"; fi; for f in $extra_ca; do cat "$f"; echo; done; } > /tmp/ca-bundle.pem; \
        echo 'cert = /tmp/ca-bundle.pem' >> /tmp/pip.conf; \
    fi; \
    unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_NO_INDEX; \
    python3 -m venv "$VIRTUAL_ENV"
COPY requirements.txt /tmp/requirements/
RUN unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_NO_INDEX; \
    pip install -r /tmp/requirements/requirements.txt

# The worker also loads models in its validation sandbox and can run the runtime itself
# (the `local` target): the CPU torch build and the runtime's requirements.
FROM web-dependencies AS worker-dependencies
COPY requirements-validator.txt /tmp/requirements/
COPY inference_runtime/requirements.txt /tmp/requirements/runtime.txt
RUN unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_NO_INDEX; \
    pip install -r /tmp/requirements/requirements-validator.txt -r /tmp/requirements/runtime.txt; \
    # Never run here (as in runtime.Dockerfile): torch's C++ tests and tools, its headers and CMake files.
    torch_dir=$(python -c 'import importlib.util; print(importlib.util.find_spec("torch").submodule_search_locations[0])'); \
    rm -rf "$torch_dir/test" "$torch_dir/include" "$torch_dir/share/cmake"; \
    find "$torch_dir/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +

# --- The code and the collected static files ------------------------------------------------
FROM web-dependencies AS app
WORKDIR /opt/slipway/app
COPY manage.py ./
COPY controlplane controlplane/
COPY registry registry/
COPY deployments deployments/
COPY templates templates/
COPY static static/
# What the worker puts into each runtime image it builds.
COPY inference_runtime inference_runtime/
COPY docker/runtime.Dockerfile docker/
RUN DJANGO_SECRET_KEY=collectstatic-only SLIPWAY_VAR_DIR=/tmp/var SLIPWAY_STATIC_ROOT=/opt/slipway/static \
        python manage.py collectstatic --no-input --verbosity 0; \
    python -m compileall -q /opt/slipway/app

# --- The images -----------------------------------------------------------------------------
FROM python AS worker
COPY --from=worker-dependencies /opt/slipway/venv /opt/slipway/venv
COPY --from=app /opt/slipway/app /opt/slipway/app
COPY --from=app /opt/slipway/static /opt/slipway/static
WORKDIR /opt/slipway/app
ENV SLIPWAY_VAR_DIR=/var/lib/slipway \
    SLIPWAY_STATIC_ROOT=/opt/slipway/static
USER 10001:10001
# The scheduler is the same image: `celery -A controlplane beat` (exactly one).
CMD ["celery", "-A", "controlplane", "worker", "--loglevel", "INFO"]

FROM python AS web
COPY --from=web-dependencies /opt/slipway/venv /opt/slipway/venv
COPY --from=app /opt/slipway/app /opt/slipway/app
COPY --from=app /opt/slipway/static /opt/slipway/static
WORKDIR /opt/slipway/app
ENV SLIPWAY_VAR_DIR=/var/lib/slipway \
    SLIPWAY_STATIC_ROOT=/opt/slipway/static \
    GUNICORN_CMD_ARGS="--bind 0.0.0.0:8000"
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# Migrations are a step of their own, before the new web and workers start:
#   docker run --rm ... slipway-web python manage.py migrate
# More gunicorn flags through GUNICORN_CMD_ARGS (e.g. "--bind 0.0.0.0:8000 --workers 4").
CMD ["gunicorn", "-c", "controlplane/gunicorn.conf.py", "controlplane.wsgi"]
