"""The one exception hierarchy. Callers branch on the class, never on the message text."""

from __future__ import annotations


class NacelleError(Exception):
    """Base of every error Nacelle raises on purpose."""


class ConfigurationError(NacelleError):
    """A setting, spec or hyperparameter is missing or malformed."""


class SpecError(ConfigurationError):
    """A feature spec is invalid (unknown keys, bad types, inconsistent windows...)."""


class DataError(NacelleError):
    """Input data cannot be used; the message names the file, the field and the reason."""


class ValidationFailed(DataError):
    """A sensor file failed validation; ``report`` holds every problem found."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class BundleError(NacelleError):
    """A model bundle is incomplete, corrupt or of an unsupported format version."""


class TrainingError(NacelleError):
    """Training could not produce a model (too little data, diverged loss...)."""


class NotFound(NacelleError):
    """A requested resource does not exist."""


class ObjectNotFound(NotFound):
    """No object under that key."""


class JobNotFound(NotFound):
    """No training or compile job with that name."""


class ModelVersionNotFound(NotFound):
    """No model package with that group and version."""


class Conflict(NacelleError):
    """The request conflicts with the current state (e.g. an immutable object with other content)."""


class JobAlreadyExists(Conflict):
    """A job with that name was already started (the name is the idempotency key)."""


class AdapterError(NacelleError):
    """A backing service failed in a way the caller cannot fix (wraps botocore ClientError)."""


class InvalidTransition(NacelleError):
    """Code attempted a state change its lifecycle table (shared/usecases/lifecycle.py) does not allow: a bug."""
