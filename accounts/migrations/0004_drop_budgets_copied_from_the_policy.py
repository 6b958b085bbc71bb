"""Keys made while a KeyPolicy's budget was a template (0002) hold a copy of it. Since 0003 that budget is the
user's own, shared by all their keys, so a key's copy with the same figure and period can never bind first: it
is redundant, and would quietly hold the key back if the operator later raised the user's budget. Clear those
copies; a key budget that differs from the policy's was set on purpose and stays."""

from django.db import migrations


def drop_copied_budgets(apps, schema_editor):  # type: ignore[no-untyped-def]
    KeyPolicy = apps.get_model("accounts", "KeyPolicy")
    ApiKey = apps.get_model("accounts", "ApiKey")
    for policy in KeyPolicy.objects.filter(max_budget__isnull=False):
        period = policy.budget_duration or "total"
        durations = ["", "total"] if period == "total" else [period]
        ApiKey.objects.filter(
            owner_id=policy.user_id, max_budget=policy.max_budget, budget_duration__in=durations,
        ).update(max_budget=None, budget_duration="total")


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0003_user_budget_on_key_policy"),
    ]

    # Going back leaves keys without the copies: the user's budget still covers them.
    operations = [migrations.RunPython(drop_copied_budgets, migrations.RunPython.noop)]
