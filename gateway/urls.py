from django.urls import path, re_path

from gateway.api import views
from gateway.api.compat import views as compat

urlpatterns = [
    path("v1/chat/completions", views.chat_completions),
    path("chat/completions", views.chat_completions),
    path("v1/models", views.list_models),
    path("models", views.list_models),
    # Public names contain slashes (google/gemini-2.5-flash).
    path("v1/models/<path:model>", views.retrieve_model),
    path("v1/quota", views.quota_status),
    path("v1/audio/speech", views.audio_speech),
    path("audio/speech", views.audio_speech),
    path("v1/embeddings", views.embeddings),
    path("embeddings", views.embeddings),
    # Anthropic's Messages API and OpenAI's Responses API, over the chat path (gateway/api/compat/).
    path("v1/messages", compat.messages),
    path("v1/messages/count_tokens", compat.count_tokens),
    path("v1/responses", compat.create_response),
    path("v1/responses/<str:response_id>", compat.response_detail),
    re_path(r"^v1(?:/(?P<rest>.*))?$", views.v1_not_found),
    path("health/liveliness", views.liveliness),
    path("health/liveness", views.liveliness),
    path("health/readiness", views.readiness),
]
