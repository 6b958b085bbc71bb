"""Field validators of the catalog rows; migrations refer to them as gateway.models.validate_*."""

from __future__ import annotations

import zoneinfo

from django.core.exceptions import ValidationError

ENV_PREFIX = "os.environ/"


def validate_api_base(value: str) -> None:
    if value.startswith(ENV_PREFIX) or value.startswith(("http://", "https://")):
        return
    raise ValidationError("Enter an http(s) URL or os.environ/NAME.")


def validate_proxy_url(value: str) -> None:
    if value.startswith(("http://", "https://")) and "://" not in value.split("://", 1)[1]:
        return
    raise ValidationError("Enter the proxy's URL, e.g. http://proxy.internal:3128.")


def validate_timezone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"Unknown time zone {value!r}; use an IANA name like America/Los_Angeles.") from None
