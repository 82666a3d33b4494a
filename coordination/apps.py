from django.apps import AppConfig


class CoordinationConfig(AppConfig):
    name = "coordination"

    def ready(self) -> None:
        from arbiter.engine.swaps.store import swap_finished
        from coordination.webhooks.swap_events import on_swap_finished

        swap_finished.connect(on_swap_finished, dispatch_uid="coordination-swap-webhooks")
