"""Host preconditions on the simulator: `manage.py check_host`, the API, and pre-flight."""

import io
import json

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command

from arbiter.engine import ssh
from arbiter.engine.host_checks import check_host
from arbiter.engine.swaps.preflight import preflight
from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Host
from catalog.models import CatalogModel

pytestmark = pytest.mark.django_db
TOKEN = "hf_check_token_never_sent_0123456789"
CACHE = "/home/arbiter/.cache/huggingface/hub"


@pytest.fixture
def hosts(sim_cluster, settings):
    settings.ARBITER_HF_TOKEN = ""
    settings.ARBITER_HF_CACHE_DIR = ""
    apply_inventory(load_inventory(sim_cluster.config_path))
    return sim_cluster


def run_check_host(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("check_host", *args, stdout=out)
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def checks_of(name: str, model: str | None = None) -> dict[str, dict]:
    async def run() -> dict:
        try:
            return (await check_host(name, model)).as_dict()
        finally:
            await ssh.get_pool().close()

    report = async_to_sync(run)()
    return {c["name"]: c for c in report["checks"]}


def test_it_passes_a_stock_simulated_host_on_every_check(hosts):
    status, output = run_check_host("sim-a")
    assert status == 0, output
    for name in ("ssh", "docker", "nvidia_runtime", "nvidia_smi", "hf", "hub_token"):
        assert f"✓ {name}: " in output
    assert "✓ hub_cache: /home/arbiter/.cache/huggingface/hub (~arbiter/" in output
    assert "✓ sessions: one connection holds 9 sessions at once" in output
    assert "every check passed" in output
    # The home was learned over SSH and kept.
    assert Host.objects.get(name="sim-a").home_dir == "/home/arbiter"
    # hf is not on the non-interactive PATH: the module fallback is what downloads use.
    assert "python3 -m huggingface_hub.cli.hf" in output


def test_it_fails_check_host_with_a_token_and_a_stock_sshd_and_names_acceptenv(hosts, settings):
    settings.ARBITER_HF_TOKEN = TOKEN
    status, output = run_check_host("sim-b")
    assert status == 1
    assert "✗ hub_token: sshd drops HF_TOKEN" in output
    assert "fix: add the line `AcceptEnv HF_TOKEN` to /etc/ssh/sshd_config on sim-b" in output
    assert "1 failed: hub_token" in output
    # The check sent a probe value under the name, never the token itself.
    probe = [c for c in hosts.commands("sim-b") if c.argv == ["printenv", "HF_TOKEN"]]
    assert probe and probe[-1].env_dropped == ["HF_TOKEN"]
    assert not any(TOKEN in c.raw for c in hosts.commands("sim-b"))

    hosts.accept_hf_token("sim-b")
    status, output = run_check_host("sim-b")
    assert status == 0, output
    assert "✓ hub_token: HF_TOKEN arrives through SSH" in output


def test_it_fails_a_missing_hf_with_the_install_fix(hosts):
    hosts.set_sshd("sim-a", hf_on_path=False, hub_module=False)
    hf = checks_of("sim-a")["hf"]
    assert hf["ok"] is False
    assert "No module named huggingface_hub" in hf["detail"]
    assert "pipx install huggingface_hub" in hf["fix"]
    hosts.set_sshd("sim-a", hf_on_path=True)
    assert checks_of("sim-a")["hf"] == {
        "name": "hf",
        "ok": True,
        "detail": "hf at /usr/bin/hf",
        "fix": "",
    }


def test_it_detects_a_root_owned_cache_left_by_a_container(hosts):
    host = hosts.hosts["sim-a"]
    # What vLLM in a root container leaves in the bind-mounted cache (simulated docker).
    result = hosts.run(
        _docker_run(
            hosts,
            "sim-a",
            [
                "docker",
                "run",
                "--detach",
                "--name=rooty",
                "--volume=/home/arbiter/.cache/huggingface:/root/.cache/huggingface",
                "vllm/vllm-openai:latest",
                "org/tiny-0.5B",
                "--gpu-memory-utilization=0.1",
            ],
        )
    )
    assert result.exit_status == 0, result.stderr
    folder = f"{CACHE}/models--org--tiny-0.5B"
    assert host.fs.owner(folder) == "root"
    cache = checks_of("sim-a")["hub_cache"]
    assert cache["ok"] is False
    assert "has parts not owned by arbiter, e.g. " + CACHE + "/" in cache["detail"]
    assert cache["fix"] == f"`sudo chown -R arbiter: {CACHE}`"
    # ... and the user's next download into it fails the way huggingface_hub does.
    hosts.set_sshd("sim-a", hf_on_path=True)
    download = hosts.run(
        _docker_run(hosts, "sim-a", ["hf", "download", "org/tiny-0.5B", "--cache-dir", CACHE])
    )
    assert download.exit_status == 1
    assert "PermissionError: [Errno 13] Permission denied" in download.stderr


def _docker_run(hosts, name: str, argv: list[str]):
    """A coroutine for the cluster's loop: argv over a pool of its own."""
    target = ssh.SshTarget.from_host(Host.objects.get(name=name))  # read here, not there

    async def on_cluster_loop():
        pool = ssh.SshPool()
        try:
            return await pool.run(target, argv, timeout=30, check=False)
        finally:
            await pool.close()

    return on_cluster_loop()


def test_it_fails_docker_without_the_group_and_without_nvidias_runtime(hosts):
    hosts.set_sshd("sim-gb10", docker_group=False)
    found = checks_of("sim-gb10")
    assert found["docker"]["ok"] is False
    assert (
        "permission denied while trying to connect to the Docker daemon socket"
        in (found["docker"]["detail"])
    )
    assert found["docker"]["fix"].startswith("`sudo usermod -aG docker arbiter`")
    assert found["nvidia_runtime"]["detail"] == "not checked: docker is not usable"

    hosts.set_sshd("sim-gb10", docker_group=True, nvidia_runtime=False)
    runtime = checks_of("sim-gb10")["nvidia_runtime"]
    assert runtime["ok"] is False
    assert runtime["detail"] == "no nvidia runtime (io.containerd.runc.v2, runc)"
    assert "nvidia-ctk runtime configure --runtime=docker" in runtime["fix"]


def test_it_reports_a_driver_fault_with_nvidia_smis_own_words(hosts):
    hosts.driver_fault("sim-b", "version_mismatch")
    smi = checks_of("sim-b")["nvidia_smi"]
    assert smi["ok"] is False
    assert "Failed to initialize NVML: Driver/library version mismatch" in smi["detail"]
    assert "(exit status 18)" in smi["detail"]
    assert "reboot" in smi["fix"]


def test_it_fails_too_few_sessions_for_the_budget(hosts):
    hosts.set_sshd("sim-a", max_sessions=5)
    sessions = checks_of("sim-a")["sessions"]
    assert sessions["ok"] is False
    assert "refused session 6 on one connection (open failed)" in sessions["detail"]
    assert "MaxSessions" in sessions["fix"] and "max_ssh_sessions: 4" in sessions["fix"]


def test_it_checks_free_disk_against_a_models_size(hosts):
    CatalogModel.objects.create(
        key="huge", hub_repo="acme/huge-model", served_name="huge", estimated_vram_mib=10**8
    )
    disk = checks_of("sim-a", "huge")["disk"]
    assert disk["ok"] is False
    assert "huge needs up to 95.4 TiB" in disk["detail"]
    CatalogModel.objects.create(
        key="small", hub_repo="acme/small-model", served_name="small", estimated_vram_mib=2000
    )
    assert checks_of("sim-a", "small")["disk"]["ok"] is True


def test_it_returns_every_check_in_the_api_and_404_for_an_unknown_host(hosts, key_client):
    response = key_client.get("/api/hosts/sim-a/checks")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["host"], body["ok"]) == ("sim-a", True)
    assert [c["name"] for c in body["checks"]] == [
        "ssh",
        "docker",
        "nvidia_runtime",
        "nvidia_smi",
        "hf",
        "hub_token",
        "hub_cache",
        "disk",
        "sessions",
    ]
    assert set(body["checks"][0]) == {"name", "ok", "detail", "fix"}
    missing = key_client.get("/api/hosts/nope/checks")
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "host"
    assert "'nope'" in missing.json()["error"]["message"]


def test_it_names_an_unknown_host_in_check_host(hosts):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no host named 'nope'"):
        call_command("check_host", "nope", stdout=io.StringIO())


def _preflight(key: str, host: str) -> dict[str, dict]:
    async def run():
        try:
            return (await preflight(key, host)).as_dicts()
        finally:
            await ssh.get_pool().close()

    return {c["name"]: c for c in async_to_sync(run)()}


def test_it_says_acceptenv_in_preflight_of_a_gated_model_until_sshd_accepts_the_token(
    hosts, settings
):
    settings.ARBITER_HF_TOKEN = TOKEN
    CatalogModel.objects.create(key="gated", hub_repo="acme/gated-llm-1B", served_name="gated")
    checks = _preflight("gated", "sim-b")
    assert checks["hub_token"]["ok"] is False
    assert "`AcceptEnv HF_TOKEN`" in checks["hub_token"]["detail"]
    # Not in the cache yet: the download's own needs are checked too.
    assert checks["hf"]["ok"] is True and checks["hub_cache"]["ok"] is True

    hosts.accept_hf_token("sim-b")
    assert _preflight("gated", "sim-b")["hub_token"]["ok"] is True


def test_it_sets_the_sshd_policy_through_the_control_api(hosts):
    import httpx

    url = f"{hosts.control_url}/hosts/sim-a/sshd"
    reply = httpx.post(url, json={"accept_env": ["LANG", "LC_*", "HF_TOKEN"], "max_sessions": 4})
    assert reply.status_code == 200
    assert reply.json()["sshd"]["accept_env"] == ["LANG", "LC_*", "HF_TOKEN"]
    assert hosts.hosts["sim-a"].sshd.max_sessions == 4
    bad = httpx.post(url, json={"max_sessions": "ten"})
    assert bad.status_code == 400 and "max_sessions" in bad.json()["error"]
    unknown = httpx.post(url, json={"permit_root_login": True})
    assert unknown.status_code == 400
    state = httpx.get(f"{hosts.control_url}/hosts/sim-a").json()
    assert state["sshd"]["max_sessions"] == 4
    assert json.dumps(state)  # plain JSON
