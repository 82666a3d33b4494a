"""No SSRF: webhook URLs that reach internal addresses are refused, at registration and at
every delivery (the address checked is the address connected to).

Names are resolved through `coordination.webhooks.addresses.resolve`, the one seam the
`dns` fixture replaces with a table (other names go to the real resolver). Receivers are
real HTTP servers on 127.0.0.1; loopback is allowed only where a test says so.
"""

import socket
import threading
import time
from itertools import count

import pytest
from django.db import transaction
from django.test import Client

from coordination import webhooks
from coordination.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from coordination.webhooks import addresses
from tests.coordination.test_webhook_receiver import Receiver, Reply

pytestmark = pytest.mark.django_db

PUBLIC = "93.184.215.14"  # example.com's address: public
NAMES = {
    "internal.example": [["10.1.2.3"]],
    "metadata.example": [["169.254.169.254"]],
    "mixed.example": [[PUBLIC, "127.0.0.1"]],  # one bad address is enough
    "v6.example": [["fd12:3456::1"]],
    "mapped.example": [["::ffff:192.168.0.1"]],
    "cgnat.example": [["100.100.1.1"]],
    "public.example": [[PUBLIC]],
}

# Every spelling of an internal address, names resolving to one, and URL tricks.
CORPUS = [
    # IPv4 loopback in every form inet_aton (and so the C resolver) accepts
    "http://127.0.0.1/",
    "http://127.0.0.1:8000/hook",
    "https://127.0.0.1/",
    "HTTP://127.0.0.1/",
    "http://2130706433/",  # decimal
    "http://0177.0.0.1/",  # octal
    "http://017700000001/",  # octal, one part
    "http://0x7f.1/",  # hex, short
    "http://0x7f000001/",  # hex, one part
    "http://127.1/",  # short form
    "http://127.0.0.1./",  # trailing dot
    # other internal IPv4 ranges
    "http://0.0.0.0/",
    "http://0/",
    "http://10.0.0.5:9000/hook",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://0xa9fea9fe/",  # metadata, hex
    "http://2852039166/",  # metadata, decimal
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://224.0.0.1/",  # multicast
    "http://240.0.0.1/",  # reserved
    "http://255.255.255.255/",
    # IPv6
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]:8080/",
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[FE80::1]/",  # uppercase
    "http://[fe80::1%25eth0]/",  # zone id
    "http://[fd00::1]/",  # unique-local
    "http://[fc00::1]/",
    "http://[fec0::1]/",  # site-local (deprecated)
    "http://[ff02::1]/",  # multicast
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[2002:7f00:1::]/",  # 6to4 carrying 127.0.0.1
    "http://[2002:a9fe:a9fe::1]/",  # 6to4 carrying the metadata address
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 carrying the metadata address
    # names
    "http://localhost/",
    "http://LOCALHOST:8080/",
    "http://localhost./",
    "http://api.localhost/",
    "http://internal.example/",
    "http://INTERNAL.EXAMPLE./",
    "http://metadata.example/latest/meta-data/",
    "http://mixed.example/",
    "http://v6.example/",
    "http://mapped.example/",
    "http://cgnat.example/",
    # userinfo and percent-encoding tricks
    "http://evil.example@127.0.0.1/",
    "http://public.example@169.254.169.254/",
    "http://user:pass@[::1]:8080/",
    "http://%31%32%37.0.0.1/",
    "http://%6c%6f%63%61%6c%68%6f%73%74/",
]


@pytest.fixture(autouse=True)
def _nothing_allowed(settings):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = []


@pytest.fixture
def dns(monkeypatch):
    """A resolver table at the seam: name -> answers, one per lookup (the last repeats)."""
    table = {name: [list(a) for a in answers] for name, answers in NAMES.items()}
    lookups: list[str] = []
    real = addresses.resolve

    def resolve(host: str, port: int) -> list[str]:
        name = host.lower().removesuffix(".")
        lookups.append(name)
        if name not in table:
            return real(host, port)
        answers = table[name]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(addresses, "resolve", resolve)
    return table


def post(client: Client, url: str):
    return client.post("/api/webhooks", {"url": url}, content_type="application/json")


def emit(payload=None) -> WebhookEvent:
    with transaction.atomic():
        return webhooks.emit_event("swap_complete", payload or {"swap_id": 1})


def test_it_is_tested_against_a_big_enough_corpus_of_distinct_internal_urls():
    assert len(CORPUS) >= 40
    assert len(set(CORPUS)) == len(CORPUS)


@pytest.mark.parametrize("url", CORPUS)
def test_it_refuses_internal_urls_at_registration(admin_key_client, dns, url):
    response = post(admin_key_client, url)
    assert response.status_code == 422, (url, response.content)
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert error["field"] == "url"
    assert error["message"].startswith("url: ")
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://2130706433/", "127.0.0.1 is a loopback address"),
        ("http://0x7f.1/", "127.0.0.1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "carries 127.0.0.1"),
        ("http://169.254.169.254/", "the cloud metadata address"),
        ("http://internal.example/", "internal.example → 10.1.2.3 is a private address"),
        ("http://[2002:a9fe:a9fe::1]/", "carries 169.254.169.254"),
    ],
)
def test_it_names_the_address_and_the_setting_in_the_refusal(admin_key_client, dns, url, words):
    message = post(admin_key_client, url).json()["error"]["message"]
    assert words in message
    assert "ARBITER_WEBHOOK_ALLOW_NETWORKS" in message


@pytest.mark.parametrize(
    "spelling", ["2130706433", "0177.0.0.1", "017700000001", "0x7f.1", "0x7f000001", "127.1"]
)
def test_it_reads_legacy_spellings_as_the_address_the_c_resolver_connects_to(spelling):
    """inet_aton semantics: getaddrinfo turns every one into 127.0.0.1, and so do we."""
    assert {i[4][0] for i in socket.getaddrinfo(spelling, 80, type=socket.SOCK_STREAM)} == {
        "127.0.0.1"
    }
    assert str(addresses.literal_address(spelling)) == "127.0.0.1"


@pytest.mark.parametrize(
    "url",
    [
        "https://public.example/hook",
        "http://8.8.8.8/",
        "http://[2606:4700:4700::1111]/",
        "http://[2002:808:808::1]/",  # 6to4 carrying a public address
        "https://hooks.example.invalid/",  # does not resolve (yet): checked at delivery
    ],
)
def test_it_accepts_public_urls(admin_key_client, dns, url):
    response = post(admin_key_client, url)
    assert response.status_code == 201, response.content
    assert WebhookEndpoint.objects.get().url == url


def test_it_accepts_and_delivers_to_an_allowed_network(admin_key_client, settings):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["127.0.0.0/8"]
    with Receiver() as receiver:
        response = post(admin_key_client, receiver.url)
        assert response.status_code == 201, response.content
        delivery = WebhookDelivery.objects.get(event=emit())
        result = webhooks.attempt_delivery(delivery.pk)
    assert result.status == WebhookDelivery.DELIVERED
    assert len(receiver.requests) == 1


def test_it_does_not_allow_another_network_when_one_is_allowed(admin_key_client, settings):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["10.0.0.0/8", "fd00::/8"]
    assert post(admin_key_client, "http://10.9.8.7/").status_code == 201
    assert post(admin_key_client, "http://[fd00::5]/").status_code == 201
    for url in ("http://127.0.0.1/", "http://192.168.0.1/", "http://[fc00::1]/"):
        assert post(admin_key_client, url).json()["error"]["field"] == "url"
    assert WebhookEndpoint.objects.count() == 2


def test_it_connects_to_the_address_it_checked(dns, settings):
    """A name only the resolver seam knows reaches the receiver: the socket is opened to
    the checked IP, while the Host header keeps the name."""
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["127.0.0.1/32"]
    dns["pinned.example"] = [["127.0.0.1"]]
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        webhooks.create_endpoint(f"http://pinned.example:{port}/hook")
        delivery = WebhookDelivery.objects.get(event=emit())
        result = webhooks.attempt_delivery(delivery.pk)
    assert result.status == WebhookDelivery.DELIVERED
    assert receiver.requests[0].headers["host"] == f"pinned.example:{port}"


def test_it_refuses_dns_rebinding_at_delivery(dns):
    """Public when registered, loopback when delivered: nothing is sent, and the attempt
    is a failed one saying why."""
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        dns["rebind.example"] = [[PUBLIC], ["127.0.0.1"]]
        endpoint, _ = webhooks.create_endpoint(f"http://rebind.example:{port}/hook")
        delivery = WebhookDelivery.objects.get(event=emit())
        result = webhooks.attempt_delivery(delivery.pk)
        time.sleep(0.1)
    assert receiver.requests == []
    assert result.status == WebhookDelivery.PENDING  # retried later, checked again then
    assert result.status_code is None
    attempt = delivery.attempt_log.get()
    assert attempt.status_code is None
    assert attempt.error.startswith("not sent: rebind.example → 127.0.0.1 is a loopback")
    endpoint.refresh_from_db()
    assert endpoint.enabled


def test_it_refuses_an_endpoint_stored_before_the_guard_at_delivery():
    with Receiver() as receiver:
        endpoint, _ = webhooks.create_endpoint("https://public.example.invalid/hook")
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url=receiver.url)
        delivery = WebhookDelivery.objects.get(event=emit())
        webhooks.attempt_delivery(delivery.pk)
        time.sleep(0.1)
    assert receiver.requests == []
    assert "127.0.0.1 is a loopback address" in delivery.attempt_log.get().error


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://2130706433/",
        "internal",  # a loopback receiver, below
    ],
)
def test_it_does_not_follow_a_redirect_to_an_internal_address(settings, location):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["127.0.0.1/32"]
    with Receiver() as internal:
        target = internal.url if location == "internal" else location
        with Receiver(Reply(307, headers={"Location": target})) as hook:
            webhooks.create_endpoint(hook.url)
            delivery = WebhookDelivery.objects.get(event=emit())
            result = webhooks.attempt_delivery(delivery.pk)
            time.sleep(0.1)
    assert (result.status, result.status_code) == ("pending", 307)
    assert len(hook.requests) == 1
    assert internal.requests == []
    assert "redirect not followed" in delivery.attempt_log.get().error


class DripServer:
    """Answers a status line, then one header byte every 0.2 s, forever: every read
    succeeds well within any per-read timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in count():
                    if self.stop.wait(0.2):
                        break
                    try:
                        conn.sendall(b"a")
                    except OSError:
                        break

    def __enter__(self) -> "DripServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_it_gives_each_attempt_a_total_deadline(settings):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["127.0.0.0/8"]
    settings.ARBITER_WEBHOOK_DELIVERY_DEADLINE = 1.0
    with DripServer() as drip:
        webhooks.create_endpoint(drip.url)
        delivery = WebhookDelivery.objects.get(event=emit())
        started = time.monotonic()
        result = webhooks.attempt_delivery(delivery.pk)
        took = time.monotonic() - started
    assert 0.9 <= took < 3.0
    assert result.status == WebhookDelivery.PENDING
    attempt = delivery.attempt_log.get()
    assert attempt.status_code is None
    assert "delivery deadline of 1 s passed" in attempt.error


def test_it_caps_the_stored_response_excerpt(settings):
    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["127.0.0.0/8"]
    with Receiver(Reply(500, body=b"x" * 1_000_000)) as receiver:
        webhooks.create_endpoint(receiver.url)
        delivery = WebhookDelivery.objects.get(event=emit())
        webhooks.attempt_delivery(delivery.pk)
    assert delivery.attempt_log.get().response_excerpt == "x" * 500


def test_it_fails_the_system_check_for_a_bad_allow_networks_entry(settings):
    from arbiter.checks import check_webhook_allow_networks

    settings.ARBITER_WEBHOOK_ALLOW_NETWORKS = ["10.0.0.0/8", "lan"]
    errors = check_webhook_allow_networks(None)
    assert [e.id for e in errors] == ["arbiter.E002"]
    assert "'lan'" in errors[0].msg
