"""What tracking shows of the gateway, handed over by the gateway when it starts (gateway.apps.GatewayConfig).

The gateway imports tracking (it hands each finished call to the recorder); tracking importing the gateway
back would close a cycle between the two apps. A process without the gateway app shows no quotas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _no_quotas() -> list[dict[str, Any]]:
    return []


def _no_prices() -> dict[int, Any]:
    return {}


@dataclass
class Gateway:
    # The dashboard's quota rows: each limited deployment's limits, used now against the limit.
    deployment_quotas: Callable[[], list[dict[str, Any]]] = _no_quotas
    # {deployment id: its price}, each with .cost(prompt_tokens, completion_tokens) -> .usd, .list_usd
    # (gateway.pricing.DeploymentPrice); the usage writer prices each batch with them.
    prices: Callable[[], dict[int, Any]] = _no_prices


gateway = Gateway()
