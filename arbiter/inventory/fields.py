"""One validator per kind of field.

A validator takes the raw YAML value and returns the clean value or raises `Invalid`
with the reason. Being strict pays off here: a port written `"22"` or a budget of
`true` is a typo the operator wants to hear about, not a value to coerce.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .problems import Invalid, must, show

T = TypeVar("T")
Validator = Callable[[Any], T]

SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Docker's rule for container names (moby daemon/names: RestrictedNameChars + "+").
CONTAINER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
MAX_CONTAINER_NAME_CHARS = 128
POSIX_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
HOSTNAME_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

# Upper bound of a PositiveIntegerField on every backend we support.
MAX_DB_INT = 2**31 - 1
# Column sizes in arbiter.models; a longer value would fail inside the transaction.
MAX_PATH_CHARS = 1024
MAX_URL_CHARS = 512
MAX_ROUTE_CHARS = 255


def slug(value: Any) -> str:
    if isinstance(value, str) and SLUG_RE.fullmatch(value):
        return value
    raise must(
        'must be a lowercase slug of a-z, 0-9 and "-" (1-63 characters, not starting with "-")',
        value,
    )


def container_name(value: Any) -> str:
    """A docker container name as `docker ps` shows it (no leading "/")."""
    if (
        isinstance(value, str)
        and CONTAINER_NAME_RE.fullmatch(value)
        and len(value) <= MAX_CONTAINER_NAME_CHARS
    ):
        return value
    raise must(
        "must be a container name: [a-zA-Z0-9][a-zA-Z0-9_.-]+ (docker's rule), "
        f"at most {MAX_CONTAINER_NAME_CHARS} characters",
        value,
    )


def posix_user(value: Any) -> str:
    if isinstance(value, str) and POSIX_USER_RE.fullmatch(value):
        return value
    raise must("must be a POSIX user name ([a-z_][a-z0-9_-]{0,31})", value)


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise must("must be true or false", value)


def _integer(value: Any, low: int, high: int, expectation: str) -> int:
    # bool is an int subclass in Python, but `ssh_port: true` is never meant as 1.
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    raise must(expectation, value)


def port(value: Any) -> int:
    return _integer(value, 1, 65535, "must be an integer 1-65535")


def positive_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_DB_INT:
        raise must(f"must be at most {MAX_DB_INT}", value)
    return _integer(value, 1, MAX_DB_INT, "must be a positive integer")


def non_negative_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_DB_INT:
        raise must(f"must be at most {MAX_DB_INT}", value)
    return _integer(value, 0, MAX_DB_INT, "must be an integer >= 0")


MAX_SSH_SESSIONS = 100


def ssh_sessions(value: Any) -> int:
    """Concurrent SSH channels per connection; keep it under the host's MaxSessions."""
    return _integer(value, 1, MAX_SSH_SESSIONS, f"must be an integer 1-{MAX_SSH_SESSIONS}")


def host_dir(value: Any) -> str:
    """An absolute, normalized directory on a host that docker can bind-mount as is:
    no `:` or `,` (they split `--volume` / `--mount` specs) and no control characters."""
    if (
        isinstance(value, str)
        and value.startswith("/")
        and os.path.normpath(value) == value
        and not any(c in value for c in ":,")
        and value.isprintable()
        and len(value) <= 1024
    ):
        return value
    raise must("must be an absolute, normalized path without ':' or ','", value)


def one_of(choices: Collection[str]) -> Validator[str]:
    expectation = "must be one of " + ", ".join(f'"{choice}"' for choice in choices)

    def check(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise must(expectation, value)

    return check


def nullable(validator: Validator[T]) -> Validator[T | None]:
    """For keys where `~` legitimately means "none" (no key file, no budget, no route)."""

    def check(value: Any) -> T | None:
        return None if value is None else validator(value)

    return check


def list_of(item: Validator[T], *, expectation: str, non_empty: bool = False) -> Validator[tuple]:
    """A list whose items all pass `item`, without duplicates; bad items are reported each."""

    def check(value: Any) -> tuple:
        if not isinstance(value, list) or (non_empty and not value):
            raise must(expectation, value)
        items: list[T] = []
        issues: list[tuple[str, str]] = []
        for index, raw in enumerate(value):
            try:
                clean = item(raw)
            except Invalid as error:
                issues += [(f"[{index}]{suffix}", reason) for suffix, reason in error.issues]
                continue
            if clean in items:
                issues.append((f"[{index}]", f"duplicate {show(clean)}"))
                continue
            items.append(clean)
        if issues:
            raise Invalid.many(issues)
        return tuple(items)

    return check


# --- Addresses -----------------------------------------------------------------------


def _is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_hostname(text: str) -> bool:
    labels = text.split(".")
    # An all-digit last label is a mistyped IPv4 address (192.168.1.300), not a name.
    return (
        len(text) <= 253
        and all(HOSTNAME_LABEL_RE.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def host_address(value: Any) -> str:
    """A hostname or IP literal that ssh cannot mistake for an option or a user."""
    expectation = "must be a hostname (RFC 1123) or an IPv4/IPv6 address"
    if not isinstance(value, str) or not value:
        raise must(expectation, value)
    if any(char.isspace() for char in value):
        raise must("must not contain whitespace", value)
    # A leading "-" would be read by ssh as an option (-oProxyCommand=...).
    if value.startswith("-"):
        raise must('must not start with "-"', value)
    if "@" in value:
        raise must('must not contain a user part ("user@"); set ssh_user instead', value)
    if _is_ip_literal(value) or _is_hostname(value):
        return value
    raise must(expectation, value)


def cluster_address(value: Any) -> str:
    """This host's address on the interconnect a multi-node model talks over.

    It becomes the node's VLLM_HOST_IP and, on the head, every node's --master-addr, so it
    must name exactly one host: a hostname or an IP literal, not an unspecified (0.0.0.0,
    ::) or multicast address. Loopback is allowed (simulated hosts share 127.0.0.1).
    """
    expectation = "must be an IP address or a hostname (RFC 1123) on the interconnect"
    if not isinstance(value, str) or not value:
        raise must(expectation, value)
    if any(char.isspace() for char in value):
        raise must("must not contain whitespace", value)
    if value.startswith("-"):
        raise must('must not start with "-"', value)
    # An IPv6 zone ("fe80::1%eth0") is this host's own view of a link, not an address
    # the other nodes can dial.
    if _is_ip_literal(value) and "%" not in value:
        address = ipaddress.ip_address(value)
        if address.is_unspecified or address.is_multicast:
            raise must("must be one host's address (not unspecified or multicast)", value)
        return value
    if _is_hostname(value):
        return value
    raise must(expectation, value)


# Linux accepts 1-15 bytes without "/", ":" or whitespace, other than "." and ".."
# (net/core/dev.c, dev_valid_name; IFNAMSIZ is 16 with the NUL). Narrower here: the name
# goes into NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME and UCX_NET_DEVICES, where "," separates
# a list and a leading "^" or "=" changes its meaning (NCCL's environment variable docs).
INTERFACE_NAME_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}")


def network_interface(value: Any) -> str:
    """A Linux network interface name, e.g. enp1s0f1np1 (a Spark's QSFP port)."""
    if isinstance(value, str) and INTERFACE_NAME_RE.fullmatch(value) and value not in (".", ".."):
        return value
    raise must(
        "must be a Linux network interface name: 1-15 of A-Z a-z 0-9 _ . - (not starting "
        'with "-"), e.g. enp1s0f1np1',
        value,
    )


# --- Paths and URLs ------------------------------------------------------------------


def existing_file(base_dir: Path) -> Validator[str]:
    """A file path: `~` expanded, relative paths taken from the cluster file's directory.

    Relative to the file, not the working directory, so the same file works whether
    Arbiter is started from a unit file, a shell or a test.
    """

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise must("must be a file path", value)
        resolved = Path(os.path.abspath(base_dir / os.path.expanduser(value)))
        if len(str(resolved)) > MAX_PATH_CHARS:
            raise must(f"must be at most {MAX_PATH_CHARS} characters", value)
        if not resolved.exists():
            raise Invalid(f"file not found: {show(str(resolved))}")
        if not resolved.is_file():
            raise Invalid(f"not a file: {show(str(resolved))}")
        return str(resolved)

    return check


def http_path(value: Any) -> str:
    """An absolute URL path, appended to a service's base URL."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise must('must be a path starting with "/"', value)
    # "//host/x" would be taken as a network path and send the request elsewhere.
    if value.startswith("//"):
        raise must('must start with a single "/"', value)
    if any(char.isspace() or ord(char) < 32 for char in value):
        raise must("must not contain whitespace or control characters", value)
    if len(value) > MAX_ROUTE_CHARS:
        raise must(f"must be at most {MAX_ROUTE_CHARS} characters", value)
    return value


ROUTE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BODILESS_METHODS = ("GET", "DELETE")
MAX_BODY_CHARS = 4096


def route_method(value: Any) -> str:
    """The HTTP method of a service's load or unload route (upper case, as sent)."""
    if isinstance(value, str) and value in ROUTE_METHODS:
        return value
    raise must("must be one of " + ", ".join(f'"{m}"' for m in ROUTE_METHODS), value)


def json_body(value: Any) -> dict | list:
    """A JSON object or list sent with a load or unload route (YAML maps onto JSON)."""
    if not isinstance(value, (dict, list)):
        raise must("must be a mapping or a list (sent as JSON)", value)
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise must("must hold only JSON values (strings, numbers, true/false, ~)", value) from None
    if len(text) > MAX_BODY_CHARS:
        raise must(f"must be at most {MAX_BODY_CHARS} characters as JSON", value)
    return value


def _without_credentials(url: str) -> str:
    """The URL with its user:password part masked, so a secret never lands in a log."""
    parts = urlsplit(url)
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[-1]).geturl()


def base_url(value: Any) -> str:
    """An http(s) URL with a host; returned without a trailing "/" so paths join cleanly."""
    expectation = "must be an http(s) URL with a host"
    if not isinstance(value, str) or "://" not in value:
        raise must(expectation, value)
    if any(char.isspace() or ord(char) < 32 for char in value):
        raise must("must not contain whitespace or control characters", value)
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        raise must('must use "http" or "https"', value)
    # Credentials in a URL end up in logs and error pages; backends here need none.
    if "@" in parts.netloc:
        raise must("must not contain credentials", _without_credentials(value))
    if not parts.hostname or not (_is_ip_literal(parts.hostname) or _is_hostname(parts.hostname)):
        raise must(expectation, value)
    try:
        url_port = parts.port
    except ValueError:
        url_port = 0
    if url_port == 0:
        raise must("must have a port 1-65535", value)
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise must("must not have a query or fragment", value)
    if len(value) > MAX_URL_CHARS:
        raise must(f"must be at most {MAX_URL_CHARS} characters", value)
    return value.rstrip("/")
