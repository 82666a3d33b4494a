"""Simulated hosts over a real SSH client: GPUs, memory, disks, keys, faults, files."""

from __future__ import annotations

import re
import shlex
import stat

import asyncssh
import httpx
import pytest
import yaml

from arbiter.simulator.cluster import ClusterThread, SimulatedCluster
from tests.simulator.client import connect, run

QUERY = [
    "index",
    "uuid",
    "name",
    "utilization.gpu",
    "memory.used",
    "memory.total",
    "memory.free",
    "temperature.gpu",
    "power.draw",
    "power.limit",
    "pci.bus_id",
]


def smi(fields: list[str], fmt: str = "csv,noheader,nounits") -> list[str]:
    return ["nvidia-smi", f"--query-gpu={','.join(fields)}", f"--format={fmt}"]


def rows(text: str) -> list[list[str]]:
    return [line.split(", ") for line in text.splitlines()]


def meminfo(text: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB$", text, re.M)}


async def test_it_answers_nvidia_smi_fields_in_the_order_asked(ssh) -> None:
    conn = await ssh("sim-a")
    result = await run(conn, smi(QUERY))
    assert result.exit_status == 0
    first, second = rows(result.stdout)
    assert first[0] == "0" and second[0] == "1"
    assert re.fullmatch(
        r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", first[1]
    )
    assert first[2] == "NVIDIA RTX 6000 Ada Generation"
    assert first[3:7] == ["0", "3", "49140", "49137"]
    assert first[8:] == ["22.50", "300.00", "00000000:01:00.0"]
    reordered = await run(conn, smi(["memory.total", "name", "index"]))
    assert rows(reordered.stdout) == [
        ["49140", "NVIDIA RTX 6000 Ada Generation", "0"],
        ["49140", "NVIDIA RTX 6000 Ada Generation", "1"],
    ]


async def test_it_prints_an_nvidia_smi_header_and_units_unless_told_not_to(ssh) -> None:
    conn = await ssh("sim-b")
    result = await run(conn, smi(["index", "memory.used", "power.draw"], "csv"))
    assert result.stdout == "index, memory.used [MiB], power.draw [W]\n0, 3 MiB, 72.30 W\n"


async def test_it_reports_no_memory_or_power_limit_of_its_own_for_a_gb10(ssh) -> None:
    conn = await ssh("sim-gb10")
    result = await run(conn, smi(QUERY))
    (row,) = rows(result.stdout)
    assert row[2] == "NVIDIA GB10"
    assert row[4:7] == ["[N/A]", "[N/A]", "[N/A]"]
    # Its draw is reported, its limit is not (tests/engine/fixtures/nvidia_smi/gb10.csv).
    assert float(row[8]) > 0 and row[9] == "[N/A]"


async def test_it_rejects_an_unknown_nvidia_smi_field_like_the_real_tool(ssh) -> None:
    conn = await ssh("sim-a")
    result = await run(conn, smi(["index", "bogus.field"]))
    assert (result.exit_status, result.stdout) == (2, "")
    assert result.stderr.startswith('Field "bogus.field" is not a valid field to query.')
    assert (await run(conn, smi(["index"], "json"))).exit_status == 2


async def test_it_pins_gpu_values_per_gpu_and_resets_them(sim, ssh) -> None:
    conn = await ssh("sim-a")
    host = sim.hosts["sim-a"]
    host.set_gpu(1, utilization=87, temperature=71, power=250.5, memory_used_mib=40000)
    fields = [
        "index",
        "utilization.gpu",
        "temperature.gpu",
        "power.draw",
        "memory.used",
        "memory.free",
    ]
    result = await run(conn, smi(fields))
    assert rows(result.stdout) == [
        ["0", "0", "31", "22.50", "3", "49137"],
        ["1", "87", "71", "250.50", "40000", "9140"],
    ]
    host.set_gpu(1, reset=True)
    assert rows((await run(conn, smi(fields))).stdout)[1] == ["1", "0", "32", "22.50", "3", "49137"]


async def test_it_lays_out_meminfo_like_the_kernel(ssh) -> None:
    conn = await ssh("sim-a")
    text = (await run(conn, ["cat", "/proc/meminfo"])).stdout
    assert re.match(r"MemTotal: {7}263808756 kB\nMemFree: +\d+ kB\nMemAvailable: +\d+ kB\n", text)
    values = meminfo(text)
    assert {"Buffers", "Cached", "SwapTotal", "SwapFree"} <= set(values)
    assert values["MemFree"] < values["MemAvailable"] < values["MemTotal"]


async def test_it_lowers_mem_available_by_the_unified_memory_in_use(sim, ssh) -> None:
    conn = await ssh("sim-gb10")
    before = meminfo((await run(conn, ["cat", "/proc/meminfo"])).stdout)
    assert before["MemTotal"] == 125_000_000
    sim.hosts["sim-gb10"].set_gpu(0, memory_used_mib=50_000)
    after = meminfo((await run(conn, ["cat", "/proc/meminfo"])).stdout)
    assert before["MemAvailable"] - after["MemAvailable"] == 50_000 * 1024


async def test_it_runs_the_samplers_batched_command(ssh) -> None:
    conn = await ssh("sim-b")
    script = f"{shlex.join(smi(['index', 'name']))} ; echo @@mark@@ ; cat /proc/meminfo"
    result = await run(conn, ["sh", "-c", script])
    gpus, mark, memory = result.stdout.partition("@@mark@@\n")
    assert (result.exit_status, gpus, mark) == (0, "0, NVIDIA H100 80GB HBM3\n", "@@mark@@\n")
    assert memory.startswith("MemTotal:")


async def test_it_describes_the_simulated_disk_with_df_and_du(sim, ssh) -> None:
    host = sim.hosts["sim-a"]
    host.fs.add_file("/models/org/m/model.safetensors", size=15_000_000_000)  # sparse
    conn = await ssh("sim-a")
    du = await run(conn, ["du", "-sb", "/models/org/m"])
    assert du.stdout == f"{15_000_000_000 + 4096}\t/models/org/m\n"
    df = await run(conn, ["df", "-B1", "--output=source,size,used,avail,target", "/models"])
    header, line = df.stdout.splitlines()
    assert header.split() == ["Filesystem", "1B-blocks", "Used", "Avail", "Mounted", "on"]
    source, size, used, avail, target = line.split()
    assert (source, target) == ("/dev/nvme0n1p2", "/")
    assert int(size) == int(used) + int(avail) and int(used) > 15_000_000_000
    posix = await run(conn, ["df", "-P", "-k", "/models"])
    assert posix.stdout.splitlines()[0].split()[:4] == [
        "Filesystem",
        "1024-blocks",
        "Used",
        "Available",
    ]
    missing = await run(conn, ["du", "-sb", "/models/none"])
    assert (missing.exit_status, missing.stderr) == (
        1,
        "du: cannot access '/models/none': No such file or directory\n",
    )
    assert (await run(conn, ["df", "/nope"])).stderr == "df: /nope: No such file or directory\n"


async def test_it_keeps_paths_and_symlinks_inside_the_simulated_root(sim, ssh) -> None:
    host = sim.hosts["sim-a"]
    (host.fs.local("/models") / "escape").symlink_to("/etc")
    conn = await ssh("sim-a")
    assert (await run(conn, ["test", "-e", "/models/escape/passwd"])).exit_status == 1
    assert (await run(conn, ["cat", "/../../../../etc/passwd"])).exit_status == 1


async def test_it_records_every_exec_request_with_env_names_only(sim, ssh) -> None:
    conn = await ssh("sim-b")
    host = sim.hosts["sim-b"]
    host.set_sshd(accept_env=["LANG", "LC_*", "HF_TOKEN"])  # AcceptEnv HF_TOKEN
    before = len(host.commands)
    await conn.run("nvidia-smi -L", env={"HF_TOKEN": "hf_secret_value"})
    await conn.run("true")
    assert len(host.commands) == before + 2
    record = host.commands[before]
    assert (record.argvs, record.env_names, record.exit_status) == (
        [["nvidia-smi", "-L"]],
        ["HF_TOKEN"],
        0,
    )
    assert "hf_secret_value" not in repr(host.commands)


async def test_it_exits_127_on_an_unknown_command(ssh) -> None:
    result = await run(await ssh("sim-a"), ["rocm-smi"])
    assert (result.exit_status, result.stderr) == (127, "sh: 1: rocm-smi: not found\n")


async def test_it_lets_only_the_cluster_key_and_user_log_in(sim, tmp_path) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(sim, "sim-a", username="root")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(sim, "sim-a", client_keys=[stranger])
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await connect(sim, "sim-a", known_hosts=str(empty))


async def test_it_keeps_keys_in_files_with_private_permissions(sim) -> None:
    for path in (sim.client_key_path, sim.data_dir / "hosts" / "sim-a" / "ssh_host_key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    line = sim.known_hosts_path.read_text().splitlines()[0]
    assert re.fullmatch(rf"\[127\.0\.0\.1\]:{sim.hosts['sim-a'].port} ssh-ed25519 AAAA\S+", line)


async def test_it_goes_down_and_comes_back_on_the_same_port_and_key(sim) -> None:
    host = sim.hosts["sim-a"]
    port = host.port
    conn = await connect(sim, "sim-a")
    await host.go_down()
    with pytest.raises(
        (asyncssh.ConnectionLost, asyncssh.ChannelOpenError, BrokenPipeError, ConnectionError)
    ):
        await conn.run("true", check=True)
    with pytest.raises(ConnectionRefusedError):
        await connect(sim, "sim-a")
    await host.come_up()
    assert host.port == port
    async with await connect(sim, "sim-a") as again:  # the old known_hosts still matches
        assert (await again.run("hostname")).stdout == "sim-a\n"


async def test_it_refuses_a_rotated_host_key_by_the_old_known_hosts(sim) -> None:
    await sim.hosts["sim-b"].rotate_host_key()
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await connect(sim, "sim-b")
    sim.write_known_hosts()
    async with await connect(sim, "sim-b") as conn:
        assert (await conn.run("true")).exit_status == 0


async def test_it_keeps_its_keys_and_ports_when_the_cluster_restarts(tmp_path) -> None:
    first = SimulatedCluster(tmp_path, control=False)
    await first.start()
    ports = {name: host.port for name, host in first.hosts.items()}
    known_hosts, config = first.known_hosts_path.read_text(), first.config_path.read_text()
    await first.stop()
    second = SimulatedCluster(tmp_path, control=False)
    await second.start()
    try:
        assert {name: host.port for name, host in second.hosts.items()} == ports
        assert second.known_hosts_path.read_text() == known_hosts
        assert second.config_path.read_text() == config
    finally:
        await second.stop(kill_containers=True)


def test_it_writes_the_cluster_file_with_the_inventory_schema(
    sim_cluster: ClusterThread, sim_cluster_config
) -> None:
    data = yaml.safe_load(sim_cluster_config.read_text())
    assert data["simulated"] is True
    hosts = {h["name"]: h for h in data["hosts"]}
    assert list(hosts) == ["sim-a", "sim-b", "sim-gb10"]
    assert hosts["sim-a"] == {
        "name": "sim-a",
        "address": "127.0.0.1",
        "ssh_user": "arbiter",
        "ssh_port": sim_cluster.hosts["sim-a"].port,
        "ssh_key": str(sim_cluster.client_key_path),
        "known_hosts": str(sim_cluster.known_hosts_path),
        "sampling": "ssh",
        "vram_budget_mib": 98280,
        "vram_margin_mib": 2048,
        "cluster_address": "127.0.0.1",
    }
    services = {s["name"]: s for s in data["services"]}
    assert sorted(services) == ["sim-a-vllm", "sim-b-tts", "sim-b-vllm", "sim-gb10-vllm"]
    assert services["sim-a-vllm"]["capabilities"] == ["llm"]
    assert services["sim-b-tts"]["disabled"] is True
    assert services["sim-b-tts"]["kind"] == "http"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", services["sim-gb10-vllm"]["base_url"])


def test_it_lets_the_control_api_drive_a_cluster_in_another_thread(
    sim_cluster: ClusterThread,
) -> None:
    url = sim_cluster.control_url
    assert url is not None
    assert (sim_cluster.data_dir / "control.json").read_text() == f'{{"url": "{url}"}}'
    with httpx.Client(base_url=url, timeout=10) as client:
        hosts = client.get("/hosts").json()["hosts"]
        assert [h["name"] for h in hosts] == ["sim-a", "sim-b", "sim-gb10"]
        answer = client.post("/hosts/sim-b/gpus/0", json={"utilization": 55})
        assert answer.status_code == 200 and answer.json()["gpus"][0]["utilization"] == 55
        assert client.post("/hosts/sim-b/gpus/3", json={}).status_code == 404
        assert client.post("/hosts/sim-b/faults", json={"explode": True}).status_code == 400
        assert client.post("/hosts/sim-b/faults", json={"fail_start": True}).status_code == 200
        assert sim_cluster.hosts["sim-b"].faults.fail_start is True
        assert client.post("/hosts/sim-a/down").json() == {"up": False}
        assert sim_cluster.hosts["sim-a"].up is False
        assert client.post("/hosts/sim-a/up").json() == {"up": True}
        commands = client.get("/hosts/sim-a/commands", params={"since": 0}).json()
        assert commands == {"commands": [], "next": 0}
        assert client.get("/hosts/nope").status_code == 404


def test_it_proxies_the_controls_through_the_thread_handle(sim_cluster: ClusterThread) -> None:
    sim_cluster.set_gpu("sim-a", 0, utilization=12)
    sim_cluster.inject("sim-a", slow_start=3.0)
    assert sim_cluster.hosts["sim-a"].board.overrides[0].utilization == 12
    assert sim_cluster.hosts["sim-a"].faults.slow_start == 3.0
    sim_cluster.go_down("sim-gb10")
    assert not sim_cluster.hosts["sim-gb10"].up
    sim_cluster.come_up("sim-gb10")
    assert sim_cluster.call("sim-gb10", "host_key_line").startswith("ssh-ed25519 ")
    assert sim_cluster.containers("sim-a") == []


async def test_it_gives_every_service_its_own_port(tmp_path, monkeypatch):
    from arbiter.simulator import cluster as cluster_module

    handed_out = iter([41001, 41001, 41001, 41002, 41003, 41004, 41005, 41006])
    monkeypatch.setattr(cluster_module, "reservable_port", lambda: next(handed_out))
    sim = cluster_module.SimulatedCluster(tmp_path / "sim", control=False)
    await sim.start()
    try:
        ports = list(sim.service_ports.values())
        assert len(ports) == len(set(ports)) == 4
    finally:
        await sim.stop(kill_containers=True)


async def test_it_keeps_service_ports_outside_the_ephemeral_range(tmp_path):
    """A service port waits, reserved, until a swap listens on it: the kernel must not
    hand it out meanwhile as the source port of some outgoing connection."""
    from arbiter.simulator import cluster as cluster_module

    low, high = cluster_module.ephemeral_range()
    sim = cluster_module.SimulatedCluster(tmp_path / "sim", control=False)
    await sim.start()
    try:
        ports = list(sim.service_ports.values())
        assert ports and all(not low <= port <= high for port in ports), (ports, low, high)
    finally:
        await sim.stop(kill_containers=True)
