"""Read the cluster YAML file into an `Inventory`, reporting every problem at once."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from . import fields
from .config import (
    CAPABILITIES,
    DEFAULT_HEALTH_PATH,
    DEFAULT_MAX_SSH_SESSIONS,
    SAMPLING_MODES,
    SERVICE_KINDS,
    HostConfig,
    HostDefaults,
    Inventory,
    ServiceConfig,
    default_request_paths,
)
from .problems import Invalid, Problems, child, must, show, unknown_key_reason

TOP_LEVEL_KEYS = ("simulated", "defaults", "hosts", "services")
DEFAULTS_KEYS = ("ssh_user", "ssh_port", "ssh_key", "known_hosts", "vram_margin_mib")
HOST_KEYS = (
    "name",
    "address",
    "ssh_user",
    "ssh_port",
    "ssh_key",
    "known_hosts",
    "sampling",
    "vram_budget_mib",
    "vram_margin_mib",
    "hf_cache_dir",
    "max_ssh_sessions",
    "cluster_address",
    "cluster_interface",
)
SERVICE_KEYS = (
    "name",
    "host",
    "kind",
    "base_url",
    "health_path",
    "capabilities",
    "request_paths",
    "vram_resident_mib",
    "can_coexist_with",
    "load_route",
    "unload_route",
    "load_method",
    "load_body",
    "unload_method",
    "unload_body",
    "adopt_containers",
    "disabled",
)

_REQUIRED = object()


class MappingReader:
    """Reads the keys of one mapping (top level, defaults, a host, a service).

    Unknown keys are reported on construction; `ok` tells whether this mapping had no
    problem, so a config object is only built from a fully valid entry.
    """

    def __init__(
        self,
        problems: Problems,
        key_path: str,
        entry: dict,
        allowed: Collection[str],
        misplaced: Mapping[str, str] | None = None,
    ) -> None:
        self.problems = problems
        self.key_path = key_path
        self.entry = entry
        self._problems_before = len(problems)
        for key in entry:
            if misplaced and key in misplaced:
                self.problem(key, misplaced[key])
            elif key not in allowed:
                self.problem(key, unknown_key_reason(key, allowed))

    @property
    def ok(self) -> bool:
        return len(self.problems) == self._problems_before

    def problem(self, key: Any, reason: str) -> None:
        self.problems.add(child(self.key_path, key), reason)

    def get(self, key: str, validator: fields.Validator, default: Any = _REQUIRED) -> Any:
        """The validated value of `key`, `default` when absent, None after a problem."""
        if key not in self.entry:
            if default is _REQUIRED:
                self.problem(key, "is required")
                return None
            return default
        try:
            return validator(self.entry[key])
        except Invalid as error:
            self.problems.add_invalid(child(self.key_path, key), error)
            return None


# --- The file ------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records repeated keys; PyYAML would silently keep the last one."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[int, int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            # Merge keys (`<<: *base`) may legitimately repeat and be overridden.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            identity = (key_node.tag, key_node.value)
            if identity in seen:
                mark = key_node.start_mark
                self.duplicate_keys.append((mark.line + 1, mark.column + 1, key_node.value))
            seen.add(identity)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, problems: Problems) -> Any:
    """The parsed document, or None after recording why it could not be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.add("", "file not found")
        return None
    except UnicodeDecodeError:
        problems.add("", "cannot read file: not UTF-8 text")
        return None
    except OSError as error:
        problems.add("", f"cannot read file: {error.strerror or error}")
        return None
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problems.add("", f"YAML syntax error{where}: {error.problem or error.context}")
        return None
    except yaml.YAMLError as error:
        problems.add("", "YAML error: " + " ".join(str(error).split()))
        return None
    finally:
        loader.dispose()
    for line, column, key in loader.duplicate_keys:
        problems.add(f"line {line}, column {column}", f"duplicate key {show(key)}")
    return data


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "an empty document"
    return show(value)


def load_inventory(path: str | Path) -> Inventory:
    """Load and validate the cluster file; raise `InventoryError` listing every problem."""
    problems = Problems(str(path))
    data = _read_yaml(Path(path), problems)
    problems.raise_if_any()
    if not isinstance(data, dict):
        problems.add("", f"top level must be a mapping, got {_kind_of(data)}")
        problems.raise_if_any()
    base_dir = Path(os.path.abspath(path)).parent
    top = MappingReader(problems, "", data, TOP_LEVEL_KEYS)
    simulated = top.get("simulated", fields.boolean, False)
    defaults = _read_defaults(problems, data.get("defaults"), base_dir)
    hosts = _read_hosts(problems, data, defaults, base_dir)
    services = _read_services(problems, data.get("services"), data.get("hosts"))
    problems.raise_if_any()
    return Inventory(hosts=hosts, services=services, simulated=bool(simulated))


# --- Hosts ---------------------------------------------------------------------------


def _read_defaults(problems: Problems, raw: Any, base_dir: Path) -> HostDefaults:
    """The `defaults:` mapping; an invalid default falls back to the built-in one
    (already reported once here, not again for every host that inherits it)."""
    if raw is None:
        return HostDefaults()
    if not isinstance(raw, dict):
        problems.add_invalid("defaults", must("must be a mapping", raw))
        return HostDefaults()
    # A typo suggestion would mislead here: `sampling` is a real key, just not a default.
    per_host = {key: "not allowed in defaults, set it per host" for key in HOST_KEYS}
    per_host = {key: reason for key, reason in per_host.items() if key not in DEFAULTS_KEYS}
    reader = MappingReader(problems, "defaults", raw, DEFAULTS_KEYS, misplaced=per_host)
    builtin = HostDefaults()
    path_check = fields.nullable(fields.existing_file(base_dir))
    values = {
        "ssh_user": reader.get("ssh_user", fields.posix_user, builtin.ssh_user),
        "ssh_port": reader.get("ssh_port", fields.port, builtin.ssh_port),
        "ssh_key": reader.get("ssh_key", path_check, None),
        "known_hosts": reader.get("known_hosts", path_check, None),
        "vram_margin_mib": reader.get(
            "vram_margin_mib", fields.non_negative_int, builtin.vram_margin_mib
        ),
    }
    clean = {key: value for key, value in values.items() if value is not None}
    return HostDefaults(**clean)


def _read_hosts(
    problems: Problems, data: dict, defaults: HostDefaults, base_dir: Path
) -> list[HostConfig]:
    if "hosts" not in data:
        problems.add("hosts", "is required")
        return []
    raw_hosts = data["hosts"]
    if not isinstance(raw_hosts, list) or not raw_hosts:
        problems.add_invalid("hosts", must("must be a non-empty list", raw_hosts))
        return []
    hosts: list[HostConfig] = []
    first_with_name: dict[str, int] = {}
    nvml_host: int | None = None
    for index, entry in enumerate(raw_hosts):
        key_path = f"hosts[{index}]"
        if not isinstance(entry, dict):
            problems.add_invalid(key_path, must("must be a mapping", entry))
            continue
        reader = MappingReader(problems, key_path, entry, HOST_KEYS)
        host = _read_host(reader, defaults, base_dir)
        name = entry.get("name")
        if isinstance(name, str) and name in first_with_name:
            reader.problem(
                "name", f"duplicate host name {show(name)} (also hosts[{first_with_name[name]}])"
            )
        elif isinstance(name, str):
            first_with_name[name] = index
        if entry.get("sampling") == "nvml":
            # NVML only sees the local GPUs, so only the machine Arbiter runs on can use it.
            if nvml_host is not None:
                reader.problem(
                    "sampling", f'at most one host may use "nvml", hosts[{nvml_host}] already does'
                )
            else:
                nvml_host = index
        if host is not None and reader.ok:
            hosts.append(host)
    return hosts


def _read_host(reader: MappingReader, defaults: HostDefaults, base_dir: Path) -> HostConfig | None:
    path_check = fields.nullable(fields.existing_file(base_dir))
    values = {
        "name": reader.get("name", fields.slug),
        "address": reader.get("address", fields.host_address),
        "ssh_user": reader.get("ssh_user", fields.posix_user, defaults.ssh_user),
        "ssh_port": reader.get("ssh_port", fields.port, defaults.ssh_port),
        "ssh_key": reader.get("ssh_key", path_check, defaults.ssh_key),
        "known_hosts": reader.get("known_hosts", path_check, defaults.known_hosts),
        "sampling": reader.get("sampling", fields.one_of(SAMPLING_MODES), "ssh"),
        "vram_budget_mib": reader.get(
            "vram_budget_mib", fields.nullable(fields.positive_int), None
        ),
        "vram_margin_mib": reader.get(
            "vram_margin_mib", fields.non_negative_int, defaults.vram_margin_mib
        ),
        "hf_cache_dir": reader.get("hf_cache_dir", fields.nullable(fields.host_dir), None),
        "max_ssh_sessions": reader.get(
            "max_ssh_sessions", fields.ssh_sessions, DEFAULT_MAX_SSH_SESSIONS
        ),
        "cluster_address": reader.get(
            "cluster_address", fields.nullable(fields.cluster_address), None
        ),
        "cluster_interface": reader.get(
            "cluster_interface", fields.nullable(fields.network_interface), None
        ),
    }
    budget, margin = values["vram_budget_mib"], values["vram_margin_mib"]
    if budget is not None and margin is not None and margin >= budget:
        inherited = "" if "vram_margin_mib" in reader.entry else " (from defaults)"
        reader.problem(
            "vram_margin_mib",
            f"must be less than vram_budget_mib ({budget}), got {margin}{inherited}",
        )
    # An invalid cluster_address is reported as such; only a missing one is this problem.
    if values["cluster_interface"] and reader.entry.get("cluster_address") is None:
        reader.problem(
            "cluster_interface", "needs cluster_address (the host's address on that interface)"
        )
    if not reader.ok:
        return None
    return HostConfig(**values)


# --- Services ------------------------------------------------------------------------


def _names_in(raw_entries: Any) -> set[str]:
    """Every string `name` in a raw list, so a typo in one entry's name is reported once
    there and not again at every reference to it."""
    if not isinstance(raw_entries, list):
        return set()
    return {
        entry["name"]
        for entry in raw_entries
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    }


def _read_services(problems: Problems, raw_services: Any, raw_hosts: Any) -> list[ServiceConfig]:
    if raw_services is None:
        return []
    if not isinstance(raw_services, list):
        problems.add_invalid("services", must("must be a list", raw_services))
        return []
    host_names = _names_in(raw_hosts)
    service_names = _names_in(raw_services)
    services: list[ServiceConfig] = []
    first_with_name: dict[str, int] = {}
    adopted_by: dict[tuple[str, str], int] = {}  # (host, container) -> services index
    for index, entry in enumerate(raw_services):
        key_path = f"services[{index}]"
        if not isinstance(entry, dict):
            problems.add_invalid(key_path, must("must be a mapping", entry))
            continue
        reader = MappingReader(problems, key_path, entry, SERVICE_KEYS)
        service = _read_service(reader, host_names, service_names)
        name = entry.get("name")
        if isinstance(name, str) and name in first_with_name:
            reader.problem(
                "name",
                f"duplicate service name {show(name)} (also services[{first_with_name[name]}])",
            )
        elif isinstance(name, str):
            first_with_name[name] = index
        _check_adoptions(reader, entry, adopted_by, index)
        if service is not None and reader.ok:
            services.append(service)
    return services


def _check_adoptions(
    reader: MappingReader, entry: dict, adopted_by: dict[tuple[str, str], int], index: int
) -> None:
    """A container lives on one host, and only one service there may take it over."""
    names, host = entry.get("adopt_containers"), entry.get("host")
    if not isinstance(names, list) or not isinstance(host, str):
        return
    for position, name in enumerate(names):
        if not isinstance(name, str):
            continue
        first = adopted_by.setdefault((host, name), index)
        if first != index:
            reader.problem(
                f"adopt_containers[{position}]",
                f"container {show(name)} on host {show(host)} is already adopted by "
                f"services[{first}]",
            )


def _read_service(
    reader: MappingReader, host_names: set[str], service_names: set[str]
) -> ServiceConfig | None:
    name = reader.get("name", fields.slug)
    host = reader.get("host", fields.slug)
    if host is not None and host not in host_names:
        reader.problem("host", f"no host named {show(host)} in this file")
    kind = reader.get("kind", fields.one_of(SERVICE_KINDS), "vllm")
    base_url = reader.get("base_url", fields.base_url)
    health_path = reader.get(
        "health_path", fields.http_path, DEFAULT_HEALTH_PATH.get(kind, "/health")
    )
    capabilities = reader.get(
        "capabilities",
        fields.list_of(
            fields.one_of(CAPABILITIES), expectation="must be a non-empty list", non_empty=True
        ),
    )
    request_paths = reader.get(
        "request_paths",
        fields.list_of(fields.http_path, expectation="must be a list of paths"),
        None,
    )
    if request_paths is None and capabilities is not None:
        request_paths = default_request_paths(capabilities)
    vram_resident_mib = reader.get("vram_resident_mib", fields.non_negative_int, 0)
    can_coexist_with = reader.get(
        "can_coexist_with",
        fields.list_of(fields.slug, expectation="must be a list of service names"),
        (),
    )
    # A valid list maps 1:1 onto the raw one (no bad items, no duplicates), so indexes hold.
    for index, other in enumerate(can_coexist_with or ()):
        if other == name:
            reader.problem(f"can_coexist_with[{index}]", "must not name the service itself")
        elif other not in service_names:
            reader.problem(
                f"can_coexist_with[{index}]", f"no service named {show(other)} in this file"
            )
    load_route = reader.get("load_route", fields.nullable(fields.http_path), None)
    unload_route = reader.get("unload_route", fields.nullable(fields.http_path), None)
    calls = {}
    for prefix, route in (("load", load_route), ("unload", unload_route)):
        method = reader.get(f"{prefix}_method", fields.route_method, "POST")
        body = reader.get(f"{prefix}_body", fields.nullable(fields.json_body), None)
        if body is not None and route is None:
            reader.problem(f"{prefix}_body", f"needs {prefix}_route (the body is sent there)")
        elif body is not None and method in fields.BODILESS_METHODS:
            reader.problem(f"{prefix}_body", f"a {method} request carries no body")
        calls[prefix] = (method, body)
    adopt_containers = reader.get(
        "adopt_containers",
        fields.list_of(fields.container_name, expectation="must be a list of container names"),
        (),
    )
    disabled = reader.get("disabled", fields.boolean, False)
    if not reader.ok:
        return None
    return ServiceConfig(
        name=name,
        host=host,
        kind=kind,
        base_url=base_url,
        health_path=health_path,
        capabilities=capabilities,
        request_paths=request_paths,
        vram_resident_mib=vram_resident_mib,
        can_coexist_with=can_coexist_with,
        load_route=load_route,
        unload_route=unload_route,
        load_method=calls["load"][0],
        load_body=calls["load"][1],
        unload_method=calls["unload"][0],
        unload_body=calls["unload"][1],
        adopt_containers=adopt_containers,
        disabled=disabled,
    )
