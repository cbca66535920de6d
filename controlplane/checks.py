"""System checks for what `manage.py check --deploy` should catch in a production configuration."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, Tags.caches, deploy=True)
def check_shared_cache(app_configs, **kwargs) -> list[Warning]:
    """API rate limits count in Django's cache: a per-process cache multiplies them by the process count."""
    if settings.CACHES["default"]["BACKEND"] != "django.core.cache.backends.locmem.LocMemCache":
        return []
    return [
        Warning(
            "The cache is local to each process, so each web process counts API requests on its own "
            "and the rate limits multiply by the number of processes.",
            hint="Set SLIPWAY_CACHE_URL=redis://HOST:6379/1 (a Redis database other than the broker's).",
            id="slipway.W001",
        )
    ]
