"""No template prints a comment as text.

Django's `{# #}` ends at the end of its line: one spread over several lines is not a
comment at all and is printed verbatim (issue 14: '{# Broker traffic per client ... #}'
on the dashboard). Longer comments use `{% comment %}...{% endcomment %}`.
"""

from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from arbiter.models import GpuSample, Host

TEMPLATE_DIRS = [Path(d) for d in settings.TEMPLATES[0]["DIRS"]] + [
    path for path in Path(settings.BASE_DIR).glob("*/templates") if ".venv" not in path.parts
]


def unclosed_comments(text: str) -> list[int]:
    """Line numbers where a `{#` has no `#}` after it on the same line."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        at = 0
        while (start := line.find("{#", at)) >= 0:
            end = line.find("#}", start + 2)
            if end < 0:
                found.append(number)
                break
            at = end + 2
    return found


def test_it_finds_a_multi_line_comment_with_the_check():
    assert unclosed_comments("{# one line #}\n{# two\n   lines #}\n{{ x }}") == [2]
    assert unclosed_comments("{# a #} text {# b #}") == []


def test_it_finds_no_template_with_a_multi_line_hash_comment():
    templates = [path for folder in TEMPLATE_DIRS for path in folder.rglob("*.html")]
    assert len(templates) > 20  # the scan sees the project's templates
    bad = {
        str(path.relative_to(settings.BASE_DIR)): lines
        for path in templates
        if (lines := unclosed_comments(path.read_text()))
    }
    assert bad == {}, "use {% comment %}…{% endcomment %} for comments longer than a line"


@pytest.fixture
def sampled_host(db):
    """A host with a minute of samples, so the cards and their plots are rendered."""
    now = timezone.now()
    host = Host.objects.create(name="gpu-1", address="10.0.0.1", last_sample_at=now)
    GpuSample.objects.bulk_create(
        GpuSample(
            host=host,
            taken_at=now - timedelta(seconds=2 * tick),
            index=index,
            name="H100",
            utilization_pct=30.0,
            memory_used_mib=1000.0,
            memory_total_mib=80_000.0,
        )
        for tick in range(30)
        for index in range(2)
    )
    return host


@pytest.mark.parametrize("path", ["/", "/fragments/hosts", "/hosts/gpu-1/history"])
def test_it_prints_no_comment_on_any_page(alice, sampled_host, path):
    client = Client()
    client.force_login(alice)
    response = client.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="plot-gpu-1-1"' in html  # the host's plots were rendered
    assert "{#" not in html and "#}" not in html
