"""The docker argv built from catalog fields: exact shape, and no way to inject anything.

The property test throws shell metacharacters, newlines, spaces and leading dashes at
every catalog field that reaches the command line. Each value is either rejected by
catalog validation (with an error naming the field) or arrives at the simulated host
as part of exactly one argv item: the simulator parses the command string the way
`sh -c` would and records the argv it ran, which must equal the list we built.
"""

import string

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from arbiter.engine import ssh
from arbiter.engine.swaps.docker_argv import (
    build_logs_argv,
    build_rm_argv,
    build_run_argv,
    build_stop_argv,
    gpus_option,
    launch_env,
    service_port,
)
from arbiter.errors import InvalidInput
from arbiter.inventory import load_inventory
from arbiter.models import Host, Service
from catalog.models import CatalogModel
from catalog.validation import catalog_field_problems

HOST = Host(name="sim-b", address="127.0.0.1", home_dir="/home/arbiter")
SERVICE = Service(name="sim-b-vllm", base_url="http://127.0.0.1:18000")


def model(**fields) -> CatalogModel:
    values = {
        "key": "m",
        "hub_repo": "Qwen/Qwen3-0.6B",
        "served_name": "qwen",
        "gpu_memory_utilization": 0.3,
        "max_model_len": 8192,
    }
    values.update(fields)
    return CatalogModel(**values)


@pytest.fixture
def hf(settings):
    settings.ARBITER_HF_TOKEN = ""
    settings.ARBITER_HF_CACHE_DIR = "/models/hub-cache"
    settings.ARBITER_MODEL_ROOTS = ["/models"]
    return settings


def test_it_builds_the_hub_model_command(hf):
    argv = build_run_argv(model(hub_revision="main"), HOST, SERVICE)
    assert argv == [
        "docker",
        "run",
        "--detach",
        "--name=arbiter-vllm",
        "--gpus=all",
        "--ipc=host",
        "--publish=18000:8000",
        "--volume=/models/hub-cache:/root/.cache/huggingface/hub",
        "--volume=/home/arbiter/.cache/vllm:/root/.cache/vllm",  # compile cache
        "--label=arbiter.managed=true",  # what swaps may stop (arbiter.engine.swaps.slot)
        "--label=arbiter.model=m",
        "vllm/vllm-openai:latest",
        "Qwen/Qwen3-0.6B",  # positional: the image's entrypoint is `vllm serve`
        "--served-model-name=qwen",
        "--port=8000",
        "--tensor-parallel-size=1",
        "--max-model-len=8192",
        "--gpu-memory-utilization=0.3",
        "--revision=main",
    ]


def test_it_turns_on_the_dev_endpoints_the_broker_unloads_through_for_sleep_mode(hf):
    argv = build_run_argv(model(extra_engine_flags=["--enable-sleep-mode"]), HOST, SERVICE)
    image = argv.index("vllm/vllm-openai:latest")
    assert argv.index("--env=VLLM_SERVER_DEV_MODE=1") < image  # a docker option, before the image
    assert argv[-1] == "--enable-sleep-mode"
    assert not any(a.startswith("--env") for a in build_run_argv(model(), HOST, SERVICE))


def test_it_mounts_a_local_model_read_only_at_the_same_path(hf):
    local = model(
        hub_repo="",
        local_path="/models/finetunes//support-v2/",
        extra_container_args=["--shm-size=8g"],
        extra_engine_flags=["--enable-prefix-caching"],
        max_model_len=None,
    )
    argv = build_run_argv(local, HOST, SERVICE, gpu_count=2)
    assert "--volume=/models/finetunes/support-v2:/models/finetunes/support-v2:ro" in argv
    image = argv.index("vllm/vllm-openai:latest")
    assert argv[image + 1] == "/models/finetunes/support-v2"  # the positional model_tag
    assert "--gpus=device=0" in argv
    assert argv.index("--shm-size=8g") < argv.index("vllm/vllm-openai:latest")
    assert argv[-1] == "--enable-prefix-caching"
    assert not any(item.startswith("--max-model-len") for item in argv)
    assert not any("huggingface" in item for item in argv)


def test_it_passes_the_hub_token_by_name_for_hub_models_only(hf):
    hf.ARBITER_HF_TOKEN = "hf_secret"
    hub = build_run_argv(model(), HOST, SERVICE)
    assert "--env=HF_TOKEN" in hub
    assert not any("hf_secret" in item for item in hub)
    assert launch_env(local=False) == {"HF_TOKEN": "hf_secret"}
    local = build_run_argv(model(hub_repo="", local_path="/models/x"), HOST, SERVICE)
    assert "--env=HF_TOKEN" not in local
    assert launch_env(local=True) is None


def test_it_selects_gpus_by_tensor_parallel_size():
    assert gpus_option(1, None) == "--gpus=all"
    assert gpus_option(2, 2) == "--gpus=all"
    assert gpus_option(1, 2) == "--gpus=device=0"
    assert gpus_option(2, 4) == '--gpus="device=0,1"'  # one CSV record for docker


def test_it_ends_options_before_the_name_in_the_other_commands():
    assert build_stop_argv("arbiter-vllm") == ["docker", "stop", "-t", "30", "--", "arbiter-vllm"]
    assert build_rm_argv("x1") == ["docker", "rm", "--force", "--", "x1"]
    assert build_logs_argv("x1") == ["docker", "logs", "--follow", "--tail=all", "--", "x1"]


def test_it_reads_the_service_port_from_the_base_url():
    assert service_port("http://10.0.0.5:8001/") == 8001
    assert service_port("http://gpu-box") == 80
    assert service_port("https://gpu-box/v1") == 443


def test_it_follows_the_image_with_its_command_and_the_positional_model(hf):
    nvidia = model(image="nvcr.io/nvidia/vllm:25.09-py3", command=["vllm", "serve"])
    host = Host(name="sim-b", address="127.0.0.1", home_dir="/home/arbiter")
    argv = build_run_argv(nvidia, host, SERVICE)
    image = argv.index("nvcr.io/nvidia/vllm:25.09-py3")
    assert argv[image + 1 : image + 5] == [
        "vllm",
        "serve",
        "Qwen/Qwen3-0.6B",
        "--served-model-name=qwen",
    ]
    assert not any(item.startswith("--model") for item in argv)


def test_it_keeps_refusing_the_model_flag_in_the_extra_engine_flags(hf):
    for flag in ("--model=Other/Model", "--model", "--served_model_name=x"):
        with pytest.raises(InvalidInput) as raised:
            build_run_argv(model(extra_engine_flags=[flag]), HOST, SERVICE)
        assert raised.value.field == "extra_engine_flags", flag


def test_it_refuses_a_model_that_fails_catalog_validation(hf):
    with pytest.raises(InvalidInput) as raised:
        build_run_argv(model(served_name="--foo"), HOST, SERVICE)
    assert raised.value.field == "served_name"


# -- the property ----------------------------------------------------------------------
NASTY = [";", "&&", "|", "$(id)", "`id`", "\n", "\r\n", " ", "\t", "'", '"', "\\", "*", "?"]
NASTY += ["~", "#", ">", "<", "&", "-", "--", "=", ",", ":", "/", "..", "%2e%2e%2f", "\x00"]
NASTY += ["é", "{a,b}", "[x]", "!", "$HOME", "\x1b[31m"]
PLAIN = st.text(alphabet=string.ascii_lowercase + string.digits + "._-/", max_size=6)
TEXT = st.lists(st.one_of(st.sampled_from(NASTY), PLAIN), min_size=1, max_size=6).map("".join)
VALUE = st.one_of(TEXT, TEXT.map(lambda s: "-" + s), TEXT.map(lambda s: "--" + s), PLAIN)
FIELDS = {
    "served_name": lambda v: {"served_name": v},
    "container_name": lambda v: {"container_name": v},
    "image": lambda v: {"image": v},
    "hub_repo": lambda v: {"hub_repo": v},
    "hub_revision": lambda v: {"hub_revision": v},
    "local_path": lambda v: {"hub_repo": "", "local_path": "/models/" + v},
    "extra_engine_flags": lambda v: {"extra_engine_flags": [v]},
    "extra_container_args": lambda v: {"extra_container_args": [v]},
}


@pytest.fixture(scope="module")
def host_b(tmp_path_factory):
    """sim-b with its SSH target; docker runs go through the cluster's own loop."""
    from arbiter.simulator.cluster import ClusterThread

    cluster = ClusterThread(tmp_path_factory.mktemp("sim"), startup_delay=5.0).start()
    config = next(h for h in load_inventory(cluster.config_path).hosts if h.name == "sim-b")
    target = ssh.SshTarget(
        name="sim-b",
        address=config.address,
        port=config.ssh_port,
        user=config.ssh_user,
        key_path=config.ssh_key or "",
        known_hosts_file=config.known_hosts or "",
    )
    try:
        yield cluster, target
    finally:

        async def close() -> None:
            await ssh.get_pool().close()

        cluster.run(close())
        cluster.stop(kill_containers=True)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(field=st.sampled_from(sorted(FIELDS)), value=VALUE)
@example(field="served_name", value="x;id|$(touch${IFS}pwned)`id`'\"&>/tmp/o")
@example(field="served_name", value="--foo")
@example(field="local_path", value="ft/a;b$(id)'q")
@example(field="local_path", value="../../etc")
@example(field="extra_engine_flags", value="--chat-template=$(id);x|y")
@example(field="extra_container_args", value="--privileged")
@example(field="container_name", value="a\nb")
def test_it_rejects_every_catalog_value_or_delivers_it_as_one_argv_item(host_b, hf, field, value):
    cluster, target = host_b
    candidate = model(**FIELDS[field](value))
    values = {name: getattr(candidate, name) for name in FIELDS if name != "local_path"}
    values["local_path"] = candidate.local_path
    values["command"] = candidate.command  # stored (resolved) as the launch reads it
    _cleaned, problems = catalog_field_problems(values, require_key=False)
    try:
        argv = build_run_argv(candidate, HOST, SERVICE)
    except InvalidInput as error:
        # Rejected: by catalog validation itself, naming the field it is about.
        assert problems, f"build_run_argv refused what validation accepts: {error}"
        assert error.field == problems[0][0]
        assert error.message
        event(f"rejected ({field})")
        return
    assert not problems
    assert all(isinstance(item, str) and "\x00" not in item for item in argv)
    before = len(cluster.commands("sim-b"))
    result = cluster.run(ssh.run(target, argv, timeout=30, check=False))
    record = cluster.commands("sim-b")[before]
    assert record.argvs == [argv], (record.raw, result.stderr)
    event(f"delivered ({field}, docker exit {result.exit_status})")
    if result.exit_status == 0:
        cleanup = ["docker", "rm", "--force", "--", candidate.container_name]
        cluster.run(ssh.run(target, cleanup, timeout=30, check=False))


def test_it_uses_the_hosts_own_hub_cache_unless_configured(settings):
    settings.ARBITER_HF_TOKEN = ""
    settings.ARBITER_HF_CACHE_DIR = ""  # the default: each host's own
    home = Host(name="spark", address="10.0.0.2", home_dir="/home/nv")
    argv = build_run_argv(model(), home, SERVICE)
    assert "--volume=/home/nv/.cache/huggingface/hub:/root/.cache/huggingface/hub" in argv
    assert "--volume=/home/nv/.cache/vllm:/root/.cache/vllm" in argv
    settings.ARBITER_HF_CACHE_DIR = "/models/hub-cache"
    own = Host(name="spark", address="10.0.0.2", home_dir="/home/nv", hf_cache_dir="/data/hf")
    assert "--volume=/data/hf:/root/.cache/huggingface/hub" in build_run_argv(model(), own, SERVICE)
    unknown = Host(name="spark", address="10.0.0.2")  # home not learned yet
    with pytest.raises(InvalidInput) as error:
        build_run_argv(model(), unknown, SERVICE)
    assert error.value.field == "host"
