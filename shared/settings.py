"""One validated settings object per function, read once from the environment at the boundary.

Each field's alias is the environment variable that sets it; `env_vars()` lists them so a test can
check that template.yaml sets every variable the code reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigurationError

S = TypeVar("S", bound="Settings")


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None) -> S:
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key in source:
                values[key] = source[key]
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigurationError(f"{cls.__name__}: invalid environment: {exc}") from exc

    @classmethod
    def env_vars(cls) -> dict[str, bool]:
        """Environment variable -> required (no default)."""
        return {(f.alias or name): f.is_required() for name, f in cls.model_fields.items()}


class CommonSettings(Settings):
    data_bucket: str = Field(alias="NACELLE_DATA_BUCKET")
    state_table: str = Field(alias="NACELLE_STATE_TABLE")
    model_package_group: str = Field("nacelle-turbine", alias="NACELLE_MODEL_PACKAGE_GROUP")
