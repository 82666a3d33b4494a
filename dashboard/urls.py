from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.index, name="index"),
    path("fragments/hosts", views.hosts_fragment, name="hosts_fragment"),
    path("fragments/services", views.services_fragment, name="services_fragment"),
    path("fragments/clients", views.clients_fragment, name="clients_fragment"),
    path("fragments/swaps", views.swaps_fragment, name="swaps_fragment"),
    path("swaps/<int:swap_id>/log", views.swap_log_fragment, name="swap_log"),
    path("fragments/lock", views.lock_fragment, name="lock_fragment"),
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
]
