"""load_inventory: every problem reported as `<file>: <key path>: <reason>`, valid files loaded."""

from pathlib import Path
from textwrap import dedent

import pytest

from arbiter.errors import ArbiterError
from arbiter.inventory import HostConfig, InventoryError, ServiceConfig, load_inventory
from tests.inventory.conftest import problems_of

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "cluster.example.yaml"

ONE_HOST = """
hosts:
  - name: spark-1
    address: 192.168.1.21
"""


def host_with(lines: str) -> str:
    """A one-host file whose host also has `lines` (already indented 4 spaces)."""
    return ONE_HOST + lines


def service_with(lines: str) -> str:
    """One host and one otherwise valid service with `lines` added to it."""
    return (
        ONE_HOST
        + dedent(
            """\
        services:
          - name: chat
            host: spark-1
            base_url: http://192.168.1.21:8000
        """
        )
        + lines
    )


@pytest.fixture
def write(tmp_path, monkeypatch):
    """Write cluster.yaml in a temporary working directory and return its name as given."""
    monkeypatch.chdir(tmp_path)

    def write_file(text: str, name: str = "cluster.yaml") -> str:
        (tmp_path / name).write_text(text)
        return name

    return write_file


INVALID = [
    pytest.param(
        host_with("    ssh_port: x\n"),
        ['cluster.yaml: hosts[0].ssh_port: must be an integer 1-65535, got "x"'],
        id="port-string",
    ),
    pytest.param(
        host_with("    ssh_port: 0\n"),
        ["cluster.yaml: hosts[0].ssh_port: must be an integer 1-65535, got 0"],
        id="port-zero",
    ),
    pytest.param(
        host_with("    ssh_port: 70000\n"),
        ["cluster.yaml: hosts[0].ssh_port: must be an integer 1-65535, got 70000"],
        id="port-too-big",
    ),
    pytest.param(
        host_with("    ssh_port: true\n"),
        ["cluster.yaml: hosts[0].ssh_port: must be an integer 1-65535, got true"],
        id="port-bool",
    ),
    pytest.param(
        "hosts:\n  - address: 192.168.1.21\n",
        ["cluster.yaml: hosts[0].name: is required"],
        id="missing-name",
    ),
    pytest.param(
        "hosts:\n  - name: Spark_1\n    address: 192.168.1.21\n",
        [
            'cluster.yaml: hosts[0].name: must be a lowercase slug of a-z, 0-9 and "-" '
            '(1-63 characters, not starting with "-"), got "Spark_1"'
        ],
        id="bad-slug",
    ),
    pytest.param(
        ONE_HOST + "  - name: spark-1\n    address: 192.168.1.22\n",
        ['cluster.yaml: hosts[1].name: duplicate host name "spark-1" (also hosts[0])'],
        id="duplicate-host",
    ),
    pytest.param(
        "hosts:\n  - name: spark-1\n    address: spark 1.lan\n",
        ['cluster.yaml: hosts[0].address: must not contain whitespace, got "spark 1.lan"'],
        id="address-space",
    ),
    pytest.param(
        "hosts:\n  - name: spark-1\n    address: -oProxyCommand=sh\n",
        ['cluster.yaml: hosts[0].address: must not start with "-", got "-oProxyCommand=sh"'],
        id="address-leading-dash",
    ),
    pytest.param(
        "hosts:\n  - name: spark-1\n    address: root@spark-1.lan\n",
        [
            'cluster.yaml: hosts[0].address: must not contain a user part ("user@"); '
            'set ssh_user instead, got "root@spark-1.lan"'
        ],
        id="address-user",
    ),
    pytest.param(
        "hosts:\n  - name: spark-1\n    address: 192.168.1.300\n",
        [
            "cluster.yaml: hosts[0].address: must be a hostname (RFC 1123) or an IPv4/IPv6 "
            'address, got "192.168.1.300"'
        ],
        id="address-bad-ipv4",
    ),
    pytest.param(
        host_with("    sssh_port: 22\n"),
        ['cluster.yaml: hosts[0].sssh_port: unknown key (did you mean "ssh_port"?)'],
        id="unknown-key-suggestion",
    ),
    pytest.param(
        host_with("    colour: blue\n"),
        ["cluster.yaml: hosts[0].colour: unknown key"],
        id="unknown-key",
    ),
    pytest.param(
        ONE_HOST + "service:\n  - name: chat\n",
        ['cluster.yaml: service: unknown key (did you mean "services"?)'],
        id="unknown-top-level-key",
    ),
    pytest.param(
        host_with("    sampling: local\n"),
        ['cluster.yaml: hosts[0].sampling: must be one of "ssh", "nvml", got "local"'],
        id="sampling-bad",
    ),
    pytest.param(
        host_with("    sampling: nvml\n")
        + "  - name: spark-2\n    address: b\n    sampling: nvml\n",
        ['cluster.yaml: hosts[1].sampling: at most one host may use "nvml", hosts[0] already does'],
        id="two-nvml-hosts",
    ),
    pytest.param(
        host_with("    vram_margin_mib: -1\n"),
        ["cluster.yaml: hosts[0].vram_margin_mib: must be an integer >= 0, got -1"],
        id="margin-negative",
    ),
    pytest.param(
        host_with("    vram_budget_mib: 8192\n    vram_margin_mib: 8192\n"),
        [
            "cluster.yaml: hosts[0].vram_margin_mib: must be less than vram_budget_mib (8192), "
            "got 8192"
        ],
        id="margin-not-below-budget",
    ),
    pytest.param(
        "defaults:\n  vram_margin_mib: 9000\n" + host_with("    vram_budget_mib: 8192\n"),
        [
            "cluster.yaml: hosts[0].vram_margin_mib: must be less than vram_budget_mib (8192), "
            "got 9000 (from defaults)"
        ],
        id="default-margin-not-below-budget",
    ),
    pytest.param(
        host_with("    vram_budget_mib: 0\n"),
        ["cluster.yaml: hosts[0].vram_budget_mib: must be a positive integer, got 0"],
        id="budget-zero",
    ),
    pytest.param(
        "defaults:\n  sampling: nvml\n  ssh_prot: 22\n" + ONE_HOST,
        [
            "cluster.yaml: defaults.sampling: not allowed in defaults, set it per host",
            'cluster.yaml: defaults.ssh_prot: unknown key (did you mean "ssh_port"?)',
        ],
        id="defaults-unknown-key",
    ),
    pytest.param(
        "defaults:\n  ssh_user: Root\n" + ONE_HOST,
        [
            "cluster.yaml: defaults.ssh_user: must be a POSIX user name ([a-z_][a-z0-9_-]{0,31}), "
            'got "Root"'
        ],
        id="defaults-bad-user",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n").replace("host: spark-1", "host: spark-9"),
        ['cluster.yaml: services[0].host: no host named "spark-9" in this file'],
        id="service-unknown-host",
    ),
    pytest.param(
        service_with("    capabilities: [llm, video]\n"),
        [
            'cluster.yaml: services[0].capabilities[1]: must be one of "llm", "tts", "stt", '
            '"image", "embeddings", "audio", got "video"'
        ],
        id="bad-capability",
    ),
    pytest.param(
        service_with("    capabilities: []\n"),
        ["cluster.yaml: services[0].capabilities: must be a non-empty list, got []"],
        id="empty-capabilities",
    ),
    pytest.param(
        service_with("    capabilities: [llm, llm]\n"),
        ['cluster.yaml: services[0].capabilities[1]: duplicate "llm"'],
        id="duplicate-capability",
    ),
    pytest.param(
        service_with(""),
        ["cluster.yaml: services[0].capabilities: is required"],
        id="missing-capabilities",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n").replace(
            "http://192.168.1.21:8000", "192.168.1.21:8000"
        ),
        [
            "cluster.yaml: services[0].base_url: must be an http(s) URL with a host, "
            'got "192.168.1.21:8000"'
        ],
        id="url-without-scheme",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n").replace("http://", "ftp://"),
        [
            'cluster.yaml: services[0].base_url: must use "http" or "https", '
            'got "ftp://192.168.1.21:8000"'
        ],
        id="url-ftp",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n").replace("http://", "http://admin:hunter2@"),
        [
            "cluster.yaml: services[0].base_url: must not contain credentials, "
            'got "http://***@192.168.1.21:8000"'
        ],
        id="url-credentials-not-echoed",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n").replace(":8000", ":8000/?x=1"),
        [
            "cluster.yaml: services[0].base_url: must not have a query or fragment, "
            'got "http://192.168.1.21:8000/?x=1"'
        ],
        id="url-query",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n    health_path: health\n"),
        ['cluster.yaml: services[0].health_path: must be a path starting with "/", got "health"'],
        id="health-path-without-slash",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n    load_route: //evil.example/load\n"),
        [
            'cluster.yaml: services[0].load_route: must start with a single "/", '
            'got "//evil.example/load"'
        ],
        id="route-network-path",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n    can_coexist_with: [tts]\n"),
        ['cluster.yaml: services[0].can_coexist_with[0]: no service named "tts" in this file'],
        id="coexist-unknown-service",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n    can_coexist_with: [chat]\n"),
        ["cluster.yaml: services[0].can_coexist_with[0]: must not name the service itself"],
        id="coexist-itself",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n")
        + "  - name: chat\n    host: spark-1\n    base_url: http://a:1\n    capabilities: [tts]\n",
        ['cluster.yaml: services[1].name: duplicate service name "chat" (also services[0])'],
        id="duplicate-service",
    ),
    pytest.param(
        service_with("    capabilities: [llm]\n    kind: tgi\n    disabled: yes please\n"),
        [
            'cluster.yaml: services[0].kind: must be one of "vllm", "http", got "tgi"',
            'cluster.yaml: services[0].disabled: must be true or false, got "yes please"',
        ],
        id="service-kind-and-disabled",
    ),
    pytest.param(
        "hosts:\n  - name: spark-1\n   address: x\n",
        [
            "cluster.yaml: YAML syntax error at line 3, column 4: expected <block end>, "
            "but found '<block mapping start>'"
        ],
        id="yaml-syntax-error",
    ),
    pytest.param(
        host_with("    ssh_port: 22\n    ssh_port: 2222\n"),
        ['cluster.yaml: line 6, column 5: duplicate key "ssh_port"'],
        id="yaml-duplicate-key",
    ),
    pytest.param(
        "- name: spark-1\n  address: 192.168.1.21\n",
        ["cluster.yaml: top level must be a mapping, got a list"],
        id="top-level-list",
    ),
    pytest.param(
        "", ["cluster.yaml: top level must be a mapping, got an empty document"], id="empty"
    ),
    pytest.param(
        "hosts: []\n", ["cluster.yaml: hosts: must be a non-empty list, got []"], id="no-hosts"
    ),
    pytest.param("simulated: false\n", ["cluster.yaml: hosts: is required"], id="hosts-missing"),
    pytest.param(
        "hosts:\n  - spark-1\n",
        ['cluster.yaml: hosts[0]: must be a mapping, got "spark-1"'],
        id="host-not-mapping",
    ),
    pytest.param(
        "simulated: 1\ndefaults:\n  ssh_port: 0\n"
        "hosts:\n"
        "  - name: spark-1\n    address: a@b\n    ssh_portt: 22\n    vram_budget_mib: null\n"
        "  - name: spark-1\n    address: 10.0.0.2\n    ssh_user: null\n"
        "services:\n"
        "  - name: chat\n    host: nowhere\n    base_url: http://a:99999\n"
        "    capabilities: llm\n    request_paths: [v1/chat]\n    vram_resident_mib: 1.5\n",
        [
            "cluster.yaml: simulated: must be true or false, got 1",
            "cluster.yaml: defaults.ssh_port: must be an integer 1-65535, got 0",
            'cluster.yaml: hosts[0].ssh_portt: unknown key (did you mean "ssh_port"?)',
            'cluster.yaml: hosts[0].address: must not contain a user part ("user@"); '
            'set ssh_user instead, got "a@b"',
            "cluster.yaml: hosts[1].ssh_user: must be a POSIX user name ([a-z_][a-z0-9_-]{0,31}), "
            "got null",
            'cluster.yaml: hosts[1].name: duplicate host name "spark-1" (also hosts[0])',
            'cluster.yaml: services[0].host: no host named "nowhere" in this file',
            'cluster.yaml: services[0].base_url: must have a port 1-65535, got "http://a:99999"',
            'cluster.yaml: services[0].capabilities: must be a non-empty list, got "llm"',
            'cluster.yaml: services[0].request_paths[0]: must be a path starting with "/", '
            'got "v1/chat"',
            "cluster.yaml: services[0].vram_resident_mib: must be an integer >= 0, got 1.5",
        ],
        id="several-errors-all-reported",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_it_reports_every_problem_with_file_key_path_and_reason(write, text, expected):
    assert problems_of(write(text)) == expected


def test_it_reports_a_missing_file(write):
    assert problems_of("nope.yaml") == ["nope.yaml: file not found"]


def test_it_reports_a_missing_key_file_by_its_resolved_path(write, tmp_path):
    path = write(host_with("    ssh_key: keys/missing\n"))
    assert problems_of(path) == [
        f'cluster.yaml: hosts[0].ssh_key: file not found: "{tmp_path / "keys" / "missing"}"'
    ]


def test_it_reports_a_directory_given_as_known_hosts(write, tmp_path):
    (tmp_path / "keys").mkdir()
    path = write(host_with("    known_hosts: keys\n"))
    assert problems_of(path) == [
        f'cluster.yaml: hosts[0].known_hosts: not a file: "{tmp_path / "keys"}"'
    ]


def test_it_is_an_arbiter_error_whose_text_is_all_problems(write):
    path = write("hosts:\n  - name: a\n    address: b\n    ssh_port: x\n    sampling: z\n")
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert isinstance(caught.value, ArbiterError)
    assert str(caught.value) == "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 2


def test_it_applies_defaults(write):
    inventory = load_inventory(
        write(
            "defaults:\n  ssh_user: ops\n  ssh_port: 2222\n  vram_margin_mib: 1024\n"
            + ONE_HOST
            + "  - name: spark-2\n    address: spark-2.lan\n    ssh_port: 22\n"
        )
    )
    assert inventory.hosts == [
        HostConfig(
            name="spark-1",
            address="192.168.1.21",
            ssh_user="ops",
            ssh_port=2222,
            vram_margin_mib=1024,
        ),
        HostConfig(
            name="spark-2", address="spark-2.lan", ssh_user="ops", ssh_port=22, vram_margin_mib=1024
        ),
    ]
    assert inventory.services == []
    assert inventory.simulated is False


def test_it_applies_builtin_defaults(write):
    inventory = load_inventory(write(ONE_HOST))
    assert inventory.hosts == [
        HostConfig(
            name="spark-1",
            address="192.168.1.21",
            ssh_user="arbiter",
            ssh_port=22,
            ssh_key=None,
            known_hosts=None,
            sampling="ssh",
            vram_budget_mib=None,
            vram_margin_mib=0,
        )
    ]


def test_it_fills_service_defaults_from_capabilities(write):
    inventory = load_inventory(
        write(service_with("    capabilities: [llm, embeddings, tts, audio]\n"))
    )
    assert inventory.services == [
        ServiceConfig(
            name="chat",
            host="spark-1",
            base_url="http://192.168.1.21:8000",
            capabilities=("llm", "embeddings", "tts", "audio"),
            kind="vllm",
            health_path="/health",
            request_paths=(
                "/v1/chat/completions",
                "/v1/completions",
                "/v1/embeddings",
                "/v1/audio/speech",
            ),
            vram_resident_mib=0,
            can_coexist_with=(),
            load_route=None,
            unload_route=None,
            disabled=False,
        )
    ]


def test_it_resolves_relative_key_paths_against_the_yaml_directory(tmp_path, monkeypatch):
    config_dir = tmp_path / "etc"
    (config_dir / "keys").mkdir(parents=True)
    (config_dir / "keys" / "id_ed25519").write_text("key")
    (config_dir / "known_hosts").write_text("")
    (config_dir / "cluster.yaml").write_text(
        "defaults:\n  known_hosts: known_hosts\n" + host_with("    ssh_key: keys/id_ed25519\n")
    )
    # Started from elsewhere: paths must not depend on the working directory.
    monkeypatch.chdir(tmp_path)
    inventory = load_inventory("etc/cluster.yaml")
    assert inventory.hosts[0].ssh_key == str(config_dir / "keys" / "id_ed25519")
    assert inventory.hosts[0].known_hosts == str(config_dir / "known_hosts")


def test_it_expands_home_in_key_paths(write, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("key")
    inventory = load_inventory(write(host_with("    ssh_key: ~/.ssh/id_ed25519\n")))
    assert inventory.hosts[0].ssh_key == str(tmp_path / ".ssh" / "id_ed25519")


def test_it_lets_a_host_opt_out_of_the_default_key(write, tmp_path):
    (tmp_path / "id").write_text("key")
    inventory = load_inventory(write("defaults:\n  ssh_key: id\n" + host_with("    ssh_key: ~\n")))
    assert inventory.hosts[0].ssh_key is None


def test_it_treats_an_empty_services_key_as_no_services(write):
    inventory = load_inventory(write(ONE_HOST + "services:\n"))
    assert inventory.services == []


def test_it_marks_a_simulated_file(write):
    inventory = load_inventory(write("simulated: true\n" + ONE_HOST))
    assert inventory.simulated is True


def test_it_accepts_ipv6_and_strips_the_trailing_slash_of_base_url(write):
    text = service_with("    capabilities: [stt]\n").replace("192.168.1.21\n", "'fd00::21'\n")
    text = text.replace("http://192.168.1.21:8000", "https://[fd00::21]:8000/whisper/")
    inventory = load_inventory(write(text))
    assert inventory.hosts[0].address == "fd00::21"
    assert inventory.services[0].base_url == "https://[fd00::21]:8000/whisper"


def test_it_loads_the_documented_example():
    inventory = load_inventory(EXAMPLE)
    assert [host.name for host in inventory.hosts] == ["spark-1", "spark-2", "workstation"]
    assert [host.sampling for host in inventory.hosts] == ["ssh", "ssh", "nvml"]
    services = {service.name: service for service in inventory.services}
    assert services["tts-kokoro"].can_coexist_with == ("stt-whisper",)
    assert services["image-flux"].disabled is True
    assert {service.kind for service in inventory.services} == {"vllm", "http"}
