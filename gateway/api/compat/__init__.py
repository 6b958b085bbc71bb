"""Other clients' APIs over the OpenAI chat path: Anthropic's Messages API and OpenAI's Responses API.

Each request is translated to an OpenAI chat body and goes through the same keys, quotas, routing,
fallback and usage recording as /v1/chat/completions; the answer is translated back.
"""
