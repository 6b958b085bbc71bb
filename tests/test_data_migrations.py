"""Data migrations, run on the real test database: migrate back, write rows as they were, migrate forward."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = ("accounts", "0003_user_budget_on_key_policy")
AFTER = ("accounts", "0004_drop_budgets_copied_from_the_policy")


def migrate(target: tuple[str, str]) -> Any:
    """Migrate accounts to target; returns the app registry as of that migration."""
    executor = MigrationExecutor(connection)
    executor.migrate([target])
    executor.loader.build_graph()
    return executor.loader.project_state([target]).apps


@pytest.fixture
def before(transactional_db: Any) -> Iterator[Any]:
    apps = migrate(BEFORE)
    yield apps
    migrate(AFTER)  # the rest of the suite expects the latest schema


def make_key(apps: Any, owner: Any, name: str, budget: str | None, duration: str) -> Any:
    return apps.get_model("accounts", "ApiKey").objects.create(
        owner=owner, name=name, prefix=name[:8].ljust(8, "x"), secret_hash="0" * 64,
        max_budget=Decimal(budget) if budget is not None else None, budget_duration=duration,
    )


def test_keys_lose_only_the_budget_they_copied_from_their_users_policy(before):
    User = before.get_model("auth", "User")
    KeyPolicy = before.get_model("accounts", "KeyPolicy")
    alice, bob, carol = (User.objects.create(username=name) for name in ("alice", "bob", "carol"))
    KeyPolicy.objects.create(user=alice, max_budget=Decimal("5.00"), budget_duration="day")
    KeyPolicy.objects.create(user=bob, max_budget=Decimal("2.00"), budget_duration="")  # blank: never resets
    KeyPolicy.objects.create(user=carol, max_budget=None, budget_duration="day")
    make_key(before, alice, "copied", "5.00", "day")
    make_key(before, alice, "own-figure", "1.00", "day")
    make_key(before, alice, "own-period", "5.00", "month")
    make_key(before, alice, "none", None, "total")
    make_key(before, bob, "bob-copied", "2.00", "total")
    make_key(before, carol, "carol-own", "5.00", "day")  # carol's policy has no budget to have copied

    after = migrate(AFTER)

    budgets = {key.name: (key.max_budget, key.budget_duration)
               for key in after.get_model("accounts", "ApiKey").objects.all()}
    assert budgets == {
        "copied": (None, "total"),
        "own-figure": (Decimal("1.00"), "day"),
        "own-period": (Decimal("5.00"), "month"),
        "none": (None, "total"),
        "bob-copied": (None, "total"),
        "carol-own": (Decimal("5.00"), "day"),
    }
