"""Inventory fixtures: edits are an admin's, and the helpers the inventory tests share."""

import json

import pytest

from arbiter.inventory import InventoryError, load_inventory


@pytest.fixture
def key_client(admin_key_client):
    """Inventory edits are an admin's (arbiter.route_policy); an operator key gets 403
    (tests/core/test_route_matrix.py)."""
    return admin_key_client


def patch(client, path: str, body: object):
    """PATCH `path` with a JSON body."""
    return client.patch(path, data=json.dumps(body), content_type="application/json")


def problems_of(path: str) -> list[str]:
    """The problems load_inventory reports for the file at `path` (it must refuse it)."""
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    return caught.value.problems
