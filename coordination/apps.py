from django.apps import AppConfig


class CoordinationConfig(AppConfig):
    name = "coordination"

    def ready(self) -> None:
        # Importing the huey tasks registers them and gives the webhook outbox its waker.
        from arbiter.events import swap_finished
        from coordination import tasks  # noqa: F401
        from coordination.webhooks.swap_events import on_swap_finished

        swap_finished.connect(on_swap_finished, dispatch_uid="coordination-swap-webhooks")
