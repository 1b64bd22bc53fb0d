"""Stepstone's read-only HTTP API and dashboard.

    from api import create_app
    app = create_app(Settings())          # serve with any ASGI server; `stepstone serve` does

Routes read the progress views (kept fresh by a projector) and, for a run's events, the log;
every connection is opened read-only. docs/api.md describes the routes.
"""

from api.app import create_app
from api.deps import ApiOptions

__all__ = ["ApiOptions", "create_app"]
