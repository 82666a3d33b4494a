"""`manage.py trust_host`: show the fingerprint, record the key only on confirmation."""

import io

import asyncssh
import pytest
from django.core.management import CommandError, call_command

from arbiter.inventory import apply_inventory, load_inventory
from arbiter.models import Host

pytestmark = pytest.mark.django_db


@pytest.fixture
def untrusted_host(sim_cluster):
    """sim-a loaded from the inventory, but without the simulator's known_hosts file."""
    apply_inventory(load_inventory(sim_cluster.config_path))
    Host.objects.filter(name="sim-a").update(known_hosts="")
    return Host.objects.get(name="sim-a")


def _fingerprint(sim_cluster, name="sim-a") -> str:
    line = sim_cluster.hosts[name].host_key_line()
    return asyncssh.import_public_key(line).get_fingerprint()


def _trust(monkeypatch, answer: str, *args: str) -> str:
    monkeypatch.setattr("sys.stdin", io.StringIO(answer))
    out = io.StringIO()
    call_command("trust_host", *args, stdout=out)
    return out.getvalue()


def test_it_records_the_key_when_confirmed(sim_cluster, untrusted_host, monkeypatch):
    output = _trust(monkeypatch, "y\n", "sim-a")
    assert _fingerprint(sim_cluster) in output
    host = Host.objects.get(name="sim-a")
    assert host.trusted_host_keys == sim_cluster.hosts["sim-a"].host_key_line()


@pytest.mark.parametrize("answer", ["n\n", "\n", "maybe\n", ""])
def test_it_records_nothing_without_a_yes(sim_cluster, untrusted_host, monkeypatch, answer):
    with pytest.raises(CommandError, match="not trusted"):
        _trust(monkeypatch, answer, "sim-a")
    assert Host.objects.get(name="sim-a").trusted_host_keys == ""


def test_it_refuses_a_changed_key_without_replace(sim_cluster, untrusted_host, monkeypatch):
    _trust(monkeypatch, "y\n", "sim-a")
    sim_cluster.rotate_host_key("sim-a")
    with pytest.raises(CommandError, match="CHANGED"):
        _trust(monkeypatch, "y\n", "sim-a")
    assert Host.objects.get(name="sim-a").trusted_host_keys != (
        sim_cluster.hosts["sim-a"].host_key_line()
    )


def test_it_replaces_a_changed_key_when_asked(sim_cluster, untrusted_host, monkeypatch):
    _trust(monkeypatch, "y\n", "sim-a")
    sim_cluster.rotate_host_key("sim-a")
    _trust(monkeypatch, "y\n", "sim-a", "--replace")
    assert Host.objects.get(name="sim-a").trusted_host_keys == (
        sim_cluster.hosts["sim-a"].host_key_line()
    )


def test_it_says_when_the_key_is_already_trusted(sim_cluster, untrusted_host, monkeypatch):
    _trust(monkeypatch, "y\n", "sim-a")
    assert "already trusted" in _trust(monkeypatch, "", "sim-a")


def test_it_names_an_unknown_host(db):
    with pytest.raises(CommandError, match="no host named 'nope'"):
        call_command("trust_host", "nope")


def test_it_reports_an_unreachable_host(sim_cluster, untrusted_host, monkeypatch):
    sim_cluster.go_down("sim-a")
    with pytest.raises(CommandError, match="cannot connect"):
        _trust(monkeypatch, "y\n", "sim-a")
