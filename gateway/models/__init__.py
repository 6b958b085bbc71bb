"""The gateway app's models, by concept; every public name is re-exported here, so `from gateway.models import X`
and migrations' `gateway.models.validate_*` keep working (Django finds the models because they are imported here).

- validators: the field validators (and ENV_PREFIX, LiteLLM's os.environ/ convention).
- catalog_base: CatalogModel and the catalog version bump that reaches every worker.
- catalog: Provider, ProviderKind, Deployment (and its Billing), ConfigSetting.
- quota: QuotaPool, DailyCounter.
- copilot: CopilotAuth.
- seeds: CatalogSeed.
"""

from gateway.models.catalog import LITELLM_PREFIX, Billing, ConfigSetting, Deployment, Provider, ProviderKind
from gateway.models.catalog_base import (
    CATALOG_VERSION_KEY,
    CatalogModel,
    CatalogQuerySet,
    LocalChanges,
    bump_catalog_version,
    catalog_changed,
)
from gateway.models.copilot import CopilotAuth
from gateway.models.quota import DailyCounter, QuotaPool
from gateway.models.seeds import CatalogSeed
from gateway.models.validators import ENV_PREFIX, validate_api_base, validate_proxy_url, validate_timezone

__all__ = [
    "CATALOG_VERSION_KEY",
    "ENV_PREFIX",
    "LITELLM_PREFIX",
    "Billing",
    "CatalogModel",
    "CatalogQuerySet",
    "CatalogSeed",
    "ConfigSetting",
    "CopilotAuth",
    "DailyCounter",
    "Deployment",
    "LocalChanges",
    "Provider",
    "ProviderKind",
    "QuotaPool",
    "bump_catalog_version",
    "catalog_changed",
    "validate_api_base",
    "validate_proxy_url",
    "validate_timezone",
]
