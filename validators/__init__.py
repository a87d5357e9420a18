"""Per-scheme resource validators: pure functions that allow or deny a use."""

from collections.abc import Mapping

from capsup.validators.base import (
    ALLOW,
    COMMON_CONSTRAINTS,
    ConstraintError,
    Decision,
    OperationError,
    ResourceError,
    Use,
    Validator,
    ValidatorRegistry,
    deny,
    scheme_of,
    validator_failed,
)
from capsup.validators.database import DatabaseValidator
from capsup.validators.filesystem import FilesystemValidator
from capsup.validators.http import HttpValidator

__all__ = [
    "ALLOW",
    "COMMON_CONSTRAINTS",
    "ConstraintError",
    "DatabaseValidator",
    "Decision",
    "FilesystemValidator",
    "HttpValidator",
    "OperationError",
    "ResourceError",
    "Use",
    "Validator",
    "ValidatorRegistry",
    "default_registry",
    "deny",
    "scheme_of",
    "validator_failed",
]


def default_registry(databases: Mapping[str, str] | None = None) -> ValidatorRegistry:
    """The file, http(s) and db validators; ``databases`` maps db NAME -> sqlglot dialect."""
    return ValidatorRegistry(
        [FilesystemValidator(), HttpValidator(), DatabaseValidator(databases or {})]
    )
