from django.apps import AppConfig


class ArbiterConfig(AppConfig):
    name = "arbiter"
    verbose_name = "Arbiter core"

    def ready(self) -> None:
        from arbiter import checks  # noqa: F401  (registers system checks)
