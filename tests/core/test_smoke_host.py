"""`manage.py smoke_host`: the day-one run against a real `manage.py serve` and its
simulated cluster (real SSH servers, real containers, the real broker)."""

import json
import subprocess
import sys

import httpx

from tests.live_arbiter import MANAGE, LiveArbiter, live_arbiter  # noqa: F401 (fixture)


def smoke(live: LiveArbiter, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, MANAGE, "smoke_host", *args],
        env={**live.env, "ARBITER_URL": live.url},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_it_checks_swaps_asks_and_swaps_back(live_arbiter):  # noqa: F811
    first = smoke(live_arbiter, "sim-b", "--model", "smollm2-instruct")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "✓ check_host" in first.stdout
    assert "✓ swap in smollm2-instruct" in first.stdout
    assert "✓ request through the broker" in first.stdout
    assert "nothing to swap back to" in first.stdout

    second = smoke(live_arbiter, "sim-b", "--model", "qwen3-600m")
    assert second.returncode == 0, second.stdout + second.stderr
    summary = second.stdout.split("\n\n")[-1]
    assert "✓ swap in qwen3-600m" in summary
    assert "✓ request through the broker" in summary
    assert "/v1/chat/completions: answered" in summary
    assert "✓ swap back to smollm2-instruct" in summary


def test_it_exits_1_naming_the_step_that_failed(live_arbiter):  # noqa: F811
    control = json.loads((live_arbiter.data_dir / "sim" / "control.json").read_text())["url"]
    armed = httpx.post(f"{control}/hosts/sim-a/faults", json={"fail_start": True}, timeout=10)
    assert armed.status_code == 200
    result = smoke(live_arbiter, "sim-a", "--model", "qwen3-600m")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = result.stdout.split("\n\n")[-1]
    assert "✓ check_host" in summary
    assert "✗ swap in qwen3-600m" in summary
    assert "request through the broker" not in summary


def test_it_refuses_an_unknown_model(live_arbiter):  # noqa: F811
    result = smoke(live_arbiter, "sim-a", "--model", "no-such-model")
    assert result.returncode != 0
    assert "no catalog model with key 'no-such-model'" in result.stderr


def test_it_revokes_its_temporary_key(live_arbiter):  # noqa: F811
    # The served instance has its own database; read it through its own manage.py.
    smoke(live_arbiter, "sim-b", "--model", "qwen3-600m", "--no-swap-back")
    listed = subprocess.run(
        [
            sys.executable,
            MANAGE,
            "shell",
            "-c",
            "from arbiter.models import ApiKey; "
            "print([(k.name.split()[0], k.revoked_at is not None) for k in ApiKey.objects.all()])",
        ],
        env=live_arbiter.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "('smoke_host', False)" not in listed.stdout, listed.stdout
    assert "('smoke_host', True)" in listed.stdout, listed.stdout
