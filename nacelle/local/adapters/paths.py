"""Where the local stack keeps its state: one data directory (default ./.nacelle, or NACELLE_HOME)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUCKET = "nacelle-data"
REGION = "local"
ACCOUNT = "000000000000"


@dataclass(frozen=True)
class StackPaths:
    home: Path

    def __post_init__(self) -> None:
        # absolute, so job runners (started with the home as their working directory) agree on every path
        object.__setattr__(self, "home", Path(self.home).resolve())

    @property
    def objects(self) -> Path:
        return self.home / "objects"

    @property
    def bucket_dir(self) -> Path:
        return self.objects / BUCKET

    @property
    def raw_dir(self) -> Path:
        return self.bucket_dir / "raw"

    @property
    def bus_db(self) -> Path:
        return self.home / "bus.db"

    @property
    def state_db(self) -> Path:
        return self.home / "state.db"

    @property
    def registry_db(self) -> Path:
        return self.home / "registry.db"

    @property
    def greengrass_db(self) -> Path:
        return self.home / "greengrass.db"

    @property
    def jobs_db(self) -> Path:
        return self.home / "jobs.db"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def notifications(self) -> Path:
        return self.home / "notifications.jsonl"

    @property
    def subscribers(self) -> Path:
        return self.home / "subscribers.yaml"

    @property
    def config(self) -> Path:
        return self.home / "config.yaml"

    @property
    def alerts_db(self) -> Path:
        return self.home / "alerts.db"

    @property
    def lock(self) -> Path:
        return self.home / "up.lock"
