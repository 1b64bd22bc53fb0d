"""Stepstone's read-only HTTP API and dashboard.

    from api import create_app
    app = create_app(Settings(), api=ApiSettings())   # any ASGI server; `stepstone serve` does

Routes read the progress views (kept fresh by a projector) and, for a run's events, the log;
every connection is opened read-only. docs/api.md describes the routes.
"""

from api.app import create_app
from api.auth import ApiConfigError
from api.deps import ApiOptions
from api.security import allowed_hosts
from api.settings import ApiSettings

__all__ = ["ApiConfigError", "ApiOptions", "ApiSettings", "allowed_hosts", "create_app"]
