"""Studio's settings, read from environment variables with working local defaults.

Every variable is listed in docs/configuration.md; the helpers that read them are in
studio/env.py. Local development needs none of them; production sets at least DEBUG=0,
SECRET_KEY and ALLOWED_HOSTS.
https://docs.djangoproject.com/en/5.2/ref/settings/
"""

import math
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from studio import env
from studio.env import (
    envbool,
    envbytes,
    envchoice,
    envint,
    envlist,
    envnetworks,
    envpath,
    in_models_dir,
    parse_models,
)
from studio.media_storage import CHOICES, media_storage
from studio.secret_key import install_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
# The longest name a model may have, in STUDIO_MODELS, the models folder or the admin.
MAX_MODEL_NAME = env.MAX_MODEL_NAME

DEBUG = envbool("DEBUG", True)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set SECRET_KEY when DEBUG is off.")
    # Random per install and git-ignored: a key in the source would let anyone forge this
    # server's sessions and signed image links.
    SECRET_KEY = install_secret_key(BASE_DIR / ".run")

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
# Browser websocket connections must come from the page's own origin: scheme, host and port
# as the request's Host names them (the host one of ALLOWED_HOSTS). Behind a proxy whose scheme
# or port differs, list the public origin here (docs/security.md).
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.postgres",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "ninja",  # serves the API docs page's assets locally: no CDN on an offline server
    "studio",
    "generation",
    "gallery",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "studio.middleware.AsyncWhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "studio.urls"
ASGI_APPLICATION = "studio.asgi.application"
WSGI_APPLICATION = None

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
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/studio"),
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 0),
        # A kept connection (pooled or persistent) is checked before each reuse, one round
        # trip: after a Postgres restart the next request or job gets a new one, not an error.
        conn_health_checks=envbool("DATABASE_CONN_HEALTH_CHECKS", True),
    )
}
# Connections come from a pool: opening one costs about 3 ms, on every request and every
# job otherwise, and under ASGI Django must not keep one per thread instead (its docs say so).
# DATABASE_CONN_MAX_AGE > 0 (persistent connections, no pool) is the other choice. A thread
# of our own that uses the database must close its connection when it ends, or that
# connection stays out of the pool for good, and so must a long wait between reads
# (generation/waiting.py). A worker's sidecar process opens one connection of its own,
# outside the pool (generation/sidecar.py). Celery workers keep their pool between tasks and
# hand a task's connections back around it (CELERY_DB_REUSE_MAX below, studio/celery.py).
# A Postgres that does not answer (a dead host, a dropped route) is an error in seconds, not
# after the kernel's TCP timeout of minutes; DATABASE_URL's ?connect_timeout= wins.
DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 10)
if envbool("DATABASE_POOL", True) and not DATABASES["default"]["CONN_MAX_AGE"]:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": envint("DATABASE_POOL_MAX_SIZE", 16),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "studio",
    }
}

# The pub/sub layer measured a 7x lower round trip than the list-based default on the build
# machines (0.5 ms vs 3.8 ms); step previews are its hot path.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve straight from the source folders too, so development and tests need no collectstatic;
# the Docker image runs collectstatic and serves the compressed copies.
WHITENOISE_USE_FINDERS = True
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / "media"))
# Images, inputs and imports: on this disk under MEDIA_ROOT (`local`), or in an S3-compatible
# bucket (`s3`), configured with django-storages' AWS_* names, so workers on other hosts need no
# shared disk (studio/media_storage.py). Served only through the views that check who may see
# them, never from MEDIA_URL.
STUDIO_MEDIA_STORAGE = envchoice("STUDIO_MEDIA_STORAGE", "local", CHOICES)
STORAGES = {
    "default": media_storage(STUDIO_MEDIA_STORAGE, os.environ),
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "studio@localhost")

# Production hardening: all on unless DEBUG, each switchable for a proxy that terminates TLS.
if not DEBUG:
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
    # Off only where the browser talks plain http to Studio itself, as the benchmarks do on
    # loopback: a browser sends a secure cookie over https alone.
    SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", True)
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", True)
    if envbool("SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Celery (docs/architecture.md §1) -------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
# Shared by every thread (its Redis client is a thread-safe pool), not made per thread: under
# ASGI each request's sync code runs in a thread of its own, so a per-thread backend was built
# anew by every submit, to make the AsyncResult that apply_async returns, reading package
# metadata from disk on the way: the dispatch took 3.9-4.7 ms on the 2-core machine, 1.3-2.8 ms
# with the backend shared.
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_ACCEPT_CONTENT = ["json"]
# Celery's Django fix-up closes a prefork worker's connection pool around every task, so each
# job opened its connections anew (its claim's, and then its heartbeat's): about 12 ms a job,
# measured with tests/benchmarks/serving_overhead.py. It keeps them for this many tasks
# instead; studio/celery.py hands a task's connections back to the pool around each task,
# which drops one that broke (a Postgres restart). The fix-up reads this setting, though
# Celery does not document it: tests/generation/test_library_internals.py checks it still does.
CELERY_DB_REUSE_MAX = envint("CELERY_DB_REUSE_MAX", 500)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = envint("STUDIO_JOB_SOFT_TIME_LIMIT", 1500)
CELERY_TASK_TIME_LIMIT = envint("STUDIO_JOB_TIME_LIMIT", 1800)
# An unacknowledged message is redelivered after this; it must outlast the longest job, or a
# job still running would be handed to a second worker.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Generation ---------------------------------------------------------------------------
STUDIO_DEVICE = os.environ.get("STUDIO_DEVICE", "auto")
if STUDIO_DEVICE not in ("auto", "cpu", "cuda"):
    raise ImproperlyConfigured(f"STUDIO_DEVICE must be auto, cpu or cuda, not {STUDIO_DEVICE!r}")
# torch's intra-op threads; 0 lets Studio choose (on the CPU, every core but one). Recorded in
# every recipe (docs/architecture.md §4).
STUDIO_THREADS = envint("STUDIO_THREADS", 0)
STUDIO_DEMO_MODEL_NAME = "studio-demo"
STUDIO_DEMO_MODEL_PATH = BASE_DIR / "generation" / "demo_model" / "weights"
# Models beyond the demo model, which generation.registry always adds first.
STUDIO_MODELS = parse_models(os.environ.get("STUDIO_MODELS", ""))
# Drop-in folders (git-ignored): each `*.safetensors` checkpoint and each diffusers folder in
# STUDIO_MODELS_DIR is a model named by its file stem or folder name; LoRA files go in
# STUDIO_LORAS_DIR, which the model scan skips (generation.registry).
STUDIO_MODELS_DIR = envpath("STUDIO_MODELS_DIR", BASE_DIR / "models")
STUDIO_LORAS_DIR = envpath("STUDIO_LORAS_DIR", STUDIO_MODELS_DIR / "lora")
STUDIO_DEFAULT_MODEL = os.environ.get("STUDIO_DEFAULT_MODEL", STUDIO_DEMO_MODEL_NAME)
if STUDIO_DEFAULT_MODEL not in (STUDIO_DEMO_MODEL_NAME, *STUDIO_MODELS) and not in_models_dir(
    STUDIO_DEFAULT_MODEL, STUDIO_MODELS_DIR
):
    raise ImproperlyConfigured(
        f"STUDIO_DEFAULT_MODEL {STUDIO_DEFAULT_MODEL!r} is not a model: name the demo model, "
        f"one of STUDIO_MODELS or one in {STUDIO_MODELS_DIR}"
    )
# Each GPU worker process loads the default model as it starts, before it takes a job
# (generation.runner.preload). Celery gives a new worker process 4 s to start by default;
# loading a real model from disk, or the hub the first time, can take minutes.
STUDIO_WORKER_PRELOAD = envbool("STUDIO_WORKER_PRELOAD", True)
# How a worker process fits its models in memory (docs/models.md). The weights it keeps
# loaded, least recently used dropped first beyond this (0: no limit).
STUDIO_WORKER_MODEL_MEMORY = envbytes("STUDIO_WORKER_MODEL_MEMORY", 0)
# `model`: diffusers' model CPU offload, weights in RAM and each model on the GPU as it runs.
STUDIO_CPU_OFFLOAD = envchoice("STUDIO_CPU_OFFLOAD", "off", ("off", "model"))
if STUDIO_CPU_OFFLOAD == "model" and STUDIO_DEVICE == "cpu":
    raise ImproperlyConfigured("STUDIO_CPU_OFFLOAD=model needs a GPU, and STUDIO_DEVICE is cpu")
# Decode in tiles (which changes the pixels; recipes record it): `on`, `off`, or `auto` when
# the decode would not fit the memory free on the device.
STUDIO_VAE_TILING = envchoice("STUDIO_VAE_TILING", "off", ("off", "on", "auto"))
# The GPU fast path (docs/engine.md, "The fast path"), applied as a CUDA worker loads a model
# and recorded in recipes; a CPU worker ignores it. Off until a GPU measurement supports each
# (docs/performance.md): each may change the pixels. Compiled pipelines warm up as the worker
# starts, which can take minutes: raise STUDIO_WORKER_START_TIMEOUT to match.
STUDIO_COMPILE = envchoice("STUDIO_COMPILE", "off", ("off", "default", "max-autotune",
                                                      "max-autotune-no-cudagraphs",
                                                      "reduce-overhead"))
STUDIO_CHANNELS_LAST = envbool("STUDIO_CHANNELS_LAST", False)
STUDIO_FUSED_QKV = envbool("STUDIO_FUSED_QKV", False)
if STUDIO_COMPILE != "off" and STUDIO_CPU_OFFLOAD == "model":
    raise ImproperlyConfigured("STUDIO_COMPILE does not go with STUDIO_CPU_OFFLOAD=model")
CELERY_WORKER_PROC_ALIVE_TIMEOUT = envint("STUDIO_WORKER_START_TIMEOUT", 600)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}

# --- Gallery ------------------------------------------------------------------------------
# Imported images: refused above this many bytes, or pixels (a decompression-bomb guard).
STUDIO_IMPORT_MAX_BYTES = envint("STUDIO_IMPORT_MAX_BYTES", 16 * 2**20)
STUDIO_IMPORT_MAX_PIXELS = envint("STUDIO_IMPORT_MAX_PIXELS", 4096 * 4096)

# --- What one user may send and keep (docs/security.md) ----------------------------------
# An input image or mask (img2img, inpainting) is refused above this many bytes, once decoded
# from base64, or above this many pixels, read from its header before it is decoded.
STUDIO_INPUT_MAX_BYTES = envbytes("STUDIO_INPUT_MAX_BYTES", 8 * 2**20)
STUDIO_INPUT_MAX_PIXELS = envint("STUDIO_INPUT_MAX_PIXELS", 4096 * 4096)
# Request bodies Django reads into memory (JSON and form fields, not files): a larger one is
# refused with 413 before anything parses it. The default holds an image and its mask as
# base64 (4 characters for 3 bytes) with room for the other fields.
DATA_UPLOAD_MAX_MEMORY_SIZE = envbytes(
    "STUDIO_MAX_BODY_BYTES", 2 * math.ceil(STUDIO_INPUT_MAX_BYTES * 4 / 3) + 2**20
)
# Every free-text field a user sends (prompts, names, reasons) is refused above this many
# characters, checked before any parsing, tokenizing or matching runs on it.
STUDIO_MAX_TEXT_CHARS = envint("STUDIO_MAX_TEXT_CHARS", 2000)
STUDIO_MAX_IMPORTS_PER_USER = envint("STUDIO_MAX_IMPORTS_PER_USER", 500)
STUDIO_MAX_COLLECTIONS_PER_USER = envint("STUDIO_MAX_COLLECTIONS_PER_USER", 100)
STUDIO_MAX_REPORTS_PER_DAY = envint("STUDIO_MAX_REPORTS_PER_DAY", 20)
# Failed log-ins per username before further tries wait this long; a client address gets 4x
# as many (studio/login_throttle.py, ADDRESS_ALLOWANCE).
STUDIO_LOGIN_MAX_FAILURES = envint("STUDIO_LOGIN_MAX_FAILURES", 5)
STUDIO_LOGIN_LOCKOUT_SECONDS = envint("STUDIO_LOGIN_LOCKOUT_SECONDS", 900)
# /metrics answers staff, a scraper sending `Authorization: Bearer <STUDIO_METRICS_TOKEN>`
# (empty: no token is accepted), and clients whose address is in STUDIO_METRICS_ALLOW, a
# comma-separated list of IPs and CIDR networks (generation/metrics_view.py); anyone else a 404.
STUDIO_METRICS_TOKEN = os.environ.get("STUDIO_METRICS_TOKEN", "")
STUDIO_METRICS_ALLOW = envnetworks("STUDIO_METRICS_ALLOW")

# --- Jobs (docs/architecture.md §3) ---------------------------------------------------------------
STUDIO_MAX_QUEUED_PER_USER = envint("STUDIO_MAX_QUEUED_PER_USER", 20)
STUDIO_MAX_SUBMITS_PER_MINUTE = envint("STUDIO_MAX_SUBMITS_PER_MINUTE", 30)
# A running job whose last heartbeat is older than this is presumed dead and requeued.
STUDIO_HEARTBEAT_TIMEOUT = envint("STUDIO_HEARTBEAT_TIMEOUT", 60)
STUDIO_MAX_ATTEMPTS = envint("STUDIO_MAX_ATTEMPTS", 3)
# How a worker claims (docs/architecture.md §3.3). Batching: a claim may take compatible jobs
# (text to image, same model, size, sampler, steps, guidance, LoRAs) from other users' turns
# in the current round and run them as one engine batch of at most this many images (1: off;
# at most a recipe's largest batch, 8, so every merged image's recipe stays one that runs).
STUDIO_BATCH_MAX = envint("STUDIO_BATCH_MAX", 1)
if not 1 <= STUDIO_BATCH_MAX <= 8:
    raise ImproperlyConfigured(f"STUDIO_BATCH_MAX must be from 1 to 8, not {STUDIO_BATCH_MAX}")
# Model affinity: a worker takes a later user's job for a model it holds loaded before the
# head of the fair order, passing a user's turn at most this many claims (0: off).
STUDIO_AFFINITY_MAX_DEFER = envint("STUDIO_AFFINITY_MAX_DEFER", 0)
if not 0 <= STUDIO_AFFINITY_MAX_DEFER <= 1000:  # Job.deferred counts to it
    raise ImproperlyConfigured(
        f"STUDIO_AFFINITY_MAX_DEFER must be from 0 to 1000, not {STUDIO_AFFINITY_MAX_DEFER}")
STUDIO_REAP_INTERVAL = envint("STUDIO_REAP_INTERVAL", 15)
# The broker queue GPU workers consume. Test runs use one of their own, so two runs on one
# machine never take each other's messages.
STUDIO_QUEUE = os.environ.get("STUDIO_QUEUE", "generation")

# The reaper runs on the scheduler's own queue, so it runs even while every GPU worker is busy.
CELERY_TASK_ROUTES = {
    "generation.run_job": {"queue": STUDIO_QUEUE},
    "generation.reap_jobs": {"queue": "maintenance"},
}
CELERY_BEAT_SCHEDULE = {
    "reap-jobs": {"task": "generation.reap_jobs", "schedule": STUDIO_REAP_INTERVAL},
}
