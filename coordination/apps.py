from django.apps import AppConfig


class CoordinationConfig(AppConfig):
    name = "coordination"

    def ready(self) -> None:
        # Importing the huey tasks registers them and gives the webhook outbox its waker.
        from arbiter import events
        from coordination import tasks  # noqa: F401
        from coordination.webhooks import alerts
        from coordination.webhooks.swap_events import on_swap_finished

        events.swap_finished.connect(on_swap_finished, dispatch_uid="coordination-swap-webhooks")
        events.service_health_changed.connect(
            alerts.on_service_health_changed, dispatch_uid="coordination-service-alerts"
        )
        events.host_online_changed.connect(
            alerts.on_host_online_changed, dispatch_uid="coordination-host-alerts"
        )
        events.restart_gave_up.connect(
            alerts.on_restart_gave_up, dispatch_uid="coordination-restart-alerts"
        )
