"""The self-service key pages: thin views over ApiKey's methods. A user only ever reaches their own keys;
anyone else's is a 404, so existence is not leaked."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts import services, usage
from accounts.forms import CreateKeyForm
from accounts.models import ApiKey, KeyLimitReached, KeyPolicy
from accounts.pages import secure_page, self_service
from accounts.throttle import throttled_login

login = secure_page(
    throttled_login(
        auth_views.LoginView.as_view(template_name="accounts/login.html", redirect_authenticated_user=True)
    )
)
logout = auth_views.LogoutView.as_view()
# The admin's own login view, with the same failed-login throttle (routed at admin/login/ in portal/urls.py).
admin_login = throttled_login(admin.site.login)


@self_service
def key_list(request: HttpRequest) -> HttpResponse:
    keys = list(ApiKey.objects.owned_by(request.user))
    policy = KeyPolicy.for_user(request.user)
    active = sum(key.is_active for key in keys)
    today = usage.today_by_key([key.pk for key in keys])
    spend = usage.spend_by_key([key.pk for key in keys])
    for key in keys:
        key.today = today.get(key.pk)  # type: ignore[attr-defined]
        key.spend = spend.get(key.pk)  # type: ignore[attr-defined]
    context = {
        "keys": keys,
        "active_count": active,
        "cap": policy.key_cap,
        "spend": usage.user_spend(request.user.pk or 0),  # self_service: always a logged-in user
        # What is left of the user's own budget, shared by all their keys (read from the live counters).
        "budget": services.gateway.user_budget(request.user.pk or 0, policy.user_budget()),
    }
    return render(request, "accounts/key_list.html", context)


@self_service
def key_create(request: HttpRequest) -> HttpResponse:
    form = CreateKeyForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            key, token = ApiKey.objects.issue(
                request.user,  # type: ignore[arg-type]
                form.cleaned_data["name"],
                expires=form.expires(),
                allowed_models=form.allowed_models(),
                limits=form.policy.new_key_limits(),
                actor=request.user,
                enforce_cap=True,
            )
        except KeyLimitReached as e:
            form.add_error(None, e)
        else:
            # The plaintext is in this response only: not in the session (a database row for two weeks) nor a
            # cookie. The page replaces its address with the key's own, so a reload is a GET without it.
            return _detail(request, key, token, status=201)
    status = 400 if form.errors else 200
    return render(request, "accounts/key_form.html", {"form": form}, status=status)


@self_service
def key_detail(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey.objects.owned_by(request.user).prefetch_related("model_limits"), pk=pk)
    return _detail(request, key)


def _detail(request: HttpRequest, key: ApiKey, token: str | None = None, status: int = 200) -> HttpResponse:
    context = {
        "key": key,
        "token": token,
        "quota": usage.quota_rows(key),
        "usage": usage.today_by_key([key.pk]).get(key.pk),
        "spend": usage.key_spend(key.pk),
        # What is left of the key's USD budget, if it has one (read from the live counters).
        "budget": services.gateway.key_budget(key.pk, key.key_limits()) if key.max_budget is not None else None,
    }
    return render(request, "accounts/key_detail.html", context, status=status)


@self_service
@require_POST
def key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey.objects.owned_by(request.user), pk=pk)
    if key.revoke(actor=request.user):
        messages.success(request, f"Key “{key.name}” ({key.display_prefix}) is revoked; it no longer works.")
    return redirect("accounts:keys")
