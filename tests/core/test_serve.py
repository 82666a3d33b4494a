"""`manage.py serve` as `make run` starts it: simulated cluster, SSH sampling, API, login."""

import httpx


def test_it_answers_healthz_without_credentials(live_arbiter):
    response = httpx.get(f"{live_arbiter.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_it_lists_simulated_hosts_with_gpu_readings_taken_over_ssh(live_arbiter):
    key = live_arbiter.manage("create_api_key", "test").strip()
    headers = {"Authorization": f"Bearer {key}"}

    def every_host_sampled():
        status = httpx.get(f"{live_arbiter.url}/api/status", headers=headers).json()
        hosts = status["hosts"]
        if len(hosts) < 3 or not all(h["gpus"] for h in hosts):
            return None
        return status

    status = live_arbiter.wait_for(every_host_sampled, timeout=30)
    hosts = {h["name"]: h for h in status["hosts"]}
    assert set(hosts) == {"sim-a", "sim-b", "sim-gb10"}
    for host in hosts.values():
        assert host["simulated"] is True
        assert host["state"] == "live"
        for gpu in host["gpus"]:
            assert isinstance(gpu["utilization_pct"], float)
            assert isinstance(gpu["temperature_c"], float)
    assert len(hosts["sim-a"]["gpus"]) == 2
    assert hosts["sim-a"]["gpus"][0]["memory_total_mib"] == 49140.0
    gb10 = hosts["sim-gb10"]["gpus"][0]
    assert gb10["unified_memory"] is True
    # nvidia-smi says [N/A]; the figures shown are host memory from /proc/meminfo.
    assert gb10["memory_total_mib"] == hosts["sim-gb10"]["mem_total_mib"] > 100_000


def test_it_refuses_status_without_a_key(live_arbiter):
    assert httpx.get(f"{live_arbiter.url}/api/status").status_code == 401


def test_it_prints_the_first_admin_password_only_once(live_arbiter):
    assert "admin" in "".join(live_arbiter.output)
    assert len(live_arbiter.admin_password) >= 12
