from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from dashboard import live
        from dashboard.auth import close_sockets_on_logout

        live.connect()

        user_logged_out.connect(close_sockets_on_logout, dispatch_uid="dashboard-logout")
