"""Each usage record carries what the call cost: from the deployment's own price or LiteLLM's cost map, 0 on a
free tier with the list price of the use beside it. Calls go through the real portal to the mock upstream;
the expected figures come from LiteLLM's own `cost_per_token` (its cost map), not from our code."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway import pricing
from gateway.models import Deployment, Provider
from tests.conftest import make_deployment, make_provider
from tracking import recorder
from tracking.models import UsageRecord

HELLO = [{"role": "user", "content": "Say hello"}]


def litellm_cost(model: str, prompt: int, completion: int) -> Decimal:
    import litellm

    inp, out = litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion)
    return Decimal(str(inp + out))


def only_record() -> UsageRecord:
    recorder.flush()
    return UsageRecord.objects.get()


def assert_close(actual: Decimal | None, expected: Decimal) -> None:
    assert actual is not None
    assert abs(actual - expected) < Decimal("1e-9"), (actual, expected)


def test_a_record_is_priced_from_the_deployments_own_price(portal, upstream, client):
    make_deployment(make_provider(upstream), input_price_per_mtok=Decimal("3.5"),
                    output_price_per_mtok=Decimal("10"))

    client.chat.completions.create(model="test-model", messages=HELLO)

    record = only_record()
    assert record.prompt_tokens and record.completion_tokens
    expected = (Decimal("3.5") * record.prompt_tokens + Decimal("10") * record.completion_tokens) / 1_000_000
    assert record.cost_usd == expected.quantize(pricing.QUANTUM)
    assert record.list_cost_usd == record.cost_usd


def test_a_streamed_record_is_priced_from_litellms_cost_map(portal, upstream, client):
    # An OpenAI-compatible server serving gpt-4o-mini: paid, at OpenAI's list price.
    make_deployment(make_provider(upstream), upstream_model="gpt-4o-mini")

    stream = client.chat.completions.create(model="test-model", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    record = only_record()
    assert record.cost_usd and record.cost_usd > 0
    assert_close(record.cost_usd, litellm_cost("gpt-4o-mini", record.prompt_tokens, record.completion_tokens))


def test_a_free_tier_deployment_costs_nothing_but_carries_its_list_price(portal, upstream, client):
    # Copilot's claude-sonnet-4.5, free with the subscription; listed as Anthropic's claude-sonnet-4-5.
    make_deployment(make_provider(upstream), upstream_model="claude-sonnet-4.5", billing="free")

    client.chat.completions.create(model="test-model", messages=HELLO)

    record = only_record()
    assert record.cost_usd == 0
    assert record.list_cost_usd and record.list_cost_usd > 0
    assert_close(record.list_cost_usd,
                 litellm_cost("claude-sonnet-4-5", record.prompt_tokens, record.completion_tokens))


def test_a_price_set_after_a_call_applies_to_the_next_ones_only(portal, upstream, client):
    deployment = make_deployment(make_provider(upstream))
    client.chat.completions.create(model="test-model", messages=HELLO)
    first = only_record()
    assert first.cost_usd is None and first.list_cost_usd is None  # mock-1 has no price anywhere

    deployment.input_price_per_mtok, deployment.output_price_per_mtok = Decimal(1), Decimal(2)
    deployment.save()
    recorder.recorder.prices_loaded = -recorder.PRICES_REFRESH_SECONDS  # as if the refresh interval passed
    client.chat.completions.create(model="test-model", messages=HELLO)
    recorder.flush()
    second = UsageRecord.objects.exclude(pk=first.pk).get()
    assert second.cost_usd == Decimal(second.prompt_tokens + 2 * second.completion_tokens) / 1_000_000
    first.refresh_from_db()
    assert first.cost_usd is None


def deployment(kind: str, upstream_model: str, **fields) -> Deployment:
    return Deployment(public_name="m", upstream_model=upstream_model, provider=Provider(name=kind, kind=kind),
                      **fields)


@pytest.mark.parametrize(("kind", "upstream_model"), [
    ("openrouter", "openai/gpt-oss-20b:free"),
    ("gemini", "gemini-2.5-flash"),
    ("github_models", "openai/gpt-4.1"),
    ("github_copilot", "gpt-4.1"),
    ("lm_studio", "google/gemma-3-12b"),
])
def test_the_built_in_catalogs_free_tiers_are_free(kind, upstream_model):
    assert pricing.for_deployment(deployment(kind, upstream_model)).free


def test_a_paid_openrouter_model_or_a_paid_gemini_key_is_not_free():
    assert not pricing.for_deployment(deployment("openrouter", "openai/gpt-4.1")).free
    assert not pricing.for_deployment(deployment("gemini", "gemini-2.5-flash", billing="paid")).free
    assert not pricing.for_deployment(deployment("openai", "gpt-4.1")).free


def test_the_list_price_of_a_free_model_is_the_paid_models():
    github = pricing.for_deployment(deployment("github_models", "openai/gpt-4.1"))
    gemini = pricing.for_deployment(deployment("gemini", "gemini-2.5-flash"))

    assert github.cost(1000, 500) == pricing.Cost(Decimal(0), litellm_cost("gpt-4.1", 1000, 500))
    assert gemini.cost(1000, 500).list_usd == litellm_cost("gemini/gemini-2.5-flash", 1000, 500)


def test_the_long_context_price_applies_past_the_threshold():
    pro = pricing.for_deployment(deployment("gemini", "gemini-2.5-pro", billing="paid"))

    assert_close(pro.cost(100_000, 1000).usd, litellm_cost("gemini/gemini-2.5-pro", 100_000, 1000))
    assert_close(pro.cost(250_000, 1000).usd, litellm_cost("gemini/gemini-2.5-pro", 250_000, 1000))
    assert pro.cost(250_000, 0).usd > 2 * pro.cost(125_000, 0).usd  # the whole call at the higher price


def test_an_operators_cost_map_entry_prices_a_local_model():
    local = deployment("lm_studio", "google/gemma-3-12b", cost_map_model="deepinfra/google/gemma-3-12b-it")

    price = pricing.for_deployment(local)
    assert price.free
    assert price.cost(2000, 1000).list_usd == litellm_cost("deepinfra/google/gemma-3-12b-it", 2000, 1000)


def test_litellms_custom_pricing_of_an_imported_config_is_honoured():
    imported = deployment("openai_compatible", "my-own-model",
                          litellm_params={"input_cost_per_token": 0.000002, "output_cost_per_token": 0.000004})

    assert pricing.for_deployment(imported).cost(1000, 500) == pricing.Cost(Decimal("0.004"), Decimal("0.004"))


def test_a_budget_estimate_prices_the_prompt_and_the_whole_completion_allowance():
    paid = pricing.for_deployment(deployment("openai", "gpt-4o-mini", input_price_per_mtok=Decimal(1),
                                             output_price_per_mtok=Decimal(4)))
    free = pricing.for_deployment(deployment("github_models", "openai/gpt-4.1"))
    unpriced = pricing.for_deployment(deployment("openai_compatible", "my-own-model"))

    assert paid.estimate(1000, 256) == Decimal("0.002024")
    assert free.estimate(1000, 256) == 0
    assert unpriced.estimate(1000, 256) == 0
    assert unpriced.cost(10, 10) == pricing.Cost(None, None)
