"""Catalog field validation: one set of rules for the API, the forms and the seed file.

Every value here ends up as one argv item of a `docker run` or `hf download` command on
a host, so the rules are deliberately narrow: no field may start like an option where it
is a positional, carry whitespace or control characters into a flag, or name a path
outside the configured model roots. `validate_catalog_fields` raises the first problem
as `InvalidInput` naming the field; `catalog_field_problems` returns all of them (the
seed file reports every problem in one pass). Patterns are used with `fullmatch`: a `$`
would also match before a trailing newline.
"""

from __future__ import annotations

import fnmatch
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from arbiter.errors import InvalidInput
from catalog.launch_rules import (
    container_arg_problem,
    default_command,
    engine_flag_problem,
    image_problem,
)

KINDS = ("llm", "embeddings", "tts")
# How the hosts of a multi-node model find each other (CatalogModel.multi_node).
MULTI_NODE_MODES = ("native", "ray")
DEFAULT_IMAGE = "vllm/vllm-openai:latest"
DEFAULTS: dict[str, Any] = {
    "display_name": "",
    "kind": "llm",
    "hub_repo": "",
    "hub_revision": "",
    "local_path": "",
    "served_name": "",
    "image": DEFAULT_IMAGE,
    "port": 8000,
    "container_name": None,  # ARBITER_CONTAINER_NAME, read when used (see default_value)
    "tensor_parallel_size": 1,
    "tensor_parallel_hosts": [],
    "multi_node": "native",
    "max_model_len": None,
    "gpu_memory_utilization": None,  # chosen per host at launch (see the model field)
    "command": None,  # the image's default (DEFAULT_COMMANDS), resolved after the image
    "sleep_on_unified_memory": False,
    "extra_engine_flags": [],
    "extra_container_args": [],
    "estimated_vram_mib": 0,
    "idle_unload_seconds": None,
    "restart": None,  # {"max": N, "window_seconds": W}; stored as restart_max / _window_seconds
    "default_host": None,
}
FIELDS = ("key", *DEFAULTS)


def default_value(name: str) -> Any:
    """A field's default; the container name comes from the deployment's settings."""
    if name == "container_name":
        from django.conf import settings

        return settings.ARBITER_CONTAINER_NAME
    return DEFAULTS.get(name)


SOURCE_FIELDS = "hub_repo,local_path"
MAX_LOCAL_PATH = 1024

KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# Hugging Face repo ids: `org/name`, each part alphanumeric plus `._-`, at most 96 chars,
# not starting or ending with `-`/`.`, no `--` or `..` (they would also make the cache
# folder name `models--org--name` ambiguous).
HUB_PART_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
# Branch, tag or commit sha; `refs/pr/1` style names are allowed.
REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")
# An idle unload sooner than this would unload a model between two turns of a chat.
MIN_IDLE_UNLOAD_SECONDS = 60
# The restart policy: at most this many restarts per window (arbiter.engine.supervisor).
# A window shorter than a minute would never count two crashes together behind the
# restart backoff, and restart a model that crashes at every start for ever.
MAX_RESTARTS = 100
MIN_RESTART_WINDOW_SECONDS = 60
MAX_RESTART_WINDOW_SECONDS = 7 * 24 * 3600
CONTAINER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # Docker's own rule


class Bad(Exception):
    """One field's problem; `field` overrides the field being checked when set."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def shown(value: Any) -> str:
    """A value as the user gave it, short and with control characters visible."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def has_control(text: str) -> bool:
    # Cc covers NUL, \n, \r, \t, ESC and DEL; Zl/Zp are the Unicode line separators.
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


# -- local paths ---------------------------------------------------------------------


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def normalize_local_path(path: str, roots: list[str]) -> str:
    """The normalised absolute path of a model directory strictly inside one of `roots`.

    Raises InvalidInput(field="local_path") for relative paths, `..` segments, percent
    escapes (`%2e%2e%2f` must never be decoded into a traversal somewhere downstream),
    control characters, `:`/`,`/`\\` (docker's volume and mount separators) and paths
    that are not below a root. Roots are compared by path component, so `/models-evil`
    is not inside `/models`. Symlinks are resolved on the host (arbiter.engine.disk).
    """

    def bad(reason: str) -> InvalidInput:
        return InvalidInput(f"local_path: {reason}", field="local_path")

    if not isinstance(path, str) or not path:
        raise bad("must be an absolute path")
    if len(path) > MAX_LOCAL_PATH:
        raise bad(f"must be at most {MAX_LOCAL_PATH} characters")
    if has_control(path):
        raise bad("must not contain control characters (NUL, newline, ...)")
    if "%" in path:
        raise bad("must not contain '%' (URL-encoded paths are not accepted)")
    for char, why in ((":", "docker's volume separator"), (",", "docker's mount separator")):
        if char in path:
            raise bad(f"must not contain '{char}' ({why})")
    if "\\" in path:
        raise bad("must not contain backslashes")
    if path != path.strip():
        raise bad("must not start or end with whitespace")
    if not path.startswith("/"):
        raise bad(f"must be an absolute path, got {shown(path)}")
    parts = path.split("/")
    if ".." in parts:
        raise bad("must not contain '..' segments")
    components = _components(path)
    # "/models/x /" would otherwise normalise to "/models/x ", which a mount (and this
    # check, run again) reads differently.
    if any(part != part.strip() for part in components):
        raise bad("path segments must not start or end with whitespace")
    normalised = "/" + "/".join(components)
    for root in roots:
        root_components = _components(root)
        if (
            len(components) > len(root_components)
            and components[: len(root_components)] == root_components
        ):
            return normalised
    allowed = ", ".join(roots) or "(none configured)"
    if any(components == _components(root) for root in roots):
        raise bad(f"must be a directory below the model root, not the root itself ({allowed})")
    raise bad(f"must be inside an allowed model root ({allowed}), got {shown(normalised)}")


def is_inside(path: str, root: str) -> bool:
    """Whether `path` is strictly below `root`, compared component by component."""
    path_components, root_components = _components(path), _components(root)
    return (
        ".." not in path_components
        and len(path_components) > len(root_components)
        and path_components[: len(root_components)] == root_components
    )


# -- field checks ----------------------------------------------------------------------


def _text(value: Any, *, max_len: int, empty_ok: bool = True) -> str:
    if value is None and empty_ok:
        return ""
    if not isinstance(value, str):
        raise Bad(f"must be a string, got {shown(value)}")
    if not value and not empty_ok:
        raise Bad("is required")
    if len(value) > max_len:
        raise Bad(f"must be at most {max_len} characters")
    if has_control(value):
        raise Bad("must not contain control characters (NUL, newline, ...)")
    return value


def _integer(value: Any, low: int, high: int | None, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(f"must be {what}, got {shown(value)}")
    if value < low or (high is not None and value > high):
        raise Bad(f"must be {what}, got {value}")
    return value


def check_key(value: Any) -> str:
    text = _text(value, max_len=63, empty_ok=False)
    if not KEY_RE.fullmatch(text):
        raise Bad("must be 1-63 letters, digits, '-' or '_', starting with a letter or digit")
    return text


def check_hub_repo(value: Any) -> str:
    text = _text(value, max_len=200)
    if not text:
        return ""
    parts = text.split("/")
    if len(parts) != 2:
        raise Bad(f"must be `org/name`, got {shown(text)}")
    for part in parts:
        if not HUB_PART_RE.fullmatch(part) or "--" in part or ".." in part:
            raise Bad(
                f"must be `org/name` with letters, digits, '.', '_' or '-' (not first or "
                f"last, no '--' or '..'), at most 96 characters each, got {shown(text)}"
            )
    return text


def check_hub_revision(value: Any) -> str:
    text = _text(value, max_len=100)
    if text and (
        not REVISION_RE.fullmatch(text) or ".." in text or "//" in text or text[-1] in "/."
    ):
        raise Bad(f"must be a branch, tag or commit sha, got {shown(text)}")
    return text


def check_served_name(value: Any) -> str:
    text = _text(value, max_len=200)
    if text.startswith("-"):
        raise Bad("must not start with '-'")
    if any(c.isspace() for c in text):
        raise Bad("must not contain whitespace")
    return text


def allowed_image_patterns() -> list[str]:
    """ARBITER_ALLOWED_IMAGES, read when used (tests and a changed deployment see the new
    list; a row stored under an older list fails its pre-launch re-check)."""
    return list(settings.ARBITER_ALLOWED_IMAGES)


def image_allowed(image: str) -> bool:
    """Whether an allow-list pattern matches the whole reference (fnmatch, case-sensitive:
    docker references are case-sensitive and repositories lowercase)."""
    return any(fnmatch.fnmatchcase(image, pattern) for pattern in allowed_image_patterns())


def check_image(value: Any) -> str:
    text = _text(value, max_len=255, empty_ok=False)
    reason = image_problem(text)
    if reason:
        raise Bad(reason)
    # The image runs on a GPU host with the hub token in its environment: only images
    # the deployment allows, whoever asks.
    if not image_allowed(text):
        patterns = ", ".join(allowed_image_patterns()) or "(none)"
        raise Bad(
            f"{text!r} is not allowed by ARBITER_ALLOWED_IMAGES ({patterns}); "
            "ask the administrator to add a pattern for it"
        )
    return text


def check_container_name(value: Any) -> str:
    text = _text(value, max_len=128, empty_ok=False)
    if not CONTAINER_NAME_RE.fullmatch(text):
        raise Bad(
            "must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (docker's rule for container names), "
            f"got {shown(text)}"
        )
    return text


def check_gpu_memory_utilization(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Bad(f"must be a number in (0, 1] or null, got {shown(value)}")
    number = float(value)
    if not math.isfinite(number) or not 0 < number <= 1:
        raise Bad(f"must be a number in (0, 1] or null, got {shown(value)}")
    return number


def check_max_model_len(value: Any) -> int | None:
    if value is None:
        return None
    return _integer(value, 1, None, "a positive integer or null")


def check_idle_unload_seconds(value: Any) -> int | None:
    if value in (None, ""):
        return None
    what = f"an integer >= {MIN_IDLE_UNLOAD_SECONDS} or null"
    return _integer(value, MIN_IDLE_UNLOAD_SECONDS, None, what)


def check_restart(value: Any) -> dict[str, int] | None:
    """The restart policy `{"max": N, "window_seconds": W}`, or null (off)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Bad(f'must be {{"max": N, "window_seconds": W}} or null, got {shown(value)}')
    unknown = sorted(set(value) - {"max", "window_seconds"})
    if unknown:
        raise Bad("unknown field (known: max, window_seconds)", field=f"restart.{unknown[0]}")
    policy = {}
    for name, low, high in (
        ("max", 1, MAX_RESTARTS),
        ("window_seconds", MIN_RESTART_WINDOW_SECONDS, MAX_RESTART_WINDOW_SECONDS),
    ):
        if name not in value:
            raise Bad("is required", field=f"restart.{name}")
        try:
            policy[name] = _integer(value[name], low, high, f"an integer {low}-{high}")
        except Bad as error:
            raise Bad(error.reason, field=f"restart.{name}") from None
    return policy


def _string_list(value: Any, check_item: Callable[[str], str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise Bad(f"must be a list of strings, got {shown(value)}")
    items = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise Bad(f"item {index} must be a string, got {shown(item)}")
        try:
            items.append(check_item(item))
        except Bad as error:
            raise Bad(f"item {index} {error.reason}") from None
    return items


# One word of a launch command: a program or subcommand name, never an option (flags
# belong in extra_engine_flags, where they are checked one by one) and never anything a
# shell would read specially, although it is always quoted on its way to the host.
COMMAND_WORD_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]{0,127}")
MAX_COMMAND_WORDS = 8


def _command_word(item: str) -> str:
    if item.startswith("-"):
        raise Bad(
            f"must not start with '-' (engine flags go in extra_engine_flags), got {shown(item)}"
        )
    if not COMMAND_WORD_RE.fullmatch(item):
        raise Bad(
            "must be a program or subcommand name: letters, digits and _ . / + - "
            f"(no spaces or shell characters), got {shown(item)}"
        )
    return item


def check_command(value: Any) -> list[str]:
    words = _string_list(value, _command_word)
    if len(words) > MAX_COMMAND_WORDS:
        raise Bad(f"must have at most {MAX_COMMAND_WORDS} items")
    return words


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"must be true or false, got {shown(value)}")
    return value


def _engine_flag(item: str) -> str:
    if has_control(item):
        raise Bad("must not contain control characters")
    reason = engine_flag_problem(item)
    if reason:
        raise Bad(reason)
    return item


def _container_arg(item: str) -> str:
    reason = container_arg_problem(item)
    if reason:
        raise Bad(reason)
    return item


def _host_name(item: str) -> str:
    if not HOST_NAME_RE.fullmatch(item):
        raise Bad(f"must be a host name, got {shown(item)}")
    return item


def check_tensor_parallel_hosts(value: Any) -> list[str]:
    """The hosts of a multi-node model, head first: none, or 2+ distinct hosts.

    Each host runs one node (one container of the same name), so a host named twice would
    start two nodes in one container slot; one host alone is a single-host model.
    """
    hosts = _string_list(value, _host_name)
    for index, name in enumerate(hosts):
        first = hosts.index(name)
        if first != index:
            raise Bad(f"item {index}: host {name!r} is already item {first} (one node per host)")
    if len(hosts) == 1:
        raise Bad(
            "must name at least 2 hosts (the head first), or none for a model on one host, "
            f"got {shown(hosts)}"
        )
    return hosts


def check_default_host(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise Bad(f"must be a host name, got {shown(value)}")
    return _host_name(value)


CHECKS: dict[str, Callable[[Any], Any]] = {
    "key": check_key,
    "display_name": lambda v: _text(v, max_len=200),
    "kind": lambda v: _choice(v, KINDS),
    "hub_repo": check_hub_repo,
    "hub_revision": check_hub_revision,
    "served_name": check_served_name,
    "image": check_image,
    "port": lambda v: _integer(v, 1, 65535, "an integer 1-65535"),
    "container_name": check_container_name,
    "tensor_parallel_size": lambda v: _integer(v, 1, 64, "an integer 1-64"),
    "tensor_parallel_hosts": check_tensor_parallel_hosts,
    "multi_node": lambda v: _choice(v, MULTI_NODE_MODES),
    "max_model_len": check_max_model_len,
    "gpu_memory_utilization": check_gpu_memory_utilization,
    "command": check_command,
    "sleep_on_unified_memory": _boolean,
    "extra_engine_flags": lambda v: _string_list(v, _engine_flag),
    "extra_container_args": lambda v: _string_list(v, _container_arg),
    "estimated_vram_mib": lambda v: _integer(v, 0, 2**31 - 1, "an integer >= 0"),
    "idle_unload_seconds": check_idle_unload_seconds,
    "restart": check_restart,
    "default_host": check_default_host,
}


def _choice(value: Any, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if value not in options:
        raise Bad(f"must be one of {', '.join(options)}, got {shown(value)}")
    return value


def catalog_field_problems(
    data: dict[str, Any], *, roots: list[str] | None = None, require_key: bool = True
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check every field; return (cleaned values with defaults, [(field, reason), ...]).

    Missing optional fields take the model's defaults. `served_name` defaults to the
    hub repo id for hub models and to the key for local ones.
    """
    roots = list(settings.ARBITER_MODEL_ROOTS if roots is None else roots)
    cleaned: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name in FIELDS:
        if name == "key" and "key" not in data and not require_key:
            continue
        if name == "local_path":
            value = data.get("local_path")
            if value in (None, ""):
                cleaned[name] = ""
                continue
            try:
                cleaned[name] = normalize_local_path(value, roots)
            except InvalidInput as error:
                problems.append(("local_path", error.message.removeprefix("local_path: ")))
            continue
        if name == "key" and name not in data:
            problems.append(("key", "is required"))
            continue
        value = data.get(name, default_value(name))
        if value is None and name == "container_name":  # omitted in the API body
            value = default_value(name)
        if value is None and name == "command":
            image = cleaned.get("image")
            if image is None:  # the image itself is bad: that is the problem to report
                continue
            known = default_command(image)
            if known is None:
                problems.append(
                    (
                        "command",
                        f"Arbiter knows no launch command for image {image!r}: give command, "
                        'e.g. ["vllm", "serve"] when its entrypoint runs its arguments, or [] '
                        "when its entrypoint already is `vllm serve`",
                    )
                )
                continue
            value = known
        try:
            cleaned[name] = CHECKS[name](value)
        except Bad as error:
            problems.append((error.field or name, error.reason))
    failed = {name for name, _ in problems}
    hub, local = data.get("hub_repo") or "", data.get("local_path") or ""
    if not failed & {"hub_repo", "local_path"}:
        if bool(hub) == bool(local):
            which = "both were given" if hub else "neither was given"
            problems.append(
                (
                    SOURCE_FIELDS,
                    f"give exactly one of hub_repo (a hub model) or local_path "
                    f"(weights on the host); {which}",
                )
            )
        elif local and cleaned.get("hub_revision"):
            problems.append(("hub_revision", "only applies to hub models (hub_repo)"))
    if "served_name" not in failed and not cleaned.get("served_name"):
        cleaned["served_name"] = cleaned.get("hub_repo") or cleaned.get("key", "")
    problems += _split_problems(cleaned, failed)
    return cleaned, problems


def _split_problems(cleaned: dict[str, Any], failed: set[str]) -> list[tuple[str, str]]:
    """tensor_parallel_size is the total over every host of a multi-node model (vLLM's
    `--tensor-parallel-size N --nnodes K`, docs "Parallelism and Scaling"), so each host
    must take an equal share of it."""
    if failed & {"tensor_parallel_size", "tensor_parallel_hosts"}:
        return []
    hosts = cleaned.get("tensor_parallel_hosts") or []
    size = cleaned.get("tensor_parallel_size")
    if not hosts or size is None or size % len(hosts) == 0:
        return []
    return [
        (
            "tensor_parallel_size",
            f"must be divisible by the number of tensor_parallel_hosts ({len(hosts)}): it is "
            f"the total over all hosts, each running the same share, got {size}",
        )
    ]


def validate_catalog_fields(
    data: dict[str, Any], *, roots: list[str] | None = None, require_key: bool = True
) -> dict[str, Any]:
    """The cleaned fields of one catalog model, or InvalidInput naming the first bad field.

    The error's body also lists every problem (`errors: [{field, message}]`).
    """
    cleaned, problems = catalog_field_problems(data, roots=roots, require_key=require_key)
    if problems:
        field, reason = problems[0]
        raise InvalidInput(
            f"{field}: {reason}",
            field=field,
            errors=[{"field": f, "message": r} for f, r in problems],
        )
    return cleaned
