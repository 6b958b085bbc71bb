"""The OpenAI-compatible /v1 API: the request pipeline, its views, validation and the compat APIs."""
