"""Cache coherence and audit logging only; no business rules live here.

Signals (rather than save() overrides) because cascades — deleting a user deletes their keys — do not call
save() or delete() on each row, and a deleted user's key must stop working at once.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_delete, post_migrate, post_save
from django.dispatch import receiver
from django.http import HttpRequest

from accounts.models import ApiKey, ApiKeyModelLimit, KeyPolicy, self_serve_group

log = logging.getLogger("accounts.auth")


@receiver(post_save, sender=ApiKey, dispatch_uid="accounts.key_saved")
@receiver(post_delete, sender=ApiKey, dispatch_uid="accounts.key_deleted")
def key_changed(sender: Any, instance: ApiKey, **kwargs: Any) -> None:
    instance.invalidate()


@receiver(post_save, sender=ApiKeyModelLimit, dispatch_uid="accounts.model_limit_saved")
@receiver(post_delete, sender=ApiKeyModelLimit, dispatch_uid="accounts.model_limit_deleted")
def model_limit_changed(sender: Any, instance: ApiKeyModelLimit, **kwargs: Any) -> None:
    from accounts import keys

    # The key row may already be gone (cascade); its prefix is still right here.
    prefix = ApiKey.objects.filter(pk=instance.key_id).values_list("prefix", flat=True).first()
    if prefix:
        keys.invalidate(prefix)


@receiver(post_save, sender=KeyPolicy, dispatch_uid="accounts.key_policy_saved")
@receiver(post_delete, sender=KeyPolicy, dispatch_uid="accounts.key_policy_deleted")
def key_policy_changed(sender: Any, instance: KeyPolicy, **kwargs: Any) -> None:
    """The policy holds the user's budget, which every key of theirs carries: each must be read again."""
    _invalidate_keys_of(instance.user_id)


@receiver(post_save, sender=get_user_model(), dispatch_uid="accounts.user_saved")
def user_changed(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """A deactivated user's keys stop working; a login (which saves last_login) changes nothing."""
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return
    _invalidate_keys_of(instance.pk)


def _invalidate_keys_of(user_id: int) -> None:
    from accounts import keys

    for prefix in ApiKey.objects.filter(owner_id=user_id).values_list("prefix", flat=True):
        keys.invalidate(prefix)


@receiver(post_migrate, dispatch_uid="accounts.self_serve_group")
def create_self_serve_group(sender: Any, app_config: Any = None, **kwargs: Any) -> None:
    if app_config is not None and app_config.label == "accounts":
        self_serve_group()


def _ip(request: HttpRequest | None) -> str:
    return str(request.META.get("REMOTE_ADDR", "")) if request is not None else ""


@receiver(user_logged_in, dispatch_uid="accounts.log_login")
def log_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    log.info("login: user=%s ip=%s", user.get_username(), _ip(request))


@receiver(user_logged_out, dispatch_uid="accounts.log_logout")
def log_logout(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    log.info("logout: user=%s ip=%s", user.get_username() if user else "", _ip(request))


@receiver(user_login_failed, dispatch_uid="accounts.log_login_failed")
def log_login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None,
                     **kwargs: Any) -> None:
    # credentials has the password masked by Django; log only the username.
    log.warning("login failed: user=%s ip=%s", credentials.get("username", ""), _ip(request))
