"""Slipway settings: every value comes from the environment (see the README's table).

The embedded default (no variables set) is SQLite, Celery's filesystem broker and
artifacts under var/. Production sets DATABASE_URL, CELERY_BROKER_URL and friends.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

from csp.constants import NONE, SELF

from controlplane.env import (
    cache_from_url,
    database_from_url,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_json_object,
    env_list,
    env_port_range,
    env_rate,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("SLIPWAY_VAR_DIR") or BASE_DIR / "var").resolve()


def _secret_key() -> str:
    key = env_str("DJANGO_SECRET_KEY")
    if key:
        return key
    # Embedded default: one random key per installation, kept beside the data.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("SLIPWAY_DEBUG", False)
ALLOWED_HOSTS = env_list("SLIPWAY_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("SLIPWAY_CSRF_TRUSTED_ORIGINS", [])
CSRF_FAILURE_VIEW = "controlplane.views.csrf_failure"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "django_htmx",
    "csp",
    # Before axes: its same-named commands that lift a log-in lockout, audited (see its __init__).
    "controlplane.axes_commands",
    "axes",
    "controlplane",
    "registry",
    "deployments",
]

MIDDLEWARE = [
    # First: probes reach /healthz by address and over plain HTTP (see its docstring).
    "controlplane.middleware.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "controlplane.middleware.RequestIdMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "controlplane.middleware.ServiceErrorPagesMiddleware",
    "controlplane.middleware.RefuseAnonymousUploadsMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "controlplane.middleware.HtmxLoginRedirectMiddleware",
    # Last, as django-axes asks: it turns a locked-out log-in's answer into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "deployments.context_processors.approvals_waiting",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        "DATABASE_URL",
        f"sqlite:///{VAR_DIR / 'slipway.sqlite3'}",
        conn_max_age=env_int("SLIPWAY_DB_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker write concurrently: WAL lets readers go on,
    # and IMMEDIATE transactions serialize writers instead of failing them.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0

# Django's cache holds the API's request counts: in production, one every web process shares.
CACHES = {"default": cache_from_url("SLIPWAY_CACHE_URL", "locmem://")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out log-in before the password is checked
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "registry:model-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# `collectstatic` writes here and WhiteNoise serves from here; the control-plane image collects them at build
# time into a directory of its own, so that a volume mounted on the var dir does not hide them.
STATIC_ROOT = Path(env_str("SLIPWAY_STATIC_ROOT") or VAR_DIR / "staticfiles").resolve()

# --- Artifacts -------------------------------------------------------------
# Uploads stream to a temporary file in var/uploads (same filesystem as the
# default storage, so keeping the file is a rename, not a copy).
ARTIFACT_ROOT = Path(env_str("SLIPWAY_ARTIFACT_ROOT") or VAR_DIR / "artifacts").resolve()
FILE_UPLOAD_TEMP_DIR = str(Path(env_str("SLIPWAY_UPLOAD_TEMP_DIR") or VAR_DIR / "uploads").resolve())
# Local directories the embedded default writes to exist from the start.
for _dir in (ARTIFACT_ROOT, Path(FILE_UPLOAD_TEMP_DIR), STATIC_ROOT):
    _dir.mkdir(parents=True, exist_ok=True)
# Multipart bodies are read by registry.uploads (DRF's parser and the upload middleware),
# never by Django's own parser; should anything call it, it keeps no file.
FILE_UPLOAD_HANDLERS: list[str] = []
FILE_UPLOAD_PERMISSIONS = 0o640
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(ARTIFACT_ROOT)},
    },
    "artifacts": {
        "BACKEND": env_str("SLIPWAY_ARTIFACT_STORAGE") or "django.core.files.storage.FileSystemStorage",
        "OPTIONS": env_json_object("SLIPWAY_ARTIFACT_STORAGE_OPTIONS", {"location": str(ARTIFACT_ROOT)}),
    },
    # No manifest: pages render without a collectstatic step (make run, tests);
    # WhiteNoise serves the files (compressed after collectstatic) either way.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

SLIPWAY_MAX_ARTIFACT_BYTES = env_int("SLIPWAY_MAX_ARTIFACT_BYTES", 4 * 1024**3, minimum=1)
# An upload that sends nothing for this long is refused (408) and its thread and temporary file let go.
SLIPWAY_UPLOAD_IDLE_TIMEOUT_S = env_float("SLIPWAY_UPLOAD_IDLE_TIMEOUT_S", 60.0, minimum=0.1)
SLIPWAY_ARCHIVE_MAX_MEMBERS = env_int("SLIPWAY_ARCHIVE_MAX_MEMBERS", 100_000, minimum=1)
SLIPWAY_ARCHIVE_MAX_UNCOMPRESSED_BYTES = env_int("SLIPWAY_ARCHIVE_MAX_UNCOMPRESSED_BYTES", 16 * 1024**3, minimum=1)
# The sandboxed validator child: limits on what a model may take while loading.
SLIPWAY_VALIDATION_TIMEOUT_S = env_float("SLIPWAY_VALIDATION_TIMEOUT_S", 120.0, minimum=1)
SLIPWAY_VALIDATION_CPU_S = env_int("SLIPWAY_VALIDATION_CPU_S", 120, minimum=1)
SLIPWAY_VALIDATION_MEMORY_BYTES = env_int("SLIPWAY_VALIDATION_MEMORY_BYTES", 8 * 1024**3, minimum=256 * 1024**2)
SLIPWAY_VALIDATION_PYTHON = env_str("SLIPWAY_VALIDATION_PYTHON")  # default: this interpreter
# Validations that ended without a verdict (the worker crashed or was lost) are retried, up to this many starts.
SLIPWAY_VALIDATION_MAX_ATTEMPTS = env_int("SLIPWAY_VALIDATION_MAX_ATTEMPTS", 3, minimum=1)

# --- Image builds (Docker SDK; DOCKER_HOST as usual) -------------------------
SLIPWAY_REGISTRY = env_str("SLIPWAY_REGISTRY") or ""  # e.g. registry.example.com or 127.0.0.1:5000
SLIPWAY_REGISTRY_USERNAME = env_str("SLIPWAY_REGISTRY_USERNAME") or ""
SLIPWAY_REGISTRY_PASSWORD = env_str("SLIPWAY_REGISTRY_PASSWORD") or ""  # or SLIPWAY_REGISTRY_PASSWORD_FILE
SLIPWAY_BASE_IMAGE_GPU = env_str("SLIPWAY_BASE_IMAGE_GPU") or "nvidia/cuda:12.8.1-runtime-ubuntu24.04"
SLIPWAY_BASE_IMAGE_CPU = env_str("SLIPWAY_BASE_IMAGE_CPU") or "python:3.11-slim-bookworm"
SLIPWAY_BUILD_VARIANT = env_choice("SLIPWAY_BUILD_VARIANT", "gpu", ("gpu", "cpu"))
SLIPWAY_BUILD_NETWORK_MODE = env_str("SLIPWAY_BUILD_NETWORK_MODE") or ""  # "host" behind a proxy
SLIPWAY_BUILD_CA_BUNDLE = env_str("SLIPWAY_BUILD_CA_BUNDLE") or ""  # extra CA bundle for pip in the build
SLIPWAY_PIP_INDEX_URL = env_str("SLIPWAY_PIP_INDEX_URL") or ""
SLIPWAY_PIP_EXTRA_INDEX_URL = env_str("SLIPWAY_PIP_EXTRA_INDEX_URL") or ""
SLIPWAY_WHEELHOUSE = env_str("SLIPWAY_WHEELHOUSE") or ""  # a directory of wheels offered to pip
SLIPWAY_PIP_OFFLINE = env_bool("SLIPWAY_PIP_OFFLINE", False)  # install from the wheelhouse alone
SLIPWAY_BUILD_TIMEOUT_S = env_float("SLIPWAY_BUILD_TIMEOUT_S", 1800.0, minimum=10)
SLIPWAY_BUILD_STALE_S = env_float("SLIPWAY_BUILD_STALE_S", 120.0, minimum=10)
SLIPWAY_BUILD_MAX_ATTEMPTS = env_int("SLIPWAY_BUILD_MAX_ATTEMPTS", 3, minimum=1)

# --- Rollouts ----------------------------------------------------------------
SLIPWAY_ROLLOUT_POLL_S = env_float("SLIPWAY_ROLLOUT_POLL_S", 0.5, minimum=0.05)  # between reconciler steps
SLIPWAY_ROLLOUT_LEASE_S = env_float("SLIPWAY_ROLLOUT_LEASE_S", 60.0, minimum=1)  # a step's worker may hold it
SLIPWAY_ROLLOUT_SWEEP_S = env_float("SLIPWAY_ROLLOUT_SWEEP_S", 5.0, minimum=0.5)  # the sweeper's period

# --- The local target: runtime processes on this machine ---------------------
# Each deployment gets one stable port from this range for its router, kept until teardown.
SLIPWAY_LOCAL_PORTS = env_port_range("SLIPWAY_LOCAL_PORTS", (8100, 8999))
SLIPWAY_LOCAL_HOST = env_str("SLIPWAY_LOCAL_HOST") or "127.0.0.1"  # where routers listen; replicas stay on loopback
# A replica that has been ready this long counts its exits afresh (Kubernetes resets its back-off after 10 min).
SLIPWAY_LOCAL_RESTART_RESET_S = env_float("SLIPWAY_LOCAL_RESTART_RESET_S", 600.0, minimum=1)
# A replica's or router's log longer than this is moved to <name>.log.1 (one old copy kept) and started afresh.
SLIPWAY_LOCAL_LOG_MAX_BYTES = env_int("SLIPWAY_LOCAL_LOG_MAX_BYTES", 10 * 1024 * 1024, minimum=4096)

# --- Celery ----------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or "filesystem://"
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "celery" / "queue"
    for _dir in (_queue_dir, VAR_DIR / "celery" / "processed", VAR_DIR / "celery" / "control"):
        _dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT = "controlplane.fs_broker:Transport"  # writes each message atomically
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(VAR_DIR / "celery" / "processed"),
        "control_folder": str(VAR_DIR / "celery" / "control"),
        "store_processed": False,
        "polling_interval": 0.1,  # the default 1 s would add a second to every rollout step on `make run`
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("SLIPWAY_CELERY_EAGER", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "requeue-stale-validations": {"task": "registry.tasks.requeue_stale_validations", "schedule": 60.0},
    "remove-orphan-artifacts": {"task": "registry.tasks.remove_orphan_artifacts", "schedule": 3600.0},
    "recover-stale-builds": {"task": "deployments.tasks.recover_stale_builds", "schedule": 30.0},
    "sweep-rollouts": {"task": "deployments.tasks.sweep_rollouts", "schedule": SLIPWAY_ROLLOUT_SWEEP_S},
}

# --- API -------------------------------------------------------------------
# Where the client's address comes from: only trust X-Forwarded-For behind a proxy you run.
SLIPWAY_TRUST_X_FORWARDED_FOR = env_bool("SLIPWAY_TRUST_X_FORWARDED_FOR", False)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "controlplane.authentication.BearerTokenAuthentication",
        "controlplane.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "controlplane.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["controlplane.filtersets.FilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "controlplane.schema.AutoSchema",
    "DEFAULT_METADATA_CLASS": "controlplane.metadata.Metadata",
    "EXCEPTION_HANDLER": "controlplane.exception_handler.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["controlplane.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "controlplane.parsers.JSONParser",
        "registry.uploads.StreamingMultiPartParser",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # 429 with Retry-After past these rates: per user (token or session), and per address for anonymous calls.
    "DEFAULT_THROTTLE_CLASSES": [
        "controlplane.throttling.AnonRateThrottle",
        "controlplane.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": env_rate("SLIPWAY_API_RATE_USER", "600/min"),
        "anon": env_rate("SLIPWAY_API_RATE_ANON", "60/min"),
    },
    # Limits count by address, so they believe only the hop your proxy appended to X-Forwarded-For (its
    # last entry), never what a client wrote before it; without a trusted proxy, the socket's address.
    "NUM_PROXIES": 1 if SLIPWAY_TRUST_X_FORWARDED_FOR else 0,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Slipway API",
    "DESCRIPTION": "Control plane for PyTorch model deployments.",
    "VERSION": "1",
    # Operations are grouped by what follows /api/v1/ (models, environments, deployments...), not all under "v1".
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "TAGS": [
        {"name": "models", "description": "Models, their versions (uploads, validation, downloads) and their builds."},
        {"name": "builds", "description": "Runtime images: one per model version, built and pushed by the worker."},
        {"name": "environments", "description": "Where releases run, their default plans and protection."},
        {"name": "deployments", "description": "A model in an environment: promote, roll back, unpin, releases."},
        {"name": "rollouts", "description": "A release getting in front of traffic: pause, resume, promote, abort."},
        {"name": "approvals", "description": "Rollouts into protected environments waiting for approvers."},
        {"name": "role-bindings", "description": "Who may do what, in which environment."},
        {"name": "tokens", "description": "API tokens: create (shown once), list, revoke."},
        {"name": "audit", "description": "The append-only, hash-chained audit log and its exports."},
    ],
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Interactive docs must work offline: Swagger UI comes from our own static files.
    "SWAGGER_UI_DIST": "SIDECAR",
    # No calls to validator.swagger.io either: it would learn the schema's URL.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Browser security ---------------------------------------------------------
# No inline script, style or eval anywhere: every page's code and CSS come from static files.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],  # Pico and Swagger UI draw small icons as data: URLs
        "connect-src": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
        "base-uri": [SELF],
        "object-src": [NONE],
    },
}
# Pages carry the CSRF token themselves (forms, and hx-headers for htmx): no script reads the cookie.
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_HTTPONLY = True
# Lax, not Strict: a link to a deployment page pasted in chat must open it signed in. Lax already keeps
# the cookies off cross-site POSTs, subresources and frames.
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"

# Log-in attempts (django-axes, counted in the database so every web process sees them): after
# SLIPWAY_LOGIN_MAX_ATTEMPTS failures for one username, or from one address, log-ins are refused for
# SLIPWAY_LOGIN_LOCKOUT_S. Applies to /login/ and the admin's log-in alike.
AXES_FAILURE_LIMIT = env_int("SLIPWAY_LOGIN_MAX_ATTEMPTS", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("SLIPWAY_LOGIN_LOCKOUT_S", 900, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one reaching the limit locks
AXES_CLIENT_IP_CALLABLE = "controlplane.throttling.client_address"
AXES_LOCKOUT_CALLABLE = "controlplane.logins.lockout_response"
# A refused try during a lockout does not extend it, so the page can say exactly when to retry.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Not reset on success: a successful log-in clears its address's failures too, which would let anyone with
# an account guess another account's password forever (fail, fail, log in as oneself, repeat).
AXES_RESET_ON_SUCCESS = False
# django-axes keeps a failed try's form: its defaults, and the password change page's fields, are masked there.
AXES_SENSITIVE_PARAMETERS = ["username", "ip_address", "old_password", "new_password1", "new_password2"]
AXES_DISABLE_ACCESS_LOG = True  # successful log-ins need no second log beside the audit log
AXES_HTTP_RESPONSE_CODE = 429

# --- Production hardening (SLIPWAY_HTTPS=true behind TLS) -------------------
if env_bool("SLIPWAY_HTTPS", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SLIPWAY_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SLIPWAY_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SLIPWAY_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading is a commitment for the whole domain: opt in with SLIPWAY_HSTS_PRELOAD.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {
        "handlers": ["console"],
        "level": env_choice("SLIPWAY_LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")).upper(),
    },
    # django-axes logs every successful log-in, and its version at every start: its warnings (failures) are enough.
    # python-multipart logs a warning for every malformed body a client sends: the refusal is audited already.
    "loggers": {
        "django.server": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
        "python_multipart": {"level": "ERROR"},
    },
}
