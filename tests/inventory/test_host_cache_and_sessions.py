"""A host's hub cache directory and SSH session budget in the inventory file."""

import pytest

from arbiter.inventory import InventoryError, apply_inventory, load_inventory
from arbiter.models import Host

HOST = """
hosts:
  - name: spark-1
    address: 192.168.1.21
"""


def load(tmp_path, extra: str = ""):
    path = tmp_path / "cluster.yaml"
    path.write_text(HOST + extra)
    return load_inventory(path)


def test_it_defaults_to_the_users_cache_and_eight_sessions(tmp_path):
    (host,) = load(tmp_path).hosts
    assert (host.hf_cache_dir, host.max_ssh_sessions) == (None, 8)


@pytest.mark.django_db
def test_it_reads_both_and_stores_them_on_the_host(tmp_path):
    inventory = load(tmp_path, "    hf_cache_dir: /data/hf/hub\n    max_ssh_sessions: 4\n")
    apply_inventory(inventory)
    host = Host.objects.get(name="spark-1")
    assert (host.hf_cache_dir, host.max_ssh_sessions, host.home_dir) == ("/data/hf/hub", 4, "")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("hf_cache_dir: data/hf", "must be an absolute, normalized path without ':' or ','"),
        ("hf_cache_dir: /data/../etc", "must be an absolute, normalized path"),
        ("hf_cache_dir: '/data/a:b'", "without ':' or ','"),
        ("max_ssh_sessions: 0", "must be an integer 1-100"),
        ("max_ssh_sessions: '8'", "must be an integer 1-100"),
    ],
)
def test_it_reports_bad_values_with_the_key(tmp_path, line, reason):
    with pytest.raises(InventoryError) as caught:
        load(tmp_path, f"    {line}\n")
    key = line.split(":")[0]
    assert any(f"hosts[0].{key}" in p and reason in p for p in caught.value.problems), (
        caught.value.problems
    )
