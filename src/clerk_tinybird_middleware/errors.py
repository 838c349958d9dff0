"""Exceptions raised by the package."""

from __future__ import annotations

__all__ = ["ConfigurationError"]


class ConfigurationError(ValueError):
    """The middleware was configured wrongly; raised at construction, never per request.

    The message names the environment variable (or setting) at fault and never contains
    a secret.
    """
