"""The deployment's container name is the default for catalog models."""

import pytest
from django.test import override_settings

from catalog.validation import validate_catalog_fields

pytestmark = pytest.mark.django_db


@override_settings(ARBITER_CONTAINER_NAME="spark-vllm")
@pytest.mark.parametrize("given", [{}, {"container_name": None}])
def test_it_defaults_to_the_configured_container_name(given):
    cleaned = validate_catalog_fields({"key": "qwen", "hub_repo": "Qwen/Qwen3-0.6B", **given})
    assert cleaned["container_name"] == "spark-vllm"


def test_it_keeps_an_explicit_container_name():
    cleaned = validate_catalog_fields(
        {"key": "qwen", "hub_repo": "Qwen/Qwen3-0.6B", "container_name": "mine"}
    )
    assert cleaned["container_name"] == "mine"
