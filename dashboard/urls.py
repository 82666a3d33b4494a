from django.urls import path

from dashboard import actions, catalog, views

app_name = "dashboard"

urlpatterns = [
    path("", views.index, name="index"),
    path("fragments/hosts", views.hosts_fragment, name="hosts_fragment"),
    path("fragments/services", views.services_fragment, name="services_fragment"),
    path("fragments/clients", views.clients_fragment, name="clients_fragment"),
    path("hosts/<slug:name>/history", views.host_history, name="host_history"),
    path("fragments/swaps", views.swaps_fragment, name="swaps_fragment"),
    path("swaps/<int:swap_id>/log", views.swap_log_fragment, name="swap_log"),
    path("fragments/lock", views.lock_fragment, name="lock_fragment"),
    path("fragments/leases", views.lease_fragment, name="lease_fragment"),
    path(
        "fragments/lock/force-release",
        views.lock_force_release_fragment,
        name="lock_force_release_fragment",
    ),
    path("fragments/schedule", views.schedule_fragment, name="schedule_fragment"),
    path("fragments/webhooks", views.webhook_fragment, name="webhook_fragment"),
    path("keys/", views.keys, name="keys"),
    path("fragments/keys", views.keys_fragment, name="keys_fragment"),
    path("webhooks/", views.webhooks, name="webhooks"),
    path("audit/", views.audit, name="audit"),
    path("timeline/", views.timeline, name="timeline"),
    # The catalog page and its htmx writes (dashboard/catalog.py).
    path("catalog/", catalog.index, name="catalog"),
    path("catalog/add/<str:source>", catalog.add_model, name="catalog_add"),
    path("catalog/<slug:key>/disk", catalog.disk_fragment, name="catalog_disk"),
    path("catalog/<slug:key>/disk/delete", catalog.delete_from_disk, name="catalog_disk_delete"),
    path("catalog/<slug:key>/download", catalog.download, name="catalog_download"),
    path("catalog/<slug:key>/downloads", catalog.download_progress, name="catalog_downloads"),
    path("catalog/<slug:key>/swap", catalog.swap_in, name="catalog_swap"),
    # The UI's writes (htmx POSTs answering with fragments); levels in arbiter/route_policy.py.
    path("actions/keys", actions.key_create, name="key_create"),
    path("actions/keys/<int:key_id>/revoke", actions.key_revoke, name="key_revoke"),
    path("actions/webhooks", actions.webhook_create, name="webhook_create"),
    path("actions/webhooks/<int:webhook_id>/edit", actions.webhook_edit, name="webhook_edit"),
    path("actions/webhooks/<int:webhook_id>/delete", actions.webhook_delete, name="webhook_delete"),
    path("actions/webhooks/<int:webhook_id>/test", actions.webhook_test, name="webhook_test"),
    path(
        "actions/webhooks/deliveries/<int:delivery_id>/redeliver",
        actions.redeliver,
        name="redeliver",
    ),
    path("actions/services/<str:name>", actions.service_toggle, name="service_toggle"),
    path(
        "actions/hosts/<slug:name>/orphans/<str:container>/remove",
        actions.orphan_remove,
        name="orphan_remove",
    ),
    path("actions/swaps/<int:swap_id>/cancel", actions.swap_cancel, name="swap_cancel"),
    path("actions/lock/force-release", actions.force_release, name="force_release"),
    path(
        "actions/leases/<int:lease_id>/force-release",
        actions.lease_force_release,
        name="lease_force_release",
    ),
]
