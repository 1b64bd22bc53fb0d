"""The HTTP API's own settings: they configure the server, not the engine, so they live here.

Read from the same `STEPSTONE_` environment variables as always (`STEPSTONE_API_TOKEN`,
`STEPSTONE_API_ALLOWED_HOSTS`), built at the edge (`stepstone serve`, or the code that calls
`create_app`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEPSTONE_", extra="ignore")

    api_token: SecretStr | None = Field(
        default=None,
        description="bearer token the HTTP API requires on every route that reads runs "
        "(unset: no token; blank: a configuration error)",
    )
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the HTTP API answers to besides the ones it is bound to "
        "(comma-separated in the environment; * turns the DNS-rebinding check off)",
    )

    @field_validator("api_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value
