"""The operators' management REST API: users' keys, usage and budgets. Master key (Bearer) or a staff session."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import services, usage
from accounts.auth import token_from
from accounts.models import SELF_SERVE_PERMISSION, ApiKey, ApiKeyModelLimit, KeyPolicy, micro_usd
from accounts.principal import KeyLimits
from accounts.throttle import key_failures

User = get_user_model()
LIMIT_FIELDS = ["rpm", "rpd", "tokens_per_day", "tokens_per_month"]
# LiteLLM's budget_duration strings this API takes, and the period each means (absent or null: in total).
BUDGET_DURATIONS = {"1d": "day", "24h": "day", "day": "day", "30d": "month", "1mo": "month", "month": "month",
                    "total": "total"}


class MasterKey:
    """request.auth when the caller presented the master key."""

    username = "master key"


class MasterKeyAuthentication(BaseAuthentication):
    """The master key as a Bearer token; wrong keys count against the caller's IP like on /v1 (accounts.throttle
    .key_failures), so the API that mints keys is no easier to guess against than the gateway."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, MasterKey] | None:
        token = token_from(request._request)
        if not token:
            return None
        ip = str(request._request.META.get("REMOTE_ADDR") or "")
        if (retry_after := key_failures.retry_after(ip)) is not None:
            raise Throttled(retry_after, "Too many invalid keys from your address.")
        if hmac.compare_digest(token.encode(), settings.MASTER_KEY.encode()):
            return AnonymousUser(), MasterKey()
        if (retry_after := key_failures.fail_sync(ip)) is not None:
            raise Throttled(retry_after, "Too many invalid keys from your address.")
        raise AuthenticationFailed("Invalid key: the management API takes the master key.")

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class MasterKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = MasterKeyAuthentication
    name = "masterKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "LITELLM_MASTER_KEY"}


class IsOperator(BasePermission):
    message = "Operators only: use the master key or log in as a staff user."

    def has_permission(self, request: Request, view: Any) -> bool:
        if isinstance(request.auth, MasterKey):
            return True
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)


def actor(request: Request) -> Any:
    return request.auth.username if isinstance(request.auth, MasterKey) else request.user


class Page(LimitOffsetPagination):
    default_limit = 100
    max_limit = 1000


class OperatorViewSet(viewsets.GenericViewSet):
    authentication_classes = [MasterKeyAuthentication, SessionAuthentication]
    permission_classes = [IsOperator]
    pagination_class = Page


class ModelLimitSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="public_model", max_length=200)

    class Meta:
        model = ApiKeyModelLimit
        fields = ["model", *LIMIT_FIELDS]


class ApiKeySerializer(serializers.ModelSerializer):
    owner: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    status = serializers.CharField(read_only=True)
    model_limits = ModelLimitSerializer(many=True, read_only=True)
    # Numbers, as LiteLLM's key info has them (DRF would make a decimal a string).
    max_budget = serializers.DecimalField(max_digits=12, decimal_places=2, coerce_to_string=False, read_only=True)
    spend = serializers.SerializerMethodField(help_text="USD spent in the budget's current period (null: no budget).")
    budget_remaining = serializers.SerializerMethodField(help_text="USD left of the budget (null: no budget).")

    class Meta:
        model = ApiKey
        fields = ["id", "name", "owner", "prefix", "status", "created", "expires", "revoked_at", "last_used",
                  "allowed_models", *LIMIT_FIELDS, "max_budget", "budget_duration", "spend", "budget_remaining",
                  "model_limits", "tags"]
        read_only_fields = fields

    def _budget(self, key: ApiKey) -> dict[str, Any] | None:
        # Read once per key for both fields: each read asks the quota store.
        held: dict[int, dict[str, Any] | None] = self.__dict__.setdefault("_budgets", {})
        if key.pk not in held:
            held[key.pk] = services.gateway.key_budget(key.pk, key.key_limits()) if key.max_budget is not None \
                else None
        return held[key.pk]

    def get_spend(self, key: ApiKey) -> Decimal | None:
        budget = self._budget(key)
        return budget["spend"] if budget else None

    def get_budget_remaining(self, key: ApiKey) -> Decimal | None:
        budget = self._budget(key)
        return budget["remaining"] if budget else None


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself. Shown in this response only.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


def budget_period(duration: str | None) -> str:
    """The period a LiteLLM budget_duration means; a 400 naming the accepted ones for anything else."""
    if duration is None:
        return "total"
    if duration not in BUDGET_DURATIONS:
        raise serializers.ValidationError(
            f"Unknown budget_duration '{duration}'. Accepted: {', '.join(BUDGET_DURATIONS)}, or null for a "
            "budget that never resets.")
    return BUDGET_DURATIONS[duration]


def known_models() -> set[str]:
    return set(services.gateway.all_models())


class CreateApiKeySerializer(serializers.Serializer):
    owner: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.all()
    )
    name = serializers.CharField(max_length=100)
    expires = serializers.DateTimeField(required=False, allow_null=True, default=None)
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=200), required=False, default=list)
    rpm = serializers.IntegerField(min_value=0, required=False, allow_null=True, default=None)
    rpd = serializers.IntegerField(min_value=0, required=False, allow_null=True, default=None)
    tokens_per_day = serializers.IntegerField(min_value=0, required=False, allow_null=True, default=None)
    tokens_per_month = serializers.IntegerField(min_value=0, required=False, allow_null=True, default=None)
    max_budget = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=Decimal(0), required=False,
                                          allow_null=True, default=None, help_text="USD (LiteLLM's max_budget).")
    budget_duration = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, default=None,
        help_text="When the budget starts over: 1d/24h (daily), 30d/1mo (monthly); null or absent: never.")
    model_limits = ModelLimitSerializer(many=True, required=False, default=list)
    tags = serializers.DictField(child=serializers.CharField(max_length=200), required=False, default=dict)

    def validate_expires(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value

    def validate_budget_duration(self, value: str | None) -> str:
        return budget_period(value)

    def validate_allowed_models(self, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - known_models())
        if unknown:
            raise serializers.ValidationError(f"Unknown models: {', '.join(unknown)}.")
        return value

    def validate_model_limits(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = [row["public_model"] for row in value]
        if len(names) != len(set(names)):
            raise serializers.ValidationError("One row per model.")
        unknown = sorted(set(names) - known_models())
        if unknown:
            raise serializers.ValidationError(f"Unknown models: {', '.join(unknown)}.")
        return value

    def issue(self, by: Any) -> tuple[ApiKey, str]:
        data = self.validated_data
        with transaction.atomic():
            key, token = ApiKey.objects.issue(
                data["owner"],
                data["name"],
                expires=data["expires"],
                allowed_models=data["allowed_models"],
                limits=KeyLimits(**{f: data[f] for f in LIMIT_FIELDS},
                                 budget=micro_usd(data["max_budget"]) if data["max_budget"] is not None else None,
                                 budget_period=data["budget_duration"]),
                tags=data["tags"],
                actor=by,
            )
            for row in data["model_limits"]:
                ApiKeyModelLimit.objects.create(key=key, **row)
        return key, token


@extend_schema(tags=["keys"])
class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OperatorViewSet):
    """Every user's API keys. The secret is never returned, except once by create."""

    serializer_class = ApiKeySerializer

    def get_queryset(self) -> QuerySet[ApiKey]:
        keys = ApiKey.objects.select_related("owner").prefetch_related("model_limits").order_by("-created", "-id")
        params = self.request.query_params
        if owner := params.get("owner"):
            keys = keys.filter(owner__username=owner)
        state = params.get("status")
        if state == "active":
            keys = keys.active()
        elif state == "revoked":
            keys = keys.revoked()
        elif state == "expired":
            keys = keys.expired()
        return keys

    @extend_schema(parameters=[
        OpenApiParameter("owner", str, description="Only this user's keys (username)."),
        OpenApiParameter("status", str, enum=["active", "revoked", "expired"]),
    ])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=CreateApiKeySerializer, responses={201: ApiKeyCreatedSerializer})
    def create(self, request: Request) -> Response:
        form = CreateApiKeySerializer(data=request.data)
        form.is_valid(raise_exception=True)
        key, token = form.issue(actor(request))
        key = self.get_queryset().get(pk=key.pk)
        data = {**ApiKeySerializer(key).data, "key": token}
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: ApiKeySerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        """Revoke the key (it stops working on /v1 within a second). Revoking twice is harmless."""
        key = self.get_object()
        key.revoke(actor(request))
        return Response(ApiKeySerializer(key).data)


class UserUsageSerializer(serializers.ModelSerializer):
    keys = serializers.IntegerField(source="n_keys", read_only=True)
    active_keys = serializers.IntegerField(source="n_active_keys", read_only=True)
    last_used = serializers.DateTimeField(read_only=True)
    may_self_serve = serializers.SerializerMethodField()
    requests_today = serializers.SerializerMethodField(help_text="Requests with this user's keys since 00:00 UTC.")
    tokens_today = serializers.SerializerMethodField(help_text="Tokens with this user's keys since 00:00 UTC.")
    max_budget = serializers.SerializerMethodField(
        help_text="The user's budget in USD, shared by all their keys (LiteLLM's max_budget); null: none.")
    budget_duration = serializers.SerializerMethodField(help_text="When the user's budget starts over.")
    spend = serializers.SerializerMethodField(
        help_text="USD all the user's keys spent in the budget's current period (null: no budget).")
    budget_remaining = serializers.SerializerMethodField(help_text="USD left of the user's budget (null: none).")

    class Meta:
        model = User
        fields = ["id", "username", "is_active", "is_staff", "may_self_serve", "keys", "active_keys", "last_used",
                  "requests_today", "tokens_today", "max_budget", "budget_duration", "spend", "budget_remaining"]
        read_only_fields = fields

    def _budget(self, user: Any) -> dict[str, Any] | None:
        # Read once per user for both fields: each read asks the quota store.
        held: dict[int, dict[str, Any] | None] = self.__dict__.setdefault("_budgets", {})
        if user.pk not in held:
            held[user.pk] = services.gateway.user_budget(user.pk, KeyPolicy.for_user(user).user_budget())
        return held[user.pk]

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_max_budget(self, user: Any) -> Decimal | None:
        return KeyPolicy.for_user(user).max_budget

    @extend_schema_field(serializers.ChoiceField(choices=["day", "month", "total"]))
    def get_budget_duration(self, user: Any) -> str:
        return KeyPolicy.for_user(user).budget_duration or "total"

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_spend(self, user: Any) -> Decimal | None:
        budget = self._budget(user)
        return budget["spend"] if budget else None

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_budget_remaining(self, user: Any) -> Decimal | None:
        budget = self._budget(user)
        return budget["remaining"] if budget else None

    def get_may_self_serve(self, user: Any) -> bool:
        return user.pk in self.context["self_servers"]

    def get_requests_today(self, user: Any) -> int:
        return int(self.context["today"].get(user.pk, {}).get("requests", 0))

    def get_tokens_today(self, user: Any) -> int:
        return int(self.context["today"].get(user.pk, {}).get("tokens", 0))


class UserBudgetSerializer(serializers.Serializer):
    """A user's budget, shared by all their keys, under LiteLLM's names (its /user/update takes the same)."""

    max_budget = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=Decimal(0), required=False,
                                          allow_null=True, help_text="USD; null removes the user's budget.")
    budget_duration = serializers.CharField(
        required=False, allow_null=True, allow_blank=True,
        help_text="When the budget starts over: 1d/24h (daily), 30d/1mo (monthly); null: never.")

    def validate_budget_duration(self, value: str | None) -> str:
        return budget_period(value)

    def save_to(self, user: Any) -> None:
        """Set the fields sent on the user's policy (made if they have none); the others stay as they are.
        Saving it makes every worker read each of the user's keys again (accounts.signals)."""
        policy = KeyPolicy.for_user(user)
        for name, value in self.validated_data.items():
            setattr(policy, name, value)
        policy.save()


@extend_schema(tags=["users"])
class UserUsageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OperatorViewSet):
    """Users with their key counts, when a key of theirs was last used, and their budget."""

    serializer_class = UserUsageSerializer

    def get_queryset(self) -> QuerySet[Any]:
        now = timezone.now()
        active = Q(api_keys__revoked_at__isnull=True) & (
            Q(api_keys__expires__isnull=True) | Q(api_keys__expires__gt=now)
        )
        return User.objects.select_related("key_policy").order_by("username").annotate(
            n_keys=Count("api_keys", distinct=True),
            n_active_keys=Count("api_keys", filter=active, distinct=True),
            last_used=Max("api_keys__last_used"),
        )

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset()) or []
        return self.get_paginated_response(self._rows(page).data)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """One user, as a row of the list: keys, last use, today's use and their budget with what is left."""
        return Response(self._rows([self.get_object()]).data[0])

    @extend_schema(request=UserBudgetSerializer, responses={200: UserUsageSerializer})
    def partial_update(self, request: Request, pk: str) -> Response:
        """Set or clear the user's budget (`max_budget`, `budget_duration`), shared by all their keys; fields
        left out stay as they are. It applies to their keys' next requests."""
        user = self.get_object()
        form = UserBudgetSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        form.save_to(user)
        return self.retrieve(request, pk=pk)

    def _rows(self, users: Sequence[Any]) -> Any:
        # A few queries for the whole page, rather than has_perm() and a usage query per user.
        self_servers = set(User.objects.with_perm(SELF_SERVE_PERMISSION).values_list("pk", flat=True))  # type: ignore[attr-defined]
        context = {**self.get_serializer_context(), "self_servers": self_servers,
                   "today": usage.today_by_user([user.pk for user in users])}
        return UserUsageSerializer(users, many=True, context=context)

