"""API rate limits: DRF's per-user and per-address throttles.

The rates are read from the settings when a request comes, not when DRF was imported
(DRF's own classes keep the import-time rates), so a changed setting applies at once.
"""

from __future__ import annotations

from rest_framework import throttling
from rest_framework.settings import api_settings


def current_rate(scope: str) -> str | None:
    return api_settings.DEFAULT_THROTTLE_RATES.get(scope)


class AnonRateThrottle(throttling.AnonRateThrottle):
    """Anonymous calls, counted per client address (see NUM_PROXIES for proxies)."""

    def get_rate(self) -> str | None:
        return current_rate(self.scope)


class UserRateThrottle(throttling.UserRateThrottle):
    """Authenticated calls, counted per user whether by token or session."""

    def get_rate(self) -> str | None:
        return current_rate(self.scope)


def client_address(request) -> str | None:
    """The address rate limits count by: the one your proxy appended to X-Forwarded-For, else the socket's.

    The same rule as the API's throttles (DRF's NUM_PROXIES), so a client cannot pick a fresh
    address per request by writing its own X-Forwarded-For.
    """
    return throttling.BaseThrottle().get_ident(request)
