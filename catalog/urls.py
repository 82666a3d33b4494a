from django.urls import path

from catalog import views

app_name = "catalog"

urlpatterns = [
    path("", views.index, name="index"),
    path("add/<str:source>", views.add_model, name="add"),
    path("<slug:key>/disk", views.disk_fragment, name="disk"),
]
