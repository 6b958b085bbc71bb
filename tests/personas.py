"""The people in the accounts tests: alice and bob may manage their own keys, charlie may not, and an
operator runs the place. Import the fixtures into a test module to use them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from accounts.models import ApiKey, self_serve_group

PASSWORD = "correct-horse-battery-staple-42"


@dataclass
class Personas:
    alice: Any
    bob: Any
    charlie: Any
    operator: Any

    def all(self) -> list[Any]:
        return [self.alice, self.bob, self.charlie, self.operator]


def make_user(username: str, *, self_serve: bool = False, staff: bool = False) -> Any:
    user = get_user_model().objects.create_user(username, f"{username}@example.com", PASSWORD)
    if self_serve:
        user.groups.add(self_serve_group())
    if staff:
        user.is_staff = user.is_superuser = True
        user.save()
    return user


@pytest.fixture
def personas(db: Any, settings: Any) -> Personas:
    # PBKDF2 takes about a second per hash on a busy CI machine; these tests are not about hashing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return Personas(
        alice=make_user("alice", self_serve=True),
        bob=make_user("bob", self_serve=True),
        charlie=make_user("charlie"),
        operator=make_user("operator", staff=True),
    )


def issue(owner: Any, name: str = "laptop", **kwargs: Any) -> tuple[ApiKey, str]:
    return ApiKey.objects.issue(owner, name, **kwargs)
