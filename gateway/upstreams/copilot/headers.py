"""The headers GitHub and Copilot expect of an editor integration."""

from __future__ import annotations

import uuid
from typing import Any

# What the VS Code Copilot Chat extension sends (the same values as LiteLLM's github_copilot provider).
EDITOR_VERSION = "vscode/1.95.0"
EDITOR_PLUGIN_VERSION = "copilot-chat/0.26.7"
USER_AGENT = "GitHubCopilotChat/0.26.7"
INTEGRATION_ID = "vscode-chat"
GITHUB_API_VERSION = "2025-04-01"
DEFAULT_API_BASE = "https://api.githubcopilot.com"


def github_headers(github_token: str = "") -> dict[str, str]:
    headers = {
        "Accept": "application/json",
        "Editor-Version": EDITOR_VERSION,
        "Editor-Plugin-Version": EDITOR_PLUGIN_VERSION,
        "User-Agent": USER_AGENT,
        "X-GitHub-Api-Version": GITHUB_API_VERSION,
    }
    if github_token:
        headers["Authorization"] = f"token {github_token}"
    return headers



def copilot_headers(messages: Any) -> dict[str, str]:
    """The headers Copilot's API requires of an editor integration, plus the per-request hints it uses."""
    headers = {
        "Editor-Version": EDITOR_VERSION,
        "Editor-Plugin-Version": EDITOR_PLUGIN_VERSION,
        "Copilot-Integration-Id": INTEGRATION_ID,
        "User-Agent": USER_AGENT,
        "Openai-Intent": "conversation-panel",
        "X-GitHub-Api-Version": GITHUB_API_VERSION,
        "X-Request-Id": str(uuid.uuid4()),
        # Copilot bills "user" turns as premium requests and "agent" follow-ups (tool results) not.
        "X-Initiator": "agent" if _has_role(messages, "assistant", "tool") else "user",
    }
    if _has_image(messages):
        headers["Copilot-Vision-Request"] = "true"
    return headers


def _has_role(messages: Any, *roles: str) -> bool:
    return isinstance(messages, list) and any(isinstance(m, dict) and m.get("role") in roles for m in messages)


def _has_image(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            return True
    return False

