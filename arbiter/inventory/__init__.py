"""The cluster inventory: the YAML file named by `ARBITER_CONFIG`.

`load_inventory` validates it field by field into frozen values (or raises
`InventoryError` listing every problem); `apply_inventory` writes them to the database.
"""

from .apply import apply_inventory
from .config import HostConfig, Inventory, ServiceConfig
from .loader import load_inventory
from .problems import InventoryError

__all__ = [
    "HostConfig",
    "Inventory",
    "InventoryError",
    "ServiceConfig",
    "apply_inventory",
    "load_inventory",
]
