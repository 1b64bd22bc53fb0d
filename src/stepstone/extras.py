"""The optional parts of Stepstone, and which commands need them.

`pip install stepstone` gives the engine and this CLI. The HTTP API (`stepstone serve`) and a
worker's Prometheus endpoint need extras; a command that lacks its extra says which to install
and exits 2 instead of failing on an import. The compose test checks the image installs every
extra its services' commands need, from these tables.
"""

from __future__ import annotations

from typing import NoReturn

from stepstone.common import fail

COMMAND_EXTRAS: dict[str, str] = {"serve": "api"}
"""Commands that need an extra whatever their options."""

OPTION_EXTRAS: dict[str, str] = {"--metrics-port": "metrics"}
"""Options that need an extra when given."""


def missing(extra: str, what: str, error: ImportError) -> NoReturn:
    fail(f"{what} needs the {extra!r} extra, which is not installed ({error.name or error}): "
         f"pip install 'stepstone[{extra}]'")
