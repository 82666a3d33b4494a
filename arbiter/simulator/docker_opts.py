"""`docker run` options: the flag table and the validators, with Docker's own messages.

Messages follow docker/cli and moby so that whatever Arbiter does with a rejected
command (show it, retry, fail the swap) is what it would do against a real host.
"""

from __future__ import annotations

import csv
import posixpath
import re
from dataclasses import dataclass

from arbiter.simulator.pflags import Flag, FlagError

RUN_FLAGS = [
    Flag("detach", "d", "bool"),
    Flag("name"),
    Flag("gpus"),
    Flag("publish", "p", "list"),
    Flag("publish-all", "P", "bool"),
    Flag("volume", "v", "list"),
    Flag("mount", None, "list"),
    Flag("env", "e", "list"),
    Flag("env-file", None, "list"),
    Flag("ipc"),
    Flag("network"),
    Flag("net"),
    Flag("shm-size"),
    Flag("restart"),
    Flag("rm", None, "bool"),
    Flag("runtime"),
    Flag("init", None, "bool"),
    Flag("label", "l", "list"),
    Flag("entrypoint"),
    Flag("interactive", "i", "bool"),
    Flag("tty", "t", "bool"),
    Flag("user", "u"),
    Flag("workdir", "w"),
    Flag("hostname", "h"),
    Flag("pull"),
    Flag("quiet", "q", "bool"),
    Flag("platform"),
    Flag("cpus"),
    Flag("memory", "m"),
    Flag("ulimit", None, "list"),
    Flag("cap-add", None, "list"),
    Flag("cap-drop", None, "list"),
    Flag("device", None, "list"),
    Flag("privileged", None, "bool"),
    Flag("security-opt", None, "list"),
    Flag("add-host", None, "list"),
    Flag("log-driver"),
    Flag("log-opt", None, "list"),
    Flag("stop-signal"),
    Flag("stop-timeout", None, "int"),
    Flag("health-cmd"),
    Flag("health-interval", None, "duration"),
    Flag("health-retries", None, "int"),
    Flag("health-timeout", None, "duration"),
    Flag("health-start-period", None, "duration"),
    Flag("no-healthcheck", None, "bool"),
    Flag("sig-proxy", None, "bool"),
    Flag("help", None, "bool"),
]
RUN_USAGE = "Usage:  docker run [OPTIONS] IMAGE [COMMAND] [ARG...]"
NAME_PATTERN = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
VOLUME_MODES = {
    "ro",
    "rw",
    "z",
    "Z",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "nocopy",
    "consistent",
    "cached",
    "delegated",
}
RUNTIMES = {"runc", "nvidia", "io.containerd.runc.v2"}
NETWORKS = {"bridge", "host", "none", "default"}
IPC_MODES = {"", "host", "private", "shareable", "none"}
RESTART_POLICIES = {"no", "always", "unless-stopped", "on-failure"}

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = f"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?$", re.I)


class DockerError(Exception):
    """A refusal: `message` as docker words it, and the exit status docker uses."""

    def __init__(self, message: str, status: int = 125) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageRef:
    """A validated image reference, in the forms the CLI prints."""

    repository: str  # familiar: "vllm/vllm-openai", "ubuntu", "ghcr.io/x/y"
    tag: str | None
    digest: str | None

    @property
    def familiar(self) -> str:
        """`ubuntu:latest`, `vllm/vllm-openai:v0.11.0`, `x@sha256:...`."""
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag or 'latest'}"

    @property
    def remote_path(self) -> str:
        """What `Pulling from` shows: official images live under library/."""
        first, _, rest = self.repository.partition("/")
        if "." in first or ":" in first or first == "localhost":
            return rest
        return self.repository if "/" in self.repository else f"library/{self.repository}"

    @property
    def canonical(self) -> str:
        first = self.repository.split("/")[0]
        has_domain = "/" in self.repository and (
            "." in first or ":" in first or first == "localhost"
        )
        name = self.repository if has_domain else f"docker.io/{self.remote_path}"
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag or 'latest'}"


def parse_reference(text: str) -> ImageRef:
    if re.fullmatch(r"[a-f0-9]{64}", text):  # a bare image id is a valid reference
        return ImageRef(text, None, None)
    match = _REFERENCE.match(text)
    if match is None:
        lowered = _REFERENCE.match(text.lower())
        if lowered is not None:  # valid but for upper case in the repository path
            repo = ImageRef(text[: lowered.end("name")], None, None).remote_path
            raise DockerError(
                f"invalid reference format: repository name ({repo}) must be lowercase"
            )
        raise DockerError("invalid reference format")
    if len(match.group("name")) > 255:
        raise DockerError(
            "invalid reference format: repository name must not be more than 255 characters"
        )
    return ImageRef(match.group("name"), match.group("tag"), match.group("digest"))


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise DockerError(
            f"Error response from daemon: Invalid container name ({name}), "
            "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )


def parse_volume(spec: str) -> str:
    """`-v SRC:DST[:MODE]` checked like the daemon does on Linux; returns the spec."""
    parts = spec.split(":")
    invalid = DockerError(f"Error response from daemon: invalid volume specification: '{spec}'")
    if len(parts) > 3 or not all(parts[:2]):
        raise invalid
    if len(parts) == 1:
        if not parts[0].startswith("/"):
            raise DockerError(
                f"Error response from daemon: invalid volume specification: '{spec}': "
                f"invalid mount config for type \"volume\": invalid mount path: '{spec}' "
                "mount path must be absolute"
            )
        return spec
    source, target = parts[0], parts[1]
    if not source.startswith("/") and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", source):
        raise DockerError(
            f'Error response from daemon: create {source}: "{source}" includes invalid characters '
            'for a local volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you '
            "intended to pass a host directory, use absolute path"
        )
    if not target.startswith("/"):
        kind = "bind" if source.startswith("/") else "volume"
        raise DockerError(
            f"Error response from daemon: invalid volume specification: '{spec}': invalid mount "
            f"config for type \"{kind}\": invalid mount path: '{target}' "
            "mount path must be absolute"
        )
    if len(parts) == 3 and not all(mode in VOLUME_MODES for mode in parts[2].split(",")):
        raise DockerError(f"Error response from daemon: invalid mode: {parts[2]}")
    return spec


def parse_publish(spec: str) -> list[dict[str, object]]:
    """`-p [IP:][HOST:]CONTAINER[/PROTO]` with optional equal-length ranges."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise DockerError(f"invalid proto: {proto}")
    parts = body.rsplit(":", 2)
    container = parts[-1]
    host = parts[-2] if len(parts) > 1 else ""
    ip = parts[0] if len(parts) == 3 else ""
    container_ports = _port_range(container, "containerPort")
    host_ports = _port_range(host, "hostPort") if host else [0] * len(container_ports)
    if len(host_ports) != len(container_ports):
        if len(host_ports) < len(container_ports):
            raise DockerError(
                f"invalid ranges specified for container and host Ports: {container} and {host}"
            )
        host_ports = host_ports[: len(container_ports)]
    return [
        {"container_port": c, "host_port": h, "host_ip": ip, "proto": proto}
        for c, h in zip(container_ports, host_ports, strict=True)
    ]


def _port_range(text: str, what: str) -> list[int]:
    start, dash, end = text.partition("-")
    try:
        first, last = int(start), int(end) if dash else int(start)
    except ValueError:
        raise DockerError(f"invalid {what}: {text}") from None
    if not (0 < first <= last <= 65535) and not (what == "hostPort" and first == last == 0):
        raise DockerError(f"invalid {what}: {text}")
    return list(range(first, last + 1))


@dataclass(frozen=True)
class GpuRequest:
    """`--gpus`: count -1 means all; device ids when given."""

    count: int = 0
    devices: tuple[str, ...] = ()


def parse_gpus(value: str) -> GpuRequest:
    """docker/cli opts.GpuOpts.Set: one CSV record of `all`, N, or key=value fields."""

    def bad(why: str) -> FlagError:
        return FlagError(f'invalid argument "{value}" for "--gpus" flag: {why}')

    try:
        fields = next(csv.reader([value], strict=True))
    except (csv.Error, StopIteration) as error:
        raise bad(f"parse error on line 1: {error}") from None
    count, devices, seen = 0, (), set()
    for item in fields:
        key, eq, val = item.partition("=")
        if key in seen:
            raise bad(f"gpu request key '{key}' can be specified only once")
        seen.add(key)
        if not eq:
            seen.add("count")
            count = _gpu_count(key, bad)
        elif key == "count":
            count = _gpu_count(val, bad)
        elif key == "device":
            devices = tuple(val.split(","))
        elif key in ("driver", "capabilities", "options"):
            continue
        else:
            raise bad(f"unexpected key '{key}' in '{item}'")
    return GpuRequest(count, devices)


def _gpu_count(text: str, bad) -> int:  # noqa: ANN001 (local error factory)
    if text == "all":
        return -1
    try:
        return int(text)
    except ValueError:
        raise bad(
            f'count must be an integer: strconv.Atoi: parsing "{text}": invalid syntax'
        ) from None


def parse_size(text: str, flag: str) -> int:
    match = _SIZE.match(text.strip())
    if match is None:
        raise FlagError(f'invalid argument "{text}" for "{flag}" flag: invalid size: \'{text}\'')
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgtp".index(unit or " "))


def _valid_device_mode(mode: str) -> bool:
    return bool(mode) and len(set(mode)) == len(mode) and set(mode) <= set("rwm")


def parse_device(spec: str) -> dict[str, str]:
    """`--device HOST[:CONTAINER][:MODE]`: docker/cli's validateLinuxPath (at flag time)
    and parseLinuxDevice (cli/command/container/opts.go); the host path is checked by
    the daemon when the container starts (DockerCli.prepare_start)."""

    def bad(why: str) -> FlagError:
        return FlagError(f'invalid argument "{spec}" for "--device" flag: {why}')

    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise bad(f"bad format for path: {spec}")
    source, target, mode = parts[0], parts[0], "rwm"
    if len(parts) == 2:
        if _valid_device_mode(parts[1]):
            mode = parts[1]
        else:
            target = parts[1]
    elif len(parts) == 3:
        target, mode = parts[1], parts[2]
        if not _valid_device_mode(mode):
            raise bad(f"bad mode specified: {mode}")
    if not target.startswith("/"):
        raise bad(f"{target} is not an absolute path")
    return {
        "path_on_host": source,
        "path_in_container": posixpath.normpath(target),
        "cgroup_permissions": mode,
    }


def check_env(item: str) -> None:
    if item.startswith("=") or not item.split("=", 1)[0].strip():
        raise FlagError(
            f'invalid argument "{item}" for "-e, --env" flag: invalid environment variable: {item}'
        )


def parse_env_file(text: str, session_env: dict[str, str]) -> dict[str, str]:
    """docker's env-file format: KEY=VALUE or KEY (from the caller's environment), # comments."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not key:
            raise DockerError(f"no variable name on line '{raw}'")
        if any(c.isspace() for c in key):
            raise DockerError(f"variable '{key}' contains whitespaces")
        if eq:
            values[key] = value
        elif key in session_env:
            values[key] = session_env[key]
    return values


def check_restart(policy: str, auto_remove: bool) -> None:
    name, _, count = policy.partition(":")
    if name not in RESTART_POLICIES or (count and (name != "on-failure" or not count.isdigit())):
        raise DockerError(
            f"invalid restart policy: unknown policy '{name}'; use one of 'no', 'always', "
            "'on-failure', or 'unless-stopped'"
        )
    if auto_remove and name != "no":
        raise DockerError("Conflicting options: cannot specify both --restart and --rm")
