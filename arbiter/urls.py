from django.contrib.auth import views as auth_views
from django.urls import include, path

from arbiter import views
from arbiter.api.root import api
from arbiter.broker import ops as broker_ops

urlpatterns = [
    path("api/", api.urls),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", broker_ops.readyz, name="readyz"),
    path("metrics", broker_ops.metrics_view, name="metrics"),
    path("", include("arbiter.broker.urls")),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("dashboard.urls")),
]

handler404 = "arbiter.views.not_found"
