"""What a call costs in USD: the deployment's own price, or LiteLLM's cost map; and what free use is worth.

A deployment has a *list price* (USD per token, in and out): the price set in the admin, else the entry of
LiteLLM's cost map that matches its model. A free-tier deployment (gateway.models.Billing) costs 0, and its
list price, looked up for the model under the free tier (`openai/gpt-oss-20b:free` → `gpt-oss-20b` of a paid
host, Copilot's `claude-sonnet-4.5` → Anthropic's `claude-sonnet-4-5`), is "what this would have cost on the
paid tier".

The cost map is the JSON file LiteLLM ships and loads as `litellm.model_cost` when
LITELLM_LOCAL_MODEL_COST_MAP=True (the portal sets it): read here straight from the package, never
downloaded and without importing LiteLLM, which costs seconds and ~200 MB in a worker that may never need it
(the passthrough path). Only the per-token prices are kept.

Everything here is pure given a Deployment row (with its provider): the usage recorder prices batches of
records off the request path, and a budget check can price a request before the call with
`DeploymentPrice.estimate` from its token estimate.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

COST_MAP_FILE = "model_prices_and_context_window_backup.json"
MILLION = Decimal(1_000_000)
# Records keep ten decimal places (a hundred-millionth of a cent).
QUANTUM = Decimal("1e-10")
ZERO = Decimal(0)

# Providers whose use is free by nature in the user's setup (the built-in catalog's five): a local server, a
# GitHub token's free allowance, a Copilot subscription, Gemini's free tier. OpenRouter is free only for its
# `:free` model variants. Billing "paid" on a deployment overrides this (e.g. a Gemini key with billing on).
FREE_TIER_KINDS = frozenset({"lm_studio", "github_models", "github_copilot", "gemini"})
FREE_SUFFIX = ":free"
# When only the model's last name segment matches (a Copilot or GitHub Models id), prefer its maker's own
# price over a reseller's.
VENDOR_PROVIDERS = ("openai", "anthropic", "gemini", "vertex_ai-language-models", "vertex_ai", "xai", "mistral",
                    "deepseek")


@dataclass(frozen=True)
class Price:
    """USD per token; the `above` prices apply to the whole call once its prompt passes `threshold` tokens
    (Gemini 2.5 Pro's long-context price)."""

    input: Decimal
    output: Decimal
    source: str  # "deployment price" or "cost map: <entry>"
    threshold: int | None = None
    input_above: Decimal | None = None
    output_above: Decimal | None = None

    def of(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        long = self.threshold is not None and prompt_tokens > self.threshold
        inp = self.input_above if long and self.input_above is not None else self.input
        out = self.output_above if long and self.output_above is not None else self.output
        return (inp * prompt_tokens + out * completion_tokens).quantize(QUANTUM)

    def per_million(self) -> tuple[str, str]:
        """The prices per million tokens as plain numbers ("2.5", not "2.5000000" or "2.5E+0")."""
        return _plain(self.input * MILLION), _plain(self.output * MILLION)


@dataclass(frozen=True)
class Cost:
    usd: Decimal | None  # what the call cost (0 on a free tier); None = no price known
    list_usd: Decimal | None  # what it would have cost at the list price


@dataclass(frozen=True)
class DeploymentPrice:
    free: bool
    price: Price | None  # the list price; None = neither a deployment price nor a cost-map entry

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> Cost:
        """The cost of a finished call from its token counts (None, None when nothing was counted)."""
        if prompt_tokens is None and completion_tokens is None:
            return Cost(None, None)
        listed = self.price.of(prompt_tokens or 0, completion_tokens or 0) if self.price else None
        return Cost(ZERO if self.free else listed, listed)

    def estimate(self, prompt_tokens: int, max_completion_tokens: int) -> Decimal:
        """What a request may cost before the call, from its token estimate (the prompt's count and
        max_tokens or the default completion allowance): for a budget's admission. An unpriced
        deployment estimates 0: a budget cannot refuse what it cannot price (its records show no cost)."""
        if self.free or self.price is None:
            return ZERO
        return self.price.of(prompt_tokens, max_completion_tokens)

    def describe(self) -> str:
        """One line for the admin: how this deployment is charged."""
        if self.price is None:
            listed = "no list price known (set a price or a cost map entry)"
        else:
            inp, out = self.price.per_million()
            listed = f"${inp} in / ${out} out per 1M tokens ({self.price.source})"
        return f"free tier; list price {listed}" if self.free else f"paid: {listed}"


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def for_deployment(d: Any) -> DeploymentPrice:
    """The price of a Deployment (its provider loaded): free or not, and its list price."""
    return DeploymentPrice(free=is_free(d), price=list_price(d))


def is_free(d: Any) -> bool:
    if d.billing == "free":
        return True
    if d.billing == "paid":
        return False
    return d.provider.kind in FREE_TIER_KINDS or d.upstream_model.endswith(FREE_SUFFIX)


def list_price(d: Any) -> Price | None:
    """The admin's price, else LiteLLM's custom pricing from an imported config (`input_cost_per_token` /
    `output_cost_per_token` in litellm_params or model_info), else the cost map's entry."""
    if d.input_price_per_mtok is not None and d.output_price_per_mtok is not None:
        return Price(Decimal(d.input_price_per_mtok) / MILLION, Decimal(d.output_price_per_mtok) / MILLION,
                     "deployment price")
    for source, params in (("litellm_params", d.litellm_params), ("model_info", d.model_info)):
        custom = _custom_price(params, source)
        if custom is not None:
            return custom
    return cost_map_price(cost_map_names(d))


def _custom_price(params: Any, source: str) -> Price | None:
    if not isinstance(params, dict) or not params.keys() & {"input_cost_per_token", "output_cost_per_token"}:
        return None
    try:
        inp = Decimal(str(params.get("input_cost_per_token") or 0))
        out = Decimal(str(params.get("output_cost_per_token") or 0))
    except ArithmeticError:
        log.warning("ignored a custom price in %s that is not a number", source)
        return None
    return Price(inp, out, f"{source} of the config")


def cost_map_names(d: Any) -> list[str]:
    """Cost-map names to try for a deployment, best first: the operator's entry, LiteLLM's own model string,
    then the model under the free tier (no `:free`, no publisher, Anthropic's dashes for dots)."""
    if d.cost_map_model:
        return [d.cost_map_model]
    prefix = d.provider.litellm_prefix
    model = d.upstream_model.removesuffix(FREE_SUFFIX)
    bare = model.rsplit("/", 1)[-1]
    names = [f"{prefix}/{d.upstream_model}" if prefix else d.upstream_model, d.upstream_model]
    if prefix:
        names.append(f"{prefix}/{model}")
    names += [model, bare]
    if bare.startswith("claude-"):
        names.append(bare.replace(".", "-"))
    return list(dict.fromkeys(names))


def cost_map_price(names: list[str]) -> Price | None:
    prices, by_bare_name = cost_map()
    for name in names:
        if name in prices:
            return _price(name, prices[name])
    for name in names:
        entry = by_bare_name.get(name)
        if entry is not None and "/" not in name:
            return _price(entry, prices[entry])
    return None


def _price(name: str, fields: tuple[Any, ...]) -> Price:
    inp, out, threshold, inp_above, out_above = fields
    return Price(inp, out, f"cost map: {name}", threshold, inp_above, out_above)


@functools.cache
def cost_map() -> tuple[dict[str, tuple[Any, ...]], dict[str, str]]:
    """({entry: (input, output, threshold, input above, output above)} for the entries that have a
    per-token price, {last name segment: the vendor's entry}). Read once per process, lazily."""
    path = cost_map_path()
    if path is None:
        log.warning("LiteLLM's cost map %s was not found: calls are priced by deployment prices only", COST_MAP_FILE)
        return {}, {}
    raw: dict[str, Any] = orjson.loads(path.read_bytes())
    prices: dict[str, tuple[Any, ...]] = {}
    by_bare: dict[str, tuple[int, str]] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not entry.keys() & {"input_cost_per_token", "output_cost_per_token"}:
            continue
        try:
            prices[name] = _fields(entry)
        except (ArithmeticError, TypeError, ValueError):
            continue
        provider = str(entry.get("litellm_provider") or "")
        if provider in VENDOR_PROVIDERS:
            rank = VENDOR_PROVIDERS.index(provider)
            bare = name.rsplit("/", 1)[-1]
            if bare not in by_bare or rank < by_bare[bare][0]:
                by_bare[bare] = (rank, name)
    return prices, {bare: name for bare, (_, name) in by_bare.items()}


def _fields(entry: dict[str, Any]) -> tuple[Any, ...]:
    def dec(key: str) -> Decimal | None:
        value = entry.get(key)
        return None if value is None else Decimal(str(value))

    threshold = None
    for key in entry:
        # e.g. input_cost_per_token_above_200k_tokens; the batch/priority/flex variants are other tiers.
        if key.startswith("input_cost_per_token_above_") and key.endswith("k_tokens"):
            threshold = int(key.removeprefix("input_cost_per_token_above_").removesuffix("k_tokens")) * 1000
            above = key.removeprefix("input_cost_per_token_")
            return (dec("input_cost_per_token") or ZERO, dec("output_cost_per_token") or ZERO, threshold,
                    dec(key), dec(f"output_cost_per_token_{above}"))
    return dec("input_cost_per_token") or ZERO, dec("output_cost_per_token") or ZERO, None, None, None


def cost_map_path() -> Path | None:
    # find_spec locates the installed package without running its (heavy) __init__.
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / COST_MAP_FILE
        if path.exists():
            return path
    return None
