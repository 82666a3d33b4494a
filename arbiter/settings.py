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
# The data dir holds the secret key, the database (API key hashes, sessions, encrypted
# webhook secrets) and logs: the serving user's alone. mkdir's mode only applies to a
# directory it creates, so an existing one of ours is tightened as well.
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
if DATA_DIR.stat().st_uid == os.geteuid() and DATA_DIR.stat().st_mode & 0o077:
    DATA_DIR.chmod(0o700)


def private_file(path: Path) -> Path:
    """`path`, created empty with mode 0600 if missing, else tightened to 0600 if ours.

    SQLite creates a database with mode 0644 (less the umask) and gives its -wal, -shm
    and -journal files the database file's own mode (sqlite's os_unix.c,
    findCreateFileMode), so a database created here 0600 keeps its side files 0600.
    An empty file is a valid new SQLite database.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_uid == os.geteuid() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists() and side.stat().st_uid == os.geteuid() and side.stat().st_mode & 0o077:
            side.chmod(0o600)
    return path


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
    # Who may call each Django view (arbiter.route_policy); the API checks in arbiter.auth.
    "arbiter.route_policy.RoutePolicyMiddleware",
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
                "dashboard.roles.roles",
            ],
        },
    },
]

DATABASE_URL = env("DATABASE_URL")
if DATABASE_URL:
    import dj_database_url

    # No persistent connections: under ASGI each request runs in one of daphne's worker
    # threads and a persistent connection stays open per thread, so 64 clients racing
    # for the swap lock held up to 99 connections and got 500 "too many clients" from
    # PostgreSQL's default max_connections of 100 (Django's docs advise against
    # persistent connections under ASGI). Measured against psycopg's pool (Django's
    # `pool` option, max 20) in the same 64-client race: both clean and equally fast;
    # without persistence at most 3 connections were open, the pool held 20, and it
    # needs no extra dependency (docs/DEPLOY.md; tests/ship/test_pg_lock_race.py).
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": private_file(DATA_DIR / "arbiter.sqlite3"),
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
        "filename": str(private_file(DATA_DIR / "huey.sqlite3")),
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
# A swap's stored log (arbiter.engine.swaps.journal): a line is cut at LINE_CHARS; past
# MAX_LINES container lines per swap the rest are counted, and the last TAIL_LINES kept.
ARBITER_SWAP_LOG_LINE_CHARS = env_int("ARBITER_SWAP_LOG_LINE_CHARS", 4096)
ARBITER_SWAP_LOG_MAX_LINES = env_int("ARBITER_SWAP_LOG_MAX_LINES", 20000)
ARBITER_SWAP_LOG_TAIL_LINES = env_int("ARBITER_SWAP_LOG_TAIL_LINES", 500)
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
# Seconds a launched container may take to serve its model before the swap fails
# (the load phase: counted from the container start, after any pull or download).
ARBITER_SWAP_HEALTH_TIMEOUT = env_float("ARBITER_SWAP_HEALTH_TIMEOUT", 900.0)
# Seconds the first real request (ready_check: a 1-token completion, an embedding) may
# take once the model is listed. vLLM's engine runs torch.compile, captures its CUDA
# graphs and warms up the sampler during start-up (compile_or_warm_up_model in
# vllm/v1/worker/gpu_worker.py), before the API server listens, so a healthy model
# answers in well under a second; the margin is for a first request that still loads
# something lazily (a tokenizer, a JIT kernel for a shape not warmed up) on a busy host.
ARBITER_SWAP_READY_TIMEOUT = env_float("ARBITER_SWAP_READY_TIMEOUT", 60.0)
# Seconds a swap's image pull may take (first pulls of vLLM images are 10+ GB).
ARBITER_SWAP_PULL_TIMEOUT = env_float("ARBITER_SWAP_PULL_TIMEOUT", 3600.0)
# Seconds a swap's download of hub weights not yet on the host may take.
ARBITER_SWAP_DOWNLOAD_TIMEOUT = env_float("ARBITER_SWAP_DOWNLOAD_TIMEOUT", 7200.0)
# Seconds to wait for GPU memory to be freed after stopping the previous container.
ARBITER_SWAP_MEMORY_FREE_TIMEOUT = env_float("ARBITER_SWAP_MEMORY_FREE_TIMEOUT", 120.0)
# The restart policy (arbiter.engine.supervisor): how often crashed models are looked
# for, and the backoff before a restart (base × 2^k after the k-th restart in the
# model's window, at most the cap).
ARBITER_SUPERVISOR_INTERVAL = env_float("ARBITER_SUPERVISOR_INTERVAL", 2.0)
# How often every host is asked for containers labelled as Arbiter's that nothing
# accounts for (arbiter.engine.orphans).
ARBITER_ORPHAN_SCAN_INTERVAL = env_float("ARBITER_ORPHAN_SCAN_INTERVAL", 30.0)
ARBITER_RESTART_BACKOFF_SECONDS = env_float("ARBITER_RESTART_BACKOFF_SECONDS", 10.0)
ARBITER_RESTART_BACKOFF_MAX_SECONDS = env_float("ARBITER_RESTART_BACKOFF_MAX_SECONDS", 300.0)
# The TCP port a multi-node model's head listens on for its workers (vLLM's
# --master-port; vLLM's own default is 29501, ParallelConfig.master_port).
ARBITER_MULTI_NODE_MASTER_PORT = env_int("ARBITER_MULTI_NODE_MASTER_PORT", 29501)
# Images catalog models may run (comma-separated fnmatch patterns on the whole reference,
# e.g. `vllm/vllm-openai:v0.11.*`; `*` also matches `/`). Checked on every catalog write
# and again before every launch. The default: the vLLM images the catalog knows how to
# launch (catalog.launch_rules.DEFAULT_COMMANDS), any tag or digest.
ARBITER_ALLOWED_IMAGES = env_list(
    "ARBITER_ALLOWED_IMAGES",
    "vllm/vllm-openai*,docker.io/vllm/vllm-openai*,nvcr.io/nvidia/vllm*",
)
# The docker container name of catalog models that do not set their own.
ARBITER_CONTAINER_NAME = env("ARBITER_CONTAINER_NAME", "arbiter-vllm")
# The hub cache (`models--org--name` folders) on every host, mounted into containers as
# /root/.cache/huggingface/hub. Empty: each host's own — its inventory `hf_cache_dir`,
# else the SSH user's ~/.cache/huggingface/hub (where Spark recipes keep weights). A
# host's `hf_cache_dir` wins over this setting (arbiter.engine.host_paths).
ARBITER_HF_CACHE_DIR = env("ARBITER_HF_CACHE_DIR", "")
# Coordination.
ARBITER_LOCK_MAX_TTL = env_int("ARBITER_LOCK_MAX_TTL", 24 * 3600)
# A warm-up (coordination.schedules.warm_ups) starts this long + its lead before a run when
# no earlier swap of the model on the host says how long loading takes.
ARBITER_WARM_UP_DEFAULT_LOAD_SECONDS = env_int("ARBITER_WARM_UP_DEFAULT_LOAD_SECONDS", 300)
# The audit trail (arbiter.audit): rows older than this many days are deleted by the
# engine's periodic housekeeping; 0 keeps every row for ever.
ARBITER_AUDIT_RETENTION_DAYS = env_int("ARBITER_AUDIT_RETENTION_DAYS", 365)
# Swap log lines of swaps that ended longer ago, and finished webhook deliveries (with
# their attempts) older than this, are deleted hourly; 0 keeps them forever.
ARBITER_SWAP_LOG_RETENTION_DAYS = env_int("ARBITER_SWAP_LOG_RETENTION_DAYS", 90)
ARBITER_WEBHOOK_DELIVERY_RETENTION_DAYS = env_int("ARBITER_WEBHOOK_DELIVERY_RETENTION_DAYS", 30)
# Key for encrypting webhook secrets at rest; derived from SECRET_KEY when unset.
ARBITER_WEBHOOK_KEY = env("ARBITER_WEBHOOK_KEY")
# Networks (CIDRs, comma-separated) webhooks may reach although they are not public:
# loopback, link-local, private, unique-local, CGNAT... are refused otherwise (SSRF).
ARBITER_WEBHOOK_ALLOW_NETWORKS = env_list("ARBITER_WEBHOOK_ALLOW_NETWORKS")
# Seconds one delivery attempt may take in all (connect, send, answer, excerpt).
ARBITER_WEBHOOK_DELIVERY_DEADLINE = env_float("ARBITER_WEBHOOK_DELIVERY_DEADLINE", 15.0)
# A swap whose engine has not touched it for this long is taken over (re-attached).
ARBITER_SWAP_STALE_SECONDS = env_float("ARBITER_SWAP_STALE_SECONDS", 10.0)
# Broker (/v1): limits, queueing while a model loads, timeouts.
ARBITER_BROKER_MAX_BODY_BYTES = env_int("ARBITER_BROKER_MAX_BODY_BYTES", 25 * 1024 * 1024)
# No request body is written to disk before authentication. Django's ASGI handler spools
# a body to a temporary file past FILE_UPLOAD_MAX_MEMORY_SIZE before any view runs
# (django/core/handlers/asgi.py, read_body), and its default upload handlers write file
# parts past it to disk (https://docs.djangoproject.com/en/5.2/topics/http/file-uploads/,
# "Where uploaded data is stored"; FILE_UPLOAD_HANDLERS). arbiter.body_limit
# refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE (API, dashboard) or the broker's limit
# before Django reads them, so raising the spool size to the larger limit keeps every
# accepted body in memory, and uploads are only ever read into memory.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("ARBITER_API_MAX_BODY_BYTES", 2621440)  # Django's 2.5 MB
FILE_UPLOAD_MAX_MEMORY_SIZE = max(DATA_UPLOAD_MAX_MEMORY_SIZE, ARBITER_BROKER_MAX_BODY_BYTES)
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.MemoryFileUploadHandler"]
ARBITER_BROKER_MAX_CONCURRENCY = env_int("ARBITER_BROKER_MAX_CONCURRENCY", 64)
# With REDIS_URL the per-model limit holds across processes; a slot a crashed process
# held comes back after this many seconds (docs/BROKER.md, "Several processes").
ARBITER_BROKER_SLOT_TTL = env_float("ARBITER_BROKER_SLOT_TTL", 900.0)
# The broker's Redis keys start with this (default: "arbiter:<database name>:broker:"),
# so deployments (and tests) sharing one Redis keep apart.
ARBITER_BROKER_REDIS_PREFIX = env("ARBITER_BROKER_REDIS_PREFIX")
ARBITER_BROKER_QUEUE_SIZE = env_int("ARBITER_BROKER_QUEUE_SIZE", 100)
ARBITER_BROKER_QUEUE_TIMEOUT = env_float("ARBITER_BROKER_QUEUE_TIMEOUT", 600.0)
# A waiting request's priority class improves by one every this many seconds it waits
# (docs/BROKER.md, "Priorities and fair share").
ARBITER_BROKER_PRIORITY_AGING_SECONDS = env_float("ARBITER_BROKER_PRIORITY_AGING_SECONDS", 30.0)
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
