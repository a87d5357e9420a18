"""Per-scheme resource validators: pure functions that allow or deny a use."""

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
)

__all__ = [
    "ALLOW",
    "COMMON_CONSTRAINTS",
    "ConstraintError",
    "Decision",
    "OperationError",
    "ResourceError",
    "Use",
    "Validator",
    "ValidatorRegistry",
    "deny",
    "scheme_of",
]
