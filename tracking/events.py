"""What tracking is told about one finished /v1 call: plain values, no gateway types.

The gateway builds one at the end of each call (gateway.api.calls.finish) and hands it to
tracking.recorder.record; the recorder's writer thread turns it into a UsageRecord.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class UsageEvent:
    request_id: str
    endpoint: str
    started_at: float  # wall clock (Unix seconds)
    latency_ms: float | None = None
    ttft_ms: float | None = None
    client_ip: str = ""
    # Who called (all empty for the master key or a caller refused before its key was known).
    key_id: int | None = None
    key_name: str = ""
    user_id: int | None = None
    username: str = ""
    key_tags: dict[str, str] = field(default_factory=dict)
    # What it asked for, and the deployment that answered (all empty when none was chosen).
    model: str = ""
    deployment_id: int | None = None
    provider: str = ""
    upstream_model: str = ""
    litellm_model: str = ""  # the tokenizer's name, for counting tokens the upstream did not report
    # How it ended.
    status: int = 0
    error_code: str | None = None
    error_message: str = ""
    streamed: bool = False
    client_disconnected: bool = False
    attempts: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    request_body: dict[str, Any] | None = None
    response_body: Any = None
    # Content streamed: counted when the upstream's usage never came (the client left early).
    stream_text: list[str] = field(default_factory=list)

    @property
    def routed(self) -> bool:
        """A deployment was chosen (the call reached, or was about to reach, an upstream)."""
        return self.deployment_id is not None
