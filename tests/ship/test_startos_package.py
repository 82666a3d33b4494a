"""The StartOS package agrees with the rest of the project.

Each test reads the package's sources (startos/) next to the file they must agree
with: pyproject.toml, the Makefile, the Dockerfile, settings.py, the inventory schema.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from arbiter.inventory.config import HostConfig, HostDefaults, ServiceConfig
from coordination import webhooks
from tests.ship.sources import (
    ROOT,
    STARTOS,
    after,
    dockerfile_stages,
    env_pairs,
    settings_read_names,
    top_level_entries,
    ts_const,
    ts_source,
    ts_string,
)

DOCKERFILE = STARTOS / "Dockerfile"
# start-sdk's s9pk.mk: the Makefile's ARCHES names -> the manifest's architectures.
S9PK_ARCH_ALIASES = {
    "x86": "x86_64",
    "x86_64": "x86_64",
    "arm": "aarch64",
    "arm64": "aarch64",
    "aarch64": "aarch64",
    "riscv": "riscv64",
    "riscv64": "riscv64",
}


def project_url() -> str:
    return ts_string(ts_const("utils.ts", "projectUrl"))


def ui_port() -> int:
    return int(ts_const("utils.ts", "uiPort"))


def dockerfile():
    """(ARG defaults, stages) of startos/Dockerfile."""
    return dockerfile_stages(DOCKERFILE)


# --- version and architectures --------------------------------------------------------
def test_it_declares_the_pyproject_version_as_upstream():
    index = ts_source("install/versions/index.ts")
    module = re.search(r"as current \} from '\./([^']+)'", index).group(1)
    version_file = ts_source(f"install/versions/{module}.ts")
    version = ts_string(top_level_entries(after(version_file, "VersionInfo.of("))["version"])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

    upstream, downstream = version.split(":")
    assert upstream == pyproject, f"package {version} is not Arbiter {pyproject}"
    assert downstream.isdigit(), f"the package revision must be a number, got {downstream!r}"
    assert module == f"v{upstream}.{downstream}", "the version file is named after its version"


def test_it_declares_exactly_the_architectures_the_makefile_builds():
    makefile = (STARTOS / "Makefile").read_text()
    arches = re.search(r"^ARCHES\s*:?=\s*(.+)$", makefile, re.MULTILINE).group(1).split()
    built = {S9PK_ARCH_ALIASES[arch] for arch in arches}
    assert "include node_modules/@start9labs/start-sdk/s9pk.mk" in makefile

    manifest = ts_source("manifest/index.ts")
    shared = [ts_string(a) for a in ts_const("manifest/index.ts", "arches")[1:-1].split(",")]
    images = top_level_entries(after(manifest, "images:"))
    assert set(images) == {"arbiter", "redis"}
    for name, image in images.items():
        arch = top_level_entries(image)["arch"]
        declared = set(shared) if arch == "[...arches]" else set(re.findall(r"'(\w+)'", arch))
        assert declared == built, f"image {name} declares {declared}, the Makefile builds {built}"


def test_it_builds_its_image_from_the_dockerfile_next_to_it():
    image = top_level_entries(after(ts_source("manifest/index.ts"), "images:"))["arbiter"]
    build = top_level_entries(after(image, "dockerBuild:"))
    # Paths are relative to the package directory (startos/).
    assert (STARTOS / ts_string(build["dockerfile"])).resolve() == DOCKERFILE
    assert (STARTOS / ts_string(build["workdir"])).resolve() == ROOT


# --- the Dockerfile -------------------------------------------------------------------
def test_it_runs_its_image_as_a_user_of_its_own():
    args, stages = dockerfile()
    final = stages[-1]
    assert len(stages) >= 2, "a multi-stage build: compilers stay out of the final image"
    assert final.base == "${PYTHON_IMAGE}" and args["PYTHON_IMAGE"] == "python:3.11-slim"

    users = final.values("USER")
    assert users, "the final stage sets a USER"
    user = users[-1]
    assert user.split(":")[0] not in ("root", "0"), f"the final USER is {user}"
    runs = " ".join(final.values("RUN"))
    created = re.search(rf"useradd .*--uid (\d+) .*\b{re.escape(user)}\b", runs)
    assert created, f"the final stage creates the user {user}"
    uid = created.group(1)
    assert uid != "0"
    # The StartOS package runs its processes as the same user and chowns the volume to it.
    assert ts_string(ts_const("utils.ts", "arbiterUser")) == user
    assert ts_const("utils.ts", "arbiterUid") == uid
    # Whatever comes after USER runs as that user: no later step may switch back.
    keywords = [keyword for keyword, _ in final.instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


def test_it_installs_the_runtime_dependencies_pinned_by_the_lock_in_its_image():
    _args, stages = dockerfile()
    run = " ".join(stages[0].values("RUN"))
    assert "--constraint requirements.lock" in run
    assert "requirements.lock" in " ".join(stages[0].values("COPY"))
    # Run the Dockerfile's own one-liner that lists the runtime requirements.
    code = re.search(r'python -c "([^"]+)"', run).group(1)
    listed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    requirements = [Requirement(line) for line in listed if line.strip()]
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [str(r) for r in requirements] == [str(Requirement(d)) for d in declared]

    lock = (ROOT / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)$", lock, re.MULTILINE))
    for requirement in requirements:
        name = re.sub(r"[-_.]+", "-", requirement.name.lower())
        assert name in pins, f"{requirement.name} is not pinned in requirements.lock"
        assert Version(pins[name]) in requirement.specifier, (
            f"the lock pins {name}=={pins[name]}, outside {requirement.specifier}"
        )


def test_it_serves_and_probes_one_port_in_its_image():
    _args, stages = dockerfile()
    final = stages[-1]
    env = {}
    for value in final.values("ENV"):
        env.update(env_pairs(value))
    port = ui_port()
    assert env["ARBITER_PORT"] == str(port)
    assert env["ARBITER_HOST"] == "0.0.0.0"  # noqa: S104 (a container listens on all)
    assert final.values("EXPOSE") == [str(port)]
    (healthcheck,) = final.values("HEALTHCHECK")
    assert "os.environ['ARBITER_PORT']" in healthcheck and "/healthz" in healthcheck
    # `serve` listens on ARBITER_HOST:ARBITER_PORT when given no --host / --port.
    serve = (ROOT / "arbiter/management/commands/serve.py").read_text()
    assert 'os.environ.get("ARBITER_PORT"' in serve and 'os.environ.get("ARBITER_HOST"' in serve
    (cmd,) = final.values("CMD")
    assert "manage.py migrate --noinput" in cmd and "exec python manage.py serve" in cmd


def test_it_admits_to_its_build_context_only_what_the_image_copies():
    ignore = [
        line
        for line in (STARTOS / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "**", "everything is excluded first"
    admitted = {line[1:] for line in ignore if line.startswith("!")}
    _args, stages = dockerfile()
    copied = set()
    for stage in stages:
        for value in stage.values("COPY"):
            if value.startswith("--from"):
                continue
            copied.update(value.split()[:-1])
    assert copied == admitted
    for path in copied:
        assert (ROOT / path).exists(), f"COPY {path}: no such file in the repository"


# --- URLs and links -------------------------------------------------------------------
PLACEHOLDERS = re.compile(
    r"example\.(com|org|net)|your[-_]?(org|name|repo|user|domain)|\bTODO\b|\bFIXME\b|"
    r"\bXXX\b|changeme|placeholder\.|<your",
    re.IGNORECASE,
)
URL = re.compile(r"https?://[^\s'\"`)<>\]]+")
# Addresses the package uses inside its own container or builds from the Configure form
# (`http://${host}:${port}`), and the few third-party pages it cites (each real: the
# SDK's npm page, the SVG namespace).
INTERNAL = ("http://127.0.0.1:", "http://localhost:", "http://${")
THIRD_PARTY = (
    "https://www.npmjs.com/package/@start9labs/start-sdk",
    "http://www.w3.org/2000/svg",
)


def package_files() -> list[Path]:
    return sorted(
        path
        for path in STARTOS.rglob("*")
        if path.is_file()
        and "node_modules" not in path.parts
        and "javascript" not in path.parts
        and path.name != "package-lock.json"
    )


def test_it_names_no_placeholders_and_only_real_urls():
    base = project_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", base)
    for path in package_files():
        text = path.read_text()
        found = PLACEHOLDERS.search(text)
        assert not found, f"{path.relative_to(ROOT)}: placeholder {found.group(0)!r}"
        for url in URL.findall(text):
            assert (
                url == base
                or url.startswith((base + "/", base + ".git", *INTERNAL))
                or url in THIRD_PARTY
            ), f"{path.relative_to(ROOT)}: {url} is neither the project nor a known page"


def test_it_names_the_project_by_one_url_everywhere():
    base = project_url()
    package = (STARTOS / "package.json").read_text()
    assert f'"url": "{base}"' in package
    manifest = ts_source("manifest/index.ts")
    assert "upstreamRepo: projectUrl" in manifest and "marketingUrl: projectUrl" in manifest
    # The deployment guide clones the same repository.
    assert f"git clone {base}.git" in (ROOT / "docs" / "DEPLOY.md").read_text()


def test_it_links_its_instructions_only_to_files_of_the_project():
    base = project_url()
    text = (STARTOS / "instructions.md").read_text()
    links = re.findall(r"\[[^\]]*\]\(([^)]+)\)", text)
    bare = [url for url in URL.findall(re.sub(r"\[[^\]]*\]\([^)]+\)", "", text))]
    assert links, "instructions.md links to the documentation"
    assert not bare, f"bare URLs: {bare}"
    for link in links:
        assert link.startswith("https://"), f"{link}: links must be absolute"
        match = re.fullmatch(rf"{re.escape(base)}/(blob|tree)/main/([^#?]+)(#.*)?", link)
        assert match, f"{link}: not a file of {base}"
        local = ROOT / match.group(2)
        assert local.exists(), f"{link}: {match.group(2)} does not exist in the repository"
        assert local.is_file() == (match.group(1) == "blob"), f"{link}: blob/ is for files"


# --- ports ----------------------------------------------------------------------------
def test_it_probes_the_port_arbiter_serves_on_in_its_health_check():
    main = ts_source("main.ts")
    web = after(main, ".addDaemon('web'", "{")
    command = after(web, "command:", "[")
    port_variable = re.search(r"'--port',\s*String\((\w+)\)", command).group(1)
    assert port_variable == "uiPort"
    assert "'serve'" in command and "'--no-huey'" in command
    assert re.search(r"'--host',\s*'0\.0\.0\.0'", command)

    ready = top_level_entries(after(web, "ready:"))
    assert ready["fn"] == "checkHealthz"
    probe = after(main, "async function checkHealthz", "{")
    probed = re.search(r"fetch\(`http://127\.0\.0\.1:\$\{(\w+)\}/healthz`", probe).group(1)
    assert probed == port_variable
    assert "response.ok" in probe, "only a 2xx answer is healthy"

    interfaces = ts_source("interfaces.ts")
    assert re.search(r"\.bindPort\(uiPort,", interfaces)
    assert ui_port() == 8000


# --- what Configure writes, and what Arbiter reads --------------------------------------
def settings_used_by_arbiter() -> set[str]:
    """Names of settings read as `settings.NAME` somewhere in Arbiter's code."""
    used: set[str] = set()
    for package in ("arbiter", "catalog", "coordination", "dashboard"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "settings.py" and "migrations" not in path.parts:
                used.update(re.findall(r"\bsettings\.([A-Z][A-Z0-9_]*)", path.read_text()))
    return used


def inventory_keys(path: str) -> set[str]:
    """The keys the inventory accepts where `path` (e.g. `hosts[].ssh_port`) points."""
    section = path.split(".")[0].removesuffix("[]")
    if "." not in path:
        return {"hosts", "services", "defaults", "simulated"}
    model = {"hosts": HostConfig, "services": ServiceConfig, "defaults": HostDefaults}[section]
    return {f.name for f in fields(model)}


def configure_fields() -> tuple[dict[str, str], dict[str, str], dict[str, str], dict[str, str]]:
    source = ts_source("actions/configure.ts")
    form = top_level_entries(after(source, "const configureSpec = InputSpec.of(", "{"))
    host = top_level_entries(after(source, "const hostSpec = InputSpec.of(", "{"))
    targets = top_level_entries(ts_const("actions/configure.ts", "configureTargets"))
    host_targets = top_level_entries(ts_const("actions/configure.ts", "hostTargets"))
    return form, host, targets, host_targets


def test_it_lands_every_configure_field_in_a_setting_arbiter_reads():
    form, host, targets, host_targets = configure_fields()
    assert set(form) == set(targets), "every form field has a target, and only those"
    assert set(host) == set(host_targets)
    assert set(form) >= {"hosts", "vllmPort", "containerName", "hiddenServices"}
    assert set(form) >= {"webhookUrl", "webhookSecret"}
    assert set(host) >= {"name", "address", "sshUser", "sshPort"}

    read_by_settings = settings_read_names()
    used = settings_used_by_arbiter()
    main = ts_source("main.ts")
    arbiter_env = top_level_entries(after(main, "const arbiterEnv ="))
    prepare_env = top_level_entries(after(main, "const prepareEnv ="))
    prepare = (STARTOS / "assets" / "prepare.py").read_text()
    endpoint_parameters = inspect.signature(webhooks.create_endpoint).parameters

    every_target = {**targets, **{f"hosts.{key}": v for key, v in host_targets.items()}}
    for name, target_source in every_target.items():
        target = top_level_entries(target_source)
        ((kind, value),) = target.items()
        value = ts_string(value)
        if kind == "env":
            assert value in read_by_settings, f"{name}: settings.py does not read {value}"
            assert value in used, f"{name}: no code of Arbiter uses settings.{value}"
            assert arbiter_env.get(value) == f"configure.{name}", (
                f"{name}: main.ts does not pass it to Arbiter as {value}"
            )
        elif kind == "inventory":
            key = value.split(".")[-1].removesuffix("[]")
            assert key in inventory_keys(value), f"{name}: the inventory has no key {value}"
        elif kind == "webhook":
            assert value in endpoint_parameters, f"{name}: create_endpoint takes no {value}"
            variable = f"STARTOS_WEBHOOK_{value.upper()}"
            assert prepare_env.get(variable, "").startswith(f"configure.{name}")
            assert f'os.environ.get("{variable}"' in prepare
        else:
            raise AssertionError(f"{name}: unknown target {kind}")


def test_it_sets_only_variables_that_are_settings():
    main = ts_source("main.ts")
    arbiter_env = top_level_entries(after(main, "const arbiterEnv ="))
    read = settings_read_names()
    for name in arbiter_env:
        assert name in read, f"main.ts sets {name}, which arbiter/settings.py never reads"
    # The inventory Arbiter loads is the file the Configure action writes.
    data_dir = ts_string(ts_const("utils.ts", "dataDir"))
    paths = top_level_entries(ts_const("utils.ts", "paths"))
    assert arbiter_env["ARBITER_DATA_DIR"] == "dataDir"
    assert arbiter_env["ARBITER_CONFIG"] == "`${dataDir}/${paths.cluster}`"
    assert "subpath: paths.cluster" in ts_source("fileModels/cluster.yaml.ts")
    assert "mountpoint: dataDir" in main and data_dir == "/data"
    assert ts_string(paths["cluster"]) == "cluster.yaml"
    # Two processes (web, huey) share Redis: the multi-process check stays quiet.
    assert arbiter_env["ARBITER_PROCESS_COUNT"] == "'2'"
    assert arbiter_env["REDIS_URL"] == "`redis://127.0.0.1:${redisPort}/0`"


def test_it_runs_the_documented_commands_in_its_processes():
    main = ts_source("main.ts")
    huey = after(main, ".addDaemon('huey'", "{")
    assert "'manage.py', 'run_huey'" in huey
    migrate = after(main, ".addOneshot('migrate'", "{")
    assert "'manage.py', 'migrate', '--noinput'" in migrate
    web = after(main, ".addDaemon('web'", "{")
    assert re.search(r"requires: \[('prepare'|'redis'), ('prepare'|'redis')\]", web)
    assert Path(ts_string(ts_const("utils.ts", "python"))) == Path("/opt/venv/bin/python")
    _args, stages = dockerfile()
    assert any("/opt/venv" in value for value in stages[-1].values("COPY"))
