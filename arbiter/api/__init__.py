"""The JSON API at /api: `root` (the one NinjaAPI and its error mapping) and one router
module per noun (swaps, status, inventory, keys, audit, host checks). `snapshot` builds
the cluster's current picture that `/api/status` and the dashboard both show."""
