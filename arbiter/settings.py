"""Arbiter settings: one file, configured from the environment.

Defaults need nothing but Python: SQLite, an in-memory channel layer and SQLite huey.
`DATABASE_URL` selects PostgreSQL, `REDIS_URL` selects channels_redis and RedisHuey.
Every secret may also be given as `NAME_FILE` (a path whose content is the value).
"""

import os
import secrets
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    """A setting from the environment, or from the file named by `NAME_FILE`."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = env(name, "1" if default else "0").strip().lower()
    return value in ("1", "true", "yes", "on")


def env_int(name: str, default: int) -> int:
    return int(env(name, str(default)))


def env_float(name: str, default: float) -> float:
    return float(env(name, str(default)))


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


# All state of one instance lives here, so two instances can run side by side.
DATA_DIR = Path(env("ARBITER_DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _persistent_secret_key() -> str:
    """Generate the secret key once per data dir so sessions survive restarts."""
    path = DATA_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = env("DJANGO_SECRET_KEY") or _persistent_secret_key()
DEBUG = env_bool("ARBITER_DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "huey.contrib.djhuey",
    "django_htmx",
    "arbiter",
    "catalog",
    "coordination",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "arbiter.urls"
ASGI_APPLICATION = "arbiter.asgi.application"
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

DATABASE_URL = env("DATABASE_URL")
if DATABASE_URL:
    import dj_database_url

    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "arbiter.sqlite3",
            "OPTIONS": {
                # WAL lets the dashboard read while the engine writes; IMMEDIATE takes
                # the write lock at BEGIN so conditional updates (the swap lock) never
                # fail half-way with "database is locked" on upgrade.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            # A file (not :memory:) so live-server and multi-thread tests share it.
            "TEST": {"NAME": str(DATA_DIR / "test.sqlite3")},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    HUEY = {
        "huey_class": "huey.RedisHuey",
        "name": "arbiter",
        "url": REDIS_URL,
        "immediate": False,
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    HUEY = {
        "huey_class": "huey.SqliteHuey",
        "name": "arbiter",
        "filename": str(DATA_DIR / "huey.sqlite3"),
        "immediate": False,
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads it to send X-CSRFToken
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env_bool("ARBITER_HTTPS"):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("ARBITER_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("ARBITER_HSTS_SECONDS", 31536000)
    # HSTS for the host and its subdomains; `preload` only makes the header eligible for
    # browsers' preload lists (submitting a domain there is a separate, deliberate act).
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("ARBITER_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("ARBITER_HSTS_PRELOAD", True)
    # Load balancers and StartOS probe /healthz over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("ARBITER_LOG_LEVEL", "INFO")},
    "loggers": {
        "daphne": {"level": "WARNING"},
        "asyncssh": {"level": "WARNING"},
        "huey": {"level": "WARNING"},
        # httpx logs every request URL at INFO; webhook URLs may carry tokens.
        "httpx": {"level": "WARNING"},
    },
}

# --- Arbiter's own settings -------------------------------------------------------
# Cluster inventory file; when unset, `manage.py serve` starts the simulated cluster.
ARBITER_CONFIG = env("ARBITER_CONFIG")
# Let anonymous visitors read GET API routes (status, endpoints). Off by default.
ARBITER_ANONYMOUS_READS = env_bool("ARBITER_ANONYMOUS_READS", False)
# Engine timing.
ARBITER_SAMPLE_INTERVAL = env_float("ARBITER_SAMPLE_INTERVAL", 2.0)
ARBITER_STALE_AFTER_MISSES = env_int("ARBITER_STALE_AFTER_MISSES", 2)
ARBITER_OFFLINE_AFTER_MISSES = env_int("ARBITER_OFFLINE_AFTER_MISSES", 5)
ARBITER_SSH_CONNECT_TIMEOUT = env_float("ARBITER_SSH_CONNECT_TIMEOUT", 5.0)
# The multi-process guard (system check arbiter.W001) reads this.
ARBITER_PROCESS_COUNT = env_int("ARBITER_PROCESS_COUNT", 1)
ARBITER_PROBE_INTERVAL = env_float("ARBITER_PROBE_INTERVAL", 5.0)
# Catalog and swaps.
# Catalog seed file (YAML list of models); models already in the database are kept as edited.
ARBITER_CATALOG = env("ARBITER_CATALOG")
# Local model paths must resolve inside one of these roots on the host.
ARBITER_MODEL_ROOTS = env_list("ARBITER_MODEL_ROOTS", "/models")
# Hub token for gated models: reaches the container by environment, never a command line.
ARBITER_HF_TOKEN = env("ARBITER_HF_TOKEN")
# Seconds a launched container may take to serve its model before the swap fails.
ARBITER_SWAP_HEALTH_TIMEOUT = env_float("ARBITER_SWAP_HEALTH_TIMEOUT", 900.0)
# Seconds to wait for GPU memory to be freed after stopping the previous container.
ARBITER_SWAP_MEMORY_FREE_TIMEOUT = env_float("ARBITER_SWAP_MEMORY_FREE_TIMEOUT", 120.0)
# The docker container name of catalog models that do not set their own.
ARBITER_CONTAINER_NAME = env("ARBITER_CONTAINER_NAME", "arbiter-vllm")
# Where hub models are cached on each host; mounted into containers as the HF cache.
ARBITER_HF_CACHE_DIR = env("ARBITER_HF_CACHE_DIR", "/models/hub-cache")
# Coordination.
ARBITER_LOCK_MAX_TTL = env_int("ARBITER_LOCK_MAX_TTL", 24 * 3600)
# Key for encrypting webhook secrets at rest; derived from SECRET_KEY when unset.
ARBITER_WEBHOOK_KEY = env("ARBITER_WEBHOOK_KEY")
# A swap whose engine has not touched it for this long is taken over (re-attached).
ARBITER_SWAP_STALE_SECONDS = env_float("ARBITER_SWAP_STALE_SECONDS", 10.0)
# Broker (/v1): limits, queueing while a model loads, timeouts.
ARBITER_BROKER_MAX_BODY_BYTES = env_int("ARBITER_BROKER_MAX_BODY_BYTES", 25 * 1024 * 1024)
ARBITER_BROKER_MAX_CONCURRENCY = env_int("ARBITER_BROKER_MAX_CONCURRENCY", 64)
ARBITER_BROKER_QUEUE_SIZE = env_int("ARBITER_BROKER_QUEUE_SIZE", 100)
ARBITER_BROKER_QUEUE_TIMEOUT = env_float("ARBITER_BROKER_QUEUE_TIMEOUT", 600.0)
ARBITER_BROKER_CONNECT_TIMEOUT = env_float("ARBITER_BROKER_CONNECT_TIMEOUT", 5.0)
ARBITER_BROKER_READ_TIMEOUT = env_float("ARBITER_BROKER_READ_TIMEOUT", 600.0)
# Per-route read timeouts (seconds); other routes use ARBITER_BROKER_READ_TIMEOUT.
ARBITER_BROKER_ROUTE_TIMEOUTS = {"/v1/embeddings": 120.0, "/v1/models": 30.0}
# How long the broker trusts its cached routing table and API-key checks.
ARBITER_BROKER_TABLE_TTL = env_float("ARBITER_BROKER_TABLE_TTL", 1.0)
ARBITER_BROKER_KEY_CACHE_SECONDS = env_float("ARBITER_BROKER_KEY_CACHE_SECONDS", 10.0)
# How often the broker looks for models idle past their catalog `idle_unload_seconds`.
ARBITER_BROKER_IDLE_CHECK_SECONDS = env_float("ARBITER_BROKER_IDLE_CHECK_SECONDS", 5.0)
# Serve /metrics without an API key (for a Prometheus on a trusted network).
ARBITER_METRICS_PUBLIC = env_bool("ARBITER_METRICS_PUBLIC", False)
