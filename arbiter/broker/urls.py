"""The broker's routes, included at the root by `arbiter.urls`."""

from django.urls import path, re_path

from arbiter.broker import views

MODEL_ROUTES = (
    "chat/completions",
    "completions",
    "embeddings",
    "audio/speech",
    "audio/transcriptions",
    "audio/translations",
)

urlpatterns = [
    *(path(f"v1/{route}", views.by_model) for route in MODEL_ROUTES),
    path("v1/models", views.models, name="broker-models"),
    re_path(r"^v1/(?P<capability>llm|tts|stt|image)/(?P<rest>.*)$", views.by_capability),
    re_path(r"^audio/(?P<rest>.*)$", views.audio),
    re_path(r"^v1/(?P<rest>.*)$", views.unknown),
]
