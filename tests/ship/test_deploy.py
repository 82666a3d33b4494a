"""The documented production setup: its environment passes `check --deploy`, and the
systemd user units run the processes docs/DEPLOY.md describes."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys

import pytest

from tests.ship.sources import DEPLOY, ROOT, UNITS, env_file, settings_read_names, unit_file

ENV_EXAMPLE = DEPLOY / "arbiter.env.example"
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"
SERVICES = ("arbiter-migrate", "arbiter-web", "arbiter-web@", "arbiter-huey")


def units() -> dict[str, dict[str, dict[str, list[str]]]]:
    return {path.name: unit_file(path) for path in sorted(UNITS.iterdir())}


def test_it_passes_check_deploy_with_the_documented_environment(tmp_path):
    documented = env_file(ENV_EXAMPLE)
    # Files the guide has the operator create; the test creates them in tmp instead.
    secret_key = tmp_path / "secret_key"
    secret_key.write_text(secrets.token_urlsafe(50) + "\n")
    moved = {
        "ARBITER_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_SECRET_KEY_FILE": str(secret_key),
        "ARBITER_CONFIG": str(ROOT / "docs" / "cluster.example.yaml"),
    }
    assert set(moved) <= set(documented)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **documented, **moved}

    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout
    # The settings that make it clean come from that environment, not from defaults.
    assert documented["ARBITER_HTTPS"] == "1"
    assert documented["DATABASE_URL"].startswith("postgres")
    assert documented["REDIS_URL"].startswith("redis://")
    assert "DJANGO_SECRET_KEY" not in documented, "the key is kept in a file, not the env file"


def test_it_documents_an_environment_that_sets_only_settings_arbiter_reads():
    read = settings_read_names()
    for name in env_file(ENV_EXAMPLE, include_commented=True):
        base = name.removesuffix("_FILE")
        assert name in read or base in read, f"{name}: arbiter/settings.py does not read it"


def test_it_uses_the_example_environment_and_units_in_the_guide():
    guide = DEPLOY_DOC.read_text()
    assert "deploy/arbiter.env.example" in guide
    assert "check --deploy --fail-level WARNING" in guide
    assert "loginctl enable-linger arbiter" in guide
    assert "systemctl --user enable --now arbiter.target" in guide
    for name in units():
        assert name.removesuffix(".service").removesuffix(".target") in guide
    for link in re.findall(r"\]\((\.\./[^)#]+)\)", guide):
        assert (DEPLOY_DOC.parent / link).resolve().exists(), f"DEPLOY.md links to {link}"
    # Every variable the environment file sets is explained in the guide's table.
    for name in env_file(ENV_EXAMPLE):
        assert f"`{name}`" in guide, f"DEPLOY.md does not explain {name}"


def test_it_provides_user_units_for_every_process():
    found = units()
    assert set(found) == {f"{name}.service" for name in SERVICES} | {"arbiter.target"}

    target = found["arbiter.target"]
    assert target["Install"]["WantedBy"] == ["default.target"]
    wanted = " ".join(target["Unit"]["Wants"]).split()
    environment_files = set()
    for name, unit in found.items():
        if name == "arbiter.target":
            continue
        service = unit["Service"]
        (exec_start,) = service["ExecStart"]
        program = exec_start.split()[0]
        assert program.startswith("%h/arbiter/.venv/bin/"), f"{name}: {program}"
        assert (ROOT / ".venv" / "bin" / program.rsplit("/", 1)[1]).exists()
        assert service["WorkingDirectory"] == ["%h/arbiter"]
        environment_files.update(service["EnvironmentFile"])
        assert unit["Unit"]["PartOf"] == ["arbiter.target"]
        assert unit["Install"]["WantedBy"] == ["arbiter.target"]
        if name != "arbiter-migrate.service":
            assert "arbiter-migrate.service" in unit["Unit"]["After"]
            assert service["Restart"] == ["on-failure"]
    assert environment_files == {"%h/.config/arbiter/arbiter.env"}

    commands = {
        name: unit["Service"]["ExecStart"][0] for name, unit in found.items() if "Service" in unit
    }
    assert commands["arbiter-migrate.service"].endswith("manage.py migrate --noinput")
    assert found["arbiter-migrate.service"]["Service"]["Type"] == ["oneshot"]
    assert "manage.py run_huey" in commands["arbiter-huey.service"]
    # Every web worker is a serve process (one of them leads the engine, the others stand
    # by to take over), behind the proxy, without its own huey worker.
    web = [name for name, command in commands.items() if "manage.py serve" in command]
    assert web == ["arbiter-web.service", "arbiter-web@.service"]
    for name in web:
        assert "--no-huey" in commands[name] and "--proxy-headers" in commands[name]
    assert commands["arbiter-web@.service"].endswith("--host 127.0.0.1 --port %i")

    # ARBITER_PROCESS_COUNT counts the long-running processes the target starts.
    processes = [unit for unit in wanted if unit != "arbiter-migrate.service"]
    assert int(env_file(ENV_EXAMPLE)["ARBITER_PROCESS_COUNT"]) == len(processes)
    assert set(wanted) >= {"arbiter-migrate.service", "arbiter-web.service", "arbiter-huey.service"}


def test_it_ships_units_that_systemd_accepts(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units were only parsed")
    # %h is the user's home: give systemd one where ~/arbiter is this checkout.
    (tmp_path / "arbiter").symlink_to(ROOT)
    (tmp_path / ".config" / "arbiter").mkdir(parents=True)
    (tmp_path / ".config" / "arbiter" / "arbiter.env").write_text("")
    instances = " ".join(unit_file(UNITS / "arbiter.target")["Unit"]["Wants"]).split()
    paths = [str(UNITS / "arbiter.target")] + [str(UNITS / unit) for unit in instances]

    done = subprocess.run(
        [analyze, "verify", *paths],
        env={**os.environ, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "arbiter" not in done.stderr, done.stderr  # no warning about our units
